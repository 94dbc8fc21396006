//! Pooling for f32 tensors on the CPU: AConv / ADown's 2x2 stride-1 average pool, the
//! -inf-padded max pools of ADown and SPPELAN, and the neck's nearest-neighbour upsampling;
//! and concatenation along channels.
//!
//! Why: Candle's CPU pools run one thread through a generic index loop, and PyTorch-style
//! padding (padding never wins the max) costs two concatenations per pool in Candle. Here each
//! output plane is one parallel task over contiguous rows, padding is skipped instead of
//! materialised. Results are identical to Candle's (same summation order, exact 1/4).

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};

use super::cpu_conv::contiguous_f32;
use super::cpu_gemm::{Isa, OutputPart, deinterleave, filled_vec};

/// `avg_pool2d(x, 2, 1, 0)`.
pub(crate) fn avg_pool_2x2_s1(x: &Tensor) -> candle_core::Result<Tensor> {
    x.apply_op1_no_bwd(&Pool::Avg2)
}

/// `max_pool2d(x, k, s, p)` with PyTorch's -inf padding.
pub(crate) fn max_pool(x: &Tensor, k: usize, s: usize, p: usize) -> candle_core::Result<Tensor> {
    x.apply_op1_no_bwd(&Pool::Max { k, s, p })
}

/// Nearest-neighbour upsampling by an integer `scale` (`nn.Upsample(None, scale, "nearest")`).
/// Candle's runs on one thread: 3.7 ms of a gelan-s pass at 640.
pub(crate) fn upsample_nearest(x: &Tensor, scale: usize) -> candle_core::Result<Tensor> {
    x.apply_op1_no_bwd(&Pool::Nearest { scale })
}

/// `CBFuse`: `last` plus every split upsampled (nearest) to its size, summed in the official
/// order (`sum(splits) + last`), in one parallel pass over output planes. Candle's nearest
/// upsampling and additions each ran on one thread and allocated a tensor: in yolov9-e at 640
/// the CBFuse to 64x320x320 (four upsampled terms) took 68 ms. The source pixel of output
/// `(y, x)` is Candle's (and PyTorch's): `min(src - 1, floor(y * src / dst))`.
pub(crate) fn cb_fuse(splits: &[&Tensor], last: &Tensor) -> candle_core::Result<Tensor> {
    let (b, c, h, w) = last.dims4()?;
    let terms: Vec<Tensor> =
        splits.iter().copied().chain([last]).map(Tensor::contiguous).collect::<candle_core::Result<_>>()?;
    let mut sources = Vec::with_capacity(terms.len());
    for t in &terms {
        let (tb, tc, th, tw) = t.dims4()?;
        if (tb, tc) != (b, c) || th == 0 || tw == 0 {
            candle_core::bail!("CBFuse: input {:?} does not match {:?}", t.shape(), last.shape());
        }
        let index = |src: usize, dst: usize| -> Vec<usize> {
            let scale = src as f64 / dst as f64;
            (0..dst).map(|i| ((i as f64 * scale) as usize).min(src - 1)).collect()
        };
        sources.push((t.storage_and_layout(), th, tw, index(th, h), index(tw, w)));
    }
    let mut data = Vec::with_capacity(sources.len());
    for ((storage, layout), ..) in &sources {
        data.push(contiguous_f32(storage, layout)?);
    }
    // Each output row is summed in `o` (in L1), terms in order, then written: the output is
    // never zeroed (see `filled_vec`).
    let out = filled_vec(b * c * h * w, h * w, |plane, mut out| {
        let mut o = vec![0f32; w];
        for oy in 0..h {
            for (i, (src, (_, th, tw, rows, cols))) in data.iter().zip(&sources).enumerate() {
                let row = &src[plane * th * tw..][..th * tw][rows[oy] * tw..][..*tw];
                if i == 0 {
                    o.iter_mut().zip(cols).for_each(|(o, &x)| *o = row[x]);
                } else if *tw == w {
                    o.iter_mut().zip(row).for_each(|(o, v)| *o += v);
                } else {
                    o.iter_mut().zip(cols).for_each(|(o, &x)| *o += row[x]);
                }
            }
            out.push(&o);
        }
    });
    let Some(out) = out else {
        candle_core::bail!("CBFuse: internal error: the output was not completely written");
    };
    Tensor::from_vec(out, (b, c, h, w), last.device())
}

