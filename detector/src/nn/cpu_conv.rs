//! Convolution fast path for f32 tensors on the CPU.
//!
//! Why: Candle's CPU `conv2d` (0.11) reaches about a third of the two cores' FMA peak on
//! 3x3 kernels and half of it on 1x1 kernels, while its matrix product reaches ~88 %
//! (`BUILD-NOTES.md`, "Candle on this CPU"). Its 3x3 path converts the NCHW input to NHWC,
//! gathers im2col tiles element by element and scatters the result back; the 1x1 path copies
//! the input element by element before the GEMM. Here a convolution is one matrix product in
//! the layout the network already uses, with no transposes:
//!
//! ```text
//! y[c2, Ho*Wo] = W[c2, c1*k*k] @ col[c1*k*k, Ho*Wo]     (per image and group)
//! ```
//!
//! - 1x1, stride 1: `col` is the input itself (an NCHW image is a `[c1, H*W]` matrix), no copy.
//! - other kernels: `col` is built by [`Im2Col`], row by row, each row a shifted copy of one
//!   input plane (plain `memcpy` of row segments for stride 1), in parallel, into a buffer
//!   reused across layers and frames.
//! - the GEMM is Candle's own `matmul` (the `gemm` crate, threaded with rayon).
//! - bias and activation are then applied in one pass over the output, in place, with a
//!   vectorisable SiLU ([`BiasAct`]), compiled for the CPU's widest vectors through `pulp`'s
//!   runtime dispatch (safe; AVX-512 or AVX2 where present).
//!
//! Results equal Candle's `conv2d` up to float summation order. GPU tensors and other
//! dtypes never come here (the caller keeps Candle's `conv2d` for them).

use std::cell::RefCell;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, DType, Device, InplaceOp1, InplaceOp2, Layout, Tensor};
use rayon::prelude::*;

use crate::spec::Activation;

/// Geometry of a convolution, as the fast path needs it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Geometry {
    pub c1: usize,
    pub c2: usize,
    pub k: usize,
    pub s: usize,
    pub p: usize,
    pub d: usize,
    pub g: usize,
}

impl Geometry {
    fn out_size(&self, h: usize, w: usize) -> (usize, usize) {
        let span = self.d * (self.k - 1) + 1;
        ((h + 2 * self.p - span) / self.s + 1, (w + 2 * self.p - span) / self.s + 1)
    }

    /// Whether the input already is the GEMM's right-hand side.
    fn is_pointwise(&self) -> bool {
        self.k == 1 && self.s == 1 && self.p == 0
    }
}

/// A convolution with bias and activation, run as im2col + GEMM + fused epilogue.
#[derive(Debug, Clone)]
pub(crate) struct CpuConv {
    geo: Geometry,
    /// The weights as `[groups, c2 / groups, c1 / groups * k * k]` (a view of the 4-D weight).
    matrix: Tensor,
    bias: Vec<f32>,
    act: Option<Activation>,
}

impl CpuConv {
    /// `weight` is `[c2, c1 / g, k, k]` and `bias` `[c2]` (any shape with c2 elements), both
    /// f32 on the CPU.
    pub fn new(weight: &Tensor, bias: &Tensor, geo: Geometry, act: Option<Activation>) -> candle_core::Result<Self> {
        let per_group = geo.c1 / geo.g * geo.k * geo.k;
        let matrix = weight.contiguous()?.reshape((geo.g, geo.c2 / geo.g, per_group))?;
        let bias = bias.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        Ok(Self { geo, matrix, bias, act })
    }

    /// Whether `x` can take this path: f32 on the CPU.
    pub fn accepts(x: &Tensor) -> bool {
        x.device().is_cpu() && x.dtype() == DType::F32
    }

    /// `act(conv(x) + bias)`, plus `residual` (same shape as the output) when given: the
    /// shortcut of a bottleneck is added in the same pass as the activation.
    pub fn forward(&self, x: &Tensor, residual: Option<&Tensor>) -> candle_core::Result<Tensor> {
        let Geometry { c1, c2, g, k, .. } = self.geo;
        let (b, c, h, w) = x.dims4()?;
        if c != c1 {
            candle_core::bail!("conv: expected {c1} input channels, got {c}");
        }
        let (ho, wo) = self.geo.out_size(h, w);
        let mut images = Vec::with_capacity(b);
        for i in 0..b {
            let xi = if b == 1 { x.clone() } else { x.narrow(0, i, 1)? };
            let col = if self.geo.is_pointwise() {
                // A contiguous NCHW image (also a channel slice of one) is already [c1, H*W].
                let xi = if xi.is_contiguous() { xi } else { xi.contiguous()? };
                xi.reshape((g, c1 / g, h * w))?
            } else {
                let len = c1 * k * k * ho * wo;
                let scratch = scratch(len)?;
                scratch.inplace_op2(&xi, &Im2Col(self.geo))?;
                scratch.narrow(0, 0, len)?.reshape((g, c1 / g * k * k, ho * wo))?
            };
            let y = self.matrix.matmul(&col)?.reshape((1, c2, ho, wo))?;
            let epilogue = BiasAct { bias: &self.bias, act: self.act };
            match residual {
                None => y.inplace_op1(&epilogue)?,
                Some(r) => {
                    let ri = if b == 1 { r.clone() } else { r.narrow(0, i, 1)? };
                    let ri = if ri.is_contiguous() { ri } else { ri.contiguous()? };
                    if ri.dims() != y.dims() {
                        candle_core::bail!("conv: residual of shape {:?} for an output of {:?}", ri.dims(), y.dims());
                    }
                    y.inplace_op2(&ri, &epilogue)?
                }
            }
            images.push(y);
        }
        if b == 1 {
            images.pop().ok_or_else(|| candle_core::Error::Msg("empty batch".into()))
        } else {
            Tensor::cat(&images, 0)
        }
    }
}

