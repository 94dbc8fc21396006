//! Letterbox preprocessing, reproducing the official YOLOv9 pipeline
//! (`utils.augmentations.letterbox` + `utils.dataloaders.LoadImages` of
//! <https://github.com/WongKinYiu/yolov9>).
//!
//! The official code reads BGR with `cv2.imread`, letterboxes, then flips to
//! RGB and divides by 255. Working on RGB from the start gives the same
//! numbers, since every step treats the channels independently.
//!
//! The resize reproduces `cv2.resize(..., interpolation=cv2.INTER_LINEAR)` on
//! 8-bit images, fixed-point arithmetic included:
//!
//! * source coordinate `f = (float)((d + 0.5) * scale - 0.5)` with
//!   `scale = 1 / (dst / src)` in double precision, `s = floor(f)`, weights
//!   `round_half_even((1 - frac) * 2048)` and `round_half_even(frac * 2048)`
//!   (`INTER_RESIZE_COEF_BITS = 11`, rounded separately, so they may sum to
//!   2047 or 2049);
//! * horizontally, columns left of the image take the first column, columns
//!   right of it the last one; vertically the two source rows are clamped into
//!   the image but the weights are kept;
//! * horizontal pass in exact integers (`S[x0]*a0 + S[x1]*a1`);
//! * vertical pass as OpenCV's SIMD kernel (`VResizeLinearVec_32s8u`) computes
//!   it: `((S0 >> 4) * b0 >> 16) + ((S1 >> 4) * b1 >> 16)`, then `(v + 2) >> 2`
//!   with unsigned saturation, for every value of the row: OpenCV covers a
//!   row's tail with one more overlapping vector step, so the scalar rounding
//!   `(S0*b0 + S1*b1 + (1 << 21)) >> 22` is never used (measured: grace_hopper
//!   at 640, 546*3 values per row, matches cv2 exactly only this way).
//!
//! Measured against the official pipeline (opencv-python-headless): bit-exact
//! on the stored tiny-model input (coffee.png, 600x400 -> 128x85, 0 of 36864
//! values differ; scalar rounding alone would differ in 3981 values by 1/255),
//! and on the 640 inputs of the three PNG photographs (sum and samples of
//! `full/expected/*.json` `input_stats` match exactly), and on grace_hopper.jpg
//! decoded by libjpeg-turbo (0 of 1,105,920 values differ from cv2).

use std::fmt;
use std::sync::Arc;

/// Padding value of the official letterbox (`color=(114, 114, 114)`).
pub const PAD_VALUE: u8 = 114;

/// Fixed-point precision of OpenCV's `INTER_LINEAR` for 8-bit images.
const COEF_BITS: u32 = 11;
const COEF_SCALE: f32 = (1u32 << COEF_BITS) as f32;

/// Errors of the preprocessing functions.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PreprocessError {
    /// A frame with zero width or height.
    #[error("empty frame ({width}x{height})")]
    EmptyFrame { width: u32, height: u32 },
    /// Pixel buffer length does not match `width * height * 3`.
    #[error("frame data has {actual} bytes, expected {expected} ({width}x{height} RGB)")]
    DataLength { width: u32, height: u32, expected: usize, actual: usize },
    /// The frame is too large to address.
    #[error("frame {width}x{height} is too large")]
    TooLarge { width: u32, height: u32 },
    /// `imgsz` or `stride` is zero.
    #[error("invalid letterbox parameter: {0}")]
    InvalidParameter(&'static str),
    /// The image would be resized to zero pixels along one axis.
    #[error("image {src_width}x{src_height} scales to an empty {new_width}x{new_height} at this size")]
    DegenerateResize { src_width: u32, src_height: u32, new_width: u32, new_height: u32 },
    /// The letterbox geometry does not belong to this frame or is inconsistent.
    #[error("letterbox geometry does not match the frame: {0}")]
    GeometryMismatch(&'static str),
}

/// An 8-bit RGB image, rows packed (stride = width * 3).
#[derive(Clone)]
pub struct RgbFrame {
    pub width: u32,
    pub height: u32,
    pub data: Arc<[u8]>,
}

impl RgbFrame {
    /// Wraps packed RGB rows; checks that the frame is not empty and that the
    /// buffer holds exactly `width * height * 3` bytes.
    pub fn new(width: u32, height: u32, data: Vec<u8>) -> Result<Self, PreprocessError> {
        let frame = Self { width, height, data: data.into() };
        frame.validate()?;
        Ok(frame)
    }

    /// Copies packed RGB rows into a new frame (one copy; `new` moves a `Vec` into the shared
    /// buffer, which copies it once more).
    pub fn from_slice(width: u32, height: u32, data: &[u8]) -> Result<Self, PreprocessError> {
        let frame = Self { width, height, data: Arc::from(data) };
        frame.validate()?;
        Ok(frame)
    }

    /// Checks the invariants `new` establishes (the fields are public).
    pub fn validate(&self) -> Result<(), PreprocessError> {
        let expected = rgb_len(self.width, self.height)?;
        if self.data.len() != expected {
            return Err(PreprocessError::DataLength {
                width: self.width,
                height: self.height,
                expected,
                actual: self.data.len(),
            });
        }
        Ok(())
    }
}

impl fmt::Debug for RgbFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RgbFrame")
            .field("width", &self.width)
            .field("height", &self.height)
            .field("data_len", &self.data.len())
            .finish()
    }
}

