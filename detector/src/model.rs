//! The network: layers built from a resolved spec, run in order with the official `from`
//! wiring. Only the inference path is kept; the auxiliary (PGI) branch is checked and dropped.

use std::time::Instant;

use candle_core::{Module, Tensor};

use crate::error::{Error, Result};
use crate::nn::blocks::{AConv, ADown, CbLinear, Elan, SppCspc, SppElan, cb_fuse, max_pool, upsample_nearest};
use crate::nn::conv::{ConvBlock, ConvShape, LoadCtx, count_macs};
use crate::nn::head::{Head, HeadOutput};
use crate::spec::{IMAGE, Module as Spec, ResolvedLayer, inference_layers};
use crate::weights::TensorStore;

/// A runnable top-level layer.
enum Block {
    Conv(ConvBlock),
    AConv(AConv),
    ADown(ADown),
    Elan(Box<Elan>),
    SppElan(SppElan),
    SppCspc(Box<SppCspc>),
    MaxPool(usize),
    Upsample(usize),
    Silence,
    /// `n > 1` repeats of a single-input block (official `nn.Sequential`).
    Repeat(Vec<Block>),
    Concat,
    CbLinear(CbLinear),
    CbFuse(Vec<usize>),
    Head(Box<Head>),
}

impl Block {
    fn forward_one(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::Conv(m) => m.forward(x),
            Self::AConv(m) => m.forward(x),
            Self::ADown(m) => m.forward(x),
            Self::Elan(m) => m.forward(x),
            Self::SppElan(m) => m.forward(x),
            Self::SppCspc(m) => m.forward(x),
            Self::MaxPool(k) => max_pool(x, *k, *k, 0),
            Self::Upsample(s) => upsample_nearest(x, *s),
            Self::Silence => Ok(x.clone()),
            Self::Repeat(blocks) => {
                let mut y = x.clone();
                for b in blocks {
                    y = b.forward_one(&y)?;
                }
                Ok(y)
            }
            Self::Concat | Self::CbLinear(_) | Self::CbFuse(_) | Self::Head(_) => {
                candle_core::bail!("multi-input layer used as a single-input one")
            }
        }
    }
}

/// A layer's output: one tensor, or the splits of a CBLinear.
#[derive(Debug, Clone)]
pub enum LayerOutput {
    One(Tensor),
    Split(Vec<Tensor>),
}

impl LayerOutput {
    fn one(&self) -> candle_core::Result<&Tensor> {
        match self {
            Self::One(t) => Ok(t),
            Self::Split(_) => candle_core::bail!("a CBLinear output can only feed CBFuse"),
        }
    }

    /// Shape of the output (the first split for CBLinear).
    pub fn shape(&self) -> Vec<usize> {
        match self {
            Self::One(t) => t.dims().to_vec(),
            Self::Split(ts) => ts.first().map(|t| t.dims().to_vec()).unwrap_or_default(),
        }
    }
}

/// One row of the per-layer profile.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LayerTiming {
    pub index: usize,
    pub module: &'static str,
    pub shape: Vec<usize>,
    pub ms: f64,
}

/// One row of the layer table.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LayerInfo {
    pub index: usize,
    pub from: Vec<i64>,
    pub module: &'static str,
    pub params: usize,
    /// Whether the layer is on the inference path (false: auxiliary PGI branch, dropped).
    pub inference: bool,
}

struct Layer {
    index: usize,
    from: Vec<usize>,
    module: &'static str,
    block: Option<Block>,
    params: usize,
}

pub struct Model {
    layers: Vec<Layer>,
    /// For each layer, the last layer that reads its output (to free memory early).
    last_use: Vec<usize>,
    pub(crate) device: candle_core::Device,
}

impl Block {
    /// Parameters after folding.
    fn params(&self) -> usize {
        match self {
            Self::Conv(m) => m.params(),
            Self::AConv(m) => m.params(),
            Self::ADown(m) => m.params(),
            Self::Elan(m) => m.params(),
            Self::SppElan(m) => m.params(),
            Self::SppCspc(m) => m.params(),
            Self::CbLinear(m) => m.params(),
            Self::Head(m) => m.params(),
            Self::Repeat(bs) => bs.iter().map(Block::params).sum(),
            Self::MaxPool(_) | Self::Upsample(_) | Self::Silence | Self::Concat | Self::CbFuse(_) => 0,
        }
    }
}

