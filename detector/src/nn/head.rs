//! Detection heads: Detect / DDetect, and the inference branch of DualDDetect / TripleDDetect.

use std::sync::Mutex;

use candle_core::{DType, Device, Module, Tensor};

use super::conv::{ConvBlock, ConvShape, LoadCtx, channel_slice};
use super::cpu_decode;
use crate::error::Result;
use crate::spec::HeadKind;
use crate::weights::Weights;

/// DFL bins per box side.
pub const REG_MAX: usize = 16;

/// Names of the (box, class, DFL) modules of each branch of a multi-branch head.
const BRANCH_NAMES: [(&str, &str, &str); 3] = [("cv2", "cv3", "dfl"), ("cv4", "cv5", "dfl2"), ("cv6", "cv7", "dfl3")];

fn make_divisible(x: usize, d: usize) -> usize {
    x.div_ceil(d) * d
}

/// The convolutions of one head branch (one entry per level).
struct Branch {
    /// The first box and class convolutions (both 3x3 over the level's input) as one: its
    /// first `box_channels` outputs start the box branch, the rest the class branch.
    stems: Vec<ConvBlock>,
    box_channels: usize,
    box_convs: Vec<[ConvBlock; 2]>,
    cls_convs: Vec<[ConvBlock; 2]>,
    /// DFL projection weights (0..15 in official files), shape (16, 1), f32 (decoding runs in f32).
    dfl: Tensor,
    /// The same bin values on the host, for the CPU decoder.
    dfl_values: Vec<f32>,
}

impl Branch {
    fn load(w: &Weights, kind: HeadKind, branch: usize, nc: usize, ch: &[usize], ctx: &LoadCtx) -> Result<Self> {
        let (box_name, cls_name, dfl_name) = BRANCH_NAMES[branch];
        let c0 = ch[0];
        let grouped = kind != HeadKind::Detect;
        let c2 = (c0 / 4).max(REG_MAX * 4).max(16);
        let c2 = if grouped { make_divisible(c2, 4) } else { c2 };
        let c3 = c0.max((nc * 2).min(128));
        let g = if grouped { 4 } else { 1 };
        let mut stems = Vec::with_capacity(ch.len());
        let mut box_convs = Vec::with_capacity(ch.len());
        let mut cls_convs = Vec::with_capacity(ch.len());
        for (l, &x) in ch.iter().enumerate() {
            let (b, c) = (w.pp(box_name).pp(l), w.pp(cls_name).pp(l));
            let firsts = [(&b.pp(0), ConvShape::new(x, c2, 3, 1)), (&c.pp(0), ConvShape::new(x, c3, 3, 1))];
            stems.push(ConvBlock::load_convs_as_one(&firsts, ctx)?);
            box_convs.push([
                ConvBlock::load_conv(&b.pp(1), ConvShape::new(c2, c2, 3, 1).groups(g), true, ctx)?,
                ConvBlock::load_conv2d(&b.pp(2), ConvShape::new(c2, 4 * REG_MAX, 1, 1).groups(g), ctx)?,
            ]);
            cls_convs.push([
                ConvBlock::load_conv(&c.pp(1), ConvShape::new(c3, c3, 3, 1), true, ctx)?,
                ConvBlock::load_conv2d(&c.pp(2), ConvShape::new(c3, nc, 1, 1), ctx)?,
            ]);
        }
        let dfl = w.pp(dfl_name).pp("conv").get("weight", &[1, REG_MAX, 1, 1])?;
        let dfl = dfl.reshape((REG_MAX, 1))?.to_device(&ctx.device)?.to_dtype(DType::F32)?;
        let dfl_values = dfl.flatten_all()?.to_vec1::<f32>()?;
        Ok(Self { stems, box_channels: c2, box_convs, cls_convs, dfl, dfl_values })
    }

    fn params(&self) -> usize {
        let convs = self
            .box_convs
            .iter()
            .chain(&self.cls_convs)
            .flatten()
            .chain(&self.stems)
            .map(ConvBlock::params)
            .sum::<usize>();
        convs + self.dfl.elem_count()
    }
}

/// Anchor points and strides, valid for these level sizes.
type AnchorCache = (Vec<(usize, usize)>, Tensor, Tensor);

/// The head as it runs at inference: one branch, decoded to the official `pred` tensor.
pub struct Head {
    kind: HeadKind,
    nc: usize,
    strides: Vec<usize>,
    branch: Branch,
    /// Which of the head's inputs the inference branch reads.
    input_offset: usize,
    /// Anchor points and strides for the last input size.
    anchors: Mutex<Option<AnchorCache>>,
    span: tracing::Span,
}

