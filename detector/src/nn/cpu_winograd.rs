//! 3x3 stride-1 convolutions by Winograd's minimal filtering F(2x2, 3x3) (Lavin and Gray,
//! "Fast Algorithms for Convolutional Neural Networks", 2015).
//!
//! Each 2x2 output tile comes from its 4x4 input tile with 16 multiplies per pair of channels
//! instead of 36: per tile position `xi` (16 of them), one matrix product
//! `M[xi] (c2 x tiles) = U[xi] (c2 x c1) @ V[xi] (c1 x tiles)`, where `U = G g G^T` is the
//! transformed 3x3 kernel (packed once at load) and `V = B^T d B` the transformed input tile.
//! The output tile is `Y = A^T M A`. That is 2.25x fewer multiply-adds than the direct
//! convolution; the transforms are additions, whose share grows as channels get fewer
//! (measured against the direct path: 0.6x its time at 256 channels, 0.7-0.8x at 48-128,
//! 0.9x at 32). The transforms' coefficients are 0, +-1 and +-1/2, so the rounding stays
//! close to the direct convolution's. The transformed weights take 16/9 of the memory.
//!
//! Per task (a band of tile rows of one image; on small maps also a block of output
//! channels):
//! 1. the zero-padded input rows of the band are copied into their even and odd rows and
//!    columns, as for a stride-2 convolution in [`cpu_gemm`]. In tile coordinates
//!    `q = ty * wide + tx` (`wide` = tiles per row plus one junk column), element `(i, j)`
//!    of the input tiles `q .. q + lanes` is then one contiguous vector load;
//! 2. per micro-panel of tiles, the input transform of every input channel into `V`;
//! 3. the 16 products with the register kernel of the direct path;
//! 4. the output transform, bias, activation and the shortcut, written into the task's
//!    output rows (even and odd columns interleaved).
//!
//! [`cpu_gemm`]: super::cpu_gemm

use std::mem::MaybeUninit;

use pulp::Simd;

use super::cpu_conv::{bias_act, bias_act_vec};
use super::cpu_gemm::{
    self, Aligned, Filler, Input, Isa, PANEL_ROWS, PackedWeights, PanelWidth, Scratch, TileTask, WithTile,
};
use super::fork_join;
use crate::spec::Activation;

/// Most padded input per band (as for the direct path's bands: it stays in L2).
const BAND_BYTES: usize = 1024 * 1024;
/// The widest vector of f32 that `pulp` dispatches to (AVX-512).
const MAX_LANES: usize = 16;

/// The kernel transform `U = G g G^T` of every 3x3 kernel, as 16 `[c2, c1]` matrices packed
/// for the register kernel.
#[derive(Debug, Clone)]
pub(crate) struct WinogradWeights {
    u: Vec<PackedWeights>,
    c1: usize,
    c2: usize,
}

impl WinogradWeights {
    /// `weights` is the row-major `[c2, c1, 3, 3]` array of a convolution without groups.
    pub fn new(weights: &[f32], c1: usize, c2: usize) -> Self {
        const G: [[f32; 3]; 4] = [[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]];
        let mut mats = vec![vec![0f32; c2 * c1]; 16];
        for (row, g) in weights.chunks_exact(9).enumerate().take(c2 * c1) {
            // t = G g (4 x 3), then U = t G^T (4 x 4).
            let mut t = [[0f32; 3]; 4];
            for (t, gi) in t.iter_mut().zip(&G) {
                for (j, t) in t.iter_mut().enumerate() {
                    *t = (0..3).map(|k| gi[k] * g[k * 3 + j]).sum();
                }
            }
            for (i, t) in t.iter().enumerate() {
                for (j, gj) in G.iter().enumerate() {
                    mats[i * 4 + j][row] = (0..3).map(|k| t[k] * gj[k]).sum();
                }
            }
        }
        let u = mats.iter().map(|m| PackedWeights::new(m, 1, c2, c1)).collect();
        Self { u, c1, c2 }
    }
}

/// Everything a task reads.
struct Shared<'a> {
    input: Input<'a>,
    weights: &'a WinogradWeights,
    bias: &'a [f32],
    act: Option<Activation>,
    residual: Option<&'a [f32]>,
    /// Tiles per row plus one junk column: the row width of the phase planes.
    wide: usize,
    plane_stride: usize,
}