fn rgb_len(width: u32, height: u32) -> Result<usize, PreprocessError> {
    if width == 0 || height == 0 {
        return Err(PreprocessError::EmptyFrame { width, height });
    }
    (width as usize)
        .checked_mul(height as usize)
        .and_then(|v| v.checked_mul(3))
        .ok_or(PreprocessError::TooLarge { width, height })
}

/// How far the letterbox pads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LetterboxMode {
    /// Official `auto=True`: pad only to the next stride multiple (video /
    /// `detect.py` default).
    #[default]
    MinimalRect,
    /// `auto=False`: pad to the full square `imgsz`.
    Square,
}

/// Letterbox geometry, as computed by the official `letterbox()`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Letterbox {
    /// Scale factor `r = min(imgsz / h, imgsz / w)`.
    pub ratio: f64,
    /// Resized size `(w, h)` before padding.
    pub new_unpad: (u32, u32),
    pub pad_left: u32,
    pub pad_top: u32,
    pub pad_right: u32,
    pub pad_bottom: u32,
    /// Size of the network input.
    pub out_width: u32,
    pub out_height: u32,
    /// Size of the source image.
    pub src_width: u32,
    pub src_height: u32,
}

impl Letterbox {
    /// `(height, width)` of the network input (`img1_shape` of `scale_boxes`).
    pub fn input_hw(&self) -> (u32, u32) {
        (self.out_height, self.out_width)
    }

    /// `(height, width)` of the source image (`img0_shape` of `scale_boxes`).
    pub fn orig_hw(&self) -> (u32, u32) {
        (self.src_height, self.src_width)
    }

    /// Number of `f32` values `letterbox_into` writes (`3 * out_h * out_w`).
    pub fn tensor_len(&self) -> usize {
        3usize.saturating_mul(self.out_width as usize).saturating_mul(self.out_height as usize)
    }

    pub(crate) fn check(&self, frame: &RgbFrame) -> Result<(), PreprocessError> {
        if frame.width != self.src_width || frame.height != self.src_height {
            return Err(PreprocessError::GeometryMismatch("source size differs from the frame size"));
        }
        let (nw, nh) = self.new_unpad;
        if nw == 0 || nh == 0 {
            return Err(PreprocessError::GeometryMismatch("empty resized size"));
        }
        let w = u64::from(nw) + u64::from(self.pad_left) + u64::from(self.pad_right);
        let h = u64::from(nh) + u64::from(self.pad_top) + u64::from(self.pad_bottom);
        if w != u64::from(self.out_width) || h != u64::from(self.out_height) {
            return Err(PreprocessError::GeometryMismatch("resized size plus padding differs from the output size"));
        }
        // The output tensor must be addressable.
        rgb_len(self.out_width, self.out_height)?;
        Ok(())
    }
}

/// Official `letterbox(im, imgsz, color=(114,114,114), auto, scaleFill=False,
/// scaleup=True, stride)` geometry for a `src_w x src_h` image.
pub fn letterbox_geometry(
    src_w: u32,
    src_h: u32,
    imgsz: u32,
    stride: u32,
    mode: LetterboxMode,
) -> Result<Letterbox, PreprocessError> {
    if src_w == 0 || src_h == 0 {
        return Err(PreprocessError::EmptyFrame { width: src_w, height: src_h });
    }
    if imgsz == 0 {
        return Err(PreprocessError::InvalidParameter("imgsz must be positive"));
    }
    if stride == 0 {
        return Err(PreprocessError::InvalidParameter("stride must be positive"));
    }
    let size = f64::from(imgsz);
    // r = min(new_shape[0] / shape[0], new_shape[1] / shape[1])
    let ratio = (size / f64::from(src_h)).min(size / f64::from(src_w));
    // new_unpad = int(round(w * r)), int(round(h * r))   (Python round: half to even)
    let new_w = (f64::from(src_w) * ratio).round_ties_even();
    let new_h = (f64::from(src_h) * ratio).round_ties_even();
    // Both are in [0, imgsz]: r <= imgsz / side, so side * r <= imgsz (+ rounding).
    let new_w = new_w.clamp(0.0, size) as u32;
    let new_h = new_h.clamp(0.0, size) as u32;
    if new_w == 0 || new_h == 0 {
        return Err(PreprocessError::DegenerateResize {
            src_width: src_w,
            src_height: src_h,
            new_width: new_w,
            new_height: new_h,
        });
    }
    let (mut dw, mut dh) = (imgsz - new_w, imgsz - new_h);
    if mode == LetterboxMode::MinimalRect {
        dw %= stride;
        dh %= stride;
    }
    let (pad_left, pad_right) = split_padding(dw);
    let (pad_top, pad_bottom) = split_padding(dh);
    Ok(Letterbox {
        ratio,
        new_unpad: (new_w, new_h),
        pad_left,
        pad_top,
        pad_right,
        pad_bottom,
        out_width: new_w + dw,
        out_height: new_h + dh,
        src_width: src_w,
        src_height: src_h,
    })
}

