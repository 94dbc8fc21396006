//! Convolutions on small maps with the output channels on the SIMD lanes.
//!
//! Why: [`cpu_gemm`]'s kernel puts pixels on the lanes (48 per micro-panel on AVX-512) and
//! broadcasts weights. The deep stride-2 layers of these networks have few pixels and many
//! channels (192 -> 256 onto 10x10 at 320x320): there 100 pixels are 109 "wide" pixels (junk
//! columns included), cut into micro-panels of 48, 48 and 16, and tasks split the output
//! channels, each streaming its weights once per micro-panel. Such layers reached 145-180
//! GFLOP/s where ONNX Runtime reached 230-285.
//!
//! Here a register tile is `P` pixels of one output row x `NV` vectors of output channels: per
//! depth row it loads `NV` vectors of weights and broadcasts `P` input values. Broadcasts need
//! no contiguous pixels, so the input is padded into plain planes (no split by stride phase),
//! once per convolution by [`cpu_gemm::pad_all`], and all tasks read it. Output rows are cut
//! into tiles of up to 10 pixels on AVX-512 (6 with 16 registers), so a 10x10 map is ten tiles
//! and no junk. A task is one image's panel of [`LANE_PANEL`] output channels over a block of
//! output rows, depth block by depth block (the block's weights stay in L1 for all its tiles);
//! after the last, bias and activation are applied in registers and the tiles are transposed
//! onto the NCHW output rows.
//!
//! [`suits`] keeps it to maps of up to 40x40: there it was as fast as the direct path or up to
//! 10 % faster, at 80x80 1.3x slower (its tiles then stream their input from L2).
//!
//! [`cpu_gemm`]: super::cpu_gemm
//! [`cpu_gemm::pad_all`]: super::cpu_gemm::pad_all

use std::mem::MaybeUninit;

use pulp::Simd;

use super::cpu_conv::{Geometry, act_vec, has_act_vec};
use super::cpu_gemm::{
    Aligned, Filler, Input, Isa, PADDED, PANEL_ROWS, PackedWeights, Scratch, aligned, epilogue, fill,
    hand_out_segments, pad_all, spaced_plane,
};
use super::fork_join;
use crate::spec::Activation;

/// Output channels per weight panel: two AVX-512 vectors (AVX2 and NEON tiles take a part).
pub(crate) const LANE_PANEL: usize = 32;
/// Most pixels per tile with 32 vector registers: 2 x 10 accumulators, 2 weight vectors and a
/// broadcast value. At 12 the compiler spilled the tile to the stack and it ran at half speed.
const MAX_TILE_PIXELS: usize = 10;
/// The same with 16 registers (AVX2).
const MAX_TILE_PIXELS_16: usize = 6;
/// Most depth rows per block: its weights (18 KiB) stay in L1.
const DEPTH_BLOCK: usize = 144;

/// Weights of an ungrouped convolution packed with output channels innermost: per panel of
/// [`LANE_PANEL`] channels, for each depth row (input channel x tap) the panel's weights,
/// zero past the last channel.
#[derive(Debug, Clone)]
pub(crate) struct LaneWeights {
    depth: usize,
    channels: usize,
    /// The weights start `skip` values in, on a cache line: the tiles load whole rows of
    /// them as vectors, which would straddle two lines each otherwise.
    data: Vec<f32>,
    skip: usize,
}

impl LaneWeights {
    /// The same weights as `packed` (one group), repacked.
    pub fn new(packed: &PackedWeights) -> Self {
        let (channels, depth) = (packed.rows(), packed.depth());
        let panels = channels.div_ceil(LANE_PANEL);
        let mut data = Vec::new();
        let weights = aligned(&mut data, panels * depth * LANE_PANEL);
        weights.fill(0.0);
        for c in 0..channels {
            let rows = packed.panel(0, c / PANEL_ROWS, 0..depth);
            let panel = &mut weights[c / LANE_PANEL * depth * LANE_PANEL..][..depth * LANE_PANEL];
            for (dst, row) in panel.chunks_exact_mut(LANE_PANEL).zip(rows) {
                dst[c % LANE_PANEL] = row[c % PANEL_ROWS];
            }
        }
        let skip = weights.as_ptr().addr().wrapping_sub(data.as_ptr().addr()) / std::mem::size_of::<f32>();
        Self { depth, channels, data, skip }
    }

