//! Convolution fast path for f32 tensors on the CPU.
//!
//! Why: Candle's CPU `conv2d` (0.11) reaches about a third of the two cores' FMA peak on
//! 3x3 kernels and half of it on 1x1 kernels (`BUILD-NOTES.md`, "Candle on this CPU"), and
//! even im2col + its matrix product reached only 40–100 GFLOP/s on these shapes (few output
//! channels, many pixels). Here a convolution is one custom op over the NCHW tensors the
//! network already uses: the weights are packed once at load, and [`cpu_gemm`] gathers the
//! input, multiplies and applies bias, activation and the bottleneck shortcut in one pass
//! (see there). 3x3 stride-1 convolutions (most of these models' work) go through
//! [`cpu_winograd`] instead, with 2.25x fewer multiply-adds, on the same register kernel.
//! Other convolutions onto small maps (the deep stride-2 layers) go through [`cpu_lanes`],
//! whose tiles put output channels rather than pixels on the vector lanes.
//!
//! Results equal Candle's `conv2d` up to float rounding (summation order, and for Winograd
//! the transforms). GPU tensors and other dtypes never come here (the caller keeps Candle's
//! `conv2d` for them).
//!
//! [`cpu_gemm`]: super::cpu_gemm
//! [`cpu_winograd`]: super::cpu_winograd
//! [`cpu_lanes`]: super::cpu_lanes

use std::sync::OnceLock;

use candle_core::{CpuStorage, DType, Device, Layout, Shape, Storage, Tensor};
use pulp::Simd;

use super::cpu_gemm::{self, Input, Isa, PackedWeights, Part};
use super::cpu_lanes::{self, LaneWeights};
use super::cpu_winograd::{self, WinogradWeights};
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
    weights: Packed,
    bias: Vec<f32>,
    act: Option<Activation>,
}

/// Whether a convolution may take [`cpu_lanes`] where it suits (tests also run the direct path
/// on those maps).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Auto,
    #[cfg(test)]
    NoLanes,
}

/// The weights, packed for the path the convolution takes.
#[derive(Debug, Clone)]
enum Packed {
    /// [`cpu_gemm`]'s direct convolution, and for small maps [`cpu_lanes`] (its weights
    /// repacked the first time a map needs them).
    Direct(PackedWeights, OnceLock<LaneWeights>),
    /// [`cpu_winograd`]: 3x3, stride 1, padding 1, no groups or dilation. On these models'
    /// layers (10x10 to 160x160) it took 0.6-0.8x the direct path's time at 48 to 256
    /// channels and about 0.9x at 32.
    Winograd(WinogradWeights),
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
        let Geometry { c1, c2, k, s, p, d, g } = geo;
        let weights = if (k, s, p, d, g) == (3, 1, 1, 1, 1) {
            Packed::Winograd(WinogradWeights::new(&matrix, c1, c2))
        } else {
            Packed::Direct(PackedWeights::new(&matrix, g, c2 / g, depth), OnceLock::new())
        };
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
    /// shortcut of a bottleneck is added in the same pass as the activation. `x` is given as
    /// channel parts (what `cat` along channels would join), read in place.
    pub fn forward(&self, x: &[&Tensor], residual: Option<&Tensor>) -> candle_core::Result<Tensor> {
        self.run(Isa::Native, Route::Auto, x, residual)
    }