/// `Tensor::cat(parts, 1)`, for 4-D f32 tensors on the CPU as one parallel pass over output
/// planes. Candle's copied on the calling thread while the helpers waited (0.4 ms of a gelan-s
/// pass at 320). Other devices and dtypes go to Candle.
pub(crate) fn cat_channels(parts: &[Tensor]) -> candle_core::Result<Tensor> {
    let ours = |t: &Tensor| t.device().is_cpu() && t.dtype() == DType::F32 && t.rank() == 4;
    let Some(first) = parts.first().filter(|_| parts.iter().all(ours)) else {
        return Tensor::cat(parts, 1);
    };
    let (b, _, h, w) = first.dims4()?;
    let parts = parts.iter().map(Tensor::contiguous).collect::<candle_core::Result<Vec<_>>>()?;
    let mut channels = 0;
    for part in &parts {
        let (pb, pc, ph, pw) = part.dims4()?;
        if (pb, ph, pw) != (b, h, w) {
            candle_core::bail!("concat: parts {:?} and {:?} do not match", first.shape(), part.shape());
        }
        channels += pc;
    }
    let guards: Vec<_> = parts.iter().map(Tensor::storage_and_layout).collect();
    let mut sources = Vec::with_capacity(parts.len());
    for ((storage, layout), part) in guards.iter().zip(&parts) {
        sources.push((contiguous_f32(storage, layout)?, part.dim(1)?));
    }
    let plane = h * w;
    let out = filled_vec(b * channels * plane, plane, |i, mut out| {
        let (image, mut c) = (i / channels, i % channels);
        for &(data, part_channels) in &sources {
            if c < part_channels {
                out.push(&data[(image * part_channels + c) * plane..][..plane]);
                return;
            }
            c -= part_channels;
        }
    });
    let Some(out) = out else {
        candle_core::bail!("concat: internal error: the output was not completely written");
    };
    Tensor::from_vec(out, (b, channels, h, w), &candle_core::Device::Cpu)
}

enum Pool {
    Avg2,
    Max { k: usize, s: usize, p: usize },
    Nearest { scale: usize },
}