/// Output of the head: `pred` (batch, 4 + nc, anchors) = cx, cy, w, h in input pixels, then
/// class scores after the sigmoid; and per level the raw box and class maps.
pub struct HeadOutput {
    pub pred: Tensor,
    /// Per level: (batch, 64, h, w) distance bins and (batch, nc, h, w) class logits.
    pub levels: Vec<(Tensor, Tensor)>,
}

impl HeadOutput {
    /// The raw maps per level as the official head returns them: (batch, 64 + nc, h, w).
    pub fn raw(&self) -> candle_core::Result<Vec<Tensor>> {
        self.levels.iter().map(|(bx, cl)| Tensor::cat(&[bx, cl], 1)).collect()
    }
}

impl Head {
    /// Builds every branch present in the file (so an unexpected or missing tensor is caught)
    /// and keeps only the one the official `detect*.py` uses: the last.
    pub fn load(
        w: &Weights,
        kind: HeadKind,
        nc: usize,
        ch: &[usize],
        strides: &[usize],
        ctx: &LoadCtx,
    ) -> Result<Self> {
        let nb = kind.branches();
        let nl = ch.len() / nb;
        let mut last = None;
        for b in 0..nb {
            let chs = &ch[b * nl..(b + 1) * nl];
            last = Some(Branch::load(w, kind, b, nc, chs, ctx)?);
        }
        let branch = last.ok_or_else(|| crate::error::Error::Spec("detection head without inputs".into()))?;
        Ok(Self {
            kind,
            nc,
            strides: strides[(nb - 1) * nl..].to_vec(),
            branch,
            input_offset: (nb - 1) * nl,
            anchors: Mutex::new(None),
            span: tracing::trace_span!("head", kind = ?kind),
        })
    }

    pub fn kind(&self) -> HeadKind {
        self.kind
    }

    pub fn nc(&self) -> usize {
        self.nc
    }

    pub fn strides(&self) -> &[usize] {
        &self.strides
    }

    /// Index into the head's `from` list of the first input the inference branch uses.
    pub fn input_offset(&self) -> usize {
        self.input_offset
    }

    pub fn params(&self) -> usize {
        self.branch.params()
    }

    /// Anchor centres (x + 0.5, y + 0.5 per cell, row-major, levels concatenated) and the
    /// stride of each anchor, as (1, 2, n) and (1, 1, n) tensors.
    fn anchors(
        &self,
        sizes: &[(usize, usize)],
        device: &Device,
        dtype: DType,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let mut cache = self.anchors.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((s, a, st)) = cache.as_ref()
            && s == sizes
            && a.dtype() == dtype
        {
            return Ok((a.clone(), st.clone()));
        }
        let n: usize = sizes.iter().map(|(h, w)| h * w).sum();
        let mut xs = Vec::with_capacity(n);
        let mut ys = Vec::with_capacity(n);
        let mut st = Vec::with_capacity(n);
        for (&(h, w), &stride) in sizes.iter().zip(&self.strides) {
            for y in 0..h {
                for x in 0..w {
                    xs.push(x as f32 + 0.5);
                    ys.push(y as f32 + 0.5);
                    st.push(stride as f32);
                }
            }
        }
        xs.extend(ys);
        let a = Tensor::from_vec(xs, (1, 2, n), device)?.to_dtype(dtype)?;
        let s = Tensor::from_vec(st, (1, 1, n), device)?.to_dtype(dtype)?;
        *cache = Some((sizes.to_vec(), a.clone(), s.clone()));
        Ok((a, s))
    }

    /// `xs` are the inputs of the inference branch, one per level.
    pub fn forward(&self, xs: &[&Tensor]) -> candle_core::Result<HeadOutput> {
        let _enter = self.span.enter();
        let mut levels = Vec::with_capacity(xs.len());
        let branch = &self.branch;
        for (l, x) in xs.iter().enumerate() {
            let stem = branch.stems[l].forward(x)?;
            let split = branch.box_channels;
            let mut bx = channel_slice(&stem, 0, split)?;
            for c in &branch.box_convs[l] {
                bx = c.forward(&bx)?;
            }
            let mut cl = channel_slice(&stem, split, stem.dim(1)? - split)?;
            for c in &branch.cls_convs[l] {
                cl = c.forward(&cl)?;
            }
            levels.push((bx, cl));
        }
        let fast: Vec<_> = levels
            .iter()
            .zip(&self.strides)
            .map(|((boxes, classes), &stride)| cpu_decode::Level { boxes, classes, stride })
            .collect();
        let pred = if cpu_decode::accepts(&fast) {
            cpu_decode::decode(&fast, &self.branch.dfl_values)?
        } else {
            self.decode(&levels)?
        };
        Ok(HeadOutput { pred, levels })
    }