    fn run(&self, isa: Isa, route: Route, x: &[&Tensor], residual: Option<&Tensor>) -> candle_core::Result<Tensor> {
        let Some(first) = x.first() else {
            candle_core::bail!("conv: no input");
        };
        let (b, _, h, w) = first.dims4()?;
        let mut c = 0;
        // The kernel reads whole rows and takes any plane and image strides (channel slices of
        // a larger tensor are read in place); anything else is made contiguous first.
        let mut parts = Vec::with_capacity(x.len());
        for &part in x {
            let (pb, pc, ph, pw) = part.dims4()?;
            if (pb, ph, pw) != (b, h, w) || !Self::accepts(part) {
                candle_core::bail!("conv: input parts {:?} and {:?} do not match", first.shape(), part.shape());
            }
            c += pc;
            let rows_contiguous = part.stride()[3] == 1 && part.stride()[2] == pw;
            parts.push(if rows_contiguous { part.clone() } else { part.contiguous()? });
        }
        if c != self.geo.c1 {
            candle_core::bail!("conv: expected {} input channels, got {c}", self.geo.c1);
        }
        // Both paths cut the output into rows and tiles: an empty map has none.
        let span = self.geo.d * (self.geo.k - 1) + 1;
        if h.min(w) == 0 || h.min(w) + 2 * self.geo.p < span {
            candle_core::bail!("conv: a {h}x{w} input is smaller than the {}x{} kernel", self.geo.k, self.geo.k);
        }
        let (ho, wo) = self.geo.out_size(h, w);
        let shape = Shape::from((b, self.geo.c2, ho, wo));
        let residual = residual.map(Tensor::contiguous).transpose()?;
        if residual.as_ref().is_some_and(|r| r.shape() != &shape) {
            candle_core::bail!("conv: residual does not match the output {shape:?}");
        }

        let guards: Vec<_> = parts.iter().map(Tensor::storage_and_layout).collect();
        let parts = guards
            .iter()
            .map(|(storage, layout)| {
                Ok(Part {
                    data: f32_data(storage)?,
                    base: layout.start_offset(),
                    image_stride: layout.stride()[0],
                    plane_stride: layout.stride()[1],
                    channels: layout.dims()[1],
                })
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let residual_guard = residual.as_ref().map(Tensor::storage_and_layout);
        let residual = match &residual_guard {
            Some((storage, layout)) => Some(contiguous_f32(storage, layout)?),
            None => None,
        };
        let input = Input { parts: &parts, h, w };
        // The output is written once, by the tasks, and never zeroed (see `cpu_gemm::Filler`).
        let n = shape.elem_count();
        let mut out = Vec::with_capacity(n);
        let spare = &mut out.spare_capacity_mut()[..n];
        let filled = match &self.weights {
            Packed::Direct(w, lanes) if route == Route::Auto && cpu_lanes::suits(self.geo, ho, wo) => {
                let lanes = lanes.get_or_init(|| LaneWeights::new(w));
                cpu_lanes::conv(isa, input, b, self.geo, lanes, &self.bias, self.act, residual, spare)
            }
            Packed::Direct(w, _) => cpu_gemm::conv(isa, input, b, self.geo, w, &self.bias, self.act, residual, spare),
            Packed::Winograd(w) => cpu_winograd::conv(isa, input, b, w, &self.bias, self.act, residual, spare),
        };
        if !filled {
            candle_core::bail!("conv: internal error: the output {shape:?} was not completely written");
        }
        // SAFETY: `n` is within the capacity, and the first `n` values of the spare capacity are
        // initialised: the convolution cut them into disjoint `Filler`s that cover all of them,
        // each filled from front to back by `Filler::push` (which writes every value it takes
        // off the front, with `MaybeUninit::write*`), and it reported that every `Filler` was
        // full.
        #[allow(unsafe_code)]
        unsafe {
            out.set_len(n)
        };
        Tensor::from_vec(out, shape, &Device::Cpu)
    }
}

/// The f32 values of a contiguous CPU tensor, from its storage and layout.
pub(crate) fn contiguous_f32<'a>(storage: &'a Storage, layout: &Layout) -> candle_core::Result<&'a [f32]> {
    Ok(&f32_data(storage)?[layout.start_offset()..][..layout.shape().elem_count()])
}

/// The f32 data of a CPU storage.
pub(crate) fn f32_data(storage: &Storage) -> candle_core::Result<&[f32]> {
    match storage {
        Storage::Cpu(CpuStorage::F32(v)) => Ok(v),
        _ => candle_core::bail!("expected an f32 tensor on the CPU"),
    }
}

/// `row = act(row + b)` on finished output values, inlined into the SIMD-dispatched kernel so
/// that it vectorises. The kernel applies the common activations in registers instead (see
/// [`bias_act_vec`]); this is the path for the others.
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