/// Tile rows `ty0 .. ty1` of one image and output channels `channels`; `segments` are output
/// channel `channels.start`'s rows `2 ty0 .. min(2 ty1, h)`, then the next channel's. A tile
/// row writes two output rows a run of tiles at a time, so each row is filled on its own: the
/// task cuts its segments into `rows` first (on its thread: cut on the calling thread, the
/// rows of a pass's 3x3 layers took 0.7 % of its time while the helpers waited).
struct Task<'a> {
    image: usize,
    ty0: usize,
    ty1: usize,
    channels: std::ops::Range<usize>,
    segments: Vec<Filler<'a>>,
    rows: Vec<Filler<'a>>,
}

/// `out = act(conv3x3(input) + bias) (+ residual)` with padding 1, for a whole batch; `out`
/// is the contiguous NCHW output `[batch, c2, h, w]`, uninitialised. Returns whether every
/// value of it was written.
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv(
    isa: Isa,
    input: Input<'_>,
    batch: usize,
    weights: &WinogradWeights,
    bias: &[f32],
    act: Option<Activation>,
    residual: Option<&[f32]>,
    out: &mut [MaybeUninit<f32>],
) -> bool {
    let (h, w, c2) = (input.h, input.w, weights.c2);
    let nr = isa.dispatch(PanelWidth);
    let threads = fork_join::threads();
    let (th, tw) = (h.div_ceil(2), w.div_ceil(2));
    let wide = tw + 1;
    // Tile rows per task: enough for two micro-panels (a band's last micro-panel is partial;
    // shorter bands left more of them partial), few enough for the band's padded input to
    // stay in L2.
    let row_bytes = weights.c1 * 4 * wide * std::mem::size_of::<f32>();
    let max_rows = (BAND_BYTES / row_bytes).saturating_sub(1).max(1);
    let rows = (2 * nr).div_ceil(wide).clamp(1, max_rows);
    // As many bands as a multiple of the thread count, as even as whole tile rows allow;
    // small maps (a band or two) are split by output channels instead, one block per thread:
    // every task pads and transforms its band's whole input, and two blocks per thread
    // (for balance) made 64 -> 64 at 10x10 1.3x slower.
    let mut bands = th.div_ceil(rows);
    if batch == 1 && bands >= threads {
        bands = bands.next_multiple_of(threads).min(th);
    }
    let starts: Vec<usize> = (0..=bands).map(|i| i * th / bands).collect();
    let panels = c2.div_ceil(PANEL_ROWS);
    let channel_blocks = threads.div_ceil(bands * batch).clamp(1, panels);
    let block_channels = panels.div_ceil(channel_blocks) * PANEL_ROWS;
    let longest = starts.windows(2).map(|b| b[1] - b[0]).max().unwrap_or(1);
    let plane_stride = cpu_gemm::spaced_plane((longest + 1) * wide);
    let shared = Shared { input, weights, bias, act, residual, wide, plane_stride };

    let mut tasks = Vec::with_capacity(batch * c2.div_ceil(block_channels) * bands);
    let out_len = out.len();
    for (image, out) in out.chunks_exact_mut(c2 * h * w).enumerate().take(batch) {
        let first = tasks.len();
        for c0 in (0..c2).step_by(block_channels) {
            let channels = c0..(c0 + block_channels).min(c2);
            for b in starts.windows(2) {
                let segments = Vec::with_capacity(channels.len());
                tasks.push(Task {
                    image,
                    ty0: b[0],
                    ty1: b[1],
                    channels: channels.clone(),
                    segments,
                    rows: Vec::new(),
                });
            }
        }
        for (c, mut plane) in out.chunks_exact_mut(h * w).enumerate() {
            for (i, b) in starts.windows(2).enumerate() {
                let len = ((2 * b[1]).min(h) - 2 * b[0]) * w;
                let (segment, rest) = plane.split_at_mut(len);
                tasks[first + c / block_channels * bands + i].segments.push(Filler::new(segment));
                plane = rest;
            }
        }
    }
    cpu_gemm::fill(
        tasks,
        out_len,
        |task| &task.segments,
        |task| isa.dispatch(WithTile(RunTask { shared: &shared, task })),
    )
}