    /// [`cpu_decode::decode`] as Candle ops, for GPUs and other dtypes.
    fn decode(&self, levels: &[(Tensor, Tensor)]) -> candle_core::Result<Tensor> {
        let no = self.nc + 4 * REG_MAX;
        let mut flat = Vec::with_capacity(levels.len());
        let mut sizes = Vec::with_capacity(levels.len());
        for (bx, cl) in levels {
            let (b, _, h, w) = bx.dims4()?;
            sizes.push((h, w));
            flat.push(Tensor::cat(&[bx, cl], 1)?.reshape((b, no, h * w))?);
        }
        let b = flat.first().map(|x| x.dim(0)).transpose()?.unwrap_or(1);
        // Decoding (DFL softmax, anchors, sigmoid) runs in f32 whatever the network's precision:
        // box corners up to 640 px need more than f16's 11 and bf16's 8 bits of mantissa.
        let all = Tensor::cat(&flat, 2)?.to_dtype(DType::F32)?;
        let n = all.dim(2)?;
        let boxes = all.narrow(1, 0, 4 * REG_MAX)?;
        let cls = all.narrow(1, 4 * REG_MAX, self.nc)?;
        // DFL: softmax over the 16 bins of each side, expectation with the projection weights.
        let bins = boxes.reshape((b, 4, REG_MAX, n))?.transpose(2, 3)?.contiguous()?;
        let probs = candle_nn::ops::softmax_last_dim(&bins)?;
        let dist = probs.broadcast_matmul(&self.branch.dfl)?.reshape((b, 4, n))?;
        let (anchors, strides) = self.anchors(&sizes, all.device(), all.dtype())?;
        let lt = dist.narrow(1, 0, 2)?;
        let rb = dist.narrow(1, 2, 2)?;
        let x1y1 = anchors.broadcast_sub(&lt)?;
        let x2y2 = anchors.broadcast_add(&rb)?;
        let centre = ((&x1y1 + &x2y2)? / 2.0)?;
        let wh = (x2y2 - x1y1)?;
        let dbox = Tensor::cat(&[centre, wh], 1)?.broadcast_mul(&strides)?;
        Tensor::cat(&[dbox, candle_nn::ops::sigmoid(&cls)?], 1)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// The CPU decoder and the Candle ops (the GPU path) decode the same maps alike.
    #[test]
    fn cpu_decoder_matches_the_candle_ops() {
        let dev = Device::Cpu;
        let nc = 3;
        let dfl = Tensor::arange(0f32, REG_MAX as f32, &dev).unwrap().reshape((REG_MAX, 1)).unwrap();
        let head = Head {
            kind: HeadKind::DDetect,
            nc,
            strides: vec![8, 16],
            branch: Branch {
                stems: vec![],
                box_channels: 0,
                box_convs: vec![],
                cls_convs: vec![],
                dfl_values: dfl.flatten_all().unwrap().to_vec1().unwrap(),
                dfl,
            },
            input_offset: 0,
            anchors: Mutex::new(None),
            span: tracing::Span::none(),
        };
        // Non-square levels, so that swapped x and y would show; batch 2.
        let levels: Vec<(Tensor, Tensor)> = [(4, 5), (2, 3)]
            .iter()
            .map(|&(h, w)| {
                let boxes = Tensor::randn(0f32, 3., (2, 4 * REG_MAX, h, w), &dev).unwrap();
                (boxes, Tensor::randn(0f32, 3., (2, nc, h, w), &dev).unwrap())
            })
            .collect();
        let want = head.decode(&levels).unwrap();
        let fast: Vec<_> = levels
            .iter()
            .zip(&head.strides)
            .map(|((boxes, classes), &stride)| cpu_decode::Level { boxes, classes, stride })
            .collect();
        assert!(cpu_decode::accepts(&fast));
        let got = cpu_decode::decode(&fast, &head.branch.dfl_values).unwrap();
        assert_eq!(got.dims(), &[2, 4 + nc, 26]);
        assert_eq!(got.dims(), want.dims());
        let diff = (got - want).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() < 1e-4);
    }
}
