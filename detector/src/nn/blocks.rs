//! The GELAN / YOLOv9 building blocks (official `models/common.py` semantics).

use candle_core::{D, Module, Tensor};

use super::conv::{ConvBlock, ConvShape, LoadCtx, channel_slice};
use super::cpu_conv::CpuConv;
use super::cpu_pool;
use crate::error::Result;
use crate::weights::Weights;

/// Max pooling padded with -inf like PyTorch (padding never wins the max).
pub fn max_pool(x: &Tensor, k: usize, s: usize, p: usize) -> candle_core::Result<Tensor> {
    if CpuConv::accepts(x) {
        return cpu_pool::max_pool(x, k, s, p);
    }
    if p == 0 {
        return x.max_pool2d_with_stride(k, s);
    }
    let (b, c, h, w) = x.dims4()?;
    let rows = Tensor::full(f32::NEG_INFINITY, (b, c, p, w), x.device())?.to_dtype(x.dtype())?;
    let x = Tensor::cat(&[&rows, x, &rows], 2)?;
    let cols = Tensor::full(f32::NEG_INFINITY, (b, c, h + 2 * p, p), x.device())?.to_dtype(x.dtype())?;
    let x = Tensor::cat(&[&cols, &x, &cols], 3)?;
    x.max_pool2d_with_stride(k, s)
}

/// Nearest-neighbour upsampling by an integer factor (the neck's `nn.Upsample`).
pub fn upsample_nearest(x: &Tensor, scale: usize) -> candle_core::Result<Tensor> {
    if CpuConv::accepts(x) {
        return cpu_pool::upsample_nearest(x, scale);
    }
    let (_, _, h, w) = x.dims4()?;
    x.upsample_nearest2d(h * scale, w * scale)
}

/// `avg_pool2d(x, 2, 1, 0)`: the smoothing step before AConv and ADown.
fn avg_pool_2x2_s1(x: &Tensor) -> candle_core::Result<Tensor> {
    if CpuConv::accepts(x) {
        return cpu_pool::avg_pool_2x2_s1(x);
    }
    x.avg_pool2d_with_stride(2, 1)
}

/// Splits channels into two halves (`x.chunk(2, 1)`; the first half takes the odd channel).
fn chunk2(x: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
    let c = x.dim(1)?;
    let first = c.div_ceil(2);
    Ok((x.narrow(1, 0, first)?, x.narrow(1, first, c - first)?))
}

#[derive(Debug, Clone)]
pub struct AConv {
    cv1: ConvBlock,
    span: tracing::Span,
}

impl AConv {
    pub fn load(w: &Weights, c1: usize, c2: usize, ctx: &LoadCtx) -> Result<Self> {
        let cv1 = ConvBlock::load_conv(&w.pp("cv1"), ConvShape::new(c1, c2, 3, 2).pad(1), true, ctx)?;
        Ok(Self { cv1, span: tracing::trace_span!("AConv") })
    }

    pub fn params(&self) -> usize {
        self.cv1.params()
    }
}

impl Module for AConv {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let _enter = self.span.enter();
        self.cv1.forward(&avg_pool_2x2_s1(x)?)
    }
}

#[derive(Debug, Clone)]
pub struct ADown {
    cv1: ConvBlock,
    cv2: ConvBlock,
    span: tracing::Span,
}

impl ADown {
    pub fn load(w: &Weights, c1: usize, c2: usize, ctx: &LoadCtx) -> Result<Self> {
        let half = c2 / 2;
        let cv1 = ConvBlock::load_conv(&w.pp("cv1"), ConvShape::new(c1 / 2, half, 3, 2).pad(1), true, ctx)?;
        let cv2 = ConvBlock::load_conv(&w.pp("cv2"), ConvShape::new(c1 / 2, half, 1, 1).pad(0), true, ctx)?;
        Ok(Self { cv1, cv2, span: tracing::trace_span!("ADown") })
    }

    pub fn params(&self) -> usize {
        self.cv1.params() + self.cv2.params()
    }
}

impl Module for ADown {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let _enter = self.span.enter();
        let x = avg_pool_2x2_s1(x)?;
        let (x1, x2) = chunk2(&x)?;
        let x1 = self.cv1.forward(&x1)?;
        let x2 = self.cv2.forward(&max_pool(&x2, 3, 2, 1)?)?;
        cpu_pool::cat_channels(&[x1, x2])
    }
}

