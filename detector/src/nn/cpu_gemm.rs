//! The CPU convolution kernel: a convolution as a matrix product whose right-hand side is
//! never built, with packed weights and bias, activation and shortcut applied in cache.
//!
//! Why not im2col + a library GEMM: for these networks' shapes (few output channels, many
//! pixels) the general GEMM reached only 40–100 GFLOP/s here against a 234 GFLOP/s peak, and the
//! im2col matrix (9x the input for 3x3) was written, read back and packed again.
//!
//! ```text
//! out[c2, pixels] = W[c2, c1*k*k] @ col[c1*k*k, pixels]
//! ```
//!
//! - `W` is packed once at load into panels of [`PANEL_ROWS`] output channels (depth-major),
//!   so the kernel broadcasts one weight per row and step.
//! - Kernels larger than 1x1 with stride 1 or 2 (every 3x3 of these models): each task copies
//!   the input rows its band of pixels reads into zero-padded planes in a per-thread buffer,
//!   one depth block of input channels at a time (in L2 when it reads them), split by stride
//!   phase when the stride is 2 (even and odd rows and columns apart). In "wide" pixel
//!   coordinates (the row width of those planes, so a few junk columns per row) every row of
//!   `col` is then a shifted slice of a plane, so the kernel reads it in place through a table
//!   of per-depth offsets ([`Source::Band`]), all the task's micro-panels per depth block.
//! - 1x1 convolutions (and other strides): each task gathers the `DEPTH_BLOCK x NR` slices of `col` it
//!   needs into a small per-thread buffer ([`gather`]), which stays in cache while every
//!   channel panel uses it (for 1x1 these are plain copies of input row segments).
//! - The kernel keeps a `ROWS x NV` tile of SIMD accumulators in registers (8 x 3 zmm on
//!   AVX-512, 4 x 3 ymm on AVX2; 1 or 2 vectors wide for a partial last micro-panel) and is
//!   compiled for the widest vectors the CPU has through `pulp`'s runtime dispatch (all safe
//!   code). Partial sums between depth blocks go to a per-thread buffer. It asks for the
//!   weights [`PREFETCH_STEPS`] depth steps ahead of reading them.
//! - After the last depth block, bias and activation (SiLU, ReLU) are applied to the tile in
//!   registers, the tile row is stored (junk columns dropped), and the bottleneck shortcut is
//!   added while it is in L1.
//! - The input may come in channel parts (the branches an ELAN block concatenates), read in
//!   place instead of copied by `cat`.
//!
//! Tasks are (image, group, channel block, pixel block), spread over the [`fork_join`] threads;
//! each writes disjoint row segments of the NCHW output, which is never zeroed ([`Filler`]).

use std::cell::RefCell;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicUsize, Ordering};

use pulp::Simd;

use super::cpu_conv::{Geometry, bias_act, bias_act_vec};
use super::fork_join;
use crate::spec::Activation;

/// Output channels per packed weight panel.
pub(crate) const PANEL_ROWS: usize = 8;
/// Most depth (input channel x kernel tap) per block: the `DEPTH_BLOCK x NR` slice of `col`
/// a micro-panel reads (24 KiB on AVX-512) stays in L1 while all channel panels use it.
const DEPTH_BLOCK: usize = 128;
/// The same for [`Source::Band`]: its rows share cache lines (the taps of one channel read
/// neighbouring pixels), so 288 rows (32 channels of a 3x3) touch about 19 KiB. With stride 2
/// the taps of a channel read four phase planes, and half as many rows per block ran 4-8 %
/// faster (32 -> 64 at 320x320, 64 -> 128 at 159x159, 192 -> 256 at 39x39).
const DIRECT_DEPTH_BLOCK: usize = 288;
/// Most pixel micro-panels per task of a gathered convolution.
const MAX_PANELS_PER_TASK: usize = 4;
/// Most partial sums per task of a [`Source::Band`] convolution (a row of the task's pixels per
/// output channel, kept between depth blocks): with a depth block's padded input and weights
/// they stay in L2.
const SUMS_BYTES: usize = 256 * 1024;
/// Most padded input per band of a [`Source::Band`] convolution: with the partial sums and
/// weights it stays in a core's L2 (2 MiB here, 0.5-1.25 MiB on most laptop cores).
const BAND_BYTES: usize = 512 * 1024;
/// Widest micro-panel of any SIMD flavour (48 pixels on AVX-512).
const MAX_PANEL_WIDTH: usize = 64;

/// Convolution weights `[c2, c1 / g, k, k]` packed as, per group and per panel of
/// [`PANEL_ROWS`] output channels, for each depth index the panel's weights (zero-padded).
#[derive(Debug, Clone)]
pub(crate) struct PackedWeights {
    groups: usize,
    /// Output channels per group.
    rows: usize,
    /// `c1 / g * k * k`.
    depth: usize,
    data: Vec<f32>,
}

impl PackedWeights {
    /// `weights` is the row-major `[c2, c1 / g * k * k]` matrix of a convolution with `groups`.
    pub fn new(weights: &[f32], groups: usize, rows: usize, depth: usize) -> Self {
        let panels = rows.div_ceil(PANEL_ROWS);
        let mut data = vec![0f32; groups * panels * depth * PANEL_ROWS];
        for (row, w) in weights.chunks_exact(depth).enumerate().take(groups * rows) {
            let (gi, r) = (row / rows, row % rows);
            let panel = (gi * panels + r / PANEL_ROWS) * depth * PANEL_ROWS;
            for (kk, &v) in w.iter().enumerate() {
                data[panel + kk * PANEL_ROWS + r % PANEL_ROWS] = v;
            }
        }
        Self { groups, rows, depth, data }
    }

    fn panels(&self) -> usize {
        self.rows.div_ceil(PANEL_ROWS)
    }

    /// Output channels per group.
    pub(crate) fn rows(&self) -> usize {
        self.rows
    }

    /// Depth rows (input channels per group x taps).
    pub(crate) fn depth(&self) -> usize {
        self.depth
    }

    /// Depth range `depth` of panel `panel` of group `gi`.
    pub(crate) fn panel(&self, gi: usize, panel: usize, depth: std::ops::Range<usize>) -> &[[f32; PANEL_ROWS]] {
        let start = (gi * self.panels() + panel) * self.depth * PANEL_ROWS;
        let all = &self.data[start..start + self.depth * PANEL_ROWS];
        &pulp::as_arrays::<PANEL_ROWS, f32>(all).0[depth]
    }
}

/// One NCHW f32 input batch of `h x w` planes, made of channel parts (the tensors a `cat`
/// would have joined; reading them in place saves that copy).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Input<'a> {
    pub parts: &'a [Part<'a>],
    pub h: usize,
    pub w: usize,
}

/// `channels` planes of an NCHW f32 tensor: rows contiguous, planes `plane_stride` apart.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Part<'a> {
    pub data: &'a [f32],
    pub base: usize,
    pub image_stride: usize,
    pub plane_stride: usize,
    pub channels: usize,
}

impl Input<'_> {
    /// The `h x w` plane of input channel `channel` of image `image`. Inlined: [`gather`] asks
    /// for a plane per depth row, and as a call this was 8 % of a 1x1 convolution at 10x10.
    #[inline(always)]
    fn plane(&self, image: usize, mut channel: usize) -> &[f32] {
        for part in self.parts {
            if channel < part.channels {
                return &part.data[part.base + image * part.image_stride + channel * part.plane_stride..]
                    [..self.h * self.w];
            }
            channel -= part.channels;
        }
        panic!("input channel out of range")
    }
}