impl Model {
    /// Builds every layer from `store` (failing on the first missing or mis-shaped tensor),
    /// then keeps the inference path only.
    pub fn load(resolved: &[ResolvedLayer], store: &TensorStore, ctx: &LoadCtx) -> Result<Self> {
        let needed = inference_layers(resolved);
        let root = store.root().pp("model");
        let mut layers = Vec::with_capacity(resolved.len());
        for (layer, &keep) in resolved.iter().zip(&needed) {
            let w = root.layer(layer.index, layer.module.name());
            let build_one = |w: &crate::weights::Weights| -> Result<Block> {
                Ok(match &layer.module {
                    Spec::Conv { c1, c2, k, s, p, g, d, act } => {
                        let shape = ConvShape { c1: *c1, c2: *c2, k: *k, s: *s, p: *p, g: *g, d: *d };
                        Block::Conv(ConvBlock::load_conv(w, shape, *act, ctx)?)
                    }
                    Spec::AConv { c1, c2 } => Block::AConv(AConv::load(w, *c1, *c2, ctx)?),
                    Spec::ADown { c1, c2 } => Block::ADown(ADown::load(w, *c1, *c2, ctx)?),
                    Spec::Elan1 { c1, c2, c3, c4 } => {
                        Block::Elan(Box::new(Elan::load_elan1(w, *c1, *c2, *c3, *c4, ctx)?))
                    }
                    Spec::RepNCSPELAN4 { c1, c2, c3, c4, c5 } => {
                        Block::Elan(Box::new(Elan::load_repncspelan4(w, *c1, *c2, *c3, *c4, *c5, ctx)?))
                    }
                    Spec::SppElan { c1, c2, c3 } => Block::SppElan(SppElan::load(w, *c1, *c2, *c3, ctx)?),
                    Spec::SppCspc { c1, c2, e, k } => Block::SppCspc(Box::new(SppCspc::load(w, *c1, *c2, *e, k, ctx)?)),
                    Spec::MaxPool { k } => Block::MaxPool(*k),
                    Spec::Concat => Block::Concat,
                    Spec::Upsample { scale } => Block::Upsample(*scale),
                    Spec::Silence => Block::Silence,
                    Spec::CbLinear { c1, c2s, k, s, p, g } => {
                        let shape = ConvShape { c1: *c1, c2: 0, k: *k, s: *s, p: *p, g: *g, d: 1 };
                        Block::CbLinear(CbLinear::load(w, *c1, c2s, shape, ctx)?)
                    }
                    Spec::CbFuse { idx } => Block::CbFuse(idx.clone()),
                    Spec::Head { kind, nc, ch, strides } => {
                        Block::Head(Box::new(Head::load(w, *kind, *nc, ch, strides, ctx)?))
                    }
                })
            };
            let block = if layer.repeats > 1 {
                Block::Repeat((0..layer.repeats).map(|r| build_one(&w.pp(r))).collect::<Result<_>>()?)
            } else {
                build_one(&w)?
            };
            let params = block.params();
            layers.push(Layer {
                index: layer.index,
                from: layer.from.clone(),
                module: layer.module.name(),
                block: keep.then_some(block),
                params,
            });
        }
        let mut last_use: Vec<usize> = (0..layers.len()).collect();
        for l in layers.iter().filter(|l| l.block.is_some()) {
            for &f in &l.from {
                if f != IMAGE {
                    last_use[f] = last_use[f].max(l.index);
                }
            }
        }
        if layers.last().and_then(|l| l.block.as_ref()).is_none() {
            return Err(Error::Spec("the model has no detection head".into()));
        }
        Ok(Self { layers, last_use, device: ctx.device.clone() })
    }

    fn head(&self) -> Option<&Head> {
        match self.layers.last().and_then(|l| l.block.as_ref()) {
            Some(Block::Head(h)) => Some(h),
            _ => None,
        }
    }

    pub fn nc(&self) -> usize {
        self.head().map(Head::nc).unwrap_or(0)
    }

    /// Detection strides of the inference branch (8, 16, 32 for the official models).
    pub fn strides(&self) -> Vec<usize> {
        self.head().map(|h| h.strides().to_vec()).unwrap_or_default()
    }

    /// Parameters of the inference model after fusing (the official fused `model_info` count).
    pub fn params(&self) -> usize {
        self.layers.iter().filter(|l| l.block.is_some()).map(|l| l.params).sum()
    }

    pub fn layer_table(&self) -> Vec<LayerInfo> {
        self.layers
            .iter()
            .map(|l| LayerInfo {
                index: l.index,
                from: l.from.iter().map(|&f| if f == IMAGE { -1 } else { f as i64 }).collect(),
                module: l.module,
                params: l.params,
                inference: l.block.is_some(),
            })
            .collect()
    }

