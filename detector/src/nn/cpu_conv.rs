//! Convolution fast path for f32 tensors on the CPU.
//!
//! Why: Candle's CPU `conv2d` (0.11) reaches about a third of the two cores' FMA peak on
//! 3x3 kernels and half of it on 1x1 kernels (`BUILD-NOTES.md`, "Candle on this CPU"), and
//! even im2col + its matrix product reached only 40–100 GFLOP/s on these shapes (few output
//! channels, many pixels). Here a convolution is one custom op over the NCHW tensors the
//! network already uses: the weights are packed once at load, and [`cpu_gemm`] gathers the
//! input, multiplies and applies bias, activation and the bottleneck shortcut in one pass
//! (see there).
//!
//! Results equal Candle's `conv2d` up to float summation order. GPU tensors and other
//! dtypes never come here (the caller keeps Candle's `conv2d` for them).
//!
//! [`cpu_gemm`]: super::cpu_gemm

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Shape, Tensor};

use super::cpu_gemm::{self, Input, Isa, PackedWeights};
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
    pub(crate) fn out_size(&self, h: usize, w: usize) -> (usize, usize) {
        let span = self.d * (self.k - 1) + 1;
        ((h + 2 * self.p - span) / self.s + 1, (w + 2 * self.p - span) / self.s + 1)
    }
}

/// A convolution with bias and activation (and optionally a shortcut added after it).
#[derive(Debug, Clone)]
pub(crate) struct CpuConv {
    geo: Geometry,
    weights: PackedWeights,
    bias: Vec<f32>,
    act: Option<Activation>,
}

impl CpuConv {
    /// `weight` is `[c2, c1 / g, k, k]` and `bias` `[c2]` (any shape with c2 elements), both
    /// f32 on the CPU.
    pub fn new(weight: &Tensor, bias: &Tensor, geo: Geometry, act: Option<Activation>) -> candle_core::Result<Self> {
        let depth = geo.c1 / geo.g * geo.k * geo.k;
        let matrix = weight.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        if matrix.len() != geo.c2 * depth {
            candle_core::bail!("conv: {} weights for {geo:?}", matrix.len());
        }
        let weights = PackedWeights::new(&matrix, geo.g, geo.c2 / geo.g, depth);
        let bias = bias.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        if bias.len() != geo.c2 {
            candle_core::bail!("conv: {} biases for {} output channels", bias.len(), geo.c2);
        }
        Ok(Self { geo, weights, bias, act })
    }

    /// Whether `x` can take this path: f32 on the CPU.
    pub fn accepts(x: &Tensor) -> bool {
        x.device().is_cpu() && x.dtype() == DType::F32
    }

    /// `act(conv(x) + bias)`, plus `residual` (same shape as the output) when given: the
    /// shortcut of a bottleneck is added in the same pass as the activation.
    pub fn forward(&self, x: &Tensor, residual: Option<&Tensor>) -> candle_core::Result<Tensor> {
        // The kernel reads whole rows and takes any plane and image strides (channel slices of
        // a larger tensor are read in place); anything else is made contiguous first.
        let rows_contiguous = x.rank() == 4 && x.stride()[3] == 1 && x.stride()[2] == x.dims()[3];
        let x = if rows_contiguous { x.clone() } else { x.contiguous()? };
        let op = ConvOp { conv: self, isa: Isa::Native };
        match residual {
            None => x.apply_op1_no_bwd(&op),
            Some(r) => x.apply_op2_no_bwd(&r.contiguous()?, &op),
        }
    }

    /// Runs the kernel on one batch; `residual` is contiguous with the output's shape.
    fn run(
        &self,
        isa: Isa,
        x: &CpuStorage,
        layout: &Layout,
        residual: Option<&[f32]>,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, c, h, w) = layout.shape().dims4()?;
        if c != self.geo.c1 {
            candle_core::bail!("conv: expected {} input channels, got {c}", self.geo.c1);
        }
        let stride = layout.stride();
        if stride[2] != w || stride[3] != 1 {
            candle_core::bail!("conv: rows of the input must be contiguous");
        }
        let (ho, wo) = self.geo.out_size(h, w);
        let shape = Shape::from((b, self.geo.c2, ho, wo));
        if residual.is_some_and(|r| r.len() != shape.elem_count()) {
            candle_core::bail!("conv: residual does not match the output {shape:?}");
        }
        let input = Input {
            data: f32_data(x)?,
            base: layout.start_offset(),
            image_stride: stride[0],
            plane_stride: stride[1],
            h,
            w,
        };
        let mut out = vec![0f32; shape.elem_count()];
        cpu_gemm::conv(isa, input, b, self.geo, &self.weights, &self.bias, self.act, residual, &mut out);
        Ok((CpuStorage::F32(out), shape))
    }
}