/// `d /= 2; round(d - 0.1), round(d + 0.1)` with Python's rounding.
fn split_padding(total: u32) -> (u32, u32) {
    let half = f64::from(total) / 2.0;
    let first = (half - 0.1).round_ties_even().max(0.0) as u32;
    let second = (half + 0.1).round_ties_even().max(0.0) as u32;
    (first, second)
}

/// Letterboxed image as `f32` CHW RGB in `[0, 1]` (length `3 * out_h * out_w`),
/// written into a reusable buffer.
///
/// Allocates its small coefficient tables per call; use [`Letterboxer`] to keep
/// them (and the row buffers) between frames.
pub fn letterbox_into(frame: &RgbFrame, geo: &Letterbox, out: &mut Vec<f32>) -> Result<(), PreprocessError> {
    Letterboxer::new().letterbox_into(frame, geo, out)
}

/// Reusable letterbox state: resize coefficient tables (kept while the source
/// and resized sizes stay the same, as in a video) and the value table.
#[derive(Debug, Default)]
pub struct Letterboxer {
    tables: Option<ResizeTables>,
    unit: Vec<f32>,
}

/// Output rows per parallel task. A task computes the horizontal pass of its first source rows
/// itself, so bands much shorter than this would repeat work where the image is not shrunk.
const BAND_ROWS: usize = 32;

/// Rows `y0..` of the resized image in the three output planes (each slice starts at column 0
/// of output row `top + y0`).
struct Band<'a> {
    y0: usize,
    planes: [&'a mut [f32]; 3],
}

impl Letterboxer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Same as the free function [`letterbox_into`], reusing this state.
    pub fn letterbox_into(
        &mut self,
        frame: &RgbFrame,
        geo: &Letterbox,
        out: &mut Vec<f32>,
    ) -> Result<(), PreprocessError> {
        self.run(frame, geo, out, VerticalRounding::OpenCv, BAND_ROWS)
    }

    /// Bands of `band_rows` output rows run in parallel on the detector's CPU threads, where
    /// one thread used to letterbox while the others waited (into 640x384, two threads: from
    /// 640x360 0.27 -> 0.15 ms, from 1920x1080 2.0 -> 1.0 ms on a frame in cache). Every band
    /// gives the values the whole image in one band would.
    fn run(
        &mut self,
        frame: &RgbFrame,
        geo: &Letterbox,
        out: &mut Vec<f32>,
        rounding: VerticalRounding,
        band_rows: usize,
    ) -> Result<(), PreprocessError> {
        frame.validate()?;
        geo.check(frame)?;
        if self.unit.len() != 256 {
            // `torch.from_numpy(im).float() / 255` in float32.
            self.unit = (0..=255u8).map(|v| f32::from(v) / 255.0).collect();
        }
        let pad = self.unit[usize::from(PAD_VALUE)];
        let out_w = geo.out_width as usize;
        let out_h = geo.out_height as usize;
        let plane = out_w * out_h;
        let (new_w, new_h) = (geo.new_unpad.0 as usize, geo.new_unpad.1 as usize);
        let (left, top) = (geo.pad_left as usize, geo.pad_top as usize);
        // Only the padding is filled here: the bands write every value of the image's rows.
        out.resize(3 * plane, pad);
        let mut rest: &mut [f32] = out;
        let mut planes = [0, 1, 2].map(|_| {
            let p = take_front(&mut rest, plane);
            p[..top * out_w].fill(pad);
            p[(top + new_h) * out_w..].fill(pad);
            &mut p[top * out_w..(top + new_h) * out_w]
        });
        let band_rows = band_rows.max(1);
        let bands: Vec<Band<'_>> = (0..new_h)
            .step_by(band_rows)
            .map(|y0| {
                let len = band_rows.min(new_h - y0) * out_w;
                Band { y0, planes: [0, 1, 2].map(|c| take_front(&mut planes[c], len)) }
            })
            .collect();

        let resize = (new_w, new_h) != (frame.width as usize, frame.height as usize);
        if resize {
            // `letterbox` resizes only when the size changes.
            let key = (frame.width, frame.height, geo.new_unpad.0, geo.new_unpad.1);
            if self.tables.as_ref().map(|t| t.key) != Some(key) {
                self.tables = Some(ResizeTables::new(key));
            }
        }
        let job = BandJob {
            frame,
            tables: if resize { self.tables.as_ref() } else { None },
            unit: &self.unit,
            pad,
            geometry: (out_w, new_w, left),
            rounding,
        };
        let done = std::sync::atomic::AtomicUsize::new(0);
        let count = bands.len();
        crate::nn::fork_join::for_each(bands, |band| {
            job.run(band);
            done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        });
        // A band that panicked on a helper thread is printed there and left unwritten.
        if done.into_inner() != count {
            return Err(PreprocessError::GeometryMismatch("a letterbox band did not finish"));
        }
        Ok(())
    }
}