/// Where the kernel reads its right-hand side (the im2col matrix) from.
#[derive(Clone, Copy)]
enum Source<'a> {
    /// Convolutions with k > 1 and stride `s` of 1 or 2, in bands (a task's range of pixels,
    /// whole rows or not): each task copies the zero-padded input rows its band reads into a
    /// per-thread buffer, split
    /// into `s * s` phase planes per channel, phase `(py, px)` holding padded pixels
    /// `(s * i + py, s * j + px)` (for stride 1 just the padded rows), `plane_stride` apart.
    /// In "wide" pixel coordinates `q = oy * wide + ox` (with `wide` the phase planes' row
    /// width, so `wide - wo` junk columns per row), counted from the band's first row, row
    /// `(ci, ky, kx)` of `col` at `q` is then
    /// `band[plane(ci, (ky d % s, kx d % s)) + (ky d / s) * wide + kx d / s + q]`: a plain
    /// matrix product with offsets, the same for every band: `offsets[(ci * k + ky) * k + kx]`.
    /// `halo` is the phase rows a band reads below its last one.
    ///
    /// `padded`, when given, holds every image's whole padded input (one band of all output
    /// rows per image, channels in order), which all tasks read instead of padding their own.
    Band { plane_stride: usize, halo: usize, offsets: &'a [usize], padded: Option<&'a [f32]> },
    /// 1x1 convolutions (and strides above 2): gathered per task into micro-panels (see
    /// [`gather`]).
    Gathered,
}

/// Everything a task reads.
struct Shared<'a> {
    input: Input<'a>,
    source: Source<'a>,
    geo: Geometry,
    weights: &'a PackedWeights,
    bias: &'a [f32],
    act: Option<Activation>,
    /// Same shape as the output, added after the activation.
    residual: Option<&'a [f32]>,
    ho: usize,
    wo: usize,
    /// Row width in the pixel coordinates the tasks run over (`wo` unless `Band`).
    wide: usize,
}

impl Shared<'_> {
    /// The output pixel of wide coordinate `q` (junk columns map to the next real pixel).
    fn out_index(&self, q: usize) -> usize {
        (q / self.wide) * self.wo + (q % self.wide).min(self.wo)
    }
}

/// A block of output channels x a block of pixels of one image and group.
struct Task<'a> {
    image: usize,
    group: usize,
    /// First channel panel (within the group) and the rows of the block, one per output
    /// channel, each covering the output pixels of wide coordinates `pixels.0 .. pixels.1`.
    first_panel: usize,
    rows: Vec<Filler<'a>>,
    pixels: (usize, usize),
}

/// `out = act(conv(input) + bias) (+ residual)` for a whole batch; `out` is the contiguous
/// NCHW output `[batch, c2, ho, wo]`, uninitialised. Returns whether every value of it was
/// written.
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv(
    isa: Isa,
    input: Input<'_>,
    batch: usize,
    geo: Geometry,
    weights: &PackedWeights,
    bias: &[f32],
    act: Option<Activation>,
    residual: Option<&[f32]>,
    out: &mut [MaybeUninit<f32>],
) -> bool {
    let (ho, wo) = geo.out_size(input.h, input.w);
    let nr = isa.dispatch(PanelWidth);
    let threads = fork_join::threads();
    // 1x1 convolutions read their input rows directly while gathering (no padding needed);
    // a padded copy would only add a pass over the input, which is all they read.
    let banded = geo.k > 1 && geo.s <= 2;
    let (s, halo) = (geo.s, (geo.k - 1) * geo.d / geo.s);
    let wide = if banded { (input.w + 2 * geo.p).div_ceil(s) } else { wo };
    // Wide pixel coordinates run to the last real pixel (junk after it is not computed).
    let pixels = (ho - 1) * wide + wo;
    // Tasks of `per_task` micro-panels, enough of them for every thread; when there are too
    // few, the channels are split as well (below).
    let micro_panels = pixels.div_ceil(nr);
    let per_task = (micro_panels / (4 * threads)).max(1);
    let c1g = geo.c1 / geo.g;
    let per_task = if banded {
        // Few enough pixels that a depth block's padded input rows (its own, the halo, and one
        // more where it starts mid-row) stay in the core's L2.
        let block_channels = block_channels(c1g, geo.k * geo.k, s);
        let row_bytes = block_channels * s * s * wide * std::mem::size_of::<f32>();
        let max_rows = (BAND_BYTES / row_bytes).saturating_sub(halo + 1).max(1);
        let per_task = per_task.min((max_rows * wide / nr).max(1));
        if block_channels < c1g {
            // The partial sums between depth blocks, a row of all the task's micro-panels per
            // output channel, stay in L2 too.
            let sums_per_panel = weights.rows * nr * std::mem::size_of::<f32>();
            per_task.min((SUMS_BYTES / sums_per_panel).max(1))
        } else {
            per_task
        }
    } else {
        per_task.min(MAX_PANELS_PER_TASK)
    };
    // Pixel blocks of at most `per_task` micro-panels, a multiple of the thread count of them,
    // as even as whole micro-panels allow. Cut into blocks of exactly `per_task`, 128 -> 128 at
    // 40x40 (35 micro-panels) made 8 tasks of 4 and one of 3: nine tasks on two threads.
    let pixel_blocks = micro_panels.div_ceil(per_task).next_multiple_of(threads).min(micro_panels);
    let panels = weights.panels();
    let channel_blocks = (4 * threads).div_ceil(pixel_blocks * batch * weights.groups).clamp(1, panels);
    // Maps too small for enough pixel blocks are split by output channels too. Banded tasks
    // then share one padded copy of the input, made first in a parallel pass: each padding
    // its own band, the tasks of 192 -> 128 stride 2 at 20x20 padded the input 4.5 times
    // over, 44 % of their time.
    let shared_band = banded && channel_blocks > 1;
    let mut padded = if shared_band { PADDED.with(|cell| std::mem::take(&mut *cell.borrow_mut())) } else { Vec::new() };
    let offsets: Vec<usize>;
    let source = if banded {
        let band_rows = if shared_band { ho + halo } else { (per_task * nr).div_ceil(wide) + 1 + halo };
        let plane_stride = spaced_plane(band_rows * wide);
        // Once per convolution: every task's band has the same layout. The taps of one channel
        // are the same offsets from its planes (a loop of divisions per row took 30 us for 192
        // channels of a 3x3).
        let taps: Vec<usize> = (0..geo.k * geo.k)
            .map(|t| {
                let (dy, dx) = (t / geo.k * geo.d, t % geo.k * geo.d);
                ((dy % s) * s + dx % s) * plane_stride + dy / s * wide + dx / s
            })
            .collect();
        offsets = (0..c1g).flat_map(|ci| taps.iter().map(move |t| ci * s * s * plane_stride + t)).collect();
        if shared_band
            && !pad_all(isa, &input, batch, (geo.p, s), (ho + halo, wide), plane_stride, &mut padded, nr + wide)
        {
            return false;
        }
        let padded = shared_band.then_some(&padded[..]);
        Source::Band { plane_stride, halo, offsets: &offsets, padded }
    } else {
        Source::Gathered
    };
    let shared = Shared { input, source, geo, weights, bias, act, residual, ho, wo, wide };
    // Wide pixel coordinate where each block starts, and the end.
    let starts: Vec<usize> = (0..pixel_blocks).map(|i| i * micro_panels / pixel_blocks * nr).chain([pixels]).collect();
    let panels_per_block = panels.div_ceil(channel_blocks);
    // Output pixel ranges of the pixel blocks.
    let cuts: Vec<usize> = starts.iter().map(|&q| if q == pixels { ho * wo } else { shared.out_index(q) }).collect();

    let mut tasks: Vec<Task<'_>> =
        Vec::with_capacity(batch * weights.groups * panels.div_ceil(panels_per_block) * pixel_blocks);
    let out_len = out.len();
    for (image, out) in out.chunks_exact_mut(geo.c2 * ho * wo).enumerate().take(batch) {
        for (group, out) in out.chunks_exact_mut(weights.rows * ho * wo).enumerate() {
            let first = tasks.len();
            for block in 0..panels.div_ceil(panels_per_block) {
                for bounds in starts.windows(2) {
                    let (col, end) = (bounds[0], bounds[1]);
                    let first_panel = block * panels_per_block;
                    let rows = (weights.rows - first_panel * PANEL_ROWS).min(panels_per_block * PANEL_ROWS);
                    tasks.push(Task { image, group, first_panel, rows: Vec::with_capacity(rows), pixels: (col, end) });
                }
            }
            hand_out_segments(out, ho * wo, &cuts, |row, i, segment| {
                let block = row / PANEL_ROWS / panels_per_block;
                tasks[first + block * pixel_blocks + i].rows.push(segment);
            });
        }
    }
    let filled =
        fill(tasks, out_len, |task| &task.rows, |task| isa.dispatch(WithTile(RunTask { shared: &shared, task })));
    if shared_band {
        PADDED.with(|cell| *cell.borrow_mut() = padded);
    }
    filled
}

