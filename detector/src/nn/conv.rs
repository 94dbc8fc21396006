//! Convolutions with BatchNorm folded in at load time: `Conv` (conv + BN + act), plain
//! `nn.Conv2d`, and `RepConvN` (3x3 + 1x1 branches folded into one 3x3).

use std::cell::Cell;

use candle_core::{DType, Device, Module, Tensor};

use super::cpu_conv::{CpuConv, Geometry};
use crate::error::{Error, Result};
use crate::spec::Activation;
use crate::weights::Weights;

/// Everything a block needs to know while loading, besides its weights.
#[derive(Debug, Clone)]
pub struct LoadCtx {
    pub activation: Activation,
    /// BatchNorm epsilon: the official models set 1e-3 (`initialize_weights`), not PyTorch's 1e-5.
    pub bn_eps: f64,
    pub device: Device,
    pub dtype: DType,
}

thread_local! {
    /// When set, every convolution adds its multiply-adds here (used to compute GFLOPs).
    static MACS: Cell<Option<f64>> = const { Cell::new(None) };
}

/// Runs `f` with multiply-add counting on and returns the count of convolutions' MACs.
pub fn count_macs<T>(f: impl FnOnce() -> T) -> (T, f64) {
    MACS.with(|m| m.set(Some(0.0)));
    let out = f();
    let macs = MACS.with(|m| m.take()).unwrap_or(0.0);
    (out, macs)
}

pub fn apply_activation(act: Activation, x: &Tensor) -> candle_core::Result<Tensor> {
    match act {
        Activation::Silu => x.silu(),
        Activation::Relu => x.relu(),
        Activation::LeakyRelu(slope) => {
            let neg = (x.minimum(0.0)? * slope)?;
            x.relu()? + neg
        }
        Activation::Hardswish => x * ((x + 3.0)?.clamp(0.0, 6.0)? / 6.0)?,
        Activation::Identity => Ok(x.clone()),
    }
}

/// A 2-D convolution with bias and optional activation, ready to run.
#[derive(Debug, Clone)]
pub struct ConvBlock {
    /// The folded weights in Candle's form, for devices and dtypes the CPU kernel does not
    /// take; None when the CPU kernel holds them (packed), so they are not kept twice.
    weight: Option<Tensor>,
    /// `[c2, c1 / g, k, k]`.
    weight_dims: [usize; 4],
    bias: Tensor,
    stride: usize,
    padding: usize,
    dilation: usize,
    groups: usize,
    act: Option<Activation>,
    /// The fast path for f32 on the CPU (see `cpu_conv`); None on other devices and dtypes.
    cpu: Option<CpuConv>,
    span: tracing::Span,
}

/// Geometry of one convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvShape {
    pub c1: usize,
    pub c2: usize,
    pub k: usize,
    pub s: usize,
    pub p: usize,
    pub g: usize,
    pub d: usize,
}

impl ConvShape {
    pub fn new(c1: usize, c2: usize, k: usize, s: usize) -> Self {
        Self { c1, c2, k, s, p: k / 2, g: 1, d: 1 }
    }
    pub fn groups(mut self, g: usize) -> Self {
        self.g = g;
        self
    }
    pub fn pad(mut self, p: usize) -> Self {
        self.p = p;
        self
    }
    fn weight_shape(&self) -> [usize; 4] {
        [self.c2, self.c1 / self.g, self.k, self.k]
    }
}

/// Reads an official `Conv` (`conv.weight` + `bn.*`) and folds the BatchNorm into the
/// convolution: w' = w * gamma / sqrt(var + eps), b' = beta - mean * gamma / sqrt(var + eps).
/// Also accepts already fused checkpoints (`conv.weight` + `conv.bias`, no `bn`).
fn load_folded(w: &Weights, shape: ConvShape, eps: f64) -> Result<(Tensor, Tensor)> {
    let conv = w.pp("conv");
    let weight = conv.get("weight", &shape.weight_shape())?;
    if !w.contains("bn.weight") && conv.contains("bias") {
        let bias = conv.get("bias", &[shape.c2])?;
        return Ok((weight, bias));
    }
    let bn = w.pp("bn");
    let gamma = bn.get("weight", &[shape.c2])?;
    let beta = bn.get("bias", &[shape.c2])?;
    let mean = bn.get("running_mean", &[shape.c2])?;
    let var = bn.get("running_var", &[shape.c2])?;
    bn.expect_optional("num_batches_tracked", &[]);
    let scale = (gamma / (var + eps)?.sqrt()?)?;
    let weight = weight.broadcast_mul(&scale.reshape((shape.c2, 1, 1, 1))?)?;
    let bias = (beta - (mean * &scale)?)?;
    Ok((weight, bias))
}

