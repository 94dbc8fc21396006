//! 3x3 stride-1 convolutions by Winograd's minimal filtering F(m x m, 3x3), with output tiles
//! of m = 2 or 4 pixels a side (Lavin and Gray, "Fast Algorithms for Convolutional Neural
//! Networks", 2015).
//!
//! Each `m x m` output tile comes from its `t x t` input tile (`t = m + 2`) with `t^2`
//! multiplies per pair of channels instead of `9 m^2`: per tile position `xi` (`t^2` of them),
//! one matrix product `M[xi] (c2 x tiles) = U[xi] (c2 x c1) @ V[xi] (c1 x tiles)`, where
//! `U = G g G^T` is the transformed 3x3 kernel (packed once) and `V = B^T d B` the transformed
//! input tile. The output tile is `Y = A^T M A`.
//! - F(2x2, 3x3): 2.25x fewer multiply-adds than the direct convolution; the transforms'
//!   coefficients are 0, +-1 and +-1/2, so the rounding stays close to the direct
//!   convolution's. Against the direct path: 0.6x its time at 256 channels, 0.7-0.8x at
//!   48-128, 0.9x at 32.
//! - F(4x4, 3x3): 4x fewer multiply-adds, and transforms that cost less per output pixel, but
//!   36 rows of `V` per input channel and 4x the kernels' memory in `U`, and coefficients up to
//!   8 and 1/24 (rounding about 3x F(2x2)'s, 1e-5 of the largest output at 128 channels).
//!   Used where it was measured faster (see `F4_MAX_INPUT_CHANNELS` and `F4_MIN_SIDE`).
//!
//! Per task (a band of tile rows of one image; on small maps also a block of output
//! channels):
//! 1. the zero-padded input rows of the band are copied into their `m x m` phase planes
//!    (rows and columns by their remainder mod m), as for a stride-2 convolution in
//!    [`cpu_gemm`]. In tile coordinates `q = ty * wide + tx` (`wide` = tiles per row plus one
//!    junk column), element `(i, j)` of the input tiles `q .. q + lanes` is then one
//!    contiguous vector load;
//! 2. per micro-panel of tiles, the input transform of every input channel into `V`;
//! 3. per block of output channels, the `t^2` products with the register kernel of the direct
//!    path, then at once (while they are in cache)
//! 4. the output transform, bias, activation and the shortcut, written into the task's
//!    output rows (the tiles' columns interleaved).
//!
//! [`cpu_gemm`]: super::cpu_gemm

use std::mem::MaybeUninit;
use std::sync::OnceLock;

use pulp::Simd;

use super::cpu_conv::{bias_act, bias_act_vec};
use super::cpu_gemm::{
    self, Aligned, Filler, Input, Isa, PANEL_ROWS, PANEL_VECTORS, PackedWeights, PanelWidth, Scratch, TileTask,
    WithTile,
};
use super::fork_join;
use crate::spec::Activation;

/// Most padded input per band (as for the direct path's bands: it stays in L2).
const BAND_BYTES: usize = 1024 * 1024;
/// The widest vector of f32 that `pulp` dispatches to (AVX-512).
const MAX_LANES: usize = 16;

/// The weights of a 3x3 convolution for both tile sizes, each transformed on first use: which
/// one a layer takes depends on its map size (see [`WinogradWeights::for_map`]), known only
/// when it runs.
#[derive(Debug, Clone)]
pub(crate) struct WinogradWeights {
    c1: usize,
    c2: usize,
    /// The row-major `[c2, c1, 3, 3]` weights, kept while a tile size may still need them.
    kernels: Vec<f32>,
    f2: OnceLock<TileWeights>,
    f4: OnceLock<TileWeights>,
}