thread_local! {
    /// The shared padded input of a [`Source::Band`] convolution on a small map, or of a
    /// [`cpu_lanes`](super::cpu_lanes) convolution, per calling thread (grown, never shrunk).
    pub(crate) static PADDED: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Every image's whole padded input into `dst` (see [`Source::Band`]): `rows` phase rows of
/// `wide` values per phase plane, in one parallel pass over channel chunks. Whether all of it
/// was written (a chunk that panicked on a helper thread was not).
#[allow(clippy::too_many_arguments)]
pub(crate) fn pad_all(
    isa: Isa,
    input: &Input<'_>,
    batch: usize,
    (p, s): (usize, usize),
    (rows, wide): (usize, usize),
    plane_stride: usize,
    dst: &mut Vec<f32>,
    slack: usize,
) -> bool {
    let c1: usize = input.parts.iter().map(|part| part.channels).sum();
    let channel_len = s * s * plane_stride;
    // Never shrunk; stale values between planes and in the slack only reach junk columns.
    let len = batch * c1 * channel_len + slack;
    if dst.len() < len {
        dst.resize(len, 0.0);
    }
    let per_item = c1.div_ceil(4 * fork_join::threads()).max(1);
    let items: Vec<_> = dst[..batch * c1 * channel_len]
        .chunks_mut(c1 * channel_len)
        .enumerate()
        .flat_map(|(image, planes)| {
            planes.chunks_mut(per_item * channel_len).enumerate().map(move |(i, d)| (image, i, d))
        })
        .collect();
    let (count, padded) = (items.len(), AtomicUsize::new(0));
    fork_join::for_each(items, |(image, i, dst)| {
        let channels = i * per_item..((i + 1) * per_item).min(c1);
        isa.dispatch(PadOp { input, image, channels, at: (p, s, rows, wide), plane_stride, dst });
        padded.fetch_add(1, Ordering::Relaxed);
    });
    padded.into_inner() == count
}

/// [`pad_channels`] compiled for the CPU's widest vectors (its row split vectorises).
struct PadOp<'a, 'i> {
    input: &'a Input<'i>,
    image: usize,
    channels: std::ops::Range<usize>,
    at: (usize, usize, usize, usize),
    plane_stride: usize,
    dst: &'a mut [f32],
}

impl pulp::WithSimd for PadOp<'_, '_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, _simd: S) {
        let (p, s, rows, wide) = self.at;
        pad_channels(self.input, self.image, self.channels, (p, s), (0, rows, wide), self.plane_stride, self.dst);
    }
}

/// Runs `tasks` on the [`fork_join`] threads, each returning whether it filled its rows, once
/// their rows (`rows` of each) are seen to cover all `out_len` values of the output. Whether
/// every value was written.
pub(crate) fn fill<'a, T: Send>(
    tasks: Vec<T>,
    out_len: usize,
    rows: impl Fn(&T) -> &[Filler<'a>],
    run: impl Fn(T) -> bool + Sync + Send,
) -> bool {
    // The rows are disjoint (cut by `split_at_mut`), so covering the length covers every value.
    let covered: usize = tasks.iter().flat_map(&rows).map(Filler::len).sum();
    if covered != out_len {
        return false;
    }
    let (count, filled) = (tasks.len(), AtomicUsize::new(0));
    fork_join::for_each(tasks, |task| {
        if run(task) {
            filled.fetch_add(1, Ordering::Relaxed);
        }
    });
    filled.into_inner() == count
}

/// Cuts every `plane`-long channel plane of `out` at `cuts` (offsets within a plane, from 0 to
/// `plane`) and hands segment `i` of channel `c` to `give(c, i, segment)`: how the kernels give
/// each task the rows of the output it fills.
pub(crate) fn hand_out_segments<'a>(
    out: &'a mut [MaybeUninit<f32>],
    plane: usize,
    cuts: &[usize],
    mut give: impl FnMut(usize, usize, Filler<'a>),
) {
    for (channel, mut rest) in out.chunks_exact_mut(plane).enumerate() {
        for (i, bounds) in cuts.windows(2).enumerate() {
            let (segment, tail) = rest.split_at_mut(bounds[1] - bounds[0]);
            give(channel, i, Filler::new(segment));
            rest = tail;
        }
    }
}

/// A part of an uninitialised output that a task fills from front to back, each value once.
/// Outputs used to be zeroed first so that they could be `&mut [f32]`: for the large maps of
/// 1x1 and stride-2 convolutions, which move much memory for few multiply-adds, that was a whole
/// extra pass over memory.
///
/// Its slice is private: only [`Filler::push`] takes values off it (or [`Filler::into_rows`]
/// cuts it up), and it writes every one it takes, so a full `Filler` has written all of its
/// part ([`filled_vec`] and `CpuConv::run` rely on that).
pub(crate) struct Filler<'a>(&'a mut [MaybeUninit<f32>]);

impl<'a> Filler<'a> {
    pub fn new(part: &'a mut [MaybeUninit<f32>]) -> Self {
        Self(part)
    }