thread_local! {
    /// The im2col matrix of the current convolution, reused by every convolution and frame on
    /// this thread (it grows to the largest one and stays): no allocation or page faults per
    /// layer, and no zero-filling since [`Im2Col`] writes every element it exposes.
    static SCRATCH: RefCell<Option<Tensor>> = const { RefCell::new(None) };
}

/// A 1-D f32 tensor of at least `len` elements from this thread's scratch.
fn scratch(len: usize) -> candle_core::Result<Tensor> {
    SCRATCH.with(|cell| {
        let mut slot = cell.borrow_mut();
        match slot.as_ref() {
            Some(t) if t.elem_count() >= len => Ok(t.clone()),
            _ => {
                // Drop the old buffer first so two never coexist.
                *slot = None;
                let t = Tensor::zeros(len, DType::F32, &Device::Cpu)?;
                *slot = Some(t.clone());
                Ok(t)
            }
        }
    })
}

/// The f32 data of a CPU storage.
fn f32_data(storage: &CpuStorage) -> candle_core::Result<&[f32]> {
    match storage {
        CpuStorage::F32(v) => Ok(v),
        other => candle_core::bail!("cpu conv: expected f32, got {:?}", other.dtype()),
    }
}

/// im2col of one image `[1, c1, H, W]` into the first `c1 * k * k * Ho * Wo` elements of a
/// 1-D buffer, as a `[c1 * k * k, Ho * Wo]` matrix: row `(ci, ky, kx)` holds input plane `ci`
/// shifted by the kernel offset `(ky, kx)`, zero where it reads padding.
struct Im2Col(Geometry);

impl InplaceOp2 for Im2Col {
    fn name(&self) -> &'static str {
        "spotter-im2col"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<()> {
        let Geometry { k, s, p, d, .. } = self.0;
        let data = f32_data(storage)?;
        let CpuStorage::F32(col) = dst else {
            candle_core::bail!("im2col: expected an f32 buffer, got {:?}", dst.dtype());
        };
        let (_, c1, h, w) = layout.shape().dims4()?;
        let stride = layout.stride();
        if stride[2] != w || stride[3] != 1 {
            candle_core::bail!("im2col: rows of the input must be contiguous");
        }
        let (plane_stride, base) = (stride[1], layout.start_offset());
        let (ho, wo) = self.0.out_size(h, w);
        let n = ho * wo;
        let Some(col) = dst_l.contiguous_offsets().and_then(|(start, end)| col.get_mut(start..end)) else {
            candle_core::bail!("im2col: the buffer must be contiguous");
        };
        let Some(col) = col.get_mut(..c1 * k * k * n) else {
            candle_core::bail!("im2col: buffer of {} for {} values", col.len(), c1 * k * k * n);
        };
        let arch = pulp::Arch::new();
        col.par_chunks_mut(n).enumerate().for_each(|(row, dst)| {
            let (ci, ky, kx) = (row / (k * k), row / k % k, row % k);
            let plane = &data[base + ci * plane_stride..][..h * w];
            // Input column of output column `ox` is `ox * s + off`.
            let off = (kx * d) as isize - p as isize;
            for (oy, out) in dst.chunks_exact_mut(wo).enumerate() {
                let iy = (oy * s + ky * d) as isize - p as isize;
                if iy < 0 || iy >= h as isize {
                    out.fill(0.0);
                    continue;
                }
                let src = &plane[iy as usize * w..][..w];
                // Valid output columns: 0 <= ox * s + off < w.
                let lo = ((-off).max(0) as usize).div_ceil(s).min(wo);
                let hi = ((w as isize - off).max(0) as usize).div_ceil(s).clamp(lo, wo);
                out[..lo].fill(0.0);
                out[hi..].fill(0.0);
                let start = (lo * s) as isize + off;
                let src = &src[start as usize..];
                if s == 1 {
                    out[lo..hi].copy_from_slice(&src[..hi - lo]);
                } else {
                    arch.dispatch(Gather { out: &mut out[lo..hi], src, s });
                }
            }
        });
        Ok(())
    }
}