    /// GFLOPs of one forward pass at `imgsz` x `imgsz`, counted like the official `model_info`
    /// (convolution multiply-adds x 2 on a stride-sized input, scaled to `imgsz`).
    pub fn gflops(&self, imgsz: usize, dtype: candle_core::DType) -> Result<f64> {
        let stride = self.strides().into_iter().max().unwrap_or(32).max(32);
        let x = Tensor::zeros((1, 3, stride, stride), dtype, &self.device)?;
        let (out, macs) = count_macs(|| self.run(&x, &mut |_, _, _| {}, false));
        out?;
        let scale = (imgsz as f64 / stride as f64).powi(2);
        Ok(macs * 2.0 * scale / 1e9)
    }

    /// Runs the network. `observe(index, module, output)` sees every inference layer's output.
    /// With `keep_all`, no intermediate output is freed (for capturing them all).
    fn run(
        &self,
        x: &Tensor,
        observe: &mut dyn FnMut(usize, &'static str, &LayerOutput),
        keep_all: bool,
    ) -> candle_core::Result<HeadOutput> {
        let mut outputs: Vec<Option<LayerOutput>> = vec![None; self.layers.len()];
        for layer in &self.layers {
            let Some(block) = &layer.block else { continue };
            let input = |j: usize| -> candle_core::Result<&LayerOutput> {
                let f = layer.from[j];
                outputs[f]
                    .as_ref()
                    .ok_or_else(|| candle_core::Error::Msg(format!("layer {} input {f} missing", layer.index)))
            };
            let first = |outputs_x: &Tensor| -> candle_core::Result<Tensor> {
                if layer.from[0] == IMAGE { Ok(outputs_x.clone()) } else { Ok(input(0)?.one()?.clone()) }
            };
            let out = match block {
                Block::Concat => {
                    let parts = (0..layer.from.len())
                        .map(|j| input(j)?.one().cloned())
                        .collect::<candle_core::Result<Vec<_>>>()?;
                    LayerOutput::One(crate::nn::cat_channels(&parts)?)
                }
                Block::CbLinear(m) => LayerOutput::Split(m.forward(&first(x)?)?),
                Block::CbFuse(idx) => {
                    let n = layer.from.len();
                    let mut splits = Vec::with_capacity(n - 1);
                    for (j, &i) in idx.iter().enumerate() {
                        match input(j)? {
                            LayerOutput::Split(s) => splits.push(
                                s.get(i).ok_or_else(|| candle_core::Error::Msg(format!("CBFuse split {i} missing")))?,
                            ),
                            LayerOutput::One(_) => candle_core::bail!("CBFuse input is not a CBLinear"),
                        }
                    }
                    LayerOutput::One(cb_fuse(&splits, input(n - 1)?.one()?)?)
                }
                Block::Head(h) => {
                    let ins = (h.input_offset()..layer.from.len())
                        .map(|j| input(j)?.one())
                        .collect::<candle_core::Result<Vec<_>>>()?;
                    return h.forward(&ins).inspect(|o| {
                        observe(layer.index, layer.module, &LayerOutput::One(o.pred.clone()));
                    });
                }
                single => LayerOutput::One(single.forward_one(&first(x)?)?),
            };
            observe(layer.index, layer.module, &out);
            outputs[layer.index] = Some(out);
            if !keep_all {
                for &f in &layer.from {
                    if f != IMAGE && self.last_use[f] <= layer.index {
                        outputs[f] = None;
                    }
                }
            }
        }
        candle_core::bail!("the model has no detection head")
    }

    /// Plain forward pass: `x` is (batch, 3, h, w) in 0..1.
    pub fn forward(&self, x: &Tensor) -> Result<HeadOutput> {
        Ok(self.run(x, &mut |_, _, _| {}, false)?)
    }

    /// Forward pass that also returns every inference layer's output (parity checks).
    pub fn forward_capture(&self, x: &Tensor) -> Result<(HeadOutput, Vec<(usize, LayerOutput)>)> {
        let mut captured = Vec::new();
        let out = self.run(x, &mut |i, _, o| captured.push((i, o.clone())), true)?;
        Ok((out, captured))
    }

    /// Forward pass timing each top-level layer; the device is synchronised after every layer
    /// so each time is the layer's own.
    pub fn forward_profiled(&self, x: &Tensor) -> Result<(HeadOutput, Vec<LayerTiming>)> {
        let mut timings = Vec::with_capacity(self.layers.len());
        let device = self.device.clone();
        device.synchronize()?;
        let mut t0 = Instant::now();
        let mut sync_err = None;
        let out = self.run(
            x,
            &mut |index, module, o| {
                if let Err(e) = device.synchronize() {
                    sync_err = Some(e);
                }
                let now = Instant::now();
                timings.push(LayerTiming { index, module, shape: o.shape(), ms: (now - t0).as_secs_f64() * 1e3 });
                t0 = Instant::now();
            },
            false,
        )?;
        if let Some(e) = sync_err {
            return Err(e.into());
        }
        Ok((out, timings))
    }
}
