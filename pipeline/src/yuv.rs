//! Packed RGB rows → planar YUV 4:2:0 (BT.601, limited range: what the exported H.264 says
//! it holds), for the encoder.
//!
//! Why not swscale: its RGB24 → YUV420P conversion (FFmpeg 5.1, no unscaled fast path for
//! RGB24) took 5 ms of CPU per 1920x1080 frame here, a sixth of the sink's work beside x264,
//! and needed the rows copied into an `AVFrame` first. This reads the annotated rows in place.

use ffmpeg_next as ff;

/// Fixed-point BT.601 limited-range coefficients, scaled by 2^16: `[r, g, b]` for Y, Cb, Cr.
/// Each chroma row sums to 0, so greys map to 128 exactly.
const Y: [i32; 3] = [16829, 33039, 6416];
const CB: [i32; 3] = [-9714, -19070, 28784];
const CR: [i32; 3] = [28784, -24103, -4681];

/// Rows converted per plane before going on to the next plane: the band's RGB rows (92 KB
/// at 1920 wide) stay in cache for the three passes.
const BAND_ROWS: usize = 16;

/// Converts the top-left `frame.width()` x `frame.height()` pixels of `rgb` (rows
/// `rgb_stride` bytes apart) into `frame`, a YUV420P frame of even size. Each chroma sample
/// is the mean of its 2x2 block. The caller (the writer, which crops to even sizes and owns
/// the frame) has checked that `rgb` holds that many rows.
pub(crate) fn rgb_to_yuv420(rgb: &[u8], rgb_stride: usize, frame: &mut ff::frame::Video) {
    let (width, height) = (frame.width() as usize, frame.height() as usize);
    let arch = pulp::Arch::new();
    for top in (0..height).step_by(BAND_ROWS) {
        let rows = BAND_ROWS.min(height - top);
        let band = &rgb[top * rgb_stride..];
        // The chroma planes have a row per two rows of pixels.
        for (plane, chroma, first_row) in [(0, None, top), (1, Some(CB), top / 2), (2, Some(CR), top / 2)] {
            let stride = frame.stride(plane);
            let out = &mut frame.data_mut(plane)[first_row * stride..];
            arch.dispatch(Pass { rgb: band, rgb_stride, width, rows, out, out_stride: stride, chroma });
        }
    }
}

/// One plane of a band, compiled for the widest vectors the CPU has (through `pulp`'s runtime
/// dispatch; the loops are plain Rust that the compiler vectorizes).
struct Pass<'a> {
    rgb: &'a [u8],
    rgb_stride: usize,
    width: usize,
    rows: usize,
    out: &'a mut [u8],
    out_stride: usize,
    /// The chroma plane's coefficients; None for luma.
    chroma: Option<[i32; 3]>,
}

impl pulp::WithSimd for Pass<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) {
        let Self { rgb, rgb_stride, width, rows, out, out_stride, chroma: k } = self;
        match k {
            None => luma(rgb, rgb_stride, width, rows, out, out_stride),
            Some(k) => chroma(rgb, rgb_stride, width, rows, out, out_stride, k),
        }
    }
}

#[inline(always)]
fn luma(rgb: &[u8], rgb_stride: usize, width: usize, rows: usize, out: &mut [u8], out_stride: usize) {
    for (src, dst) in rgb.chunks(rgb_stride).zip(out.chunks_mut(out_stride)).take(rows) {
        for (p, y) in src[..3 * width].chunks_exact(3).zip(&mut dst[..width]) {
            *y = luma_of([i32::from(p[0]), i32::from(p[1]), i32::from(p[2])]);
        }
    }
}

/// One chroma plane (coefficients `k`) of `rows` (even) rows of pixels.
#[inline(always)]
fn chroma(rgb: &[u8], rgb_stride: usize, width: usize, rows: usize, out: &mut [u8], out_stride: usize, k: [i32; 3]) {
    for (src, dst) in rgb.chunks(2 * rgb_stride).zip(out.chunks_mut(out_stride)).take(rows / 2) {
        let (top, bottom) = src.split_at(rgb_stride);
        let pairs = top[..3 * width].chunks_exact(6).zip(bottom[..3 * width].chunks_exact(6));
        for ((t, b), c) in pairs.zip(&mut dst[..width / 2]) {
            let sum = |i: usize| i32::from(t[i]) + i32::from(t[i + 3]) + i32::from(b[i]) + i32::from(b[i + 3]);
            *c = chroma_of(k, [sum(0), sum(1), sum(2)]);
        }
    }
}

#[inline(always)]
fn luma_of([r, g, b]: [i32; 3]) -> u8 {
    // At most 16 + 219.5: always a byte.
    ((Y[0] * r + Y[1] * g + Y[2] * b + (16 << 16) + (1 << 15)) >> 16) as u8
}