    /// Writes `values` at the front of what is left to fill.
    ///
    /// Runs of up to 64 values are written as up to four copies of one constant length that
    /// overlap where they must, with no loop: these compile to vector moves. A copy of
    /// variable length is a call to `memmove`, and from AVX-512 code a `vzeroupper` before it,
    /// which costs the caller its vector registers; every tile row of a 1x1 convolution went
    /// that way (10 % of its time) when the compiler merged the last copies of the length
    /// classes into one `memcpy` of variable length, and when it turned a loop of copies into
    /// one.
    #[inline(always)]
    pub fn push(&mut self, values: &[f32]) {
        let n = values.len();
        let (head, rest) = std::mem::take(&mut self.0).split_at_mut(n);
        self.0 = rest;
        /// `W <= n <= 4 W` values: the first and last W, and the first and last 2 W when
        /// there are more than 2 W.
        #[inline(always)]
        fn overlapping<const W: usize>(dst: &mut [MaybeUninit<f32>], src: &[f32]) {
            let n = src.len();
            // The match below only calls this with such lengths (the check costs nothing there).
            assert!(W <= n && n <= 4 * W && dst.len() == n);
            dst[..W].write_copy_of_slice(&src[..W]);
            dst[n - W..].write_copy_of_slice(&src[n - W..]);
            if n > 2 * W {
                dst[W..2 * W].write_copy_of_slice(&src[W..2 * W]);
                dst[n - 2 * W..n - W].write_copy_of_slice(&src[n - 2 * W..n - W]);
            }
        }
        match n {
            0 => {}
            1 => {
                head[0].write(values[0]);
            }
            2..4 => overlapping::<2>(head, values),
            4..16 => overlapping::<4>(head, values),
            16..=64 => overlapping::<16>(head, values),
            _ => {
                head.write_copy_of_slice(values);
            }
        }
    }

    /// What is left to fill, cut into parts of `row_len` values (the last may be shorter),
    /// each filled on its own.
    pub fn into_rows(self, row_len: usize) -> impl Iterator<Item = Filler<'a>> {
        self.0.chunks_mut(row_len.max(1)).map(Filler)
    }

    /// Values left to fill.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_full(&self) -> bool {
        self.0.is_empty()
    }
}

/// A new output of `len` values, cut into parts of `part_len` values (the last may be
/// shorter) that `write(i, part)` fills on the [`fork_join`] threads, in parallel and never
/// zeroed first. `None` if a part was left unfilled (`write` did not fill it, or panicked on a
/// helper thread).
///
/// Why: pooling and concatenation outputs used to be zeroed first, on the calling thread while
/// the helper waited (0.4 ms of a gelan-s pass at 320 for the pools alone).
pub(crate) fn filled_vec(
    len: usize,
    part_len: usize,
    write: impl Fn(usize, OutputPart<'_, '_>) + Sync,
) -> Option<Vec<f32>> {
    let mut out = Vec::with_capacity(len);
    let parts = len.div_ceil(part_len.max(1));
    let full = AtomicUsize::new(0);
    fork_join::for_each_chunk_mut(&mut out.spare_capacity_mut()[..len], part_len, |i, part| {
        let mut part = Filler::new(part);
        write(i, OutputPart(&mut part));
        if part.is_full() {
            full.fetch_add(1, Ordering::Relaxed);
        }
    });
    if full.into_inner() != parts {
        return None;
    }
    // SAFETY: `len` is within the capacity, and the first `len` values of the spare capacity
    // are initialised: `for_each_chunk_mut` cut them into disjoint parts that cover all of them
    // and ran each once (as it documents); each part was wrapped in a `Filler` that `write` could
    // only push values to (through `OutputPart`, which nothing outside this module can make or
    // take apart), `Filler::push` writes every value it takes off the front, and every part's
    // `Filler` was seen full.
    #[allow(unsafe_code)]
    unsafe {
        out.set_len(len)
    };
    Some(out)
}

/// One part of a [`filled_vec`] output, to be filled front to back.
pub(crate) struct OutputPart<'p, 'a>(&'p mut Filler<'a>);

impl OutputPart<'_, '_> {
    /// Writes `values` at the front of what is left (see [`Filler::push`]).
    #[inline(always)]
    pub fn push(&mut self, values: &[f32]) {
        self.0.push(values)
    }

    /// Values left to fill.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.0.len()
    }
}

/// `len` values of `buf` that start on a cache line (`buf` is grown as needed, never shrunk;
/// what it held is left as it was). The register kernel loads and stores whole vectors of
/// these buffers: from an allocation 16, 32 or 48 bytes off a line, as `Vec<f32>` gave them,
/// every such vector straddled two lines, and 3x3 layers through [`cpu_winograd`] ran 10-20 %
/// slower.
///
/// [`cpu_winograd`]: super::cpu_winograd
pub(crate) fn aligned(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
    const LINE: usize = 64 / std::mem::size_of::<f32>();
    if buf.len() < len + LINE - 1 {
        buf.resize(len + LINE - 1, 0.0);
    }
    let skip = (buf.as_ptr().addr() / std::mem::size_of::<f32>()).wrapping_neg() % LINE;
    &mut buf[skip..skip + len]
}

/// A value on the stack that starts on a cache line. Tile rows are stored there as whole
/// vectors and read back at once: 4 or 8 bytes off a line (as `[f32; N]` and `Option`s of
/// vectors were), every vector store straddled two lines, and a store split over two lines is
/// not forwarded to the loads after it, which waited until it reached the cache.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub(crate) struct Aligned<T>(pub T);

/// The distance between padded planes: an odd number of cache lines, so that channel `i`'s
/// planes start in L1 set `i * lines mod 64` (all 64 sets in turn). Planes a whole number of
/// pages apart (160 x 160 floats are 25 pages) put the same pixel of every channel in one L1
/// set (12 ways), and reading 128 channels thrashed it. Rounding up to whole pages plus a line,
/// as before, spread the small planes of a 10 x 10 to 40 x 40 band (a few hundred floats each)
/// over a page each: one TLB entry per plane, and a Winograd input transform 1.5x slower.
pub(crate) fn spaced_plane(len: usize) -> usize {
    let lines = len.div_ceil(16);
    (lines | 1) * 16
}

/// Copies the zero-padded input rows that one band of output rows reads into `dst`: for each
/// input channel in `channels` of `image`, its `s * s` phase planes (see [`Source::Band`]),
/// `plane_stride` apart, each holding phase rows `oy0 .. oy0 + rows` (`wide` values each).
/// `slack` more values follow the last plane (the kernel reads whole micro-panels). The phase
/// step `s` is 1 or 2 (a convolution's stride) or 4 (Winograd's 4x4 output tiles).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) fn pad_band(
    input: &Input<'_>,
    image: usize,
    channels: std::ops::Range<usize>,
    (p, s): (usize, usize),
    (oy0, rows, wide): (usize, usize, usize),
    plane_stride: usize,
    dst: &mut Vec<f32>,
    slack: usize,
) {
    let len = channels.len() * s * s * plane_stride + slack;
    // Never shrunk (growing zero-fills it). Every value of the band's rows is written below;
    // stale values between planes and in the slack only reach junk columns, which are dropped.
    if dst.len() < len {
        dst.resize(len, 0.0);
    }
    pad_channels(input, image, channels, (p, s), (oy0, rows, wide), plane_stride, dst);
}