/// [`CpuConv`] as a Candle op, run with a given SIMD flavour.
struct ConvOp<'a> {
    conv: &'a CpuConv,
    isa: Isa,
}

impl CustomOp1 for ConvOp<'_> {
    fn name(&self) -> &'static str {
        "spotter-conv"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        self.conv.run(self.isa, storage, layout, None)
    }
}

impl CustomOp2 for ConvOp<'_> {
    fn name(&self) -> &'static str {
        "spotter-conv-add"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let Some((start, end)) = l2.contiguous_offsets() else {
            candle_core::bail!("conv: the residual must be contiguous");
        };
        self.conv.run(self.isa, s1, l1, Some(&f32_data(s2)?[start..end]))
    }
}

/// The f32 data of a CPU storage.
fn f32_data(storage: &CpuStorage) -> candle_core::Result<&[f32]> {
    match storage {
        CpuStorage::F32(v) => Ok(v),
        other => candle_core::bail!("cpu conv: expected f32, got {:?}", other.dtype()),
    }
}

/// `row = act(row + b)`, inlined into the SIMD-dispatched kernel so that it vectorises.
#[inline(always)]
pub(crate) fn bias_act(row: &mut [f32], b: f32, act: Option<Activation>) {
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
            // Several depth blocks, a partial channel panel, partial pixel panels.
            (40, 20, 3, 1, 1, 1, 23, 29),
            (16, 8, 3, 2, 1, 1, 33, 31),
            (64, 36, 1, 1, 0, 4, 19, 21),
            (24, 200, 3, 1, 1, 1, 4, 5),
        ] {
            let x = Tensor::randn(0f32, 1., (2, c1, h, w), &dev).unwrap();
            let wt = Tensor::randn(0f32, 0.3, (c2, c1 / g, k, k), &dev).unwrap();
            let b = Tensor::randn(0f32, 1., c2, &dev).unwrap();
            let geo = Geometry { c1, c2, k, s, p, d: 1, g };
            for (act, isa) in [
                (Some(Activation::Silu), Isa::Native),
                (None, Isa::Native),
                (Some(Activation::LeakyRelu(0.1)), Isa::Native),
                (Some(Activation::Silu), Isa::Avx2),
                (Some(Activation::Silu), Isa::Scalar),
            ] {
                let conv = CpuConv::new(&wt, &b, geo, act).unwrap();
                let ours = x.apply_op1_no_bwd(&ConvOp { conv: &conv, isa }).unwrap();
                let want =
                    x.conv2d(&wt, p, s, 1, g).unwrap().broadcast_add(&b.reshape((1, c2, 1, 1)).unwrap()).unwrap();
                let want = match act {
                    Some(Activation::Silu) => candle_nn::Activation::Silu.forward(&want).unwrap(),
                    Some(Activation::LeakyRelu(_)) => candle_nn::Activation::LeakyRelu(0.1).forward(&want).unwrap(),
                    _ => want,
                };
                let diff = (ours - &want).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap();
                let diff = diff.to_scalar::<f32>().unwrap();
                assert!(diff < 1e-4, "{c1}->{c2} k{k} s{s} g{g} {act:?} {isa:?}: max diff {diff}");
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

    /// An input whose rows are not contiguous (here a transposed one) is copied first.
    #[test]
    fn takes_inputs_with_any_layout() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1., (1, 8, 7, 6), &dev).unwrap();
        let xt = x.transpose(2, 3).unwrap();
        let wt = Tensor::randn(0f32, 0.3, (4, 8, 3, 3), &dev).unwrap();
        let b = Tensor::zeros(4, DType::F32, &dev).unwrap();
        let geo = Geometry { c1: 8, c2: 4, k: 3, s: 1, p: 1, d: 1, g: 1 };
        let ours = CpuConv::new(&wt, &b, geo, None).unwrap().forward(&xt, None).unwrap();
        let want = xt.contiguous().unwrap().conv2d(&wt, 1, 1, 1, 1).unwrap();
        let diff = (ours - want).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() < 1e-5);
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