impl Pool {
    fn out_size(&self, h: usize, w: usize) -> candle_core::Result<(usize, usize)> {
        match *self {
            Self::Avg2 if h >= 2 && w >= 2 => Ok((h - 1, w - 1)),
            Self::Max { k, s, p } if s > 0 && 2 * p < k && h + 2 * p >= k && w + 2 * p >= k => {
                Ok(((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1))
            }
            Self::Nearest { scale } if scale > 0 => Ok((h * scale, w * scale)),
            _ => candle_core::bail!("pool: input {h}x{w} too small or bad parameters"),
        }
    }

    /// One output plane (`ho` rows of `wo`) from one input plane (`h * w`, rows contiguous),
    /// row by row into `out`. Inlined into [`PlaneOp`], which compiles it for the CPU's widest
    /// vectors.
    #[inline(always)]
    fn plane(&self, src: &[f32], (h, w): (usize, usize), out: &mut OutputPart<'_, '_>, (ho, wo): (usize, usize)) {
        // Each output row is made here (in L1), then written.
        let mut o = vec![0f32; wo];
        match *self {
            Self::Nearest { scale } => {
                // Each input row once; the output rows that repeat it are copies.
                for row in src.chunks_exact(w) {
                    if scale == 2 {
                        o.as_chunks_mut::<2>().0.iter_mut().zip(row).for_each(|(o, &v)| *o = [v, v]);
                    } else {
                        o.chunks_exact_mut(scale).zip(row).for_each(|(o, &v)| o.fill(v));
                    }
                    (0..scale).for_each(|_| out.push(&o));
                }
            }
            Self::Avg2 => {
                // Over slices of exactly `wo` values, so that the loop has no bounds checks and
                // vectorises (indexed as `r0[ox + 1]` it ran one value at a time).
                for oy in 0..ho {
                    let (r0, r1) = (&src[oy * w..][..w], &src[(oy + 1) * w..][..w]);
                    let taps = r0[..wo].iter().zip(&r0[1..]).zip(&r1[..wo]).zip(&r1[1..]);
                    o.iter_mut().zip(taps).for_each(|(v, (((a, b), c), d))| *v = (a + b + c + d) * 0.25);
                    out.push(&o);
                }
            }
            Self::Max { k, s: 1, p } => {
                // Separable: the maximum over each row window, then over k of those rows (2k
                // passes instead of k^2), in contiguous loops that vectorise. SPPELAN's three
                // 5x5 pools took 4 ms of a gelan-s pass as a strided scalar loop.
                let mut rows = vec![f32::NEG_INFINITY; h * wo];
                for (src, dst) in src.chunks_exact(w).zip(rows.chunks_exact_mut(wo)) {
                    for kx in 0..k {
                        // Output column ox reads input column ox + kx - p, when inside the row.
                        let lo = p.saturating_sub(kx).min(wo);
                        let hi = (w + p).saturating_sub(kx).clamp(lo, wo);
                        if lo < hi {
                            let src = &src[lo + kx - p..];
                            dst[lo..hi].iter_mut().zip(src).for_each(|(v, x)| *v = v.max(*x));
                        }
                    }
                }
                column_maxima(&rows, h, (out, &mut o), ho, (k, 1, p));
            }
            Self::Max { k, s, p } => {
                // Separable too, with each padded row split into its `s` column phases (padded
                // column `c` at `phases[c % s][c / s]`), so that every tap of the row maxima
                // reads a contiguous slice: ADown's 3x3 stride-2 pools took 4.4 ms of a gelan-c
                // pass at 320 as a strided scalar loop. Padding stays -inf and never wins.
                let phase_len = (w + 2 * p).div_ceil(s);
                let mut phases = vec![f32::NEG_INFINITY; s * phase_len];
                let mut rows = vec![f32::NEG_INFINITY; h * wo];
                for (src, dst) in src.chunks_exact(w).zip(rows.chunks_exact_mut(wo)) {
                    if s == 2 {
                        // Input column x is padded column x + p: even x go to phase p % 2.
                        let (even, odd) = phases.split_at_mut(phase_len);
                        let (first, second) = if p % 2 == 0 { (even, odd) } else { (odd, even) };
                        deinterleave(src, &mut first[p / 2..], &mut second[p / 2 + p % 2..]);
                    } else {
                        for (x, &v) in src.iter().enumerate() {
                            phases[(x + p) % s * phase_len + (x + p) / s] = v;
                        }
                    }
                    for kx in 0..k {
                        let tap = &phases[kx % s * phase_len + kx / s..][..wo];
                        dst.iter_mut().zip(tap).for_each(|(v, x)| *v = v.max(*x));
                    }
                }
                column_maxima(&rows, h, (out, &mut o), ho, (k, s, p));
            }
        }
    }
}

/// The `ho` output rows, each made in `o` (`wo` wide) and then written to `out`: row `oy` is
/// the maximum over the rows `oy * s + ky - p` (for `ky` in `0..k`, those inside the map) of
/// `rows`, the `h` rows of row maxima.
#[inline(always)]
fn column_maxima(
    rows: &[f32],
    h: usize,
    (out, o): (&mut OutputPart<'_, '_>, &mut [f32]),
    ho: usize,
    (k, s, p): (usize, usize, usize),
) {
    let wo = o.len();
    for oy in 0..ho {
        o.fill(f32::NEG_INFINITY);
        for ky in 0..k {
            let Some(iy) = (oy * s + ky).checked_sub(p).filter(|&iy| iy < h) else { continue };
            o.iter_mut().zip(&rows[iy * wo..][..wo]).for_each(|(v, x)| *v = v.max(*x));
        }
        out.push(o);
    }
}

/// [`Pool::plane`] compiled for the widest SIMD the CPU has (AVX-512 or AVX2 through `pulp`'s
/// runtime dispatch): built for the baseline x86-64, its loops ran 4 values at a time at most.
struct PlaneOp<'a, 'p, 'o> {
    pool: &'a Pool,
    src: &'a [f32],
    h: usize,
    w: usize,
    out: OutputPart<'p, 'o>,
    ho: usize,
    wo: usize,
}

impl pulp::WithSimd for PlaneOp<'_, '_, '_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(mut self, _simd: S) {
        self.pool.plane(self.src, (self.h, self.w), &mut self.out, (self.ho, self.wo));
    }
}