/// [`pad_band`] into `dst`, which holds at least the planes of `channels`; `s` is 1, 2 or 4.
#[inline(always)]
fn pad_channels(
    input: &Input<'_>,
    image: usize,
    channels: std::ops::Range<usize>,
    (p, s): (usize, usize),
    (oy0, rows, wide): (usize, usize, usize),
    plane_stride: usize,
    dst: &mut [f32],
) {
    debug_assert!(matches!(s, 1 | 2 | 4), "phase step {s}");
    let (h, w) = (input.h, input.w);
    // Stride 4 (Winograd F(4x4, 3x3)): a padded input row and its even and odd columns.
    let (mut padded_row, mut halves) = (Vec::new(), if s == 4 { vec![0f32; 4 * wide] } else { Vec::new() });
    for (ci, phases) in channels.zip(dst.chunks_exact_mut(s * s * plane_stride)) {
        let src = input.plane(image, ci);
        for py in 0..s {
            // The planes of phase row `py`: phase column `px` holds padded columns `s c + px`.
            let planes = &mut phases[py * s * plane_stride..][..s * plane_stride];
            for r in 0..rows {
                let y = s * (oy0 + r) + py;
                if !(p..p + h).contains(&y) {
                    for px in 0..s {
                        planes[px * plane_stride + r * wide..][..wide].fill(0.0);
                    }
                    continue;
                }
                let src = &src[(y - p) * w..][..w];
                if s == 1 {
                    let row = &mut planes[r * wide..][..wide];
                    row[..p].fill(0.0);
                    row[p..p + w].copy_from_slice(src);
                    row[p + w..].fill(0.0);
                    continue;
                }
                if s == 4 {
                    // The padded row, split in two rounds: even and odd columns, then each of
                    // those again (a strided copy per phase ran one value at a time).
                    padded_row.clear();
                    padded_row.resize((4 * wide).max(p + w), 0.0);
                    padded_row[p..p + w].copy_from_slice(src);
                    let (even, odd) = halves.split_at_mut(2 * wide);
                    deinterleave(&padded_row[..4 * wide], even, odd);
                    let (p0, rest) = planes.split_at_mut(plane_stride);
                    let (p1, rest) = rest.split_at_mut(plane_stride);
                    let (p2, p3) = rest.split_at_mut(plane_stride);
                    let at = r * wide..(r + 1) * wide;
                    deinterleave(even, &mut p0[at.clone()], &mut p2[at.clone()]);
                    deinterleave(odd, &mut p1[at.clone()], &mut p3[at]);
                    continue;
                }
                // Phase column c of phase px holds padded column 2 c + px; the input covers
                // padded columns p .. p + w.
                for px in 0..s {
                    let (lo, hi) = (p.saturating_sub(px).div_ceil(s), (p + w).saturating_sub(px).div_ceil(s));
                    let row = &mut planes[px * plane_stride + r * wide..][..wide];
                    row[..lo].fill(0.0);
                    row[hi..].fill(0.0);
                }
                let (even, odd) = planes.split_at_mut(plane_stride);
                let (even, odd) = (&mut even[r * wide..][..wide], &mut odd[r * wide..][..wide]);
                // Input column x is padded column x + p; even padded columns go to `even`.
                if p % 2 == 0 {
                    deinterleave(src, &mut even[p / 2..], &mut odd[p / 2..]);
                } else {
                    deinterleave(src, &mut odd[p / 2..], &mut even[p.div_ceil(2)..]);
                }
            }
        }
    }
}

/// `even[i] = row[2 i]`, `odd[i] = row[2 i + 1]`. Inlined into the SIMD-dispatched kernel, so
/// that it is compiled with its vector width: as a function of its own it was built for the
/// baseline x86-64 and copied one value at a time (4 % of a gelan-s pass at 320).
#[inline(always)]
pub(crate) fn deinterleave(row: &[f32], even: &mut [f32], odd: &mut [f32]) {
    let pairs = row.chunks_exact(2);
    if let [last] = pairs.remainder() {
        even[row.len() / 2] = *last;
    }
    for ((e, o), pair) in even.iter_mut().zip(odd.iter_mut()).zip(pairs) {
        *e = pair[0];
        *o = pair[1];
    }
}

/// Which SIMD flavour the kernel runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Isa {
    /// The widest the CPU has (AVX-512, AVX2+FMA, NEON, or scalar), chosen at run time.
    Native,
    /// Plain scalar code; tests use it to check the narrow-tile path on any CPU.
    #[cfg(test)]
    Scalar,
    /// AVX2 + FMA where present (else Native); tests use it on AVX-512 machines.
    #[cfg(test)]
    Avx2,
}

impl Isa {
    pub(crate) fn dispatch<Op: pulp::WithSimd>(self, op: Op) -> Op::Output {
        match self {
            Isa::Native => pulp::Arch::new().dispatch(op),
            #[cfg(test)]
            Isa::Scalar => op.with_simd(pulp::Scalar::new()),
            #[cfg(test)]
            Isa::Avx2 => {
                #[cfg(target_arch = "x86_64")]
                if let Some(v3) = pulp::x86::V3::try_new() {
                    return Simd::vectorize(v3, op);
                }
                pulp::Arch::new().dispatch(op)
            }
        }
    }
}

/// The micro-panel width (pixels per kernel call) for the dispatched SIMD width.
pub(crate) struct PanelWidth;

impl pulp::WithSimd for PanelWidth {
    type Output = usize;

    #[inline(always)]
    fn with_simd<S: Simd>(self, _simd: S) -> usize {
        let (_, nv) = tile::<S>();
        nv * S::F32_LANES
    }
}

/// Vectors per micro-panel (the `NV` of every kernel tile).
pub(crate) const PANEL_VECTORS: usize = 3;

/// `(ROWS, NV)` of the kernel tile for a SIMD flavour; [`WithTile`] runs with it.
pub(crate) fn tile<S: Simd>() -> (usize, usize) {
    if S::REGISTER_COUNT >= 32 { (8, PANEL_VECTORS) } else { (4, PANEL_VECTORS) }
}

/// Work that runs the register kernel with a `ROWS x NV` tile.
pub(crate) trait TileTask {
    type Output;
    fn run<S: Simd, const ROWS: usize, const NV: usize>(self, simd: S) -> Self::Output;
}

/// Runs a [`TileTask`] compiled for the dispatched SIMD flavour, with that flavour's [`tile`]
/// as constants (the direct and Winograd paths both go through here).
pub(crate) struct WithTile<T>(pub T);

impl<T: TileTask> pulp::WithSimd for WithTile<T> {
    type Output = T::Output;

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) -> T::Output {
        if tile::<S>() == (8, PANEL_VECTORS) {
            self.0.run::<S, 8, PANEL_VECTORS>(simd)
        } else {
            self.0.run::<S, 4, PANEL_VECTORS>(simd)
        }
    }
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

/// Per worker thread, reused across tasks, layers and frames (grown, never shrunk); the
/// direct path and [`cpu_winograd`](super::cpu_winograd) take turns with it.
#[derive(Default)]
pub(crate) struct Scratch {
    /// A band's padded input ([`Source::Band`], and Winograd's phase planes).
    pub band: Vec<f32>,
    /// A task's gathered depth block, all its micro-panels ([`Source::Gathered`]), or
    /// Winograd's transformed input `V`.
    pub block: Vec<f32>,
    /// The offset of every depth row of a block in `block`.
    pub offsets: Vec<usize>,
    /// Partial sums between depth blocks, a task's (gathered) or a group's (banded), or
    /// Winograd's products `M`.
    pub sums: Vec<f32>,
}

impl Scratch {
    /// This thread's scratch, taken out of its thread-local until [`Scratch::put`]. Used this
    /// way rather than inside `with`: a closure would not be compiled with the dispatched
    /// target features, and nor would the kernel inlined in it.
    pub(crate) fn take() -> Self {
        SCRATCH.with(|cell| std::mem::take(&mut *cell.borrow_mut()))
    }

