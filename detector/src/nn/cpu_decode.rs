//! The detection head's decoding on the CPU in one parallel pass: DFL (softmax over the
//! distance bins, then their expectation), anchor distances to centre and size in pixels, and
//! the sigmoid of the class scores.
//!
//! Why: as a chain of Candle ops (cat, transpose copy, softmax, matmul, cat, sigmoid) it ran on
//! one thread and took 10–14 ms of a 260 ms gelan-s pass at 640; the same arithmetic here reads
//! each map once, writes no intermediate tensors and uses all threads.

use candle_core::{Device, Tensor};

use super::cpu_conv::{CpuConv, contiguous_f32, exp};
use super::cpu_gemm::Isa;
use super::fork_join;

/// One pyramid level of the head's raw output.
pub(crate) struct Level<'a> {
    /// `[b, 4 * reg_max, h, w]` distance bins (left, top, right, bottom).
    pub boxes: &'a Tensor,
    /// `[b, nc, h, w]` class logits.
    pub classes: &'a Tensor,
    pub stride: usize,
}

/// Whether the fast path takes these levels: f32 on the CPU.
pub(crate) fn accepts(levels: &[Level<'_>]) -> bool {
    levels.iter().all(|l| CpuConv::accepts(l.boxes) && CpuConv::accepts(l.classes))
}

/// `[b, 4 + nc, anchors]`: boxes as centre x, centre y, width, height in input pixels, then
/// class probabilities; anchors level by level, row-major within a level. `dfl` holds the bin
/// values (0, 1, ..., reg_max - 1 in trained models).
pub(crate) fn decode(levels: &[Level<'_>], dfl: &[f32]) -> candle_core::Result<Tensor> {
    let Some(first) = levels.first() else {
        candle_core::bail!("head: no levels to decode");
    };
    let (b, nc) = (first.classes.dim(0)?, first.classes.dim(1)?);
    let reg_max = dfl.len();
    // Contiguous copies only where needed (the convolutions' outputs already are).
    let mut maps = Vec::with_capacity(levels.len());
    for l in levels {
        let (lb, lc, h, w) = l.classes.dims4()?;
        if (lb, lc) != (b, nc) || l.boxes.dims4()? != (b, 4 * reg_max, h, w) {
            candle_core::bail!("head: level maps {:?} and {:?} do not match", l.boxes.shape(), l.classes.shape());
        }
        maps.push((l.boxes.contiguous()?, l.classes.contiguous()?, h * w, l.stride, w));
    }
    let n: usize = maps.iter().map(|m| m.2).sum();
    let guards: Vec<_> = maps.iter().map(|(bx, cl, ..)| (bx.storage_and_layout(), cl.storage_and_layout())).collect();
    let mut levels_data = Vec::with_capacity(maps.len());
    for ((_, _, len, stride, w), (bx, cl)) in maps.iter().zip(&guards) {
        let (boxes, classes) = (contiguous_f32(&bx.0, bx.1)?, contiguous_f32(&cl.0, cl.1)?);
        levels_data.push(LevelData { boxes, classes, len: *len, w: *w, stride: *stride as f32 });
    }

    let rows = 4 + nc;
    let mut out = vec![0f32; b * rows * n];
    // Rows 0..4 of each image first hold the expected distance to the left, top, right and
    // bottom side of every anchor (each side's softmax computed once), the others the class
    // probabilities; then the distances become boxes in place.
    fork_join::for_each_chunk_mut(&mut out, n, |i, row| {
        let (image, r) = (i / rows, i % rows);
        Isa::Native.dispatch(DecodeRow { levels: &levels_data, image, r, nc, dfl, row });
    });
    fork_join::for_each_chunk_mut(&mut out, rows * n, |_, image| {
        let (lt, rb) = image[..4 * n].split_at_mut(2 * n);
        let mut at = 0;
        for level in &levels_data {
            for q in 0..level.len {
                let anchor = [(q % level.w) as f32 + 0.5, (q / level.w) as f32 + 0.5];
                for (axis, a) in anchor.into_iter().enumerate() {
                    let j = axis * n + at + q;
                    to_box(a, level.stride, &mut lt[j], &mut rb[j]);
                }
            }
            at += level.len;
        }
    });
    Tensor::from_vec(out, (b, rows, n), &Device::Cpu)
}

/// Row `r` of image `image` of the decoded output over all levels (see [`decode`]), compiled
/// for the CPU's widest vectors through `pulp`'s dispatch: built for the baseline x86-64, the
/// exponentials ran 4 values at a time at most.
struct DecodeRow<'a> {
    levels: &'a [LevelData<'a>],
    image: usize,
    r: usize,
    nc: usize,
    dfl: &'a [f32],
    row: &'a mut [f32],
}

impl pulp::WithSimd for DecodeRow<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) {
        let DecodeRow { levels, image, r, nc, dfl, row } = self;
        let mut at = 0;
        for level in levels {
            let dst = &mut row[at..at + level.len];
            if r < 4 {
                distances(level, image, r, dfl, dst);
            } else {
                let src = &level.classes[(image * nc + r - 4) * level.len..][..level.len];
                dst.iter_mut().zip(src).for_each(|(d, &x)| *d = 1.0 / (1.0 + exp(-x)));
            }
            at += level.len;
        }
    }
}

/// As the official `dist2bbox`, on one axis: the distances `near` (left or top) and `far` of an
/// anchor at `a` become the centre and the size, times the stride: `x1 = a - near`,
/// `x2 = a + far`, centre `(x1 + x2) / 2`, size `x2 - x1`.
fn to_box(a: f32, stride: f32, near: &mut f32, far: &mut f32) {
    let (x1, x2) = (a - *near, a + *far);
    *near = (x1 + x2) / 2.0 * stride;
    *far = (x2 - x1) * stride;
}

struct LevelData<'a> {
    boxes: &'a [f32],
    classes: &'a [f32],
    /// Anchors (h * w) and row width.
    len: usize,
    w: usize,
    stride: f32,
}

/// The expected distance on `side` (0 left, 1 top, 2 right, 3 bottom) for every anchor:
/// softmax over the bins, weighted by the bin values. Loops run over anchors (contiguous) so
/// that they vectorise (inlined into [`DecodeRow`]'s dispatched code).
#[inline(always)]
fn distances(level: &LevelData<'_>, image: usize, side: usize, dfl: &[f32], out: &mut [f32]) {
    let reg_max = dfl.len();
    let bins = |i: usize| &level.boxes[((image * 4 + side) * reg_max + i) * level.len..][..level.len];
    let mut max = bins(0).to_vec();
    for i in 1..reg_max {
        max.iter_mut().zip(bins(i)).for_each(|(m, &v)| *m = m.max(v));
    }
    let mut sum = vec![0f32; level.len];
    out.fill(0.0);
    for (i, &weight) in dfl.iter().enumerate() {
        for (((o, s), &m), &v) in out.iter_mut().zip(&mut sum).zip(&max).zip(bins(i)) {
            let e = exp(v - m);
            *s += e;
            *o += e * weight;
        }
    }
    out.iter_mut().zip(&sum).for_each(|(o, s)| *o /= s);
}