/// `RepNBottleneck(c, c, shortcut=True, e=1.0)`: RepConvN 3x3 then Conv 3x3, plus the input.
#[derive(Debug, Clone)]
struct RepNBottleneck {
    cv1: ConvBlock,
    cv2: ConvBlock,
    add: bool,
}

impl RepNBottleneck {
    fn load(w: &Weights, c1: usize, c2: usize, ctx: &LoadCtx) -> Result<Self> {
        let hidden = c2; // e = 1.0
        Ok(Self {
            cv1: ConvBlock::load_repconvn(&w.pp("cv1"), c1, hidden, ctx)?,
            cv2: ConvBlock::load_conv(&w.pp("cv2"), ConvShape::new(hidden, c2, 3, 1), true, ctx)?,
            add: c1 == c2,
        })
    }

    fn params(&self) -> usize {
        self.cv1.params() + self.cv2.params()
    }
}

impl Module for RepNBottleneck {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let h = self.cv1.forward(x)?;
        if self.add { self.cv2.forward_add(&h, x) } else { self.cv2.forward(&h) }
    }
}

/// `RepNCSP(c1, c2, n)`: CSP block with `n` RepNBottlenecks.
#[derive(Debug, Clone)]
struct RepNCsp {
    /// cv1 and cv2 (both 1x1 over the input, `c_` channels each) as one convolution.
    cv1_cv2: ConvBlock,
    c_: usize,
    cv3: ConvBlock,
    m: Vec<RepNBottleneck>,
}

impl RepNCsp {
    fn load(w: &Weights, c1: usize, c2: usize, n: usize, ctx: &LoadCtx) -> Result<Self> {
        let c_ = c2 / 2; // e = 0.5 (int(c2 * 0.5))
        let shape = ConvShape::new(c1, c_, 1, 1);
        let m = (0..n).map(|i| RepNBottleneck::load(&w.pp("m").pp(i), c_, c_, ctx)).collect::<Result<_>>()?;
        Ok(Self {
            cv1_cv2: ConvBlock::load_convs_as_one(&[(&w.pp("cv1"), shape), (&w.pp("cv2"), shape)], ctx)?,
            c_,
            cv3: ConvBlock::load_conv(&w.pp("cv3"), ConvShape::new(2 * c_, c2, 1, 1), true, ctx)?,
            m,
        })
    }

    fn params(&self) -> usize {
        self.cv1_cv2.params() + self.cv3.params() + self.m.iter().map(RepNBottleneck::params).sum::<usize>()
    }
}

impl Module for RepNCsp {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = self.cv1_cv2.forward(x)?;
        let (mut a, b) = (channel_slice(&y, 0, self.c_)?, channel_slice(&y, self.c_, self.c_)?);
        for m in &self.m {
            a = m.forward(&a)?;
        }
        self.cv3.forward_cat(&[&a, &b])
    }
}

/// One branch of an ELAN block: a module then a 3x3 Conv (RepNCSPELAN4), or a lone Conv (ELAN1).
#[derive(Debug, Clone)]
enum ElanBranch {
    Conv(ConvBlock),
    Csp(Box<RepNCsp>, ConvBlock),
}

impl ElanBranch {
    fn params(&self) -> usize {
        match self {
            Self::Conv(c) => c.params(),
            Self::Csp(csp, c) => csp.params() + c.params(),
        }
    }
}

impl Module for ElanBranch {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::Conv(c) => c.forward(x),
            Self::Csp(csp, c) => c.forward(&csp.forward(x)?),
        }
    }
}

/// ELAN1 and RepNCSPELAN4: cv1, split in halves, two chained branches on the second half,
/// concat of the four, cv4.
#[derive(Debug, Clone)]
pub struct Elan {
    cv1: ConvBlock,
    cv2: ElanBranch,
    cv3: ElanBranch,
    cv4: ConvBlock,
    span: tracing::Span,
}

impl Elan {
    pub fn load_elan1(w: &Weights, c1: usize, c2: usize, c3: usize, c4: usize, ctx: &LoadCtx) -> Result<Self> {
        Ok(Self {
            cv1: ConvBlock::load_conv(&w.pp("cv1"), ConvShape::new(c1, c3, 1, 1), true, ctx)?,
            cv2: ElanBranch::Conv(ConvBlock::load_conv(&w.pp("cv2"), ConvShape::new(c3 / 2, c4, 3, 1), true, ctx)?),
            cv3: ElanBranch::Conv(ConvBlock::load_conv(&w.pp("cv3"), ConvShape::new(c4, c4, 3, 1), true, ctx)?),
            cv4: ConvBlock::load_conv(&w.pp("cv4"), ConvShape::new(c3 + 2 * c4, c2, 1, 1), true, ctx)?,
            span: tracing::trace_span!("ELAN1"),
        })
    }