    fn panels(&self) -> usize {
        self.channels.div_ceil(LANE_PANEL)
    }

    /// All depth rows of panel `panel`.
    fn panel(&self, panel: usize) -> &[f32] {
        &self.data[self.skip + panel * self.depth * LANE_PANEL..][..self.depth * LANE_PANEL]
    }
}

/// Whether a convolution with this geometry onto a `ho x wo` map takes this path: ungrouped,
/// kernels over 1x1 with stride 1 or 2, and maps of at most `MAX_PIXELS`.
pub(crate) fn suits(geo: Geometry, ho: usize, wo: usize) -> bool {
    const MAX_PIXELS: usize = 1600;
    geo.g == 1 && geo.k > 1 && geo.s <= 2 && ho * wo <= MAX_PIXELS
}

/// Everything a task reads.
struct Shared<'a> {
    /// Every image's padded input, `image_len` values each.
    padded: &'a [f32],
    image_len: usize,
    /// The offset of each depth row in an image's padded input.
    offsets: &'a [usize],
    /// Taps per input channel (depth blocks are whole channels).
    taps: usize,
    weights: &'a LaneWeights,
    bias: &'a [f32],
    act: Option<Activation>,
    residual: Option<&'a [f32]>,
    c2: usize,
    ho: usize,
    wo: usize,
    /// Padded input row length, and the stride.
    row_len: usize,
    s: usize,
}

/// Output rows `rows` of one image's panel of output channels.
struct Task<'a> {
    image: usize,
    panel: usize,
    rows: std::ops::Range<usize>,
    /// One row segment per output channel of the panel.
    out: Vec<Filler<'a>>,
}

/// `out = act(conv(input) + bias) (+ residual)` for a whole batch, as [`cpu_gemm::conv`]
/// (`out` uninitialised, NCHW); for the geometries of [`suits`]. Returns whether every value of
/// it was written.
///
/// [`cpu_gemm::conv`]: super::cpu_gemm::conv
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv(
    isa: Isa,
    input: Input<'_>,
    batch: usize,
    geo: Geometry,
    weights: &LaneWeights,
    bias: &[f32],
    act: Option<Activation>,
    residual: Option<&[f32]>,
    out: &mut [MaybeUninit<f32>],
) -> bool {
    let (ho, wo) = geo.out_size(input.h, input.w);
    let s = geo.s;
    // Plain zero-padded planes (no phase split: the tiles only broadcast from them), the rows
    // the output reads.
    let span = geo.d * (geo.k - 1) + 1;
    let (rows, row_len) = ((ho - 1) * s + span, input.w + 2 * geo.p);
    let plane_stride = spaced_plane(rows * row_len);
    let taps: Vec<usize> = (0..geo.k * geo.k).map(|t| (t / geo.k * row_len + t % geo.k) * geo.d).collect();
    let offsets: Vec<usize> = (0..geo.c1).flat_map(|ci| taps.iter().map(move |t| ci * plane_stride + t)).collect();
    let mut padded = PADDED.with(|cell| std::mem::take(&mut *cell.borrow_mut()));
    let filled = pad_all(isa, &input, batch, (geo.p, 1), (rows, row_len), plane_stride, &mut padded, 0) && {
        // Blocks of output rows so that the tasks, all the same size, split evenly over the
        // threads.
        let panels = weights.panels();
        let threads = fork_join::threads();
        let row_blocks = (1..=ho).find(|blocks| (batch * panels * blocks).is_multiple_of(threads)).unwrap_or(ho);
        let cuts: Vec<usize> = (0..=row_blocks).map(|i| i * ho / row_blocks).collect();
        let pixel_cuts: Vec<usize> = cuts.iter().map(|&row| row * wo).collect();
        let plane = ho * wo;
        let out_len = out.len();
        let mut tasks = Vec::with_capacity(batch * panels * row_blocks);
        for (image, out) in out.chunks_exact_mut(geo.c2 * plane).enumerate().take(batch) {
            let first = tasks.len();
            for panel in 0..panels {
                for rows in cuts.windows(2) {
                    let out = Vec::with_capacity(LANE_PANEL);
                    tasks.push(Task { image, panel, rows: rows[0]..rows[1], out });
                }
            }
            hand_out_segments(out, plane, &pixel_cuts, |channel, i, segment| {
                tasks[first + channel / LANE_PANEL * row_blocks + i].out.push(segment);
            });
        }
        let image_len = geo.c1 * plane_stride;
        let shared = Shared {
            padded: &padded,
            image_len,
            offsets: &offsets,
            taps: geo.k * geo.k,
            weights,
            bias,
            act,
            residual,
            c2: geo.c2,
            ho,
            wo,
            row_len,
            s,
        };
        fill(tasks, out_len, |task| &task.out, |task| isa.dispatch(RunTask { shared: &shared, task }))
    };
    PADDED.with(|cell| *cell.borrow_mut() = padded);
    filled
}