struct RunTask<'s, 'a> {
    shared: &'s Shared<'s>,
    task: Task<'a>,
}

impl TileTask for RunTask<'_, '_> {
    /// Whether the task filled all its rows.
    type Output = bool;

    #[inline(always)]
    fn run<S: Simd, const ROWS: usize, const NV: usize>(self, simd: S) -> bool {
        run_task::<S, ROWS, NV>(simd, self.shared, self.task)
    }
}

#[inline(always)]
fn run_task<S: Simd, const ROWS: usize, const NV: usize>(simd: S, shared: &Shared<'_>, mut task: Task<'_>) -> bool {
    let lanes = S::F32_LANES;
    let nr = NV * lanes;
    let Shared { weights, wide, plane_stride, .. } = *shared;
    let (c1, c2) = (weights.c1, weights.c2);
    let w = shared.input.w;
    task.rows = std::mem::take(&mut task.segments).into_iter().flat_map(|s| s.into_rows(w)).collect();
    // The band's phase planes; `V[ci][xi][tile]` and `M[c2][xi][tile]` of one micro-panel
    // (below); the offsets of `V`'s depth rows for the kernel (`ci * row`).
    let Scratch { mut band, block: mut v_buf, mut offsets, sums: mut m_buf } = Scratch::take();
    let band_rows = task.ty1 - task.ty0 + 1;
    let at = (task.ty0, band_rows, wide);
    cpu_gemm::pad_band(&shared.input, task.image, 0..c1, (1, 2), at, plane_stride, &mut band, nr + wide);
    // `V` and `M` channel-major: channel `ci`'s 16 rows of `nr` tiles (one per tile position
    // `xi`) together, so that a transform stores or loads one contiguous block per channel and
    // vector. Channel blocks an odd number of cache lines apart, spread over the L1 sets for
    // the kernel, which reads one `xi` row of every channel.
    let row = cpu_gemm::spaced_plane(16 * nr);
    let v = cpu_gemm::aligned(&mut v_buf, c1 * row);
    let m = cpu_gemm::aligned(&mut m_buf, c2 * row);
    offsets.clear();
    offsets.extend((0..c1).map(|ci| ci * row));

    let tiles = (task.ty1 - task.ty0) * wide;
    for q0 in (0..tiles).step_by(nr) {
        // 2. Input transform, one vector of tiles at a time.
        let vectors = (tiles - q0).min(nr).div_ceil(lanes);
        for ci in 0..c1 {
            let planes = &band[ci * 4 * plane_stride..];
            let v = &mut v[ci * row..][..16 * nr];
            for vi in 0..vectors {
                let q = q0 + vi * lanes;
                // Columns first: `bt[j] = B^T d[.][j]`, then rows: `V[i][.] = B^T bt[.][i]`.
                let mut bt = [[simd.splat_f32s(0.0); 4]; 4];
                for (j, bt) in bt.iter_mut().enumerate() {
                    let mut d = [simd.splat_f32s(0.0); 4];
                    for (i, d) in d.iter_mut().enumerate() {
                        let at = ((i % 2) * 2 + j % 2) * plane_stride + (i / 2) * wide + j / 2 + q;
                        *d = load::<S>(&planes[at..at + lanes]);
                    }
                    *bt = b_transpose(simd, d);
                }
                #[allow(clippy::needless_range_loop)] // i is the row of `bt`'s columns
                for i in 0..4 {
                    let out = b_transpose(simd, [bt[0][i], bt[1][i], bt[2][i], bt[3][i]]);
                    for (j, x) in out.into_iter().enumerate() {
                        let at = (i * 4 + j) * nr + vi * lanes;
                        S::as_mut_simd_f32s(&mut v[at..at + lanes]).0[0] = x;
                    }
                }
            }
        }
        // 3. The 16 products, with a narrower tile for a partial last micro-panel.
        let width = (tiles - q0).min(nr);
        if NV > 1 && width <= lanes {
            products::<S, ROWS, 1>(simd, weights, task.channels.clone(), v, &offsets, m, (nr, row));
        } else if NV > 2 && width <= 2 * lanes {
            products::<S, ROWS, 2>(simd, weights, task.channels.clone(), v, &offsets, m, (nr, row));
        } else {
            products::<S, ROWS, NV>(simd, weights, task.channels.clone(), v, &offsets, m, (nr, row));
        }
        // 4. Output transform, bias, activation, shortcut. Where each vector's tiles go is
        // the same for every channel: worked out once (a division per run).
        let (runs, run_count) = tile_runs(shared, q0, (tiles - q0).min(nr), lanes);
        let runs = &runs[..run_count];
        for c in task.channels.clone() {
            for vi in 0..NV {
                let q = q0 + vi * lanes;
                if q >= tiles {
                    break;
                }
                // Columns first: `at[j] = A^T M[.][j]`, then rows: `Y[i][.] = A^T at[.][i]`.
                let mut at = [[simd.splat_f32s(0.0); 2]; 4];
                for (j, at) in at.iter_mut().enumerate() {
                    let mut col = [simd.splat_f32s(0.0); 4];
                    for (i, col) in col.iter_mut().enumerate() {
                        let k = c * row + (i * 4 + j) * nr + vi * lanes;
                        *col = load::<S>(&m[k..k + lanes]);
                    }
                    *at = a_transpose(simd, col);
                }
                let [y00, y01] = a_transpose(simd, [at[0][0], at[1][0], at[2][0], at[3][0]]);
                let [y10, y11] = a_transpose(simd, [at[0][1], at[1][1], at[2][1], at[3][1]]);
                let (bias, act) = (shared.bias[c], shared.act);
                let mut y = [y00, y01, y10, y11];
                let in_registers = bias_act_vec::<S, 4>(simd, &mut y, bias, act);
                // Each output row of the tiles: the left and right columns interleaved. Each
                // column is stored on its own first: from one array of the four, the compiler
                // built the interleave from loads straddling two of the rows just stored, which
                // the core cannot forward from the stores (a stall per vector).
                let mut pairs = Aligned([[0f32; 2 * MAX_LANES]; 2]);
                let pairs = &mut pairs.0;
                let [y00, y01, y10, y11] = y;
                for (pairs, (left, right)) in pairs.iter_mut().zip([(y00, y01), (y10, y11)]) {
                    let (mut l, mut r) = (Aligned([0f32; MAX_LANES]), Aligned([0f32; MAX_LANES]));
                    let (l, r) = (&mut l.0[..lanes], &mut r.0[..lanes]);
                    S::as_mut_simd_f32s(l).0[0] = left;
                    S::as_mut_simd_f32s(r).0[0] = right;
                    if !in_registers {
                        bias_act(l, bias, act);
                        bias_act(r, bias, act);
                    }
                    for (pair, (l, r)) in pairs.chunks_exact_mut(2).zip(l.iter().zip(r.iter())) {
                        pair[0] = *l;
                        pair[1] = *r;
                    }
                }
                write_tiles(shared, &mut task, c, runs.iter().filter(|r| r.vector == vi), pairs);
            }
        }
    }
    Scratch { band, block: v_buf, offsets, sums: m_buf }.put();
    task.rows.iter().all(Filler::is_full)
}