    #[allow(clippy::too_many_arguments)]
    pub fn load_repncspelan4(
        w: &Weights,
        c1: usize,
        c2: usize,
        c3: usize,
        c4: usize,
        c5: usize,
        ctx: &LoadCtx,
    ) -> Result<Self> {
        let branch = |w: Weights, cin: usize| -> Result<ElanBranch> {
            Ok(ElanBranch::Csp(
                Box::new(RepNCsp::load(&w.pp(0), cin, c4, c5, ctx)?),
                ConvBlock::load_conv(&w.pp(1), ConvShape::new(c4, c4, 3, 1), true, ctx)?,
            ))
        };
        Ok(Self {
            cv1: ConvBlock::load_conv(&w.pp("cv1"), ConvShape::new(c1, c3, 1, 1), true, ctx)?,
            cv2: branch(w.pp("cv2"), c3 / 2)?,
            cv3: branch(w.pp("cv3"), c4)?,
            cv4: ConvBlock::load_conv(&w.pp("cv4"), ConvShape::new(c3 + 2 * c4, c2, 1, 1), true, ctx)?,
            span: tracing::trace_span!("RepNCSPELAN4"),
        })
    }

    pub fn params(&self) -> usize {
        self.cv1.params() + self.cv2.params() + self.cv3.params() + self.cv4.params()
    }
}

impl Module for Elan {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let _enter = self.span.enter();
        let y = self.cv1.forward(x)?;
        let (a, b) = chunk2(&y)?;
        let c = self.cv2.forward(&b)?;
        let d = self.cv3.forward(&c)?;
        self.cv4.forward_cat(&[&a, &b, &c, &d])
    }
}

/// SPPELAN: cv1, three chained 5x5 max pools (stride 1, pad 2), concat of the four, cv5.
#[derive(Debug, Clone)]
pub struct SppElan {
    cv1: ConvBlock,
    cv5: ConvBlock,
    span: tracing::Span,
}

impl SppElan {
    pub fn load(w: &Weights, c1: usize, c2: usize, c3: usize, ctx: &LoadCtx) -> Result<Self> {
        Ok(Self {
            cv1: ConvBlock::load_conv(&w.pp("cv1"), ConvShape::new(c1, c3, 1, 1), true, ctx)?,
            cv5: ConvBlock::load_conv(&w.pp("cv5"), ConvShape::new(4 * c3, c2, 1, 1), true, ctx)?,
            span: tracing::trace_span!("SPPELAN"),
        })
    }

    pub fn params(&self) -> usize {
        self.cv1.params() + self.cv5.params()
    }
}

impl Module for SppElan {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let _enter = self.span.enter();
        let y0 = self.cv1.forward(x)?;
        let y1 = max_pool(&y0, 5, 1, 2)?;
        let y2 = max_pool(&y1, 5, 1, 2)?;
        let y3 = max_pool(&y2, 5, 1, 2)?;
        self.cv5.forward_cat(&[&y0, &y1, &y2, &y3])
    }
}

/// SPPCSPC (yolov7-af): CSP around parallel max pools of sizes `k`.
#[derive(Debug, Clone)]
pub struct SppCspc {
    cv: [ConvBlock; 7],
    k: Vec<usize>,
    span: tracing::Span,
}

impl SppCspc {
    pub fn load(w: &Weights, c1: usize, c2: usize, e: f64, k: &[usize], ctx: &LoadCtx) -> Result<Self> {
        let c_ = (2.0 * c2 as f64 * e) as usize;
        let conv = |name: &str, cin: usize, cout: usize, ks: usize| {
            ConvBlock::load_conv(&w.pp(name), ConvShape::new(cin, cout, ks, 1), true, ctx)
        };
        Ok(Self {
            cv: [
                conv("cv1", c1, c_, 1)?,
                conv("cv2", c1, c_, 1)?,
                conv("cv3", c_, c_, 3)?,
                conv("cv4", c_, c_, 1)?,
                conv("cv5", 4 * c_, c_, 1)?,
                conv("cv6", c_, c_, 3)?,
                conv("cv7", 2 * c_, c2, 1)?,
            ],
            k: k.to_vec(),
            span: tracing::trace_span!("SPPCSPC"),
        })
    }