/// The first `len` values of `*rest`, leaving the others in it.
fn take_front<'a>(rest: &mut &'a mut [f32], len: usize) -> &'a mut [f32] {
    let (front, back) = std::mem::take(rest).split_at_mut(len);
    *rest = back;
    front
}

/// What every band of one letterbox shares.
struct BandJob<'a> {
    frame: &'a RgbFrame,
    /// `None` when the image keeps its size.
    tables: Option<&'a ResizeTables>,
    unit: &'a [f32],
    pad: f32,
    /// `(out_w, new_w, left)`.
    geometry: (usize, usize, usize),
    rounding: VerticalRounding,
}

impl BandJob<'_> {
    fn run(&self, band: Band<'_>) {
        let (out_w, new_w, left) = self.geometry;
        let [p0, p1, p2] = band.planes;
        let rows = p0.len() / out_w;
        let src_w = self.frame.width as usize;
        let data = &self.frame.data[..];
        let row_len = new_w * 3;
        // Horizontally resized source rows (two of them, with their row numbers) and one
        // vertically blended row, 8-bit HWC; only a resize uses them.
        let buffer_len = if self.tables.is_some() { row_len } else { 0 };
        let mut hrows = [vec![0i32; buffer_len], vec![0i32; buffer_len]];
        let mut hrow_ids = [None::<usize>; 2];
        let mut blended = vec![0u8; buffer_len];
        let simd_end = match self.rounding {
            VerticalRounding::OpenCv => row_len,
            VerticalRounding::Scalar => 0,
        };
        for i in 0..rows {
            let dy = band.y0 + i;
            let pixels: &[u8] = match self.tables {
                None => &data[dy * src_w * 3..(dy + 1) * src_w * 3],
                Some(tables) => {
                    let ([r0, r1], [b0, b1]) = (tables.y_rows[dy], tables.y_w[dy]);
                    // Find or compute the two horizontally resized source rows.
                    let mut slot = [usize::MAX; 2];
                    for (k, &r) in [r0, r1].iter().enumerate() {
                        if let Some(s) = hrow_ids.iter().position(|&id| id == Some(r)) {
                            slot[k] = s;
                            continue;
                        }
                        let s = if slot[1 - k] == 0 { 1 } else { 0 };
                        hresize_row(&data[r * src_w * 3..(r + 1) * src_w * 3], tables, &mut hrows[s]);
                        hrow_ids[s] = Some(r);
                        slot[k] = s;
                    }
                    let (s0, s1) = (&hrows[slot[0]], &hrows[slot[1]]);
                    let (simd0, tail0) = s0.split_at(simd_end);
                    let (simd1, tail1) = s1.split_at(simd_end);
                    let (simd_out, tail_out) = blended.split_at_mut(simd_end);
                    for ((d, &a), &b) in simd_out.iter_mut().zip(simd0).zip(simd1) {
                        *d = vertical_simd(a, b, b0, b1);
                    }
                    for ((d, &a), &b) in tail_out.iter_mut().zip(tail0).zip(tail1) {
                        *d = vertical_scalar(a, b, b0, b1);
                    }
                    &blended
                }
            };
            // HWC row -> three CHW plane rows, with the left and right padding.
            let row = i * out_w..(i + 1) * out_w;
            let (r_out, g_out, b_out) = (&mut p0[row.clone()], &mut p1[row.clone()], &mut p2[row]);
            for plane_row in [&mut *r_out, &mut *g_out, &mut *b_out] {
                plane_row[..left].fill(self.pad);
                plane_row[left + new_w..].fill(self.pad);
            }
            for (((px, r), g), b) in pixels
                .chunks_exact(3)
                .zip(&mut r_out[left..left + new_w])
                .zip(&mut g_out[left..left + new_w])
                .zip(&mut b_out[left..left + new_w])
            {
                *r = self.unit[usize::from(px[0])];
                *g = self.unit[usize::from(px[1])];
                *b = self.unit[usize::from(px[2])];
            }
        }
    }
}