/// `M[xi] = U[xi] @ V[xi]` for the 16 tile positions and output `channels`, `TV` vectors of
/// tiles wide: row `xi` of channel `c` of `V` and `M` at `c * row + xi * nr`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn products<S: Simd, const ROWS: usize, const TV: usize>(
    simd: S,
    weights: &WinogradWeights,
    channels: std::ops::Range<usize>,
    v: &[f32],
    offsets: &[usize],
    m: &mut [f32],
    (nr, row): (usize, usize),
) {
    let c1 = weights.c1;
    let width = TV * S::F32_LANES;
    for (xi, u) in weights.u.iter().enumerate() {
        let b = &v[xi * nr..];
        for row0 in channels.clone().step_by(ROWS) {
            let a = u.panel(0, row0 / PANEL_ROWS, 0..c1);
            let acc = [[simd.splat_f32s(0.0); TV]; ROWS];
            let acc = cpu_gemm::kernel::<S, ROWS, TV>(simd, a, row0 % PANEL_ROWS, b, offsets, acc);
            for (r, acc) in acc.iter().enumerate().take(channels.end - row0) {
                let at = (row0 + r) * row + xi * nr;
                pulp::as_arrays_mut::<TV, S::f32s>(S::as_mut_simd_f32s(&mut m[at..at + width]).0).0[0] = *acc;
            }
        }
    }
}