    pub(crate) fn put(self) {
        SCRATCH.with(|cell| *cell.borrow_mut() = self)
    }
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

#[inline(always)]
fn run_task<S: Simd, const ROWS: usize, const NV: usize>(simd: S, shared: &Shared<'_>, mut task: Task<'_>) -> bool {
    let nr = NV * S::F32_LANES;
    let weights = shared.weights;
    let geo = shared.geo;
    let c1g = geo.c1 / geo.g;
    let (p0, p1) = task.pixels;
    let cols = p1 - p0;
    let rows = task.rows.len();
    let depth = weights.depth;

    let Scratch { mut band, mut block, mut offsets, mut sums } = Scratch::take();
    match shared.source {
        Source::Band { plane_stride, halo, offsets, padded } => {
            let (s, wide) = (geo.s, shared.wide);
            let taps = geo.k * geo.k;
            // Depth blocks of whole input channels: each block's band rows are padded just
            // before the block is read (below).
            let block_channels = block_channels(c1g, taps, s);
            let block_depth = block_channels * taps;
            let channel_len = s * s * plane_stride;
            let oy0 = p0 / wide;
            let band_rows = (p1 - 1) / wide + 1 - oy0 + halo;
            // Partial sums of the task's micro-panels, a row per output channel.
            let sum_stride = cols.div_ceil(nr) * nr;
            let sums = aligned(&mut sums, if block_depth < depth { rows * sum_stride } else { 0 });
            // Depth block by depth block, each for all the task's micro-panels: the block's
            // weights (up to 300 KiB) serve them all from L2. Padded whole before the loop,
            // a deep layer's band fitted L2 only for one micro-panel, whose task then streamed
            // all the weights from L3 (2.4 MB for 256 -> 256): stride-2 layers ran at 0.75x the
            // speed of a 1x1 layer with the same matrix product.
            for k0 in (0..depth).step_by(block_depth) {
                let kc = block_depth.min(depth - k0);
                let first = k0 / taps;
                // Every block's channels start at the same offsets (the first block's).
                let (band, base) = match padded {
                    Some(all) => {
                        let image = (task.image * geo.g + task.group) * c1g;
                        (all, (image + first) * channel_len + p0)
                    }
                    None => {
                        // Padded here, just before they are read, into one block's planes:
                        // they stay in this core's cache (a separate pass over the whole input
                        // left them in L3 or in the other core's cache).
                        let channels = task.group * c1g + first..task.group * c1g + first + kc / taps;
                        let at = (oy0, band_rows, wide);
                        pad_band(
                            &shared.input,
                            task.image,
                            channels,
                            (geo.p, s),
                            at,
                            plane_stride,
                            &mut band,
                            nr + wide,
                        );
                        (&band[..], p0 - oy0 * wide)
                    }
                };
                for c0 in (0..cols).step_by(nr) {
                    let b = &band[base + c0..];
                    let pass = PanelPass::new(shared, &mut task, b, &offsets[..kc], k0, c0, cols, depth);
                    pass.dispatch::<S, ROWS, NV>(simd, sums, (sum_stride, c0));
                }
            }
        }
        Source::Gathered => {
            // Depth block by depth block, gathered for all the task's micro-panels at once.
            let micro_panels = cols.div_ceil(nr);
            let block_depth = depth.div_ceil(depth.div_ceil(DEPTH_BLOCK));
            let block = aligned(&mut block, block_depth * micro_panels * nr);
            let sums = aligned(&mut sums, if block_depth < depth { rows * micro_panels * nr } else { 0 });
            for k0 in (0..depth).step_by(block_depth) {
                let kc = block_depth.min(depth - k0);
                gather::<S, NV>(shared, task.image, task.group, k0, kc, p0, cols, &mut block[..kc * micro_panels * nr]);
                offsets.clear();
                offsets.extend((0..kc).map(|kk| kk * nr));
                for (mp, c0) in (0..cols).step_by(nr).enumerate() {
                    let b = &block[mp * kc * nr..];
                    let pass = PanelPass::new(shared, &mut task, b, &offsets, k0, c0, cols, depth);
                    pass.dispatch::<S, ROWS, NV>(simd, sums, (micro_panels * nr, c0));
                }
            }
        }
    }
    Scratch { band, block, offsets, sums }.put();
    task.rows.iter().all(Filler::is_full)
}

/// Input channels per depth block of a [`Source::Band`] convolution with `taps` taps per
/// channel and stride `s`, as even as whole channels allow.
fn block_channels(c1g: usize, taps: usize, s: usize) -> usize {
    let max_depth = if s == 2 { DIRECT_DEPTH_BLOCK / 2 } else { DIRECT_DEPTH_BLOCK };
    let most = (max_depth / taps).max(1);
    c1g.div_ceil(c1g.div_ceil(most))
}

/// One depth block of one micro-panel: every channel panel of the task times the `col` slice
/// `b`, either into the partial sums or, after the last depth block, into the output.
struct PanelPass<'p, 's, 'a> {
    shared: &'p Shared<'s>,
    task: &'p mut Task<'a>,
    /// The micro-panel's `col` rows, at `offsets`.
    b: &'p [f32],
    offsets: &'p [usize],
    k0: usize,
    /// First column of the micro-panel within the task, and its real width.
    c0: usize,
    width: usize,
    first: bool,
    last: bool,
}

impl<'p, 's, 'a> PanelPass<'p, 's, 'a> {
    /// The pass over depth rows `k0 .. k0 + offsets.len()` of the micro-panel at column `c0`
    /// of a task `cols` wide.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn new(
        shared: &'p Shared<'s>,
        task: &'p mut Task<'a>,
        b: &'p [f32],
        offsets: &'p [usize],
        k0: usize,
        c0: usize,
        cols: usize,
        depth: usize,
    ) -> Self {
        let last = k0 + offsets.len() == depth;
        Self { shared, task, b, offsets, k0, c0, width: (cols - c0).min(MAX_PANEL_WIDTH), first: k0 == 0, last }
    }

    /// Runs with the widest tile the micro-panel needs: a partial last micro-panel takes a
    /// narrower one (on a 10x10 map, 3 full-width panels computed 144 columns for 118).
    /// The partial sums of output channel `r` of the task are at `sums[r * stride + col ..]`.
    #[inline(always)]
    fn dispatch<S: Simd, const ROWS: usize, const NV: usize>(self, simd: S, sums: &mut [f32], layout: (usize, usize)) {
        let lanes = S::F32_LANES;
        let width = self.width.min(NV * lanes);
        let pass = Self { width, ..self };
        if NV > 1 && width <= lanes {
            pass.run::<S, ROWS, 1>(simd, sums, layout);
        } else if NV > 2 && width <= 2 * lanes {
            pass.run::<S, ROWS, 2>(simd, sums, layout);
        } else {
            pass.run::<S, ROWS, NV>(simd, sums, layout);
        }
    }

    /// Runs with a tile of `ROWS x TV` vectors.
    #[inline(always)]
    fn run<S: Simd, const ROWS: usize, const TV: usize>(
        self,
        simd: S,
        sums: &mut [f32],
        (stride, col): (usize, usize),
    ) {
        let PanelPass { shared, task, b, offsets, k0, c0, width, first, last } = self;
        let weights = shared.weights;
        let tile_width = TV * S::F32_LANES;
        let rows = task.rows.len();
        let first_channel = task.group * weights.rows + task.first_panel * PANEL_ROWS;
        let p0 = task.pixels.0;
        for row0 in (0..rows).step_by(ROWS) {
            let panel = task.first_panel + row0 / PANEL_ROWS;
            let a = weights.panel(task.group, panel, k0..k0 + offsets.len());
            let lane0 = row0 % PANEL_ROWS;
            let mut acc = [[simd.splat_f32s(0.0); TV]; ROWS];
            let valid = ROWS.min(rows - row0);
            let sum_at = |r: usize| (row0 + r) * stride + col;
            // The tile goes through the kernel by value and the loops run over the constant
            // ROWS, so it stays in registers: passed by `&mut` it went through the stack, and
            // small convolutions (32 -> 32 3x3) ran 13-15 % slower.
            if !first {
                for (r, acc) in acc.iter_mut().enumerate() {
                    if r < valid {
                        load::<S, TV>(simd, acc, &sums[sum_at(r)..][..tile_width]);
                    }
                }
            }
            let acc = kernel::<S, ROWS, TV>(simd, a, lane0, b, offsets, acc);
            for (r, acc) in acc.iter().enumerate() {
                if r >= valid {
                    break;
                }
                if last {
                    let out = &mut task.rows[row0 + r];
                    let channel = first_channel + row0 + r;
                    finish::<S, TV>(simd, shared, acc, out, p0 + c0, width, task.image, channel);
                } else {
                    store::<S, TV>(simd, acc, &mut sums[sum_at(r)..][..tile_width]);
                }
            }
        }
    }
}