/// `acc = act(acc + b)` on SIMD vectors still in registers, for the activations that have a
/// vector form here; for the others it returns false and leaves `acc` as it was (they go
/// through [`bias_act`] after the store).
///
/// Why: applied to stored values, SiLU cost about 4.6 cycles per output (short loops, constants
/// set up per row, no fused multiply-adds), a sixth of a small convolution's time. In place
/// rather than returning an `Option` of the vectors: that went through the stack, 8 bytes off a
/// cache line (see [`cpu_gemm::Aligned`]).
///
/// [`cpu_gemm::Aligned`]: super::cpu_gemm::Aligned
#[inline(always)]
pub(crate) fn bias_act_vec<S: Simd, const NV: usize>(
    simd: S,
    acc: &mut [S::f32s; NV],
    b: f32,
    act: Option<Activation>,
) -> bool {
    if !has_act_vec(act) {
        return false;
    }
    let b = simd.splat_f32s(b);
    for v in acc {
        *v = act_vec(simd, simd.add_f32s(*v, b), act);
    }
    true
}

/// Whether [`act_vec`] computes `act`.
#[inline(always)]
pub(crate) fn has_act_vec(act: Option<Activation>) -> bool {
    !matches!(act, Some(Activation::LeakyRelu(_) | Activation::Hardswish))
}

/// `act(y)` on a SIMD vector, for the activations of [`has_act_vec`] (others give `y`).
#[inline(always)]
pub(crate) fn act_vec<S: Simd>(simd: S, y: S::f32s, act: Option<Activation>) -> S::f32s {
    match act {
        Some(Activation::Silu) => silu_vec(simd, y),
        Some(Activation::Relu) => simd.max_f32s(y, simd.splat_f32s(0.0)),
        _ => y,
    }
}

/// `x * sigmoid(x)` with [`exp`] below: branch-free, so loops over it vectorise.
#[inline(always)]
fn silu(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

/// [`silu`] on a SIMD vector, in 26 vector operations (it is a sizeable share of convolutions
/// with little depth, such as 1x1 over 64 channels). The division is three Newton steps from a
/// bit-trick estimate: a vector division takes about 10 cycles on the FMA port.
#[inline(always)]
fn silu_vec<S: Simd>(simd: S, x: S::f32s) -> S::f32s {
    // Clamped so that e^-x stays finite and below 2^127, where the reciprocal estimate holds;
    // beyond, sigmoid is 0 or 1 to within 1e-37.
    let clamped = simd.min_f32s(simd.max_f32s(x, simd.splat_f32s(-87.0)), simd.splat_f32s(87.0));
    let d = simd.add_f32s(simd.splat_f32s(1.0), exp_neg_vec(simd, clamped));
    simd.mul_f32s(x, recip_vec(simd, d))
}

/// `1 / d` for `1 <= d <= 1e38`, to within 5e-7 relative: the estimate `0x7EF311C3 - bits(d)`
/// is within 12 %, and each Newton step `r (2 - d r)` squares the relative error.
#[inline(always)]
fn recip_vec<S: Simd>(simd: S, d: S::f32s) -> S::f32s {
    let bits = simd.sub_u32s(simd.splat_u32s(0x7EF3_11C3), simd.transmute_u32s_f32s(d));
    let mut r = simd.transmute_f32s_u32s(bits);
    for _ in 0..3 {
        let e = simd.negate_mul_add_e_f32s(d, r, simd.splat_f32s(1.0));
        r = simd.mul_add_e_f32s(r, e, r);
    }
    r
}

const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_145_75;
const LN2_LO: f32 = 1.428_606_8e-6;
/// Adding 1.5 * 2^23 rounds to the nearest integer n and leaves n in the low mantissa bits.
const ROUND: f32 = 12_582_912.0;
/// `(bits(ROUND + n) << 23) + TWO_N_BIAS` are the bits of `2^n` (wrapping arithmetic).
const TWO_N_BIAS: u32 = 127u32.wrapping_sub(ROUND.to_bits()).wrapping_shl(23);
/// Taylor coefficients of `e^r`, highest degree first: degree 6 is within 2.5e-7 relative
/// for |r| <= ln2 / 2.
const EXP_POLY: [f32; 7] = [1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0];
/// The same for `e^-r` (odd degrees negated).
const EXP_NEG_POLY: [f32; 7] = [1.0 / 720.0, -1.0 / 120.0, 1.0 / 24.0, -1.0 / 6.0, 0.5, -1.0, 1.0];

/// `e^x` to within 5e-7 relative for |x| < 87 (saturating beyond), branch-free:
/// `x = n ln2 + r` with |r| <= ln2 / 2, a Taylor polynomial for `e^r`, and `2^n` built from
/// its bits. Only float and wrapping integer arithmetic (no saturating `as` casts), so it
/// vectorises.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let mut p = EXP_POLY[0];
    for c in &EXP_POLY[1..] {
        p = p * r + c;
    }
    p * f32::from_bits((t.to_bits() << 23).wrapping_add(TWO_N_BIAS))
}