/// Most input channels for F(4x4, 3x3). Its transformed input `V` (36 rows of a micro-panel
/// per input channel, 7 KiB) and weights (4x the kernels') outgrow the core's L2 beyond: at
/// 256 channels it took 1.25x F(2x2)'s time at 80x80 and 2x at 40x40, while up to 128 it
/// took 0.79-0.86x at 80x80 to 160x160 and 0.91-0.94x at 40x40.
const F4_MAX_INPUT_CHANNELS: usize = 128;

/// Smallest map side for F(4x4, 3x3). On smaller maps its tiles overhang the edges (a 10x10
/// map is 12x12 in tiles of 4, plus a junk column), and it took 1.0x F(2x2)'s time at 20x20
/// and 1.6x at 10x10.
const F4_MIN_SIDE: usize = 32;

impl WinogradWeights {
    /// `weights` is the row-major `[c2, c1, 3, 3]` array of a convolution without groups.
    pub fn new(weights: &[f32], c1: usize, c2: usize) -> Self {
        if c1 > F4_MAX_INPUT_CHANNELS {
            // Only F(2x2, 3x3) is ever used: transformed now, and the kernels not kept.
            let f2 = OnceLock::from(TileWeights::new(weights, c1, c2, 2));
            return Self { c1, c2, kernels: Vec::new(), f2, f4: OnceLock::new() };
        }
        Self { c1, c2, kernels: weights.to_vec(), f2: OnceLock::new(), f4: OnceLock::new() }
    }

    /// The tile size for an `h x w` map: F(4x4, 3x3), with 1.78x fewer multiply-adds than
    /// F(2x2, 3x3), where it was measured faster.
    pub fn tile_for(&self, h: usize, w: usize) -> usize {
        if self.c1 <= F4_MAX_INPUT_CHANNELS && h.min(w) >= F4_MIN_SIDE { 4 } else { 2 }
    }

    /// The transformed weights for an `h x w` map (see [`WinogradWeights::tile_for`]).
    fn for_map(&self, h: usize, w: usize) -> &TileWeights {
        let m = self.tile_for(h, w);
        let cell = if m == 4 { &self.f4 } else { &self.f2 };
        cell.get_or_init(|| TileWeights::new(&self.kernels, self.c1, self.c2, m))
    }
}

/// The kernel transform `U = G g G^T` of every 3x3 kernel, for output tiles of `m x m`
/// pixels: the `t^2` `[c2, c1]` matrices `U[xi]` (`t = m + 2`) side by side as one
/// `[c2, t^2 c1]` matrix packed for the register kernel, so that a block of output channels
/// reads its weights for every tile position as one sequential stream (see [`products`]).
#[derive(Debug, Clone)]
struct TileWeights {
    u: PackedWeights,
    c1: usize,
    c2: usize,
    /// The output tile's side: 2 for F(2x2, 3x3), 4 for F(4x4, 3x3).
    m: usize,
}

/// `G` of F(2x2, 3x3), 4 x 3.
const G2: [[f64; 3]; 4] = [[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]];