impl CustomOp1 for Pool {
    fn name(&self) -> &'static str {
        "spotter-pool"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("pool: expected f32");
        };
        let (b, c, h, w) = layout.shape().dims4()?;
        let stride = layout.stride();
        if stride[2] != w || stride[3] != 1 {
            candle_core::bail!("pool: rows of the input must be contiguous");
        }
        let (ho, wo) = self.out_size(h, w)?;
        let out = filled_vec(b * c * ho * wo, ho * wo, |i, out| {
            let start = layout.start_offset() + i / c * stride[0] + i % c * stride[1];
            Isa::Native.dispatch(PlaneOp { pool: self, src: &data[start..][..h * w], h, w, out, ho, wo });
        });
        let Some(out) = out else {
            candle_core::bail!("pool: internal error: the output was not completely written");
        };
        Ok((CpuStorage::F32(out), Shape::from((b, c, ho, wo))))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use candle_core::Device;

    use super::*;

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    #[test]
    fn avg_pool_matches_candle() {
        let x = Tensor::randn(0f32, 1., (2, 3, 9, 7), &Device::Cpu).unwrap();
        let want = x.avg_pool2d_with_stride(2, 1).unwrap();
        assert_eq!(max_diff(&avg_pool_2x2_s1(&x).unwrap(), &want), 0.0);
        // A channel slice (ADown pools half of the channels).
        let part = x.narrow(1, 1, 2).unwrap();
        let want = part.contiguous().unwrap().avg_pool2d_with_stride(2, 1).unwrap();
        assert_eq!(max_diff(&avg_pool_2x2_s1(&part).unwrap(), &want), 0.0);
    }

    #[test]
    fn upsampling_matches_candle() {
        let x = Tensor::randn(0f32, 1., (2, 3, 5, 4), &Device::Cpu).unwrap();
        for scale in [1, 2, 3] {
            let want = x.upsample_nearest2d(5 * scale, 4 * scale).unwrap();
            assert_eq!(upsample_nearest(&x, scale).unwrap().dims(), want.dims());
            assert_eq!(max_diff(&upsample_nearest(&x, scale).unwrap(), &want), 0.0, "scale {scale}");
        }
        let part = x.narrow(1, 1, 2).unwrap();
        let want = part.contiguous().unwrap().upsample_nearest2d(10, 8).unwrap();
        assert_eq!(max_diff(&upsample_nearest(&part, 2).unwrap(), &want), 0.0);
    }

    /// Concatenation of parts with different channel counts, a channel slice among them, in
    /// batches; empty maps; mismatched parts are an error.
    #[test]
    fn concatenation_matches_candle() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1., (2, 6, 5, 3), &dev).unwrap();
        let y = Tensor::randn(0f32, 1., (2, 1, 5, 3), &dev).unwrap();
        let slice = x.narrow(1, 2, 3).unwrap();
        let parts = [x.clone(), y.clone(), slice, x.clone()];
        let want = Tensor::cat(&parts, 1).unwrap();
        let ours = cat_channels(&parts).unwrap();
        assert_eq!(ours.dims(), want.dims());
        assert_eq!(max_diff(&ours, &want), 0.0);
        let empty = Tensor::zeros((1, 2, 0, 4), DType::F32, &dev).unwrap();
        assert_eq!(cat_channels(&[empty.clone(), empty]).unwrap().dims(), [1, 4, 0, 4]);
        let other = Tensor::zeros((2, 1, 5, 4), DType::F32, &dev).unwrap();
        assert!(cat_channels(&[x, other]).is_err());
    }

    #[test]
    fn max_pool_matches_padded_candle() {
        let x = Tensor::randn(0f32, 1., (2, 3, 10, 9), &Device::Cpu).unwrap();
        // Windows wider than the map (SPPELAN's 5x5 on a 2x1 map).
        let tiny = Tensor::randn(0f32, 1., (1, 2, 2, 1), &Device::Cpu).unwrap();
        // Even sides, strides 2 and 3 with even and odd padding (each column phase split).
        let even = Tensor::randn(0f32, 1., (1, 2, 8, 6), &Device::Cpu).unwrap();
        let cases = [(3, 2, 1), (5, 1, 2), (2, 2, 0), (3, 1, 1), (9, 1, 4), (4, 1, 1), (5, 1, 0)];
        let more = [(3, 2, 1), (4, 2, 1), (5, 2, 2), (3, 2, 0), (3, 3, 1), (5, 3, 2)];
        let cases = cases.map(|c| (&x, c)).into_iter().chain(more.map(|c| (&even, c))).chain(more.map(|c| (&x, c)));
        for (x, (k, s, p)) in cases.chain([(&tiny, (5, 1, 2)), (&tiny, (3, 1, 1)), (&tiny, (3, 2, 1))]) {
            let (b, c, h, w) = x.dims4().unwrap();
            let rows = Tensor::full(f32::NEG_INFINITY, (b, c, p, w), &Device::Cpu).unwrap();
            let padded = Tensor::cat(&[&rows, x, &rows], 2).unwrap();
            let cols = Tensor::full(f32::NEG_INFINITY, (b, c, h + 2 * p, p), &Device::Cpu).unwrap();
            let padded = Tensor::cat(&[&cols, &padded, &cols], 3).unwrap();
            let want = padded.max_pool2d_with_stride(k, s).unwrap();
            assert_eq!(max_diff(&max_pool(x, k, s, p).unwrap(), &want), 0.0, "{:?} k{k} s{s} p{p}", x.dims());
        }
    }
}