/// `sum` holds the four pixels' sums of R, G and B (so the result is scaled by 2^18).
#[inline(always)]
fn chroma_of(k: [i32; 3], [r, g, b]: [i32; 3]) -> u8 {
    // Within 128 +- 112.5: always a byte.
    ((k[0] * r + k[1] * g + k[2] * b + (128 << 18) + (1 << 17)) >> 18) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    fn convert(rgb: &[u8], stride: usize, w: usize, h: usize) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        let mut frame = ff::frame::Video::new(ff::format::Pixel::YUV420P, w as u32, h as u32);
        rgb_to_yuv420(rgb, stride, &mut frame);
        let plane = |i: usize, w: usize, h: usize| {
            frame.data(i).chunks(frame.stride(i)).take(h).flat_map(|r| r[..w].to_vec()).collect()
        };
        (plane(0, w, h), plane(1, w / 2, h / 2), plane(2, w / 2, h / 2))
    }

    #[test]
    fn known_colours_take_their_bt601_values() {
        // (RGB, Y, Cb, Cr) from the BT.601 equations, rounded.
        let cases = [
            ([0u8, 0, 0], 16u8, 128u8, 128u8),
            ([255, 255, 255], 235, 128, 128),
            ([128, 128, 128], 126, 128, 128),
            ([255, 0, 0], 81, 90, 240),
            ([0, 255, 0], 145, 54, 34),
            ([0, 0, 255], 41, 240, 110),
        ];
        for (rgb, y, cb, cr) in cases {
            let (w, h) = (4, 2);
            let frame = rgb.repeat(w * h);
            let (ys, us, vs) = convert(&frame, 3 * w, w, h);
            assert!(ys.iter().all(|&v| v == y), "{rgb:?}: Y {ys:?}, want {y}");
            assert_eq!((us[0], vs[0]), (cb, cr), "{rgb:?}");
        }
    }

    /// Chroma is the mean of each 2x2 block; rows are read at the source stride and only the
    /// even part of the picture is converted.
    #[test]
    fn chroma_averages_blocks_and_strides_are_kept() {
        let (w, h, stride) = (6, 4, 6 * 3 + 7);
        let mut rgb = vec![0u8; stride * (h + 1)];
        for y in 0..h {
            for x in 0..w {
                // Left block of each pair of rows white, the rest black.
                let white = x < 2;
                rgb[y * stride + 3 * x..][..3].fill(if white { 255 } else { 0 });
            }
        }
        // Junk in the padding and in the odd row below must not show.
        for row in rgb.chunks_mut(stride) {
            row[3 * w..].fill(77);
        }
        let (ys, us, _) = convert(&rgb, stride, w, h);
        assert_eq!(&ys[..w], &[235, 235, 16, 16, 16, 16]);
        assert_eq!(us, vec![128; 6]);

        // A block of one white and three black pixels: the mean's chroma and each own luma.
        let mut one = [0u8; 12];
        one[..3].copy_from_slice(&[255, 0, 0]);
        let (ys, us, vs) = convert(&one, 6, 2, 2);
        assert_eq!(ys, vec![81, 16, 16, 16]);
        // Mean of red and three blacks: R = 63.75.
        let want = |k: [i32; 3]| (128.0 + f64::from(k[0]) * 63.75 / 65536.0).round() as u8;
        assert_eq!((us[0], vs[0]), (want(CB), want(CR)));
    }

    /// On a smooth picture (where the chroma filters' shapes matter little) every sample is
    /// within one step of swscale's, the converter this one replaced.
    #[test]
    fn agrees_with_swscale_on_a_smooth_picture() {
        use ff::software::scaling;
        let (w, h) = (96usize, 64usize);
        let mut rgb = Vec::with_capacity(w * h * 3);
        for y in 0..h {
            for x in 0..w {
                let r = (x * 255 / w) as u8;
                rgb.extend_from_slice(&[r, (y * 255 / h) as u8, 255 - r / 2]);
            }
        }
        let (ys, us, vs) = convert(&rgb, 3 * w, w, h);

        let mut src = ff::frame::Video::new(ff::format::Pixel::RGB24, w as u32, h as u32);
        let stride = src.stride(0);
        for (row, pixels) in src.data_mut(0).chunks_mut(stride).zip(rgb.chunks(3 * w)) {
            row[..3 * w].copy_from_slice(pixels);
        }
        let (rgb24, yuv420) = (ff::format::Pixel::RGB24, ff::format::Pixel::YUV420P);
        let (fw, fh) = (w as u32, h as u32);
        let mut scaler = scaling::Context::get(rgb24, fw, fh, yuv420, fw, fh, scaling::Flags::BILINEAR).unwrap();
        let mut theirs = ff::frame::Video::empty();
        scaler.run(&src, &mut theirs).unwrap();
        for (plane, ours, pw, ph) in [(0, &ys, w, h), (1, &us, w / 2, h / 2), (2, &vs, w / 2, h / 2)] {
            let stride = theirs.stride(plane);
            let reference = theirs.data(plane).chunks(stride).take(ph).flat_map(|r| r[..pw].to_vec());
            let worst = ours.iter().zip(reference).map(|(a, b)| a.abs_diff(b)).max();
            assert!(worst.is_some_and(|d| d <= 1), "plane {plane}: off by {worst:?}");
        }
    }
}