/// Writes one finished tile row (wide pixels `q .. q + width`) into the output row `out`,
/// dropping junk columns. Bias and activation are applied in registers where they can be (else
/// to the stored tile row), then the shortcut is added, before the runs are written.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn finish<S: Simd, const NV: usize>(
    simd: S,
    shared: &Shared<'_>,
    acc: &[S::f32s; NV],
    out: &mut Filler<'_>,
    q: usize,
    width: usize,
    image: usize,
    channel: usize,
) {
    let (wide, wo) = (shared.wide, shared.wo);
    let mut acc = *acc;
    let (bias, act) = (shared.bias[channel], shared.act);
    let in_registers = bias_act_vec(simd, &mut acc, bias, act);
    let at_channel = (image * shared.geo.c2 + channel) * shared.ho * shared.wo;
    let mut tmp = Aligned([0f32; MAX_PANEL_WIDTH]);
    let tmp = &mut tmp.0;
    store::<S, NV>(simd, &acc, &mut tmp[..NV * S::F32_LANES]);
    if wide == wo || q % wide + width <= wo {
        // The tile row is one run of real pixels.
        let run = &mut tmp[..width];
        epilogue(run, (bias, act), in_registers, shared.residual, at_channel + shared.out_index(q));
        out.push(run);
        return;
    }
    let mut j = q;
    while j < q + width {
        let ox = j % wide;
        let seg = (wide - ox).min(q + width - j);
        if ox < wo {
            let run = &mut tmp[j - q..][..seg.min(wo - ox)];
            epilogue(run, (bias, act), in_registers, shared.residual, at_channel + shared.out_index(j));
            out.push(run);
        }
        j += seg;
    }
}

/// Bias `b` and activation `act` unless already `in_registers`, then the shortcut (`residual`'s
/// values from flat output index `at` on), on a run of finished output values `dst` before
/// they are written. A function rather than a closure so that it is compiled with the
/// dispatched SIMD features; [`cpu_lanes`](super::cpu_lanes) ends its runs with it too.
#[inline(always)]
pub(crate) fn epilogue(
    dst: &mut [f32],
    (b, act): (f32, Option<Activation>),
    in_registers: bool,
    residual: Option<&[f32]>,
    at: usize,
) {
    if !in_registers {
        bias_act(dst, b, act);
    }
    if let Some(res) = residual {
        let n = dst.len();
        dst.iter_mut().zip(&res[at..at + n]).for_each(|(v, r)| *v += r);
    }
}

/// How far ahead of its depth step the kernel asks for weights: 64 steps of a panel (2 KiB,
/// 32 cache lines). Each convolution reads its weights from L3 or memory at least once a
/// pass, and the hardware prefetchers did not run far enough ahead of the kernel's stream:
/// run twice in a row (weights in L2), gelan-c's convolutions at 320 took 0.8x their time in
/// the pass. Asking 64 steps ahead (with Winograd's weights as one stream, see
/// `cpu_winograd::TileWeights`), gelan-c at 320 took 0.88x the time (gelan-s 0.94x, both at
/// 640 0.95-0.96x); 32 and 128 steps were slower than 64, the L2 hint no faster than L1's.
const PREFETCH_STEPS: usize = 64;

/// Asks the CPU to bring the cache line at `at` into L1; it only hints the cache.
#[inline(always)]
fn prefetch<T>(at: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `_mm_prefetch` has no effect on memory or the program's state and never faults,
    // whatever the address (it is a hint the CPU may drop); it is `unsafe` only because it
    // needs SSE, which every x86-64 CPU has.
    #[allow(unsafe_code)]
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(at.cast::<i8>())
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = at;
}

/// The register tile: `acc[r] += a[kk][lane0 + r] * b[offsets[kk] ..][..NV vectors]` over
/// the depth block.
#[inline(always)]
pub(crate) fn kernel<S: Simd, const ROWS: usize, const NV: usize>(
    simd: S,
    a: &[[f32; PANEL_ROWS]],
    lane0: usize,
    b: &[f32],
    offsets: &[usize],
    acc: [[S::f32s; NV]; ROWS],
) -> [[S::f32s; NV]; ROWS] {
    let nr = NV * S::F32_LANES;
    let mut t = acc;
    // Past the panel's end this asks for what follows it in memory: the next panel of the
    // packed weights, which the callers mostly read next (Winograd's tile positions are laid
    // out so, see `cpu_winograd::TileWeights`). The pointer is only computed, never read.
    let ahead = a.as_ptr().wrapping_add(PREFETCH_STEPS);
    for (step, (a, &o)) in a.iter().zip(offsets).enumerate() {
        // A step's weights are half a cache line: one request a line. (With a request every
        // step, whole passes took as long or up to 3 % longer.)
        if step % 2 == 0 {
            prefetch(ahead.wrapping_add(step));
        }
        let a = &a[lane0..lane0 + ROWS];
        let b = S::as_simd_f32s(&b[o..o + nr]).0;
        for r in 0..ROWS {
            let w = simd.splat_f32s(a[r]);
            for v in 0..NV {
                t[r][v] = simd.mul_add_e_f32s(w, b[v], t[r][v]);
            }
        }
    }
    t
}

/// Loads one row of the tile from `src` (`NV` vectors wide, or fewer values at the right edge).
#[inline(always)]
fn load<S: Simd, const NV: usize>(simd: S, acc: &mut [S::f32s; NV], src: &[f32]) {
    match vectors::<S, NV>(src) {
        Some(v) => *acc = *v,
        None => {
            for (v, chunk) in acc.iter_mut().zip(src.chunks(S::F32_LANES)) {
                *v = simd.partial_load_f32s(chunk);
            }
        }
    }
}

/// Stores one row of the tile into `dst` (`NV` vectors wide, or fewer values at the right edge).
#[inline(always)]
fn store<S: Simd, const NV: usize>(simd: S, acc: &[S::f32s; NV], dst: &mut [f32]) {
    match vectors_mut::<S, NV>(dst) {
        Some(v) => *v = *acc,
        None => {
            for (v, chunk) in acc.iter().zip(dst.chunks_mut(S::F32_LANES)) {
                simd.partial_store_f32s(chunk, *v);
            }
        }
    }
}