/// `G` of F(4x4, 3x3), 6 x 3 (Lavin and Gray's, interpolation points 0, +-1, +-2, infinity).
const G4: [[f64; 3]; 6] = [
    [1.0 / 4.0, 0.0, 0.0],
    [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
    [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
    [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
    [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
    [0.0, 0.0, 1.0],
];

impl TileWeights {
    /// `weights` as for [`WinogradWeights::new`]; `m` (2 or 4) the output tile's side.
    fn new(weights: &[f32], c1: usize, c2: usize, m: usize) -> Self {
        let g: &[[f64; 3]] = if m == 4 { &G4 } else { &G2 };
        let t = g.len();
        // Row `c` of the joined matrix: `U[xi][c][ci]` at `xi * c1 + ci`.
        let mut joined = vec![0f32; c2 * t * t * c1];
        for (row, k) in weights.chunks_exact(9).enumerate().take(c2 * c1) {
            let (c, ci) = (row / c1, row % c1);
            // Row i of `G g` (t x 3), then U[i][j] = (G g)[i] . G[j], in f64.
            for (i, gi) in g.iter().enumerate() {
                let gk: [f64; 3] = std::array::from_fn(|x| (0..3).map(|y| gi[y] * k[y * 3 + x] as f64).sum());
                for (j, gj) in g.iter().enumerate() {
                    joined[(c * t * t + i * t + j) * c1 + ci] = (0..3).map(|x| gk[x] * gj[x]).sum::<f64>() as f32;
                }
            }
        }
        let u = PackedWeights::new(&joined, 1, c2, t * t * c1);
        Self { u, c1, c2, m: if m == 4 { 4 } else { 2 } }
    }
}

/// Everything a task reads.
struct Shared<'a> {
    input: Input<'a>,
    weights: &'a TileWeights,
    bias: &'a [f32],
    act: Option<Activation>,
    residual: Option<&'a [f32]>,
    /// Tiles per row plus one junk column: the row width of the phase planes.
    wide: usize,
    plane_stride: usize,
}

/// Tile rows `ty0 .. ty1` of one image and output channels `channels`; `segments` are output
/// channel `channels.start`'s rows `m ty0 .. min(m ty1, h)`, then the next channel's. A tile
/// row writes `m` output rows a run of tiles at a time, so each row is filled on its own: the
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
    let (h, w) = (input.h, input.w);
    let weights = weights.for_map(h, w);
    let (c2, m) = (weights.c2, weights.m);
    let nr = isa.dispatch(PanelWidth);
    let threads = fork_join::threads();
    let (th, tw) = (h.div_ceil(m), w.div_ceil(m));
    let wide = tw + 1;
    // Tile rows per task: enough for two micro-panels (a band's last micro-panel is partial;
    // shorter bands left more of them partial), few enough for the band's padded input to
    // stay in L2.
    let row_bytes = weights.c1 * m * m * wide * std::mem::size_of::<f32>();
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
    let mut starts: Vec<usize> = (0..=bands).map(|i| i * th / bands).collect();
    // Each band's last micro-panel is partial, and the kernel computes it a whole vector at
    // a time (micro-panels are `PANEL_VECTORS` vectors wide). Where the map as one
    // band needs fewer vectors than its bands together, one band split by output channels
    // does less work, though every task then transforms the whole input. A 20x20 map in
    // F(2x2) made two bands of 55 tiles, 4 vectors each, against 7 for all 110: as one band,
    // 128 to 320 output channels took 0.82-0.94x the time (two threads, alternating runs).
    // With fewer output channels the repeated transform weighs more against the products:
    // at 48 to 96, one band was no faster (within the runs' +-10 %). F(4x4)'s input transform
    // costs more too: on 40x40 maps, the same layout there, one band took 1.02-1.15x.
    let vectors = |tiles: usize| tiles.div_ceil(nr / PANEL_VECTORS);
    let banded: usize = starts.windows(2).map(|b| vectors((b[1] - b[0]) * wide)).sum();
    if m == 2 && c2 >= 128 && batch == 1 && bands > 1 && th <= max_rows && vectors(th * wide) < banded {
        bands = 1;
        starts = vec![0, th];
    }
    // Where the bands' output rows start in a plane (tile rows of `m` output rows each).
    let cuts: Vec<usize> = starts.iter().map(|&t| (m * t).min(h) * w).collect();
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
        cpu_gemm::hand_out_segments(out, h * w, &cuts, |c, i, segment| {
            tasks[first + c / block_channels * bands + i].segments.push(segment);
        });
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
        if self.shared.weights.m == 4 {
            run_task::<S, ROWS, NV, 4>(simd, self.shared, self.task)
        } else {
            run_task::<S, ROWS, NV, 2>(simd, self.shared, self.task)
        }
    }
}

/// Input tiles of `M + 2` pixels a side, at most 6; output tiles of `M`, at most 4. The
/// transforms work on arrays of those lengths, of which F(2x2, 3x3) uses the first 4 and 2.
type InTile<S> = [<S as Simd>::f32s; 6];
type OutTile<S> = [<S as Simd>::f32s; 4];

#[inline(always)]
fn run_task<S: Simd, const ROWS: usize, const NV: usize, const M: usize>(
    simd: S,
    shared: &Shared<'_>,
    mut task: Task<'_>,
) -> bool {
    let lanes = S::F32_LANES;
    let nr = NV * lanes;
    let t = M + 2;
    let Shared { weights, wide, plane_stride, .. } = *shared;
    let c1 = weights.c1;
    let w = shared.input.w;
    task.rows = std::mem::take(&mut task.segments).into_iter().flat_map(|s| s.into_rows(w)).collect();
    // The band's phase planes; `V[ci][xi][tile]` of one micro-panel and `M[c][xi][tile]` of
    // one block of `ROWS` output channels (below); the offsets of `V`'s depth rows for the
    // kernel (`ci * row`).
    let Scratch { mut band, block: mut v_buf, mut offsets, sums: mut m_buf } = Scratch::take();
    let band_rows = task.ty1 - task.ty0 + 1;
    let at = (task.ty0, band_rows, wide);
    cpu_gemm::pad_band(&shared.input, task.image, 0..c1, (1, M), at, plane_stride, &mut band, nr + wide);
    // `V` channel-major: channel `ci`'s `t * t` rows of `nr` tiles (one per tile position `xi`)
    // together, so that a transform stores one contiguous block per channel and vector.
    // Channel blocks an odd number of cache lines apart, spread over the L1 sets for the
    // kernel, which reads one `xi` row of every channel.
    let row = cpu_gemm::spaced_plane(t * t * nr);
    let v = cpu_gemm::aligned(&mut v_buf, c1 * row);
    let m = cpu_gemm::aligned(&mut m_buf, ROWS * row);
    offsets.clear();
    offsets.extend((0..c1).map(|ci| ci * row));
    let zero = simd.splat_f32s(0.0);

    let tiles = (task.ty1 - task.ty0) * wide;
    for q0 in (0..tiles).step_by(nr) {
        // 2. Input transform, one vector of tiles at a time.
        let vectors = (tiles - q0).min(nr).div_ceil(lanes);
        for ci in 0..c1 {
            let planes = &band[ci * M * M * plane_stride..];
            let v = &mut v[ci * row..][..t * t * nr];
            for vi in 0..vectors {
                let q = q0 + vi * lanes;
                // Columns first: `bt[j] = B^T d[.][j]`, then rows: `V[i][.] = B^T bt[.][i]`.
                let mut bt = [[zero; 6]; 6];
                for (j, bt) in bt.iter_mut().enumerate().take(t) {
                    let mut d = [zero; 6];
                    for (i, d) in d.iter_mut().enumerate().take(t) {
                        let at = ((i % M) * M + j % M) * plane_stride + (i / M) * wide + j / M + q;
                        *d = load::<S>(&planes[at..at + lanes]);
                    }
                    *bt = b_transpose::<S, M>(simd, d);
                }
                #[allow(clippy::needless_range_loop)] // i is the row of `bt`'s columns
                for i in 0..t {
                    let col = [bt[0][i], bt[1][i], bt[2][i], bt[3][i], bt[4][i], bt[5][i]];
                    let out = b_transpose::<S, M>(simd, col);
                    for (j, x) in out.into_iter().enumerate().take(t) {
                        let at = (i * t + j) * nr + vi * lanes;
                        S::as_mut_simd_f32s(&mut v[at..at + lanes]).0[0] = x;
                    }
                }
            }
        }
        // Where each vector's tiles go is the same for every channel: worked out once (a
        // division per run).
        let (runs, run_count) = tile_runs(shared, M, q0, (tiles - q0).min(nr), lanes);
        let runs = &runs[..run_count];
        let width = (tiles - q0).min(nr);
        for row0 in task.channels.clone().step_by(ROWS) {
            // 3. The products of a block of channels, with a narrower tile for a partial last
            // micro-panel.
            if NV > 1 && width <= lanes {
                products::<S, ROWS, 1>(simd, weights, row0, v, &offsets, m, (nr, row));
            } else if NV > 2 && width <= 2 * lanes {
                products::<S, ROWS, 2>(simd, weights, row0, v, &offsets, m, (nr, row));
            } else {
                products::<S, ROWS, NV>(simd, weights, row0, v, &offsets, m, (nr, row));
            }
            // 4. Output transform, bias, activation, shortcut, while the block's products
            // are in cache.
            for c in row0..(row0 + ROWS).min(task.channels.end) {
                let m = &m[(c - row0) * row..][..t * t * nr];
                for vi in 0..NV {
                    let q = q0 + vi * lanes;
                    if q >= tiles {
                        break;
                    }
                    let mut tile = output_tile::<S, M>(simd, m, nr, vi * lanes);
                    let (bias, act) = (shared.bias[c], shared.act);
                    let in_registers = if M == 2 {
                        let mut y = [tile[0][0], tile[0][1], tile[1][0], tile[1][1]];
                        let done = bias_act_vec::<S, 4>(simd, &mut y, bias, act);
                        tile[0][..2].copy_from_slice(&y[..2]);
                        tile[1][..2].copy_from_slice(&y[2..]);
                        done
                    } else {
                        let mut done = true;
                        for y in &mut tile {
                            done = bias_act_vec::<S, 4>(simd, y, bias, act);
                        }
                        done
                    };
                    // Each output row of the tiles: the tiles' columns interleaved. Each column
                    // is stored into its own array first: from one array of them, the compiler
                    // built the interleave from loads straddling two of the columns just
                    // stored, which the core cannot forward from the stores (a stall per
                    // vector).
                    let mut rows = Aligned([[0f32; 4 * MAX_LANES]; 4]);
                    let rows = &mut rows.0;
                    for (dst, y) in rows.iter_mut().zip(&tile).take(M) {
                        let mut col0 = Aligned([0f32; MAX_LANES]);
                        let mut col1 = Aligned([0f32; MAX_LANES]);
                        let mut col2 = Aligned([0f32; MAX_LANES]);
                        let mut col3 = Aligned([0f32; MAX_LANES]);
                        let cols =
                            [&mut col0.0[..lanes], &mut col1.0[..lanes], &mut col2.0[..lanes], &mut col3.0[..lanes]];
                        for (col, y) in cols.into_iter().zip(y).take(M) {
                            S::as_mut_simd_f32s(col).0[0] = *y;
                            if !in_registers {
                                bias_act(col, bias, act);
                            }
                        }
                        let dst = &mut dst[..M * lanes];
                        if M == 2 {
                            for (px, (a, b)) in dst.chunks_exact_mut(2).zip(col0.0.iter().zip(&col1.0)) {
                                px[0] = *a;
                                px[1] = *b;
                            }
                        } else {
                            for (px, (((a, b), c), d)) in
                                dst.chunks_exact_mut(4).zip(col0.0.iter().zip(&col1.0).zip(&col2.0).zip(&col3.0))
                            {
                                px[0] = *a;
                                px[1] = *b;
                                px[2] = *c;
                                px[3] = *d;
                            }
                        }
                    }
                    write_tiles::<M>(shared, &mut task, c, runs.iter().filter(|r| r.vector == vi), rows);
                }
            }
        }
    }
    Scratch { band, block: v_buf, offsets, sums: m_buf }.put();
    task.rows.iter().all(Filler::is_full)
}

/// The output transform `Y = A^T M A` of one vector of tiles: `m` holds row `xi` of the
/// products at `xi * nr + lane0`; `Y[i][j]` is output pixel `(i, j)` of each lane's tile.
#[inline(always)]
fn output_tile<S: Simd, const M: usize>(simd: S, m: &[f32], nr: usize, lane0: usize) -> [OutTile<S>; 4] {
    let t = M + 2;
    let zero = simd.splat_f32s(0.0);
    // Columns first: `at[j] = A^T M[.][j]`, then rows: `Y[i][.] = A^T at[.][i]`.
    let mut at = [[zero; 4]; 6];
    for (j, at) in at.iter_mut().enumerate().take(t) {
        let mut col = [zero; 6];
        for (i, col) in col.iter_mut().enumerate().take(t) {
            let k = (i * t + j) * nr + lane0;
            *col = load::<S>(&m[k..k + S::F32_LANES]);
        }
        *at = a_transpose::<S, M>(simd, col);
    }
    let mut y = [[zero; 4]; 4];
    for (i, y) in y.iter_mut().enumerate().take(M) {
        *y = a_transpose::<S, M>(simd, [at[0][i], at[1][i], at[2][i], at[3][i], at[4][i], at[5][i]]);
    }
    y
}

/// `M[xi] = U[xi] @ V[xi]` for the tile positions and the `ROWS` output channels from `row0`,
/// `TV` vectors of tiles wide: row `xi` of input channel `ci` of `V` at `ci * row + xi * nr`,
/// of output channel `row0 + r` of `M` at `r * row + xi * nr`.
#[inline(always)]
fn products<S: Simd, const ROWS: usize, const TV: usize>(
    simd: S,
    weights: &TileWeights,
    row0: usize,
    v: &[f32],
    offsets: &[usize],
    m: &mut [f32],
    (nr, row): (usize, usize),
) {
    let c1 = weights.c1;
    let width = TV * S::F32_LANES;
    let t = weights.m + 2;
    for xi in 0..t * t {
        let a = weights.u.panel(0, row0 / PANEL_ROWS, xi * c1..(xi + 1) * c1);
        let acc = [[simd.splat_f32s(0.0); TV]; ROWS];
        let acc = cpu_gemm::kernel::<S, ROWS, TV>(simd, a, row0 % PANEL_ROWS, &v[xi * nr..], offsets, acc);
        for (r, acc) in acc.iter().enumerate() {
            let at = r * row + xi * nr;
            pulp::as_arrays_mut::<TV, S::f32s>(S::as_mut_simd_f32s(&mut m[at..at + width]).0).0[0] = *acc;
        }
    }
}

/// `B^T x` for the first `M + 2` values of `x`:
/// - F(2x2, 3x3): `B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]`;
/// - F(4x4, 3x3): `B^T = [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
///   [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]]`, in 12 operations.
#[inline(always)]
fn b_transpose<S: Simd, const M: usize>(simd: S, x: InTile<S>) -> InTile<S> {
    if M == 2 {
        let zero = simd.splat_f32s(0.0);
        return [
            simd.sub_f32s(x[0], x[2]),
            simd.add_f32s(x[1], x[2]),
            simd.sub_f32s(x[2], x[1]),
            simd.sub_f32s(x[1], x[3]),
            zero,
            zero,
        ];
    }
    // No closures here (see `cpu_conv::exp_neg_vec`): constants splatted in place.
    let (four, minus_four, minus_five) = (simd.splat_f32s(4.0), simd.splat_f32s(-4.0), simd.splat_f32s(-5.0));
    let t0 = simd.mul_add_e_f32s(x[2], minus_four, x[4]);
    let t1 = simd.mul_add_e_f32s(x[1], minus_four, x[3]);
    let t2 = simd.sub_f32s(x[4], x[2]);
    let t3 = simd.sub_f32s(x[3], x[1]);
    let t3 = simd.add_f32s(t3, t3);
    [
        simd.mul_add_e_f32s(x[0], four, simd.mul_add_e_f32s(x[2], minus_five, x[4])),
        simd.add_f32s(t0, t1),
        simd.sub_f32s(t0, t1),
        simd.add_f32s(t2, t3),
        simd.sub_f32s(t2, t3),
        simd.mul_add_e_f32s(x[1], four, simd.mul_add_e_f32s(x[3], minus_five, x[5])),
    ]
}

/// `A^T x` for the first `M + 2` values of `x`, `M` values:
/// - F(2x2, 3x3): `A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]`;
/// - F(4x4, 3x3): `A^T = [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0],
///   [0, 1, -1, 8, -8, 1]]`.
#[inline(always)]
fn a_transpose<S: Simd, const M: usize>(simd: S, x: InTile<S>) -> OutTile<S> {
    if M == 2 {
        let zero = simd.splat_f32s(0.0);
        return [
            simd.add_f32s(simd.add_f32s(x[0], x[1]), x[2]),
            simd.sub_f32s(simd.sub_f32s(x[1], x[2]), x[3]),
            zero,
            zero,
        ];
    }
    let (a, b) = (simd.add_f32s(x[1], x[2]), simd.sub_f32s(x[1], x[2]));
    let (s, d) = (simd.add_f32s(x[3], x[4]), simd.sub_f32s(x[3], x[4]));
    [
        simd.add_f32s(simd.add_f32s(x[0], a), s),
        simd.mul_add_e_f32s(d, simd.splat_f32s(2.0), b),
        simd.mul_add_e_f32s(s, simd.splat_f32s(4.0), a),
        simd.add_f32s(simd.mul_add_e_f32s(d, simd.splat_f32s(8.0), b), x[5]),
    ]
}

/// One vector from the first `S::F32_LANES` values of `x`.
#[inline(always)]
fn load<S: Simd>(x: &[f32]) -> S::f32s {
    S::as_simd_f32s(x).0[0]
}

/// Tiles of one vector of a micro-panel, from lane `l` on, that lie in one tile row: their
/// output pixels are columns `x0 .. x1` of band rows `row .. row + m` (counted from the band's
/// first output row).
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
fn tile_runs(shared: &Shared<'_>, m: usize, q0: usize, n: usize, lanes: usize) -> ([TileRun; MAX_RUNS], usize) {
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
                runs[count] = TileRun { vector, l, row: m * ty, x0: m * tx, x1: (m * (tx + run)).min(w) };
                count += 1;
            }
            l += run.max(1);
        }
    }
    (runs, count)
}