impl ConvBlock {
    fn new(
        weight: Tensor,
        bias: Tensor,
        shape: ConvShape,
        act: Option<Activation>,
        ctx: &LoadCtx,
        kind: &'static str,
    ) -> Result<Self> {
        let to_dev = |t: Tensor| -> Result<Tensor> { Ok(t.to_device(&ctx.device)?.to_dtype(ctx.dtype)?.contiguous()?) };
        let weight = to_dev(weight)?;
        let bias = to_dev(bias.reshape((1, shape.c2, 1, 1))?)?;
        let cpu = if ctx.device.is_cpu() && ctx.dtype == DType::F32 {
            let ConvShape { c1, c2, k, s, p, g, d } = shape;
            Some(CpuConv::new(&weight, &bias, Geometry { c1, c2, k, s, p, d, g }, act)?)
        } else {
            None
        };
        Ok(Self {
            weight_dims: shape.weight_shape(),
            weight: if cpu.is_some() { None } else { Some(weight) },
            bias,
            cpu,
            stride: shape.s,
            padding: shape.p,
            dilation: shape.d,
            groups: shape.g,
            act,
            span: tracing::trace_span!("conv", kind),
        })
    }

    /// The official `Conv`: conv (no bias) + BatchNorm2d + activation (when `act`).
    pub fn load_conv(w: &Weights, shape: ConvShape, act: bool, ctx: &LoadCtx) -> Result<Self> {
        let (weight, bias) = load_folded(w, shape, ctx.bn_eps)?;
        Self::new(weight, bias, shape, act.then_some(ctx.activation), ctx, "Conv")
    }

    /// `Conv`s over the same input (shapes equal but for the output channels) as one
    /// convolution, whose output holds their channels in order: RepNCSP's cv1 and cv2, the
    /// detection head's first box and class convolutions. One pass over the input instead of
    /// several (for a 3x3, one Winograd input transform), and fewer parallel loops.
    pub fn load_convs_as_one(convs: &[(&Weights, ConvShape)], ctx: &LoadCtx) -> Result<Self> {
        let Some(&(_, first)) = convs.first() else {
            return Err(Error::Spec("no convolutions to join".into()));
        };
        let (mut weights, mut biases) = (Vec::with_capacity(convs.len()), Vec::with_capacity(convs.len()));
        for &(w, shape) in convs {
            if (ConvShape { c2: first.c2, ..shape }) != first {
                return Err(Error::Spec(format!("cannot join convolutions {first:?} and {shape:?}")));
            }
            let (weight, bias) = load_folded(w, shape, ctx.bn_eps)?;
            weights.push(weight);
            biases.push(bias);
        }
        let joined = ConvShape { c2: convs.iter().map(|(_, shape)| shape.c2).sum(), ..first };
        let (weight, bias) = (Tensor::cat(&weights, 0)?, Tensor::cat(&biases, 0)?);
        Self::new(weight, bias, joined, Some(ctx.activation), ctx, "Conv")
    }

    /// A plain `nn.Conv2d` with bias and no activation (detection head outputs, CBLinear).
    pub fn load_conv2d(w: &Weights, shape: ConvShape, ctx: &LoadCtx) -> Result<Self> {
        let weight = w.get("weight", &shape.weight_shape())?;
        let bias = w.get("bias", &[shape.c2])?;
        Self::new(weight, bias, shape, None, ctx, "Conv2d")
    }