/// Which rounding the vertical pass uses (the alternative is kept for tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum VerticalRounding {
    /// OpenCV: the SIMD kernel's rounding on the whole row.
    OpenCv,
    /// Scalar rounding everywhere (OpenCV built without SIMD).
    #[cfg_attr(not(test), allow(dead_code))]
    Scalar,
}

/// OpenCV `VResizeLinearVec_32s8u`: `v_shr<4>`, `v_pack` (i16, saturating),
/// `v_mul_hi`, saturating i16 add, `v_rshr_pack_u<2>`.
#[inline]
fn vertical_simd(s0: i32, s1: i32, b0: i32, b1: i32) -> u8 {
    let p0 = sat_i16(s0 >> 4);
    let p1 = sat_i16(s1 >> 4);
    let m0 = (p0 * b0) >> 16;
    let m1 = (p1 * b1) >> 16;
    let sum = sat_i16(m0 + m1);
    ((sum + 2) >> 2).clamp(0, 255) as u8
}

/// OpenCV `FixedPtCast<int, uchar, 22>` applied to `S0*b0 + S1*b1`.
#[inline]
fn vertical_scalar(s0: i32, s1: i32, b0: i32, b1: i32) -> u8 {
    let v = i64::from(s0) * i64::from(b0) + i64::from(s1) * i64::from(b1);
    ((v + (1 << (2 * COEF_BITS - 1))) >> (2 * COEF_BITS)).clamp(0, 255) as u8
}

#[inline]
fn sat_i16(v: i32) -> i32 {
    v.clamp(i32::from(i16::MIN), i32::from(i16::MAX))
}

/// Horizontal pass of one source row into `dst` (`new_w * 3` values).
fn hresize_row(src_row: &[u8], tables: &ResizeTables, dst: &mut [i32]) {
    for ((d, &[x0, x1]), &[a0, a1]) in dst.chunks_exact_mut(3).zip(&tables.x_src).zip(&tables.x_w) {
        let (p0, p1) = (&src_row[x0..x0 + 3], &src_row[x1..x1 + 3]);
        for ((dv, &v0), &v1) in d.iter_mut().zip(p0).zip(p1) {
            *dv = i32::from(v0) * a0 + i32::from(v1) * a1;
        }
    }
}

/// Coefficients of OpenCV's `INTER_LINEAR` for one `(src, dst)` size pair.
#[derive(Debug)]
pub(crate) struct ResizeTables {
    pub(crate) key: (u32, u32, u32, u32),
    /// Per output column: byte offsets of the two source pixels.
    pub(crate) x_src: Vec<[usize; 2]>,
    pub(crate) x_w: Vec<[i32; 2]>,
    /// Per output row: the two source rows (clamped into the image).
    pub(crate) y_rows: Vec<[usize; 2]>,
    pub(crate) y_w: Vec<[i32; 2]>,
}

impl ResizeTables {
    /// `key` is `(src_w, src_h, dst_w, dst_h)`.
    pub(crate) fn new(key: (u32, u32, u32, u32)) -> Self {
        let (src_w, src_h, dst_w, dst_h) = key;
        let last_x = src_w as usize - 1;
        let (x_src, x_w) = axis_coefficients(src_w, dst_w)
            .map(|(s, f)| {
                // Columns left of the image: first column; right of it: last
                // column (`xmin` / `xmax` in OpenCV), weights 2048 / 0.
                let (s, f) = if s < 0 {
                    (0, 0.0)
                } else if s as usize >= last_x {
                    (last_x, 0.0)
                } else {
                    (s as usize, f)
                };
                let x1 = (s + 1).min(last_x);
                ([s * 3, x1 * 3], weights(f))
            })
            .unzip();
        let last_y = src_h as usize - 1;
        let (y_rows, y_w) = axis_coefficients(src_h, dst_h)
            .map(|(s, f)| {
                // Rows are clamped, the weights are not.
                let clip = |v: i64| v.clamp(0, last_y as i64) as usize;
                ([clip(s), clip(s + 1)], weights(f))
            })
            .unzip();
        Self { key, x_src, x_w, y_rows, y_w }
    }
}

/// `f = (float)((d + 0.5) * scale - 0.5); s = floor(f); f -= s` for every
/// destination index, `scale = 1 / (dst / src)` as OpenCV computes it.
fn axis_coefficients(src: u32, dst: u32) -> impl Iterator<Item = (i64, f32)> {
    let inv_scale = f64::from(dst) / f64::from(src);
    let scale = 1.0 / inv_scale;
    (0..dst).map(move |d| {
        let f = ((f64::from(d) + 0.5) * scale - 0.5) as f32;
        let s = f.floor();
        (s as i64, f - s)
    })
}