struct RunTask<'s, 'a> {
    shared: &'s Shared<'s>,
    task: Task<'a>,
}

impl pulp::WithSimd for RunTask<'_, '_> {
    /// Whether the task filled all its rows.
    type Output = bool;

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) -> bool {
        let max_pixels = if S::REGISTER_COUNT >= 32 { MAX_TILE_PIXELS } else { MAX_TILE_PIXELS_16 };
        run_task::<S, 2>(simd, self.shared, self.task, max_pixels)
    }
}

#[inline(always)]
fn run_task<S: Simd, const NV: usize>(simd: S, shared: &Shared<'_>, task: Task<'_>, max_pixels: usize) -> bool {
    let lanes = S::F32_LANES;
    let nr = NV * lanes;
    // Every flavour's `nr` (32, 16, 8 or 2) divides the panel.
    if !LANE_PANEL.is_multiple_of(nr) {
        return false;
    }
    let Task { image, panel, rows, mut out } = task;
    let (wo, row_len, s) = (shared.wo, shared.row_len, shared.s);
    let weights = shared.weights.panel(panel);
    let x = &shared.padded[image * shared.image_len..][..shared.image_len];
    let tiles = wo.div_ceil(max_pixels);
    let depth = shared.offsets.len();
    let block_depth = (DEPTH_BLOCK / shared.taps).max(1) * shared.taps;
    let vector_act = has_act_vec(shared.act);
    let mut scratch = Scratch::take();
    let tile_len = max_pixels * nr;
    let sums = aligned(&mut scratch.sums, rows.len() * tiles * tile_len);
    for c0 in (0..out.len()).step_by(nr) {
        let channel0 = panel * LANE_PANEL + c0;
        let valid = nr.min(out.len() - c0);
        let mut bias = Aligned([0f32; LANE_PANEL]);
        bias.0[..valid].copy_from_slice(&shared.bias[channel0..channel0 + valid]);
        let bias: [S::f32s; NV] = std::array::from_fn(|v| S::as_simd_f32s(&bias.0[v * lanes..][..lanes]).0[0]);
        let tile = Tile { simd, bias, act: shared.act, vector_act };
        // Depth block by depth block, all the task's tiles each: the block's weights stay in
        // L1 while the tiles use them.
        for k0 in (0..depth).step_by(block_depth) {
            let k1 = depth.min(k0 + block_depth);
            let block = Block {
                weights: &weights[k0 * LANE_PANEL + c0..k1 * LANE_PANEL],
                offsets: &shared.offsets[k0..k1],
                first: k0 == 0,
                last: k1 == depth,
            };
            for (i, oy) in rows.clone().enumerate() {
                for t in 0..tiles {
                    let (x0, x1) = (t * wo / tiles, (t + 1) * wo / tiles);
                    let p = x1 - x0;
                    let sums = &mut sums[(i * tiles + t) * tile_len..][..p * nr];
                    if !tile.run(p, s, &x[(oy * row_len + x0) * s..], &block, sums) {
                        Scratch::put(scratch);
                        return false;
                    }
                    if !block.last {
                        continue;
                    }
                    // Transposed onto the channels' rows.
                    for (j, out) in out[c0..c0 + valid].iter_mut().enumerate() {
                        let mut run = [0f32; MAX_TILE_PIXELS];
                        let run = &mut run[..p];
                        for (r, v) in run.iter_mut().enumerate() {
                            *v = sums[r * nr + j];
                        }
                        // The bias is already added (in registers, with the activation when
                        // it has a vector form).
                        let at = ((image * shared.c2 + channel0 + j) * shared.ho + oy) * wo + x0;
                        epilogue(run, (0.0, shared.act), vector_act, shared.residual, at);
                        out.push(run);
                    }
                }
            }
        }
    }
    Scratch::put(scratch);
    out.iter().all(Filler::is_full)
}