/// Writes the finished `M x M` tiles of output channel `c` for `runs` (of one vector):
/// `tiles[i][M l + j]` is output pixel `(M ty + i, M tx + j)` of lane `l`. Rows past the map's
/// edge are dropped; the shortcut is added to what is written.
#[inline(always)]
fn write_tiles<'r, const M: usize>(
    shared: &Shared<'_>,
    task: &mut Task<'_>,
    c: usize,
    runs: impl Iterator<Item = &'r TileRun>,
    tiles: &mut [[f32; 4 * MAX_LANES]; 4],
) {
    let (h, w) = (shared.input.h, shared.input.w);
    let plane = (task.image * shared.weights.c2 + c) * h * w;
    let first_row = M * task.ty0;
    let band_rows = (M * task.ty1).min(h) - first_row;
    let rows = &mut task.rows[(c - task.channels.start) * band_rows..][..band_rows];
    for run in runs {
        for (i, tiles) in tiles.iter_mut().enumerate().take(M) {
            let row = run.row + i;
            if row >= band_rows {
                continue;
            }
            let values = &mut tiles[M * run.l..M * run.l + run.x1 - run.x0];
            if let Some(res) = shared.residual {
                let at = plane + (first_row + row) * w;
                values.iter_mut().zip(&res[at + run.x0..at + run.x1]).for_each(|(v, r)| *v += r);
            }
            rows[row].push(values);
        }
    }
}