    pub fn params(&self) -> usize {
        self.cv.iter().map(ConvBlock::params).sum()
    }
}

impl Module for SppCspc {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let _enter = self.span.enter();
        let [cv1, cv2, cv3, cv4, cv5, cv6, cv7] = &self.cv;
        let x1 = cv4.forward(&cv3.forward(&cv1.forward(x)?)?)?;
        let mut parts = vec![x1.clone()];
        for &k in &self.k {
            parts.push(max_pool(&x1, k, 1, k / 2)?);
        }
        let y1 = cv6.forward(&cv5.forward_cat(&parts.iter().collect::<Vec<_>>())?)?;
        let y2 = cv2.forward(x)?;
        cv7.forward_cat(&[&y1, &y2])
    }
}

/// CBLinear: a 1x1 conv with bias whose output is split into the listed widths.
#[derive(Debug, Clone)]
pub struct CbLinear {
    conv: ConvBlock,
    c2s: Vec<usize>,
}

impl CbLinear {
    pub fn load(w: &Weights, c1: usize, c2s: &[usize], shape: ConvShape, ctx: &LoadCtx) -> Result<Self> {
        let total = c2s.iter().sum();
        let conv = ConvBlock::load_conv2d(&w.pp("conv"), ConvShape { c1, c2: total, ..shape }, ctx)?;
        Ok(Self { conv, c2s: c2s.to_vec() })
    }

    pub fn params(&self) -> usize {
        self.conv.params()
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Vec<Tensor>> {
        let y = self.conv.forward(x)?;
        let mut start = 0;
        let mut outs = Vec::with_capacity(self.c2s.len());
        for &c in &self.c2s {
            outs.push(y.narrow(1, start, c)?);
            start += c;
        }
        Ok(outs)
    }
}

/// CBFuse: nearest-resize the chosen split of each input to the last input's size and sum.
pub fn cb_fuse(splits: &[&Tensor], last: &Tensor) -> candle_core::Result<Tensor> {
    if splits.iter().copied().chain([last]).all(CpuConv::accepts) {
        return cpu_pool::cb_fuse(splits, last);
    }
    cb_fuse_candle(splits, last)
}

/// [`cb_fuse`] with Candle's ops (GPUs, and other dtypes).
fn cb_fuse_candle(splits: &[&Tensor], last: &Tensor) -> candle_core::Result<Tensor> {
    let (h, w) = (last.dim(D::Minus2)?, last.dim(D::Minus1)?);
    let mut acc: Option<Tensor> = None;
    for s in splits {
        let r =
            if s.dim(D::Minus2)? == h && s.dim(D::Minus1)? == w { (*s).clone() } else { s.upsample_nearest2d(h, w)? };
        acc = Some(match acc {
            None => r,
            Some(a) => (a + r)?,
        });
    }
    match acc {
        None => Ok(last.clone()),
        Some(a) => a + last,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use candle_core::Device;

    use super::*;

    /// The CPU CBFuse equals Candle's ops bit for bit: integer and fractional upsampling
    /// factors, a term already at the output size, channel slices (CBLinear's splits), batches.
    #[test]
    fn cb_fuse_matches_candle_ops() {
        let dev = Device::Cpu;
        let last = Tensor::randn(0f32, 1., (2, 3, 8, 12), &dev).unwrap();
        let wide = Tensor::randn(0f32, 1., (2, 7, 2, 3), &dev).unwrap();
        let slice = wide.narrow(1, 2, 3).unwrap();
        let odd = Tensor::randn(0f32, 1., (2, 3, 3, 5), &dev).unwrap();
        let same = Tensor::randn(0f32, 1., (2, 3, 8, 12), &dev).unwrap();
        let half = Tensor::randn(0f32, 1., (2, 3, 4, 6), &dev).unwrap();
        for splits in [vec![], vec![&slice], vec![&slice, &odd, &same, &half], vec![&same]] {
            let ours = cb_fuse(&splits, &last).unwrap();
            let want = cb_fuse_candle(&splits, &last).unwrap();
            let diff = (ours - want).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap();
            assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0, "{} splits", splits.len());
        }
        let wrong = Tensor::randn(0f32, 1., (2, 4, 2, 3), &dev).unwrap();
        assert!(cb_fuse(&[&wrong], &last).is_err());
    }
}