/// `e^-x` on a SIMD vector for |x| <= 87, as [`exp`] with fused multiply-adds and the
/// negation folded into the constants. No closures or iterator adaptors: in the kernel's large
/// functions LLVM stopped inlining those, and the intrinsics inside them ran out of line (six
/// times slower).
#[inline(always)]
fn exp_neg_vec<S: Simd>(simd: S, x: S::f32s) -> S::f32s {
    // -x = n ln2 + r, so r' = -r = x + n ln2.
    let t = simd.mul_add_e_f32s(x, simd.splat_f32s(-LOG2E), simd.splat_f32s(ROUND));
    let n = simd.sub_f32s(t, simd.splat_f32s(ROUND));
    let r = simd.mul_add_e_f32s(n, simd.splat_f32s(LN2_HI), x);
    let r = simd.mul_add_e_f32s(n, simd.splat_f32s(LN2_LO), r);
    let mut p = simd.splat_f32s(EXP_NEG_POLY[0]);
    for c in &EXP_NEG_POLY[1..] {
        p = simd.mul_add_e_f32s(p, r, simd.splat_f32s(*c));
    }
    let two_n = simd.wrapping_dyn_shl_u32s(simd.transmute_u32s_f32s(t), simd.splat_u32s(23));
    let two_n = simd.add_u32s(two_n, simd.splat_u32s(TWO_N_BIAS));
    simd.mul_f32s(p, simd.transmute_f32s_u32s(two_n))
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

    /// The vector forms the kernel applies in registers agree with the scalar ones.
    #[test]
    fn vector_activations_match_scalar() {
        struct Check;
        impl pulp::WithSimd for Check {
            type Output = ();
            fn with_simd<S: Simd>(self, simd: S) {
                let xs: Vec<f32> = (0..4000).map(|i| -100.0 + i as f32 * 0.05).chain([-1e30, 1e30]).collect();
                for chunk in xs.chunks_exact(S::F32_LANES) {
                    let v = [simd.partial_load_f32s(chunk)];
                    for act in [Activation::Silu, Activation::Relu, Activation::Identity] {
                        let mut got = v;
                        assert!(bias_act_vec(simd, &mut got, 0.25, Some(act)));
                        let mut got_row = vec![0f32; chunk.len()];
                        simd.partial_store_f32s(&mut got_row, got[0]);
                        let mut want = chunk.to_vec();
                        bias_act(&mut want, 0.25, Some(act));
                        for ((g, w), x) in got_row.iter().zip(&want).zip(chunk) {
                            // Beyond |x| = 100 both are zero (or x) to within 1e-6.
                            let floor = if x.abs() > 100.0 { 1e-6 } else { 1e-30 };
                            assert!((g - w).abs() <= 1e-6 * w.abs() + floor, "{act:?} at {x}: {g:e} vs {w:e}");
                        }
                    }
                    let mut untouched = v;
                    assert!(!bias_act_vec(simd, &mut untouched, 0.0, Some(Activation::Hardswish)));
                }
            }
        }
        pulp::Arch::new().dispatch(Check);
        pulp::WithSimd::with_simd(Check, pulp::Scalar::new());
    }

    #[test]
    fn reciprocal_is_accurate() {
        let simd = pulp::Scalar::new();
        let mut worst = 0f64;
        let mut d = 1.0f32;
        while d <= 1e38 {
            let r = recip_vec(simd, d);
            worst = worst.max((r as f64 * d as f64 - 1.0).abs());
            d *= 1.000_37;
        }
        assert!(worst < 5e-7, "relative error {worst}");
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
            // Bands of several groups of micro-panels, two depth blocks.
            (40, 16, 3, 1, 1, 1, 60, 70),
            // Wide maps: bands of one output row (BAND_BYTES), several per thread.
            (256, 8, 3, 1, 1, 1, 12, 130),
            (128, 8, 3, 2, 1, 1, 14, 261),
            // Small maps split by output channels, whose tasks share one padded input: with
            // groups, and a 20x20 map as the models' stride-2 layers have.
            (8, 32, 3, 2, 1, 2, 9, 7),
            (24, 48, 3, 2, 1, 1, 20, 20),
            // Depth blocks of whole channels, padded one block at a time, the last one smaller
            // (9 + 8 channels of a 3x3, 7 + 6 of a 5x5), several micro-panels per task.
            (17, 24, 3, 2, 1, 1, 60, 81),
            (13, 8, 5, 1, 2, 1, 18, 23),
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
                let want =
                    x.conv2d(&wt, p, s, 1, g).unwrap().broadcast_add(&b.reshape((1, c2, 1, 1)).unwrap()).unwrap();
                let want = match act {
                    Some(Activation::Silu) => candle_nn::Activation::Silu.forward(&want).unwrap(),
                    Some(Activation::LeakyRelu(_)) => candle_nn::Activation::LeakyRelu(0.1).forward(&want).unwrap(),
                    _ => want,
                };
                // Small maps take `cpu_lanes`; the direct path is checked on them too.
                for route in [Route::Auto, Route::NoLanes] {
                    let ours = conv.run(isa, route, &[&x], None).unwrap();
                    let diff = (ours - &want).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap();
                    let diff = diff.to_scalar::<f32>().unwrap();
                    // Deep sums (2304 terms) reach |y| ~ 50; their rounding grows with them.
                    let scale = want.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
                    let tol = 1e-4 * (scale / 10.0).max(1.0);
                    assert!(
                        diff < tol,
                        "{c1}->{c2} k{k} s{s} g{g} {act:?} {isa:?} {route:?}: max diff {diff} (tolerance {tol})"
                    );
                }
            }
        }
    }

    /// Outputs are written a run of pixels at a time (never zeroed first), in copies whose
    /// code depends on the run's length: every length from 1 to past a micro-panel, through
    /// the direct path (1x1 and stride 2, junk columns cutting rows) and Winograd (tile rows),
    /// with and without the shortcut.
    #[test]
    fn writes_runs_of_every_length() {
        let dev = Device::Cpu;
        for w in 1..=70 {
            for (c1, c2, k, s, h) in [(4, 8, 1, 1, 2), (4, 8, 3, 2, 3), (4, 8, 3, 1, 3)] {
                let p = k / 2;
                let x = Tensor::randn(0f32, 1., (1, c1, h, w), &dev).unwrap();
                let wt = Tensor::randn(0f32, 0.3, (c2, c1, k, k), &dev).unwrap();
                let b = Tensor::randn(0f32, 1., c2, &dev).unwrap();
                let conv = CpuConv::new(&wt, &b, Geometry { c1, c2, k, s, p, d: 1, g: 1 }, None).unwrap();
                let want =
                    x.conv2d(&wt, p, s, 1, 1).unwrap().broadcast_add(&b.reshape((1, c2, 1, 1)).unwrap()).unwrap();
                let res = Tensor::randn(0f32, 1., want.shape(), &dev).unwrap();
                for (residual, want) in [(None, want.clone()), (Some(&res), (&want + &res).unwrap())] {
                    let ours = conv.forward(&[&x], residual).unwrap();
                    let diff = (ours - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                    assert!(diff < 1e-4, "{c1}->{c2} k{k} s{s} {h}x{w}: {diff}");
                }
            }
        }
    }

    /// 3x3 stride-1 convolutions take the Winograd path: maps from 1x1 up (odd sides, bands
    /// of several micro-panels, a partial last one), channel blocks on small maps (200 output
    /// channels), batches, every activation (LeakyReLU after the store) and the shortcut, on
    /// each SIMD flavour.
    #[test]
    fn winograd_matches_candle() {
        let dev = Device::Cpu;
        for &(c1, c2, h, w, batch) in &[
            (4, 8, 1, 1, 1),
            (4, 8, 2, 2, 2),
            (5, 3, 1, 5, 1),
            (5, 3, 5, 1, 3),
            (8, 200, 3, 3, 1),
            (16, 24, 4, 6, 2),
            (32, 40, 33, 17, 1),
            (3, 16, 64, 64, 1),
            (64, 64, 20, 20, 1),
            // With 128 or more output channels a 20x20 map runs as one band split by output
            // channels (here in uneven blocks of 72 and 64).
            (136, 136, 20, 20, 1),
            // F(4x4, 3x3): maps of 32 and more a side, tiles overhanging the right and
            // bottom edges by 1 to 3 pixels, batches; beyond 128 input channels F(2x2) again.
            (16, 24, 33, 37, 1),
            (8, 12, 35, 32, 2),
            (128, 16, 34, 40, 1),
            (136, 8, 32, 32, 1),
        ] {
            let x = Tensor::randn(0f32, 1., (batch, c1, h, w), &dev).unwrap();
            let wt = Tensor::randn(0f32, 0.3, (c2, c1, 3, 3), &dev).unwrap();
            let b = Tensor::randn(0f32, 1., c2, &dev).unwrap();
            let residual = Tensor::randn(0f32, 1., (batch, c2, h, w), &dev).unwrap();
            let geo = Geometry { c1, c2, k: 3, s: 1, p: 1, d: 1, g: 1 };
            let conv2d = x.conv2d(&wt, 1, 1, 1, 1).unwrap().broadcast_add(&b.reshape((1, c2, 1, 1)).unwrap()).unwrap();
            for (act, isa) in [
                (Some(Activation::Silu), Isa::Native),
                (None, Isa::Native),
                (Some(Activation::Relu), Isa::Native),
                (Some(Activation::LeakyRelu(0.1)), Isa::Native),
                (Some(Activation::Silu), Isa::Avx2),
                (Some(Activation::Silu), Isa::Scalar),
            ] {
                let conv = CpuConv::new(&wt, &b, geo, act).unwrap();
                assert!(matches!(conv.weights, Packed::Winograd(_)));
                let want = match act {
                    Some(Activation::Silu) => candle_nn::Activation::Silu.forward(&conv2d).unwrap(),
                    Some(Activation::Relu) => conv2d.relu().unwrap(),
                    Some(Activation::LeakyRelu(_)) => candle_nn::Activation::LeakyRelu(0.1).forward(&conv2d).unwrap(),
                    _ => conv2d.clone(),
                };
                for residual in [None, Some(&residual)] {
                    let ours = conv.run(isa, Route::Auto, &[&x], residual).unwrap();
                    let want = match residual {
                        Some(r) => (&want + r).unwrap(),
                        None => want.clone(),
                    };
                    let diff = (ours - &want).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap();
                    let diff = diff.to_scalar::<f32>().unwrap();
                    // F(4x4, 3x3)'s transforms round more than F(2x2)'s (coefficients up to 8 and
                    // 1/24): up to 9e-6 of the largest output at 128 channels, against 3e-6.
                    let scale = want.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                    let tol = 2e-5 * scale.max(5.0);
                    assert!(
                        diff < tol,
                        "{c1}->{c2} {h}x{w} b{batch} {act:?} {isa:?}: max diff {diff} (tolerance {tol})"
                    );
                }
            }
        }
    }

    /// F(4x4, 3x3) on maps of 32 and more a side for up to 128 input channels, F(2x2, 3x3)
    /// otherwise.
    #[test]
    fn winograd_tile_follows_map_and_channels() {
        let small = WinogradWeights::new(&[0.5; 4 * 9], 2, 2);
        assert_eq!((small.tile_for(32, 40), small.tile_for(31, 64), small.tile_for(10, 10)), (4, 2, 2));
        let wide = WinogradWeights::new(&vec![0.5; 129 * 9], 129, 1);
        assert_eq!(wide.tile_for(160, 160), 2);
    }

    /// Empty maps and maps smaller than the kernel are an error, not a panic.
    #[test]
    fn refuses_maps_smaller_than_the_kernel() {
        let dev = Device::Cpu;
        let wt = Tensor::randn(0f32, 0.3, (4, 3, 3, 3), &dev).unwrap();
        let b = Tensor::zeros(4, DType::F32, &dev).unwrap();
        for (p, h, w) in [(1, 0, 5), (1, 4, 0), (0, 2, 5)] {
            let geo = Geometry { c1: 3, c2: 4, k: 3, s: 1, p, d: 1, g: 1 };
            let x = Tensor::zeros((1, 3, h, w), DType::F32, &dev).unwrap();
            let err = CpuConv::new(&wt, &b, geo, None).unwrap().forward(&[&x], None).unwrap_err();
            assert!(err.to_string().contains("smaller than the 3x3 kernel"), "{err}");
        }
    }

    /// Small maps take [`cpu_lanes`]: every tile width (output rows of 1 to 29 pixels cut into
    /// tiles of up to 10, or 6 with 16 registers), a partial last panel of output channels,
    /// several depth blocks with a partial last one, stride 1 and 2, 5x5 and dilated kernels,
    /// a batch of two, the shortcut, vector and scalar activations, on every SIMD flavour.
    #[test]
    fn small_maps_take_the_lanes_path() {
        let dev = Device::Cpu;
        let mut shapes: Vec<_> = (1..=29).map(|w| (3, 40, 5, 1, 1, 2, w)).collect();
        shapes.extend([(70, 33, 3, 2, 1, 9, 20), (16, 96, 3, 2, 2, 19, 19), (24, 8, 3, 1, 2, 10, 12)]);
        for (c1, c2, k, s, d, h, w) in shapes {
            let p = k / 2 * d;
            let x = Tensor::randn(0f32, 1., (2, c1, h, w), &dev).unwrap();
            let wt = Tensor::randn(0f32, 0.3, (c2, c1, k, k), &dev).unwrap();
            let b = Tensor::randn(0f32, 1., c2, &dev).unwrap();
            let conv2d = x.conv2d(&wt, p, s, d, 1).unwrap().broadcast_add(&b.reshape((1, c2, 1, 1)).unwrap()).unwrap();
            let res = Tensor::randn(0f32, 1., conv2d.shape(), &dev).unwrap();
            let geo = Geometry { c1, c2, k, s, p, d, g: 1 };
            for (act, isa, residual) in [
                (Some(Activation::Silu), Isa::Native, None),
                (Some(Activation::Silu), Isa::Native, Some(&res)),
                (Some(Activation::Hardswish), Isa::Native, Some(&res)),
                (Some(Activation::Silu), Isa::Avx2, Some(&res)),
                (None, Isa::Scalar, None),
            ] {
                let conv = CpuConv::new(&wt, &b, geo, act).unwrap();
                let want = match act {
                    Some(Activation::Silu) => candle_nn::Activation::Silu.forward(&conv2d).unwrap(),
                    Some(Activation::Hardswish) => candle_nn::Activation::HardSwish.forward(&conv2d).unwrap(),
                    _ => conv2d.clone(),
                };
                let want = residual.map_or(want.clone(), |r| (&want + r).unwrap());
                let ours = conv.run(isa, Route::Auto, &[&x], residual).unwrap();
                assert!(matches!(&conv.weights, Packed::Direct(_, lanes) if lanes.get().is_some()));
                let diff = (ours - &want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                let scale = want.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                let tol = 1e-4 * (scale / 10.0).max(1.0);
                let what = format!("{c1}->{c2} k{k} s{s} d{d} {h}x{w} {act:?} {isa:?}");
                assert!(diff < tol, "{what}: max diff {diff} (tolerance {tol})");
            }
        }
        // Larger maps keep the direct path.
        let x = Tensor::randn(0f32, 1., (1, 4, 90, 90), &dev).unwrap();
        let wt = Tensor::randn(0f32, 0.3, (8, 4, 3, 3), &dev).unwrap();
        let b = Tensor::randn(0f32, 1., 8, &dev).unwrap();
        let conv = CpuConv::new(&wt, &b, Geometry { c1: 4, c2: 8, k: 3, s: 2, p: 1, d: 1, g: 1 }, None).unwrap();
        conv.forward(&[&x], None).unwrap();
        assert!(matches!(&conv.weights, Packed::Direct(_, lanes) if lanes.get().is_none()));
    }

    /// Dilated kernels: the band copy reads `(k - 1) d / s` halo rows below each band.
    #[test]
    fn dilated_convolutions_match_candle() {
        let dev = Device::Cpu;
        for &(c1, c2, s, d, h, w) in &[(8, 16, 1, 2, 11, 13), (8, 16, 2, 2, 12, 15), (6, 8, 1, 3, 30, 70)] {
            let x = Tensor::randn(0f32, 1., (2, c1, h, w), &dev).unwrap();
            let wt = Tensor::randn(0f32, 0.3, (c2, c1, 3, 3), &dev).unwrap();
            let b = Tensor::randn(0f32, 1., c2, &dev).unwrap();
            let geo = Geometry { c1, c2, k: 3, s, p: d, d, g: 1 };
            let ours = CpuConv::new(&wt, &b, geo, None).unwrap().forward(&[&x], None).unwrap();
            let want = x.conv2d(&wt, d, s, d, 1).unwrap().broadcast_add(&b.reshape((1, c2, 1, 1)).unwrap()).unwrap();
            assert_eq!(ours.dims(), want.dims(), "s{s} d{d}");
            let diff = (ours - &want).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap();
            assert!(diff.to_scalar::<f32>().unwrap() < 1e-4, "s{s} d{d}");
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
        let ours = conv.forward(&[&x], Some(&x)).unwrap();
        let want = (conv.forward(&[&x], None).unwrap() + &x).unwrap();
        let diff = (ours - want).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() < 1e-6);
    }

    /// Channel parts (what `cat` would join) give the same result as their concatenation.
    #[test]
    fn reads_parts_in_place() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1., (2, 12, 7, 6), &dev).unwrap();
        let other = Tensor::randn(0f32, 1., (2, 5, 7, 6), &dev).unwrap();
        let (a, b) = (x.narrow(1, 0, 4).unwrap(), x.narrow(1, 4, 8).unwrap());
        let all = Tensor::cat(&[&b, &other, &a], 1).unwrap();
        for (k, s) in [(1, 1), (3, 1), (3, 2)] {
            let wt = Tensor::randn(0f32, 0.3, (6, 17, k, k), &dev).unwrap();
            let bias = Tensor::randn(0f32, 1., 6, &dev).unwrap();
            let geo = Geometry { c1: 17, c2: 6, k, s, p: k / 2, d: 1, g: 1 };
            let conv = CpuConv::new(&wt, &bias, geo, Some(Activation::Silu)).unwrap();
            let ours = conv.forward(&[&b, &other, &a], None).unwrap();
            let want = conv.forward(&[&all], None).unwrap();
            let diff = (ours - want).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap();
            assert!(diff.to_scalar::<f32>().unwrap() < 1e-6, "k{k} s{s}");
        }
        let wt = Tensor::randn(0f32, 0.3, (6, 17, 1, 1), &dev).unwrap();
        let conv = CpuConv::new(
            &wt,
            &Tensor::zeros(6, DType::F32, &dev).unwrap(),
            Geometry { c1: 17, c2: 6, k: 1, s: 1, p: 0, d: 1, g: 1 },
            None,
        )
        .unwrap();
        let err = conv.forward(&[&b, &a], None).unwrap_err().to_string();
        assert!(err.contains("expected 17 input channels, got 12"), "{err}");
        let small = Tensor::zeros((2, 5, 7, 5), DType::F32, &dev).unwrap();
        assert!(conv.forward(&[&b, &small, &a], None).is_err());
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
        let ours = CpuConv::new(&wt, &b, geo, None).unwrap().forward(&[&xt], None).unwrap();
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
            let ours = CpuConv::new(&wt, &b, geo, None).unwrap().forward(&[&part], None).unwrap();
            let want = part.contiguous().unwrap().conv2d(&wt, k / 2, 1, 1, 1).unwrap();
            let diff = (ours - want).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap();
            assert!(diff.to_scalar::<f32>().unwrap() < 1e-5);
        }
    }
}