/// What every tile of a task's vector block of channels shares.
struct Tile<S: Simd, const NV: usize> {
    simd: S,
    bias: [S::f32s; NV],
    act: Option<Activation>,
    vector_act: bool,
}

/// One depth block of a vector block of channels.
struct Block<'a> {
    /// The block's first channel in each depth row (rows [`LANE_PANEL`] apart).
    weights: &'a [f32],
    /// Where each depth row's input is, from a tile's first pixel.
    offsets: &'a [usize],
    first: bool,
    last: bool,
}

impl<S: Simd, const NV: usize> Tile<S, NV> {
    /// Depth block `block` of the tile of `p` pixels whose first input value is at `x`. Its
    /// sums (pixel-major, `NV` vectors a pixel) are read from `sums` unless the block is the
    /// first, and written back; after the last, with bias and activation (if vector) applied.
    /// False if `p` is not a tile width.
    #[inline(always)]
    fn run(&self, p: usize, s: usize, x: &[f32], block: &Block<'_>, sums: &mut [f32]) -> bool {
        macro_rules! widths {
            ($($n:literal)*) => {
                match (p, s) {
                    $(($n, 1) => self.pixels::<$n, 1>(x, block, sums),)*
                    $(($n, 2) => self.pixels::<$n, 2>(x, block, sums),)*
                    _ => return false,
                }
            };
        }
        widths!(1 2 3 4 5 6 7 8 9 10);
        true
    }

    #[inline(always)]
    fn pixels<const P: usize, const STRIDE: usize>(&self, x: &[f32], block: &Block<'_>, sums: &mut [f32]) {
        let simd = self.simd;
        let nr = NV * S::F32_LANES;
        let mut acc = [[simd.splat_f32s(0.0); NV]; P];
        if !block.first {
            for (r, acc) in acc.iter_mut().enumerate() {
                let src = S::as_simd_f32s(&sums[r * nr..][..nr]).0;
                acc.copy_from_slice(&src[..NV]);
            }
        }
        for (w, &o) in block.weights.chunks(LANE_PANEL).zip(block.offsets) {
            let w = S::as_simd_f32s(&w[..nr]).0;
            let x = &x[o..o + (P - 1) * STRIDE + 1];
            for r in 0..P {
                let b = simd.splat_f32s(x[r * STRIDE]);
                for v in 0..NV {
                    acc[r][v] = simd.mul_add_e_f32s(b, w[v], acc[r][v]);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            let dst = S::as_mut_simd_f32s(&mut sums[r * nr..][..nr]).0;
            for v in 0..NV {
                dst[v] = if !block.last {
                    acc[v]
                } else {
                    let y = simd.add_f32s(acc[v], self.bias[v]);
                    if self.vector_act { act_vec(simd, y, self.act) } else { y }
                };
            }
        }
    }
}
