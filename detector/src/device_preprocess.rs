//! Letterboxing on the detector's device (used when it is a GPU): the 8-bit RGB frame is
//! uploaded once, as bytes, and resized, padded, normalised and laid out as CHW there, so the
//! CPU does no per-pixel work and the upload is the frame's bytes, not four times as many.
//!
//! It computes what [`crate::preprocess`] computes, with tensor operations: the same OpenCV
//! `INTER_LINEAR` fixed-point coefficient tables, the horizontal pass as two gathers and an
//! exact integer sum, the vertical pass as OpenCV's SIMD kernel rounds it (shifts as
//! `floor(x / 2^k)`), all in f64 where every intermediate value is an exact integer; then the
//! level's `f32` value `level / 255` (u8 saturation included) is looked up in a table.
//! So it is bit-exact with the CPU path, on any device whose f64 arithmetic is IEEE (the unit
//! tests check it on the CPU, `tests/gpu.rs` on CUDA).

use candle_core::{DType, Device, Tensor};

use crate::error::Result;
use crate::preprocess::{Letterbox, PAD_VALUE, ResizeTables, RgbFrame};

/// Entries of the level table: the vertical pass can overshoot 255 (to at most 510).
const LEVELS: usize = 512;

/// The resize tables of one `(src, dst)` size pair, on one device.
struct DeviceTables {
    key: (u32, u32, u32, u32),
    device: Device,
    /// Source rows (clamped) of each output row, and their weights, (h, 1, 1).
    y0: Tensor,
    y1: Tensor,
    wy0: Tensor,
    wy1: Tensor,
    /// Source columns of each output column, and their weights, (1, w, 1).
    x0: Tensor,
    x1: Tensor,
    wx0: Tensor,
    wx1: Tensor,
}

impl DeviceTables {
    fn new(key: (u32, u32, u32, u32), device: &Device) -> candle_core::Result<Self> {
        let t = ResizeTables::new(key);
        let (w, h) = (t.x_src.len(), t.y_rows.len());
        let u32s = |v: Vec<u32>| -> candle_core::Result<Tensor> {
            let n = v.len();
            Tensor::from_vec(v, n, device)
        };
        let weights = |v: Vec<f64>, shape: (usize, usize, usize)| Tensor::from_vec(v, shape, device);
        Ok(Self {
            key,
            device: device.clone(),
            y0: u32s(t.y_rows.iter().map(|r| r[0] as u32).collect())?,
            y1: u32s(t.y_rows.iter().map(|r| r[1] as u32).collect())?,
            wy0: weights(t.y_w.iter().map(|b| f64::from(b[0])).collect(), (h, 1, 1))?,
            wy1: weights(t.y_w.iter().map(|b| f64::from(b[1])).collect(), (h, 1, 1))?,
            // The CPU tables hold byte offsets of RGB pixels.
            x0: u32s(t.x_src.iter().map(|x| (x[0] / 3) as u32).collect())?,
            x1: u32s(t.x_src.iter().map(|x| (x[1] / 3) as u32).collect())?,
            wx0: weights(t.x_w.iter().map(|a| f64::from(a[0])).collect(), (1, w, 1))?,
            wx1: weights(t.x_w.iter().map(|a| f64::from(a[1])).collect(), (1, w, 1))?,
        })
    }
}

/// Reusable device letterbox state: the resize tables (kept while the sizes stay the same, as in
/// a video) and the `level / 255` table.
#[derive(Default)]
pub struct DeviceLetterboxer {
    tables: Option<DeviceTables>,
    unit: Option<Tensor>,
}

impl std::fmt::Debug for DeviceLetterboxer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceLetterboxer").field("tables", &self.tables.as_ref().map(|t| t.key)).finish()
    }
}

impl DeviceLetterboxer {
    pub fn new() -> Self {
        Self::default()
    }

    /// The letterboxed frame as an f32 (3, out_h, out_w) tensor in `[0, 1]` on `device`:
    /// the same values [`crate::preprocess::letterbox_into`] writes.
    pub fn letterbox(&mut self, frame: &RgbFrame, geo: &Letterbox, device: &Device) -> Result<Tensor> {
        frame.validate()?;
        geo.check(frame)?;
        let (w, h) = (frame.width as usize, frame.height as usize);
        let (new_w, new_h) = (geo.new_unpad.0 as usize, geo.new_unpad.1 as usize);
        // The only host-to-device copy: the frame's bytes.
        let image = Tensor::from_slice(&frame.data[..], (h, w, 3), device)?;
        let levels = if (new_w, new_h) == (w, h) {
            // `letterbox` resizes only when the size changes.
            image.to_dtype(DType::F64)?
        } else {
            let t = self.tables(frame, geo, device)?;
            resize_levels(&image, t)?
        };
        // CHW, padded with 114 (pad with zeros around `level - 114`).
        let pad = f64::from(PAD_VALUE);
        let chw = (levels.permute((2, 0, 1))? - pad)?;
        let (top, bottom) = (geo.pad_top as usize, geo.pad_bottom as usize);
        let (left, right) = (geo.pad_left as usize, geo.pad_right as usize);
        let padded = chw.pad_with_zeros(1, top, bottom)?.pad_with_zeros(2, left, right)?;
        let ids = (padded + pad)?.to_dtype(DType::U32)?.flatten_all()?;
        let unit = self.unit(device)?;
        Ok(unit.index_select(&ids, 0)?.reshape((3, geo.out_height as usize, geo.out_width as usize))?)
    }