/// `out[i] = src[i * s]` (strided convolutions' im2col), in whole `s`-element chunks so that
/// it compiles to vector shuffles under `pulp`'s dispatch.
struct Gather<'a> {
    out: &'a mut [f32],
    src: &'a [f32],
    s: usize,
}

impl pulp::WithSimd for Gather<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) {
        let Gather { out, src, s } = self;
        let whole = out.len().min(src.len() / s);
        let (head, tail) = out.split_at_mut(whole);
        if s == 2 {
            head.iter_mut().zip(src.chunks_exact(2)).for_each(|(o, c)| *o = c[0]);
        } else {
            head.iter_mut().zip(src.chunks_exact(s)).for_each(|(o, c)| *o = c[0]);
        }
        for (j, o) in tail.iter_mut().enumerate() {
            *o = src[(whole + j) * s];
        }
    }
}

/// In place on a contiguous `[c2, N]` (or `[groups, c2 / groups, N]`) GEMM output:
/// `y = act(y + bias[c])` per output channel `c` (InplaceOp1), then `+ residual` (InplaceOp2).
struct BiasAct<'a> {
    bias: &'a [f32],
    act: Option<Activation>,
}

impl BiasAct<'_> {
    fn run(&self, storage: &mut CpuStorage, layout: &Layout, residual: Option<&[f32]>) -> candle_core::Result<()> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("bias-act: expected f32, got {:?}", storage.dtype());
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("bias-act: the output must be contiguous");
        };
        let data = &mut data[start..end];
        let n = data.len() / self.bias.len().max(1);
        if n * self.bias.len() != data.len() || residual.is_some_and(|r| r.len() != data.len()) {
            candle_core::bail!("bias-act: {} values for {} channels", data.len(), self.bias.len());
        }
        let act = self.act;
        let arch = pulp::Arch::new();
        let rows = data.par_chunks_mut(n).zip(self.bias.par_iter());
        match residual {
            None => rows.for_each(|(row, &b)| arch.dispatch(RowBiasAct { row, b, act, residual: None })),
            Some(r) => rows
                .zip(r.par_chunks(n))
                .for_each(|((row, &b), r)| arch.dispatch(RowBiasAct { row, b, act, residual: Some(r) })),
        }
        Ok(())
    }
}

impl InplaceOp1 for BiasAct<'_> {
    fn name(&self) -> &'static str {
        "spotter-bias-act"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        self.run(storage, layout, None)
    }
}

impl InplaceOp2 for BiasAct<'_> {
    fn name(&self) -> &'static str {
        "spotter-bias-act-add"
    }

    fn cpu_fwd(&self, s1: &mut CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<()> {
        let Some((start, end)) = l2.contiguous_offsets() else {
            candle_core::bail!("bias-act: the residual must be contiguous");
        };
        self.run(s1, l1, Some(&f32_data(s2)?[start..end]))
    }
}

/// One row of [`BiasAct`], run through `pulp::Arch::dispatch` so that the loop is compiled
/// (inlined) for the widest vectors the CPU has.
struct RowBiasAct<'a> {
    row: &'a mut [f32],
    b: f32,
    act: Option<Activation>,
    residual: Option<&'a [f32]>,
}

impl pulp::WithSimd for RowBiasAct<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) {
        bias_act(self.row, self.b, self.act);
        if let Some(r) = self.residual {
            self.row.iter_mut().zip(r).for_each(|(v, r)| *v += r);
        }
    }
}

#[inline(always)]
fn bias_act(row: &mut [f32], b: f32, act: Option<Activation>) {
    match act {
        None | Some(Activation::Identity) => row.iter_mut().for_each(|v| *v += b),
        Some(Activation::Silu) => row.iter_mut().for_each(|v| *v = silu(*v + b)),
        Some(Activation::Relu) => row.iter_mut().for_each(|v| *v = (*v + b).max(0.0)),
        Some(Activation::LeakyRelu(slope)) => {
            let slope = slope as f32;
            row.iter_mut().for_each(|v| {
                let y = *v + b;
                *v = y.max(0.0) + y.min(0.0) * slope;
            })
        }
        Some(Activation::Hardswish) => row.iter_mut().for_each(|v| {
            let y = *v + b;
            *v = y * ((y + 3.0).clamp(0.0, 6.0) / 6.0);
        }),
    }
}