/// `saturate_cast<short>(w * INTER_RESIZE_COEF_SCALE)` of `(1 - f, f)`
/// (`cvRound`: half to even).
fn weights(f: f32) -> [i32; 2] {
    let w = |v: f32| (v * COEF_SCALE).round_ties_even() as i32;
    [w(1.0 - f), w(f)]
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures");

    fn load_rgb(name: &str) -> RgbFrame {
        let path = format!("{FIXTURES}/images/{name}");
        crate::image_io::read_image(std::path::Path::new(&path)).unwrap_or_else(|e| panic!("{e}"))
    }

    fn load_json(path: &str) -> serde_json::Value {
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path}: {e}"));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("parse {path}: {e}"))
    }

    fn load_f32_tensor(path: &str, name: &str) -> (Vec<usize>, Vec<f32>) {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {path}: {e}"));
        let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
        let t = st.tensor(name).expect("tensor");
        assert_eq!(t.dtype(), safetensors::Dtype::F32);
        let data = t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        (t.shape().to_vec(), data)
    }

    fn u(v: &serde_json::Value) -> u32 {
        v.as_u64().expect("unsigned") as u32
    }

    /// (max |diff| * 255, number of differing values)
    fn compare(a: &[f32], b: &[f32]) -> (f32, usize) {
        assert_eq!(a.len(), b.len());
        let mut max = 0.0f32;
        let mut count = 0;
        for (x, y) in a.iter().zip(b) {
            let d = (x - y).abs() * 255.0;
            if d > 1e-3 {
                count += 1;
            }
            max = max.max(d);
        }
        (max, count)
    }

    #[test]
    fn geometry_matches_tiny_fixture() {
        let geo = letterbox_geometry(600, 400, 128, 32, LetterboxMode::MinimalRect).expect("geo");
        assert_eq!(geo.ratio, 0.21333333333333335);
        assert_eq!(geo.new_unpad, (128, 85));
        assert_eq!((geo.pad_left, geo.pad_right), (0, 0));
        assert_eq!((geo.pad_top, geo.pad_bottom), (5, 6));
        assert_eq!((geo.out_width, geo.out_height), (128, 96));
        assert_eq!(geo.input_hw(), (96, 128));
        assert_eq!(geo.orig_hw(), (400, 600));
    }

    #[test]
    fn geometry_matches_full_fixtures() {
        for photo in ["astronaut", "chelsea", "coffee", "grace_hopper"] {
            let j = load_json(&format!("{FIXTURES}/yolov9/full/expected/{photo}.json"));
            let lb = &j["letterbox"];
            let (h, w) = (u(&j["orig_hw"][0]), u(&j["orig_hw"][1]));
            assert_eq!(lb["auto"], true);
            let geo =
                letterbox_geometry(w, h, u(&lb["imgsz"]), u(&lb["stride"]), LetterboxMode::MinimalRect).expect("geo");
            // serde_json (without `float_roundtrip`) may misparse the last ulp.
            let ratio = lb["ratio"].as_f64().expect("ratio");
            assert!((geo.ratio - ratio).abs() <= 4.0 * f64::EPSILON * ratio, "{photo}");
            assert_eq!(geo.new_unpad, (u(&lb["resized_wh"][0]), u(&lb["resized_wh"][1])), "{photo}");
            assert_eq!(geo.pad_top, u(&lb["top"]), "{photo}");
            assert_eq!(geo.pad_bottom, u(&lb["bottom"]), "{photo}");
            assert_eq!(geo.pad_left, u(&lb["left"]), "{photo}");
            assert_eq!(geo.pad_right, u(&lb["right"]), "{photo}");
            assert_eq!(geo.input_hw(), (u(&lb["input_hw"][0]), u(&lb["input_hw"][1])), "{photo}");
            let shape = &j["input_shape"];
            assert_eq!((geo.out_height, geo.out_width), (u(&shape[2]), u(&shape[3])), "{photo}");
        }
    }

    #[test]
    fn geometry_modes_and_rounding() {
        // Square: full imgsz in both directions.
        let g = letterbox_geometry(600, 400, 640, 32, LetterboxMode::Square).expect("geo");
        assert_eq!(g.new_unpad, (640, 427));
        assert_eq!((g.out_width, g.out_height), (640, 640));
        assert_eq!((g.pad_top, g.pad_bottom), (106, 107));
        // Odd minimal padding splits as round(d/2 - 0.1), round(d/2 + 0.1).
        let g = letterbox_geometry(451, 300, 640, 32, LetterboxMode::MinimalRect).expect("geo");
        assert_eq!(g.new_unpad, (640, 426));
        assert_eq!((g.pad_top, g.pad_bottom, g.out_height), (11, 11, 448));
        // Python round is half-to-even: 5 * 0.5 = 2.5 -> 2, 7 * 0.5 = 3.5 -> 4.
        let g = letterbox_geometry(1280, 5, 640, 32, LetterboxMode::MinimalRect).expect("geo");
        assert_eq!(g.new_unpad, (640, 2));
        let g = letterbox_geometry(1280, 7, 640, 32, LetterboxMode::MinimalRect).expect("geo");
        assert_eq!(g.new_unpad, (640, 4));
        // Same size: no resize, no padding.
        let g = letterbox_geometry(640, 480, 640, 32, LetterboxMode::MinimalRect).expect("geo");
        assert_eq!((g.new_unpad, g.out_width, g.out_height), ((640, 480), 640, 480));
        // Errors.
        assert!(letterbox_geometry(0, 10, 640, 32, LetterboxMode::Square).is_err());
        assert!(letterbox_geometry(10, 10, 0, 32, LetterboxMode::Square).is_err());
        assert!(letterbox_geometry(10, 10, 640, 0, LetterboxMode::Square).is_err());
        assert!(matches!(
            letterbox_geometry(4000, 1, 640, 32, LetterboxMode::Square),
            Err(PreprocessError::DegenerateResize { .. })
        ));
    }

    #[test]
    fn frame_validation() {
        assert!(RgbFrame::new(2, 2, vec![0; 12]).is_ok());
        assert!(matches!(
            RgbFrame::new(2, 2, vec![0; 11]),
            Err(PreprocessError::DataLength { expected: 12, actual: 11, .. })
        ));
        assert!(matches!(RgbFrame::new(0, 2, vec![]), Err(PreprocessError::EmptyFrame { .. })));
        let rows: Vec<u8> = (0..12).collect();
        assert_eq!(RgbFrame::from_slice(2, 2, &rows).expect("frame").data[..], rows[..]);
        assert!(matches!(
            RgbFrame::from_slice(2, 2, &rows[..9]),
            Err(PreprocessError::DataLength { expected: 12, actual: 9, .. })
        ));
        let frame = RgbFrame::new(4, 4, vec![7; 48]).expect("frame");
        let geo = letterbox_geometry(8, 4, 8, 4, LetterboxMode::MinimalRect).expect("geo");
        let mut out = Vec::new();
        assert!(matches!(letterbox_into(&frame, &geo, &mut out), Err(PreprocessError::GeometryMismatch(_))));
        let mut bad = letterbox_geometry(4, 4, 8, 4, LetterboxMode::Square).expect("geo");
        bad.pad_left += 1;
        assert!(letterbox_into(&frame, &bad, &mut out).is_err());
    }

    #[test]
    fn letterbox_matches_tiny_fixture_input() {
        let frame = load_rgb("coffee.png");
        let geo = letterbox_geometry(frame.width, frame.height, 128, 32, LetterboxMode::MinimalRect).expect("geo");
        let (shape, expected) =
            load_f32_tensor(&format!("{FIXTURES}/yolov9/tiny/input-coffee-96x128.safetensors"), "input");
        assert_eq!(shape, vec![1, 3, 96, 128]);
        let mut out = vec![1.0; 5]; // reused buffer with stale content
        letterbox_into(&frame, &geo, &mut out).expect("letterbox");
        assert_eq!(out.len(), geo.tensor_len());
        let (max, count) = compare(&out, &expected);
        eprintln!("coffee 128: max |diff|*255 = {max}, differing values = {count} / {}", out.len());
        assert_eq!(count, 0, "bit-exact with the official input");

        // For the record: without the SIMD rounding of OpenCV's vertical pass.
        let mut scalar = Vec::new();
        Letterboxer::new().run(&frame, &geo, &mut scalar, VerticalRounding::Scalar, BAND_ROWS).expect("letterbox");
        let (smax, scount) = compare(&scalar, &expected);
        eprintln!("coffee 128, scalar rounding: max |diff|*255 = {smax}, differing = {scount}");
        assert!(smax <= 1.0 + 1e-3);

        // Reuse: the same Letterboxer gives the same result twice.
        let mut lb = Letterboxer::new();
        let mut again = Vec::new();
        lb.letterbox_into(&frame, &geo, &mut again).expect("letterbox");
        lb.letterbox_into(&frame, &geo, &mut again).expect("letterbox");
        assert_eq!(again, out);
    }

    #[test]
    fn letterbox_matches_full_fixture_statistics() {
        for (photo, file) in [
            ("astronaut", "astronaut.png"),
            ("chelsea", "chelsea.png"),
            ("coffee", "coffee.png"),
            ("grace_hopper", "grace_hopper.jpg"),
        ] {
            let j = load_json(&format!("{FIXTURES}/yolov9/full/expected/{photo}.json"));
            let frame = load_rgb(file);
            let geo = letterbox_geometry(frame.width, frame.height, 640, 32, LetterboxMode::MinimalRect).expect("geo");
            let mut out = Vec::new();
            letterbox_into(&frame, &geo, &mut out).expect("letterbox");
            let stats = &j["input_stats"];
            let sum: f64 = out.iter().map(|&v| f64::from(v)).sum();
            let ref_sum = stats["sum"].as_f64().expect("sum");
            let samples = stats["samples"].as_array().expect("samples");
            let mut max_sample = 0.0f64;
            for s in samples {
                let idx = s["flat_index"].as_u64().expect("index") as usize;
                let v = s["value"].as_f64().expect("value");
                max_sample = max_sample.max((f64::from(out[idx]) - v).abs() * 255.0);
            }
            eprintln!(
                "{photo} 640: sum diff = {:.4} (= {:.2} levels), max sample |diff|*255 = {max_sample:.3} over {}",
                sum - ref_sum,
                (sum - ref_sum) * 255.0,
                samples.len()
            );
            // PNGs are lossless and JPEGs decode exactly like cv2.imread (libjpeg-turbo), so the
            // resize alone decides: exact.
            assert!(max_sample < 1e-3, "{photo}");
            assert!((sum - ref_sum).abs() * 255.0 < 0.5, "{photo}");
        }
    }

    #[test]
    fn same_size_copies_and_pads() {
        let data: Vec<u8> = (0..2 * 3 * 3).map(|v| v as u8 * 10).collect();
        let frame = RgbFrame::new(2, 3, data).expect("frame");
        let geo = letterbox_geometry(2, 3, 3, 2, LetterboxMode::Square).expect("geo");
        assert_eq!(geo.new_unpad, (2, 3));
        assert_eq!((geo.pad_left, geo.pad_right, geo.out_width), (0, 1, 3));
        let mut out = Vec::new();
        letterbox_into(&frame, &geo, &mut out).expect("letterbox");
        let pad = 114.0f32 / 255.0;
        // Channel 0, row 0: pixels 0 and 1, then padding.
        assert_eq!(&out[0..3], &[0.0, 30.0 / 255.0, pad]);
        // Channel 2, row 2.
        assert_eq!(&out[2 * 9 + 6..2 * 9 + 9], &[140.0 / 255.0, 170.0 / 255.0, pad]);
    }

    /// The parallel bands give the values of one band over the whole image, whatever their
    /// height, for a copy, a shrink and an enlargement, with and without side padding, into a
    /// reused buffer holding another size's values.
    #[test]
    fn bands_give_the_values_of_one_band() {
        let frame = |w: u32, h: u32| {
            let data = (0..w * h * 3).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
            RgbFrame::new(w, h, data).expect("frame")
        };
        for (w, h, imgsz, mode) in [
            (640, 360, 640, LetterboxMode::MinimalRect),
            (1920, 1080, 640, LetterboxMode::MinimalRect),
            (300, 500, 320, LetterboxMode::Square),
            (97, 61, 160, LetterboxMode::Square),
        ] {
            let frame = frame(w, h);
            let geo = letterbox_geometry(w, h, imgsz, 32, mode).expect("geo");
            let mut whole = Vec::new();
            Letterboxer::new().run(&frame, &geo, &mut whole, VerticalRounding::OpenCv, usize::MAX).expect("whole");
            for band_rows in [1, 7, BAND_ROWS, 1000] {
                let mut banded = vec![0.5; 3 * 17 * 19];
                Letterboxer::new().run(&frame, &geo, &mut banded, VerticalRounding::OpenCv, band_rows).expect("bands");
                assert!(banded == whole, "{w}x{h} at {imgsz}, bands of {band_rows} rows");
            }
        }
    }

    #[test]
    fn uniform_image_stays_uniform() {
        // Up- and down-scaling of a constant image give the constant back.
        for (w, h, imgsz) in [(7u32, 5u32, 64u32), (300, 200, 64), (33, 97, 160)] {
            let frame = RgbFrame::new(w, h, vec![200; (w * h * 3) as usize]).expect("frame");
            let geo = letterbox_geometry(w, h, imgsz, 32, LetterboxMode::Square).expect("geo");
            let mut out = Vec::new();
            letterbox_into(&frame, &geo, &mut out).expect("letterbox");
            let (nw, nh) = geo.new_unpad;
            let ow = geo.out_width as usize;
            for y in 0..nh as usize {
                for x in 0..nw as usize {
                    let v = out[(geo.pad_top as usize + y) * ow + geo.pad_left as usize + x];
                    let level = (v * 255.0).round();
                    assert!((level - 200.0).abs() <= 1.0, "{w}x{h} at ({x},{y}): {level}");
                }
            }
        }
    }
}