    /// `RepConvN`: act(Conv3x3+BN (x) + Conv1x1+BN (x)), folded into one 3x3 convolution by
    /// padding the 1x1 kernel to 3x3 and adding kernels and biases. Fused files (`conv.*`) too.
    pub fn load_repconvn(w: &Weights, c1: usize, c2: usize, ctx: &LoadCtx) -> Result<Self> {
        let k3 = ConvShape::new(c1, c2, 3, 1);
        if w.contains("conv.weight") && !w.contains("conv1.conv.weight") {
            let weight = w.get("conv.weight", &k3.weight_shape())?;
            let bias = w.get("conv.bias", &[c2])?;
            return Self::new(weight, bias, k3, Some(ctx.activation), ctx, "RepConvN");
        }
        let (w3, b3) = load_folded(&w.pp("conv1"), k3, ctx.bn_eps)?;
        let (w1, b1) = load_folded(&w.pp("conv2"), ConvShape::new(c1, c2, 1, 1).pad(0), ctx.bn_eps)?;
        let w1 = w1.pad_with_zeros(2, 1, 1)?.pad_with_zeros(3, 1, 1)?;
        Self::new((w3 + w1)?, (b3 + b1)?, k3, Some(ctx.activation), ctx, "RepConvN")
    }

    /// Parameters after folding (weight + bias), as the official fused `model_info` counts them.
    pub fn params(&self) -> usize {
        self.weight_dims.iter().product::<usize>() + self.bias.elem_count()
    }
}

impl Module for ConvBlock {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if let Some(y) = self.forward_cpu(&[x], None) {
            return y;
        }
        let _enter = self.span.enter();
        let Some(weight) = &self.weight else {
            candle_core::bail!("conv: loaded for f32 on the CPU, got {:?} on {:?}", x.dtype(), x.device());
        };
        let y = x.conv2d(weight, self.padding, self.stride, self.dilation, self.groups)?;
        self.count_macs(&y);
        let y = y.broadcast_add(&self.bias)?;
        match self.act {
            Some(act) => apply_activation(act, &y),
            None => Ok(y),
        }
    }
}

/// Channels `start .. start + len` of `x`: a slice, which the CPU kernel reads in place (and
/// which for a batch of one is contiguous); a contiguous copy on other devices.
pub fn channel_slice(x: &Tensor, start: usize, len: usize) -> candle_core::Result<Tensor> {
    let slice = x.narrow(1, start, len)?;
    if slice.device().is_cpu() { Ok(slice) } else { slice.contiguous() }
}

impl ConvBlock {
    /// `forward(x) + residual`, the add fused into the convolution's last pass on the CPU.
    pub fn forward_add(&self, x: &Tensor, residual: &Tensor) -> candle_core::Result<Tensor> {
        match self.forward_cpu(&[x], Some(residual)) {
            Some(y) => y,
            None => self.forward(x)? + residual,
        }
    }

    /// `forward(cat(parts, 1))`; on the CPU the parts are read in place, without the copy.
    pub fn forward_cat(&self, parts: &[&Tensor]) -> candle_core::Result<Tensor> {
        match self.forward_cpu(parts, None) {
            Some(y) => y,
            None => self.forward(&Tensor::cat(parts, 1)?),
        }
    }

    /// The CPU kernel on the channel `parts` (plus `residual`), or None when this block has no
    /// CPU kernel or a tensor is not f32 on the CPU.
    fn forward_cpu(&self, parts: &[&Tensor], residual: Option<&Tensor>) -> Option<candle_core::Result<Tensor>> {
        let fast = self.cpu.as_ref()?;
        if !parts.iter().copied().chain(residual).all(CpuConv::accepts) {
            return None;
        }
        let _enter = self.span.enter();
        Some(fast.forward(parts, residual).inspect(|y| self.count_macs(y)))
    }

    fn count_macs(&self, y: &Tensor) {
        MACS.with(|m| {
            if let Some(total) = m.get() {
                let [_, cin_per_group, kh, kw] = self.weight_dims;
                m.set(Some(total + (y.elem_count() * cin_per_group * kh * kw) as f64));
            }
        });
    }
}