/// `x * sigmoid(x)` with [`exp`] below: branch-free, so loops over it vectorise.
#[inline(always)]
fn silu(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

/// `e^x` to about 1 ulp for |x| < 87 (saturating beyond), branch-free: `x = n ln2 + r` with
/// |r| <= ln2 / 2, a degree-7 Taylor polynomial for `e^r`, and `2^n` built from its bits.
/// Only float and wrapping integer arithmetic (no saturating `as` casts), so it vectorises.
#[inline(always)]
fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding 1.5 * 2^23 rounds to the nearest integer n and leaves n in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    let two_n = (t.to_bits().wrapping_sub(ROUND.to_bits()).wrapping_add(127)) << 23;
    p * f32::from_bits(two_n)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use candle_core::{Device, Module};

    use super::*;

    #[test]
    fn exp_is_accurate() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = (x as f64).exp();
            worst = worst.max(((exp(x) as f64 - want) / want).abs());
            x += 0.013;
        }
        assert!(worst < 5e-7, "relative error {worst}");
        assert_eq!(exp(-1000.0), exp(-87.0));
        assert!(silu(-200.0).abs() < 1e-30 && silu(200.0) == 200.0);
    }

    /// Every geometry the models use, against Candle's conv2d + bias + SiLU.
    #[test]
    fn matches_candle_conv2d() {
        let dev = Device::Cpu;
        for &(c1, c2, k, s, p, g, h, w) in &[
            (8, 16, 3, 1, 1, 1, 9, 7),
            (8, 16, 3, 2, 1, 1, 9, 7),
            (8, 16, 1, 1, 0, 1, 5, 6),
            (8, 12, 1, 1, 0, 4, 5, 6),
            (8, 16, 3, 1, 1, 4, 6, 5),
            (3, 8, 3, 2, 1, 1, 16, 16),
            (6, 4, 1, 2, 0, 1, 8, 8),
            (4, 4, 5, 1, 2, 1, 7, 7),
        ] {
            let x = Tensor::randn(0f32, 1., (2, c1, h, w), &dev).unwrap();
            let wt = Tensor::randn(0f32, 0.3, (c2, c1 / g, k, k), &dev).unwrap();
            let b = Tensor::randn(0f32, 1., c2, &dev).unwrap();
            let geo = Geometry { c1, c2, k, s, p, d: 1, g };
            for act in [Some(Activation::Silu), None, Some(Activation::LeakyRelu(0.1))] {
                let conv = CpuConv::new(&wt, &b, geo, act).unwrap();
                let ours = conv.forward(&x, None).unwrap();
                let want =
                    x.conv2d(&wt, p, s, 1, g).unwrap().broadcast_add(&b.reshape((1, c2, 1, 1)).unwrap()).unwrap();
                let want = match act {
                    Some(Activation::Silu) => candle_nn::Activation::Silu.forward(&want).unwrap(),
                    Some(Activation::LeakyRelu(_)) => candle_nn::Activation::LeakyRelu(0.1).forward(&want).unwrap(),
                    _ => want,
                };
                let diff = (ours - &want).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap();
                let diff = diff.to_scalar::<f32>().unwrap();
                assert!(diff < 1e-4, "{c1}->{c2} k{k} s{s} g{g} {act:?}: max diff {diff}");
            }
        }
    }

    /// The bottleneck shortcut added in the epilogue.
    #[test]
    fn adds_the_residual() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1., (2, 8, 6, 7), &dev).unwrap();
        let wt = Tensor::randn(0f32, 0.3, (8, 8, 3, 3), &dev).unwrap();
        let b = Tensor::randn(0f32, 1., 8, &dev).unwrap();
        let geo = Geometry { c1: 8, c2: 8, k: 3, s: 1, p: 1, d: 1, g: 1 };
        let conv = CpuConv::new(&wt, &b, geo, Some(Activation::Silu)).unwrap();
        let ours = conv.forward(&x, Some(&x)).unwrap();
        let want = (conv.forward(&x, None).unwrap() + &x).unwrap();
        let diff = (ours - want).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() < 1e-6);
    }

    /// A channel slice of a tensor (what `chunk` gives the ELAN branches) is read in place.
    #[test]
    fn reads_channel_slices() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1., (1, 16, 6, 6), &dev).unwrap();
        let part = x.narrow(1, 8, 8).unwrap();
        for k in [1, 3] {
            let wt = Tensor::randn(0f32, 0.3, (4, 8, k, k), &dev).unwrap();
            let b = Tensor::zeros(4, DType::F32, &dev).unwrap();
            let geo = Geometry { c1: 8, c2: 4, k, s: 1, p: k / 2, d: 1, g: 1 };
            let ours = CpuConv::new(&wt, &b, geo, None).unwrap().forward(&part, None).unwrap();
            let want = part.contiguous().unwrap().conv2d(&wt, k / 2, 1, 1, 1).unwrap();
            let diff = (ours - want).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap();
            assert!(diff.to_scalar::<f32>().unwrap() < 1e-5);
        }
    }
}