/// The first `NV` vectors of `x`, if it has that many values.
#[inline(always)]
fn vectors<S: Simd, const NV: usize>(x: &[f32]) -> Option<&[S::f32s; NV]> {
    pulp::as_arrays::<NV, S::f32s>(S::as_simd_f32s(x).0).0.first()
}

#[inline(always)]
fn vectors_mut<S: Simd, const NV: usize>(x: &mut [f32]) -> Option<&mut [S::f32s; NV]> {
    pulp::as_arrays_mut::<NV, S::f32s>(S::as_mut_simd_f32s(x).0).0.first_mut()
}

/// Gathers rows `k0 .. k0 + kc` of the implicit im2col matrix, pixels `p0 .. p0 + cols`, into
/// `block` as micro-panels of `nr = NV * lanes` pixels: `block[(mp * kc + kk) * nr + j]`, zero
/// past the end. Whole micro-panels are copied as `NV` vectors (inline, no `memcpy` call).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn gather<S: Simd, const NV: usize>(
    shared: &Shared<'_>,
    image: usize,
    group: usize,
    k0: usize,
    kc: usize,
    p0: usize,
    cols: usize,
    block: &mut [f32],
) {
    let nr = NV * S::F32_LANES;
    let geo = shared.geo;
    let Geometry { c1, g, k, .. } = geo;
    let (h, w) = (shared.input.h, shared.input.w);
    let wo = shared.wo;
    // One row of the im2col matrix over this task's pixels, before it is cut into micro-panels.
    let mut line = [0f32; MAX_PANELS_PER_TASK * MAX_PANEL_WIDTH];
    // Depth row `k0 + kk` is tap `tap` of input channel `ci`, counted along rather than
    // divided out per row.
    let taps = k * k;
    let (mut ci, mut tap) = (group * (c1 / g) + k0 / taps, k0 % taps);
    for kk in 0..kc {
        let plane = shared.input.plane(image, ci);
        let line: &[f32] = if k == 1 && geo.s == 1 && geo.p == 0 {
            // The plane already is this row of `col`.
            &plane[p0..p0 + cols]
        } else {
            im2col_row(&mut line[..cols], plane, geo, (h, w), wo, (tap / k, tap % k), p0);
            &line[..cols]
        };
        tap += 1;
        if tap == taps {
            (tap, ci) = (0, ci + 1);
        }
        for (mp, src) in line.chunks(nr).enumerate() {
            let dst = &mut block[(mp * kc + kk) * nr..][..nr];
            match (vectors_mut::<S, NV>(dst), vectors::<S, NV>(src)) {
                (Some(dst), Some(src)) => *dst = *src,
                _ => {
                    dst[..src.len()].copy_from_slice(src);
                    dst[src.len()..].fill(0.0);
                }
            }
        }
    }
}

/// Row `(ky, kx)` of one input plane's im2col matrix, output pixels `p0 .. p0 + out.len()`:
/// `out[t] = plane[oy * s + ky * d - p][ox * s + kx * d - p]` for pixel `p0 + t = (oy, ox)`,
/// zero where that reads padding. Copied in output-row segments.
#[inline(always)]
fn im2col_row(
    out: &mut [f32],
    plane: &[f32],
    geo: Geometry,
    (h, w): (usize, usize),
    wo: usize,
    (ky, kx): (usize, usize),
    p0: usize,
) {
    let Geometry { s, p, d, .. } = geo;
    let off = (kx * d) as isize - p as isize;
    let (mut j, end) = (p0, p0 + out.len());
    let mut t = 0;
    while j < end {
        let (oy, ox) = (j / wo, j % wo);
        let seg = (wo - ox).min(end - j);
        let out = &mut out[t..t + seg];
        let iy = (oy * s + ky * d) as isize - p as isize;
        if iy < 0 || iy >= h as isize {
            out.fill(0.0);
        } else {
            let src = &plane[iy as usize * w..][..w];
            // Input column of output column `x` is `x * s + off`; valid where in 0..w.
            let lo = ((-off - (ox * s) as isize).max(0) as usize).div_ceil(s).min(seg);
            let hi = ((w as isize - off - (ox * s) as isize).max(0) as usize).div_ceil(s).clamp(lo, seg);
            out[..lo].fill(0.0);
            out[hi..].fill(0.0);
            if lo < hi {
                let src = &src[(((ox + lo) * s) as isize + off) as usize..];
                if s == 1 {
                    out[lo..hi].copy_from_slice(&src[..hi - lo]);
                } else {
                    out[lo..hi].iter_mut().zip(src.iter().step_by(s)).for_each(|(o, v)| *o = *v);
                }
            }
        }
        t += seg;
        j += seg;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Scratch buffers start on a cache line whatever the allocator gives, and keep their
    /// length as they are grown and reused.
    #[test]
    fn aligned_buffers_start_on_a_cache_line() {
        let mut buf = Vec::new();
        for len in [0, 1, 15, 16, 100, 4096, 17, 70_000, 3] {
            let values = aligned(&mut buf, len);
            assert_eq!(values.len(), len);
            assert_eq!(values.as_ptr().addr() % 64, 0, "{len}");
            values.fill(1.0);
        }
    }

    /// Runs of every length land where they belong, each value once, in order.
    #[test]
    fn filler_pushes_runs_of_any_length() {
        for n in 0..=130 {
            let values: Vec<f32> = (0..n).map(|i| i as f32).collect();
            let mut out = vec![MaybeUninit::new(-1f32); 2 * n + 3];
            let mut filler = Filler::new(&mut out[1..]);
            filler.push(&values);
            filler.push(&values);
            assert_eq!(filler.len(), 2);
            // SAFETY: every value of `out` was initialised above (`MaybeUninit::new`), and
            // `push` only writes.
            #[allow(unsafe_code)]
            let out: Vec<f32> = out.iter().map(|v| unsafe { v.assume_init() }).collect();
            assert_eq!(out[0], -1.0);
            assert_eq!(&out[1..=n], &values[..], "{n}");
            assert_eq!(&out[n + 1..=2 * n], &values[..], "{n}");
            assert_eq!(&out[2 * n + 1..], &[-1.0, -1.0]);
        }
    }

    /// Every part of a new output is written in place, in order; a part left unfilled gives
    /// no output at all.
    #[test]
    fn filled_vec_fills_every_part_or_gives_nothing() {
        for (len, part_len) in [(0, 3), (0, 0), (1, 1), (10, 3), (1000, 7), (4096, 64)] {
            let out = filled_vec(len, part_len, |i, mut part| part.push(&vec![i as f32; part.len()])).unwrap();
            let want: Vec<f32> = (0..len).map(|j| (j / part_len) as f32).collect();
            assert_eq!(out, want, "{len} in parts of {part_len}");
        }
        assert!(
            filled_vec(10, 3, |i, mut part| if i != 2 {
                part.push(&vec![0.0; part.len()])
            })
            .is_none()
        );
        assert!(filled_vec(10, 3, |_, mut part| part.push(&[1.0])).is_none());
        assert!(filled_vec(10, 0, |_, _| {}).is_none());
    }

    /// Tile rows on the stack start on a cache line too, wherever the compiler puts them.
    #[test]
    fn stack_rows_start_on_a_cache_line() {
        let rows = [Aligned([0f32; 3]), Aligned([1f32; 3])];
        for row in &rows {
            assert_eq!(std::ptr::from_ref(row).addr() % 64, 0);
        }
        assert_eq!(std::mem::align_of::<Aligned<[[f32; 16]; 4]>>(), 64);
    }
}