/// `B^T x` for F(2x2, 3x3): `B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]`.
#[inline(always)]
fn b_transpose<S: Simd>(simd: S, x: [S::f32s; 4]) -> [S::f32s; 4] {
    [simd.sub_f32s(x[0], x[2]), simd.add_f32s(x[1], x[2]), simd.sub_f32s(x[2], x[1]), simd.sub_f32s(x[1], x[3])]
}

/// `A^T x` for F(2x2, 3x3): `A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]`.
#[inline(always)]
fn a_transpose<S: Simd>(simd: S, x: [S::f32s; 4]) -> [S::f32s; 2] {
    [simd.add_f32s(simd.add_f32s(x[0], x[1]), x[2]), simd.sub_f32s(simd.sub_f32s(x[1], x[2]), x[3])]
}

/// One vector from the first `S::F32_LANES` values of `x`.
#[inline(always)]
fn load<S: Simd>(x: &[f32]) -> S::f32s {
    S::as_simd_f32s(x).0[0]
}

/// Tiles of one vector of a micro-panel, from lane `l` on, that lie in one tile row: their
/// output pixels are columns `x0 .. x1` of band rows `row` and `row + 1` (counted from the
/// band's first output row).
#[derive(Debug, Clone, Copy, Default)]
struct TileRun {
    vector: usize,
    l: usize,
    row: usize,
    x0: usize,
    x1: usize,
}

/// Most runs of a micro-panel (48 tiles at most): one per tile would be the worst case.
const MAX_RUNS: usize = 3 * MAX_LANES;

/// The runs of the micro-panel of `n` tiles from band tile `q0` (junk tiles left out), `lanes`
/// tiles per vector.
#[inline(always)]
fn tile_runs(shared: &Shared<'_>, q0: usize, n: usize, lanes: usize) -> ([TileRun; MAX_RUNS], usize) {
    let (w, wide) = (shared.input.w, shared.wide);
    let tw = wide - 1;
    let mut runs = [TileRun::default(); MAX_RUNS];
    let mut count = 0;
    for vector in 0..n.div_ceil(lanes) {
        let q = q0 + vector * lanes;
        let len = (n - vector * lanes).min(lanes);
        let mut l = 0;
        while l < len {
            let (ty, tx) = ((q + l) / wide, (q + l) % wide);
            // A run ends at the junk column (or is the junk tile itself).
            let run = tw.saturating_sub(tx).min(len - l);
            if run > 0 && count < MAX_RUNS {
                runs[count] = TileRun { vector, l, row: 2 * ty, x0: 2 * tx, x1: (2 * (tx + run)).min(w) };
                count += 1;
            }
            l += run.max(1);
        }
    }
    (runs, count)
}

/// Writes the finished 2x2 tiles of output channel `c` for `runs` (of one vector):
/// `pairs[i][2 l + j]` is output pixel `(2 ty + i, 2 tx + j)` of lane `l`. Rows past the map's
/// edge are dropped; the shortcut is added to what is written.
#[inline(always)]
fn write_tiles<'r>(
    shared: &Shared<'_>,
    task: &mut Task<'_>,
    c: usize,
    runs: impl Iterator<Item = &'r TileRun>,
    pairs: &mut [[f32; 2 * MAX_LANES]; 2],
) {
    let (h, w) = (shared.input.h, shared.input.w);
    let plane = (task.image * shared.weights.c2 + c) * h * w;
    let first_row = 2 * task.ty0;
    let band_rows = (2 * task.ty1).min(h) - first_row;
    let rows = &mut task.rows[(c - task.channels.start) * band_rows..][..band_rows];
    for run in runs {
        for (i, pairs) in pairs.iter_mut().enumerate() {
            let row = run.row + i;
            if row >= band_rows {
                continue;
            }
            let values = &mut pairs[2 * run.l..2 * run.l + run.x1 - run.x0];
            if let Some(res) = shared.residual {
                let at = plane + (first_row + row) * w;
                values.iter_mut().zip(&res[at + run.x0..at + run.x1]).for_each(|(v, r)| *v += r);
            }
            rows[row].push(values);
        }
    }
}