    fn tables(&mut self, frame: &RgbFrame, geo: &Letterbox, device: &Device) -> Result<&DeviceTables> {
        let key = (frame.width, frame.height, geo.new_unpad.0, geo.new_unpad.1);
        let stale = self.tables.as_ref().is_none_or(|t| t.key != key || !t.device.same_device(device));
        if stale {
            self.tables = Some(DeviceTables::new(key, device)?);
        }
        self.tables.as_ref().ok_or_else(|| crate::error::Error::Image("resize tables missing".into()))
    }

    fn unit(&mut self, device: &Device) -> Result<Tensor> {
        if let Some(u) = &self.unit
            && u.device().same_device(device)
        {
            return Ok(u.clone());
        }
        // `torch.from_numpy(im).float() / 255` in float32, as the CPU path's table; levels over
        // 255 (before the u8 saturation) read 255.
        let values: Vec<f32> = (0..LEVELS).map(|v| f32::from(v.min(255) as u8) / 255.0).collect();
        let unit = Tensor::from_vec(values, LEVELS, device)?;
        self.unit = Some(unit.clone());
        Ok(unit)
    }
}

/// OpenCV's 8-bit `INTER_LINEAR` resize of an (h, w, 3) u8 image to (new_h, new_w, 3) levels
/// (f64 holding integers 0..=511, where everything over 255 means 255); see `preprocess.rs` for
/// the arithmetic it reproduces.
fn resize_levels(image: &Tensor, t: &DeviceTables) -> candle_core::Result<Tensor> {
    // Horizontal pass on the two source rows of every output row: S = v0 * a0 + v1 * a1, exact.
    let horizontal = |rows: &Tensor| -> candle_core::Result<Tensor> {
        let a = rows.index_select(&t.x0, 1)?.to_dtype(DType::F64)?.broadcast_mul(&t.wx0)?;
        let b = rows.index_select(&t.x1, 1)?.to_dtype(DType::F64)?.broadcast_mul(&t.wx1)?;
        a + b
    };
    let s0 = horizontal(&image.index_select(&t.y0, 0)?)?;
    let s1 = horizontal(&image.index_select(&t.y1, 0)?)?;
    // VResizeLinearVec_32s8u: ((S0 >> 4) * b0 >> 16) + ((S1 >> 4) * b1 >> 16), saturated to i16,
    // then (v + 2) >> 2 saturated to u8, with `x >> k` = floor(x / 2^k) (exact in f64).
    // No i16 saturation can happen: S <= 255 * 2049, so S >> 4 <= 32655, and each term is at
    // most 32655 * 2048 >> 16 = 1020. The u8 saturation is folded into the level table
    // (levels 256..=511 read 1.0), which also spares scalar uploads for a clamp.
    let term = |s: Tensor, b: &Tensor| -> candle_core::Result<Tensor> {
        let p = (s * (1.0 / 16.0))?.floor()?;
        (p.broadcast_mul(b)? * (1.0 / 65536.0))?.floor()
    };
    let sum = (term(s0, &t.wy0)? + term(s1, &t.wy1)?)?;
    ((sum + 2.0)? * 0.25)?.floor()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preprocess::{LetterboxMode, letterbox_geometry, letterbox_into};

    fn pseudo_random_frame(w: u32, h: u32, seed: u32) -> RgbFrame {
        let mut x = seed.wrapping_mul(2_654_435_761).max(1);
        let data = (0..w * h * 3)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x >> 24) as u8
            })
            .collect();
        RgbFrame::new(w, h, data).expect("frame")
    }

    /// The device path on the CPU device is bit-exact with the CPU letterbox.
    #[test]
    fn matches_the_cpu_letterbox_exactly() {
        let mut dev = DeviceLetterboxer::new();
        let cases = [
            (600, 400, 128, LetterboxMode::MinimalRect),
            (600, 400, 640, LetterboxMode::MinimalRect),
            (451, 300, 640, LetterboxMode::Square),
            (1280, 720, 640, LetterboxMode::MinimalRect),
            (33, 97, 160, LetterboxMode::Square),
            (640, 480, 640, LetterboxMode::MinimalRect), // no resize
            (7, 5, 64, LetterboxMode::Square),
        ];
        for (i, (w, h, imgsz, mode)) in cases.into_iter().enumerate() {
            let frame = pseudo_random_frame(w, h, i as u32 + 1);
            let geo = letterbox_geometry(w, h, imgsz, 32, mode).expect("geo");
            let mut cpu = Vec::new();
            letterbox_into(&frame, &geo, &mut cpu).expect("cpu letterbox");
            let t = dev.letterbox(&frame, &geo, &Device::Cpu).expect("device letterbox");
            assert_eq!(t.dims(), &[3, geo.out_height as usize, geo.out_width as usize]);
            let ours: Vec<f32> = t.flatten_all().expect("flat").to_vec1().expect("vec");
            let differing = ours.iter().zip(&cpu).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
            assert_eq!(differing, 0, "{w}x{h} -> {imgsz} {mode:?}: {differing} values differ");
        }
    }

    #[test]
    fn rejects_a_foreign_geometry() {
        let frame = pseudo_random_frame(4, 4, 3);
        let geo = letterbox_geometry(8, 4, 8, 4, LetterboxMode::MinimalRect).expect("geo");
        assert!(DeviceLetterboxer::new().letterbox(&frame, &geo, &Device::Cpu).is_err());
    }
}
