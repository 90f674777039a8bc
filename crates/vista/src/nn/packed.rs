//! The CPU GEMM for layers whose right-hand side is a weight: `C = act(A·W + b)`.
//!
//! The weight is packed once, at load, into 32-column panels laid out the way the micro-kernel
//! reads them (ONNX Runtime's MLAS packs B the same way), so no call re-packs it (the `gemm`
//! crate, used before, packed the weight again on every call). The left-hand side is never
//! packed: the kernel reads its values in place through one pointer per row, either the rows of a
//! dense `[M, K]` matrix or, for a channels-last convolution, the input pixel under each tap
//! (XNNPACK's "indirect GEMM"), so a 3×3 convolution builds no im2col matrix at all.
//!
//! Blocking, for this machine's 48 KiB L1 and 2 MiB L2 per core: a task owns a block of about
//! `MC` output rows and a run of panels. It walks the depth in passes of at most `KC` values
//! (whole taps when they are shallow, slices of one deep tap otherwise); within a pass, for each
//! group of `NC_PANELS` panels (1 MiB of panel, in L2) it takes its rows `MR` at a time and
//! runs the tile against every panel of the group, so the tile's rows (at most 24 KiB) stay in
//! L1 while the panels stream by, the kernel prefetching each panel 2 KiB ahead. A tile keeps
//! 12 × 32 sums in 24 AVX-512 registers through all the taps of a pass and then stores them
//! (onto the bias in the first pass, onto the output after); residual and activation follow the
//! last pass while the tile is hot.
//!
//! The sum over the depth runs in order, tap by tap, with fused multiply–adds: the values differ
//! from PyTorch's only in rounding order (the parity tests hold at their tolerances). Machines
//! without AVX-512 but with AVX2 and FMA (AMD before Zen 4, Intel's client cores) run the same
//! blocking with a 6 × 16 tile in 12 of their 16 ymm registers, each 12 × 32 tile as four of
//! them, on panels whose two 16-column halves are stored one after the other so that each half
//! is one contiguous stream ([`PackedWeight`]); others a portable kernel (auto-vectorised,
//! slower).
//!
//! [`gemm_tn`] is the training side's other product, a weight's gradient `dYᵀ X`: the same
//! register tile, with both operands read in place (no transpose, no packing).

use rayon::prelude::*;

use super::team::Shared;
use super::Activation;
use crate::Result;

fn refuse(message: String) -> crate::Error {
    candle_core::Error::Msg(message).into()
}

/// Columns per panel: two 16-lane vectors.
pub const NR: usize = 32;
/// Rows per micro-tile: 12 rows × 2 vectors are 24 of the 32 vector registers.
const MR: usize = 12;
/// Depth per pass: a 12-row tile's values (24 KiB) stay in L1 while the panels go by.
const KC: usize = 512;
/// Rows per task, about: 192 rows × [`KC`] values (384 KiB) stay in L2 across the panel groups.
const MC: usize = 16 * MR;
/// Panels per group: 16 × [`KC`] × 32 values (1 MiB) stay in L2 across the tiles.
const NC_PANELS: usize = 16;
/// Below this depth a convolution's taps are too short to stream one by one: a task gathers its
/// rows' im2col values into a small dense block first (the 3-channel stems).
const MIN_TAP_DEPTH: usize = 16;

/// One 64-byte line of a panel, so every row of every panel starts on a cache line.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([f32; 16]);

/// A `[K, N]` weight in the kernel's layout: `⌈N/32⌉` panels of 32 columns, the last padded
/// with zero columns. A panel's two 16-column halves are either interleaved (`[K][32]`
/// row-major: one 128-byte row per depth step, what the AVX-512 kernel loads at once) or split
/// (`[K][16]` then `[K][16]`: the AVX2 kernel, which runs the halves one after the other, then
/// reads each as one contiguous stream, which DRAM serves about 30 % faster than every other
/// 64-byte line, and a weight is read from DRAM on every forward at batch 1).
#[derive(Clone)]
pub struct PackedWeight {
    k: usize,
    n: usize,
    split: bool,
    lines: Vec<Line>,
}

/// One panel's values from some depth on, as the micro-kernels read them: the first 16 columns
/// of depth step `k` at `ptr + k·row`, the second 16 `half` values after them.
#[derive(Clone, Copy)]
struct Panel {
    ptr: *const f32,
    row: usize,
    half: usize,
}

impl Panel {
    /// The same panel `k` depth steps on.
    #[inline(always)]
    unsafe fn at(self, k: usize) -> Self {
        Panel { ptr: self.ptr.add(k * self.row), ..self }
    }
}

/// Whether weights are packed with split halves here: on CPUs whose best kernel is AVX2 (tests
/// choose either, to run every kernel on both layouts).
fn split_layout() -> bool {
    #[cfg(test)]
    if let Some(split) = LAYOUT.with(|l| l.get()) {
        return split;
    }
    #[cfg(target_arch = "x86_64")]
    {
        !std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

impl std::fmt::Debug for PackedWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedWeight {{ k: {}, n: {} }}", self.k, self.n)
    }
}

impl PackedWeight {
    /// Packs `w[k·n + j]`, a row-major `[K, N]` matrix (a linear layer's `Wᵀ`).
    ///
    /// # Panics
    /// If `w` does not hold `k · n` values.
    pub fn from_k_by_n(w: &[f32], k: usize, n: usize) -> Self {
        assert_eq!(w.len(), k * n, "packing a {k}x{n} weight from {} values", w.len());
        let panels = n.div_ceil(NR);
        let split = split_layout();
        let mut lines = vec![Line([0.0; 16]); panels * k * 2];
        let pack = |(p, panel): (usize, &mut [Line])| {
            let cols = (n - p * NR).min(NR);
            for kk in 0..k {
                let src = &w[kk * n + p * NR..kk * n + p * NR + cols];
                for (half, values) in src.chunks(16).enumerate() {
                    panel[Self::line(split, k, kk, half)].0[..values.len()].copy_from_slice(values);
                }
            }
        };
        // Activations packed for a weight gradient run to megabytes: one panel per task then.
        if k * n >= 1 << 18 {
            lines.par_chunks_mut((k * 2).max(1)).enumerate().for_each(pack);
        } else {
            lines.chunks_mut((k * 2).max(1)).enumerate().for_each(pack);
        }
        Self { k, n, split, lines }
    }

    /// The line of a panel holding depth step `kk`'s columns `16·half..16·half + 16`.
    fn line(split: bool, k: usize, kk: usize, half: usize) -> usize {
        if split {
            half * k + kk
        } else {
            kk * 2 + half
        }
    }

    /// The row-major `[K, N]` matrix back.
    pub fn to_k_by_n(&self) -> Vec<f32> {
        let mut w = vec![0f32; self.k * self.n];
        for (kk, row) in w.chunks_exact_mut(self.n.max(1)).enumerate().take(self.k) {
            for (j, v) in row.iter_mut().enumerate() {
                let line = Self::line(self.split, self.k, kk, (j % NR) / 16);
                *v = self.lines[(j / NR) * self.k * 2 + line].0[j % 16];
            }
        }
        w
    }

    /// Depth (the input width).
    pub fn k(&self) -> usize {
        self.k
    }

    /// Width of the output.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Panel `p` from depth `k0` on.
    fn panel(&self, p: usize, k0: usize) -> Panel {
        let base: *const f32 = self.lines[p * self.k * 2..].as_ptr().cast();
        let (row, half) = if self.split { (16, self.k * 16) } else { (32, 16) };
        // SAFETY: `k0 ≤ K` steps stay inside the panel (or one past its end, never read).
        Panel { ptr: unsafe { base.add(k0 * row) }, row, half }
    }
}

/// Where the output rows read their `K` values.
#[derive(Debug, Clone, Copy)]
pub enum Lhs<'a> {
    /// A row-major `[M, K]` matrix.
    Rows {
        /// The values, at least `M · K`.
        data: &'a [f32],
        /// Rows.
        m: usize,
    },
    /// A convolution over a channels-last `[B, H, W, C]` input: output row `(b, oy, ox)` reads,
    /// for each tap `(ky, kx)` in order, the `C` channels of the input pixel under it (zeros in the
    /// padding): the im2col row, never built.
    Conv {
        /// The input, `B·H·W·C` values.
        data: &'a [f32],
        /// `(B, H, W, C)`.
        input: (usize, usize, usize, usize),
        /// `(kernel, stride, padding)`, square.
        kernel: (usize, usize, usize),
    },
}

impl Lhs<'_> {
    /// `(rows, taps, depth per tap)`, the input's size checked.
    fn geometry(&self, k: usize) -> Result<(usize, usize, usize)> {
        match *self {
            Lhs::Rows { data, m } => {
                if data.len() != m * k {
                    return Err(refuse(format!("packed gemm: {} values for {m} rows of {k}", data.len())));
                }
                Ok((m, 1, k))
            }
            Lhs::Conv { data, input: (b, h, w, c), kernel: (k, s, p) } => {
                if data.len() != b * h * w * c {
                    return Err(refuse(format!("conv input: {} values for [{b}, {h}, {w}, {c}]", data.len())));
                }
                if s == 0 || k == 0 || h + 2 * p < k || w + 2 * p < k {
                    return Err(refuse(format!("conv: kernel {k}, stride {s}, padding {p} on a {h}x{w} input")));
                }
                let (ho, wo) = ((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1);
                Ok((b * ho * wo, k * k, c))
            }
        }
    }

    /// Offset of row `r`'s values for `tap` in `data`, `None` in the padding (the tests' im2col).
    #[cfg(test)]
    fn offset(&self, r: usize, tap: usize, depth: usize) -> Option<usize> {
        match *self {
            Lhs::Rows { .. } => Some(r * depth),
            Lhs::Conv { input: (_, h, w, c), kernel: (k, s, p), .. } => {
                let (ho, wo) = ((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1);
                let (bi, rest) = (r / (ho * wo), r % (ho * wo));
                let iy = ((rest / wo) * s + tap / k) as isize - p as isize;
                let ix = ((rest % wo) * s + tap % k) as isize - p as isize;
                if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                    return None;
                }
                Some(((bi * h + iy as usize) * w + ix as usize) * c)
            }
        }
    }

    fn data(&self) -> &[f32] {
        match *self {
            Lhs::Rows { data, .. } | Lhs::Conv { data, .. } => data,
        }
    }
}

/// Zeros the padding taps read.
static ZEROS: [f32; KC] = [0.0; KC];

/// What is done to each output value after the product: `act(y + residual) · scale`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Epilogue<'a> {
    /// A row-major `[M, N]` tensor added to the product (a ResNet block's shortcut).
    pub residual: Option<&'a [f32]>,
    /// Applied after the residual.
    pub act: Option<Activation>,
    /// A row-major `[M, N]` tensor the result is multiplied by, value by value (a training
    /// backward's activation derivative).
    pub scale: Option<&'a [f32]>,
}

impl<'a> Epilogue<'a> {
    /// Just an activation.
    pub fn act(act: Option<Activation>) -> Self {
        Self { act, ..Self::default() }
    }

    /// Just a value-by-value factor.
    pub fn scale(scale: &'a [f32]) -> Self {
        Self { scale: Some(scale), ..Self::default() }
    }
}

/// `act(lhs · w + bias + residual)`, row-major `[M, N]`, split over `threads` tasks or more.
///
/// # Errors
/// If the shapes disagree: `lhs`'s depth (taps × channels) against `w`, `bias` against `N`,
/// the residual against `M × N`.
pub fn gemm(
    lhs: Lhs<'_>,
    w: &PackedWeight,
    bias: Option<&[f32]>,
    epilogue: Epilogue<'_>,
    threads: usize,
) -> Result<Vec<f32>> {
    let mut out = gemm_many(&[Product { lhs, w, bias, epilogue }], threads)?;
    Ok(out.pop().expect("one product"))
}

/// One product of [`gemm_many`].
#[derive(Debug, Clone, Copy)]
pub struct Product<'a> {
    /// The rows.
    pub lhs: Lhs<'a>,
    /// The weight.
    pub w: &'a PackedWeight,
    /// Added to every row.
    pub bias: Option<&'a [f32]>,
    /// The shortcut and activation.
    pub epilogue: Epilogue<'a>,
}

/// How one product of [`gemm_many`] is shared out: `blocks` row blocks of its `tiles` row tiles,
/// times column groups of `panels_per` panels, written through `out`.
struct Split {
    m: usize,
    taps: usize,
    depth: usize,
    tiles: usize,
    blocks: usize,
    panels_per: usize,
    out: Shared<f32>,
}

/// Several independent [`gemm`]s whose tasks share one parallel region (a Winograd
/// convolution's sixteen small products: one hand-over to the thread team instead of sixteen).
///
/// # Errors
/// As [`gemm`], for any of the products.
pub fn gemm_many(products: &[Product<'_>], threads: usize) -> Result<Vec<Vec<f32>>> {
    let threads = threads.max(1);
    let mut outs = Vec::with_capacity(products.len());
    // (product, row block, panel group) and, per product, its output and split.
    let mut tasks: Vec<(usize, usize, usize)> = Vec::new();
    let mut plans = Vec::with_capacity(products.len());
    for (pi, &Product { lhs, w, bias, epilogue }) in products.iter().enumerate() {
        let (m, taps, depth) = lhs.geometry(w.k)?;
        let n = w.n;
        if taps * depth != w.k
            || bias.is_some_and(|b| b.len() != n)
            || epilogue.residual.is_some_and(|r| r.len() != m * n)
            || epilogue.scale.is_some_and(|r| r.len() != m * n)
        {
            return Err(refuse(format!(
                "packed gemm: {m} rows of {taps}x{depth} values against a [{}, {n}] weight (bias {:?}, residual {:?}, scale {:?})",
                w.k,
                bias.map(<[f32]>::len),
                epilogue.residual.map(<[f32]>::len),
                epilogue.scale.map(<[f32]>::len)
            )));
        }
        if m == 0 || n == 0 || w.k == 0 {
            let mut out = match bias {
                Some(b) => b.repeat(m),
                None => vec![0.0; m * n],
            };
            if let Some(r) = epilogue.residual {
                out.iter_mut().zip(r).for_each(|(o, r)| *o += r);
            }
            if let Some(a) = epilogue.act {
                out.iter_mut().for_each(|o| *o = super::cpu::activate(*o, a));
            }
            outs.push(out);
            plans.push(None);
            continue;
        }
        // Every element is written by the first depth pass before anything reads it (no zeroing
        // pass over the output, and its pages are first touched by the task that computes them).
        let mut out: Vec<f32> = Vec::with_capacity(m * n);
        // Row blocks of equal size (whole tiles), as many as a multiple of the threads (nine
        // blocks on two threads leave one idle for a ninth of the time), then the panels split
        // until every thread has two tasks to take: one image's 49 rows still keep both cores on
        // every layer.
        let panels = n.div_ceil(NR);
        let blocks = match m.div_ceil(MC) {
            1 => 1,
            b => b.div_ceil(threads) * threads,
        };
        // Block `b` holds tiles `b·T/blocks ..` of the `T` row tiles: sizes differ by one tile.
        let tiles = m.div_ceil(MR);
        let blocks = blocks.min(tiles);
        let groups = (2 * threads).div_ceil(blocks).clamp(1, panels);
        let panels_per = panels.div_ceil(groups);
        let out_ptr = Shared(out.spare_capacity_mut().as_mut_ptr().cast());
        tasks.extend((0..blocks).flat_map(|b| (0..panels.div_ceil(panels_per)).map(move |g| (pi, b, g))));
        outs.push(out);
        plans.push(Some(Split { m, taps, depth, tiles, blocks, panels_per, out: out_ptr }));
    }
    // Decided here, on the caller's thread (the tasks run on the pool's).
    let kernel = Kernel::here();
    let run = |&(pi, b, g): &(usize, usize, usize)| {
        let Product { lhs, w, bias, epilogue } = products[pi];
        let Some(Split { m, taps, depth, tiles, blocks, panels_per, ref out }) = plans[pi] else {
            unreachable!("empty products have no tasks")
        };
        let block_rows = |b: usize| ((b * tiles / blocks) * MR).min(m);
        let rows = (block_rows(b), block_rows(b + 1));
        let cols = (g * panels_per * NR, ((g + 1) * panels_per * NR).min(w.n));
        let out = Shared(out.get());
        // SAFETY: tasks own disjoint row × column rectangles of their product's output, which
        // outlives them.
        super::cpu::with_simd(
            #[inline(always)]
            || unsafe { task(lhs, (taps, depth), w, bias, epilogue, out, rows, cols, kernel) },
        );
    };
    if tasks.len() == 1 || threads <= 1 {
        tasks.iter().for_each(run);
    } else {
        super::team::for_each(tasks.len(), |i| run(&tasks[i]));
    }
    for (out, (plan, p)) in outs.iter_mut().zip(plans.iter().zip(products)) {
        if let Some(Split { m, .. }) = plan {
            // SAFETY: the tasks cover every row × column rectangle, and each wrote all of its
            // elements.
            unsafe { out.set_len(m * p.w.n) };
        }
    }
    Ok(outs)
}

/// Values per pass of [`gemm_tn`]'s packed `b`: 64 KiB, so a pass of both operands stays in L2.
const TN_PASS_VALUES: usize = 1 << 14;

/// Depth of the smallest share of [`gemm_tn`] given to a thread of its own.
const TN_MIN_SHARE: usize = 64;

/// `aᵀ b`, row-major `[M, N]`, from row-major `a: [K, M]` and `b: [K, N]`: a weight's gradient
/// `dYᵀ X` over the `K` rows of a batch. Both are read row by row, never transposed whole: each
/// depth pass copies its rows into the micro-kernel's panels (`a`'s twelve-column strips as
/// `[pass][12]`, `b`'s 16- or 32-column strips as `[pass][16 | 32]`), so the kernel streams two
/// small contiguous buffers from L1 / L2 instead of reading `a` and `b` at their row strides,
/// which (a multiple of 512 bytes for the widths of a transformer) map onto a few cache sets and
/// evict each other. The output is small and the depth long: each thread takes a contiguous
/// share of the depth into sums of its own, and the shares are added in order at the end (the
/// same bits on every run with the same thread count).
///
/// # Errors
/// If `a` or `b` does not hold `K` rows of its width.
pub fn gemm_tn(a: &[f32], b: &[f32], k: usize, m: usize, n: usize, threads: usize) -> Result<Vec<f32>> {
    if a.len() != k * m || b.len() != k * n {
        return Err(refuse(format!("gemm_tn: {} and {} values for [{k}, {m}] and [{k}, {n}]", a.len(), b.len())));
    }
    if m == 0 || n == 0 || k == 0 {
        return Ok(vec![0f32; m * n]);
    }
    let kernel = Kernel::here();
    let shares = threads.max(1).min(k.div_ceil(TN_MIN_SHARE));
    let share = |s: usize| {
        let (k0, k1) = (s * k / shares, (s + 1) * k / shares);
        let mut sums = vec![0f32; m * n];
        super::cpu::with_simd(
            #[inline(always)]
            // SAFETY: `sums` holds `[M, N]`, and rows `k0..k1` are inside `a` and `b` (checked above).
            || unsafe { share_tn(&a[k0 * m..k1 * m], &b[k0 * n..k1 * n], (k1 - k0, m, n), &mut sums, kernel) },
        );
        sums
    };
    if shares == 1 {
        return Ok(share(0));
    }
    let mut parts = super::team::map(shares, share).into_iter();
    let mut out = parts.next().expect("at least one share");
    for part in parts {
        out.iter_mut().zip(&part).for_each(|(o, p)| *o += p);
    }
    Ok(out)
}

/// One thread's share of [`gemm_tn`]: `c += aᵀ b` over `a: [K, M]`, `b: [K, N]`, in depth passes
/// whose rows are first copied into panels.
///
/// # Safety
/// `a` holds `K·M` values, `b` `K·N`, `c` `M·N`.
#[inline(always)]
unsafe fn share_tn(a: &[f32], b: &[f32], (k, m, n): (usize, usize, usize), c: &mut [f32], kernel: Kernel) {
    // Column strips of `b` as the kernel reads them: 16 for AVX2's sub-tiles, else 32.
    let strip = if kernel == Kernel::Avx2 { 16 } else { NR };
    let (tiles, strips) = (m.div_ceil(MR), n.div_ceil(strip));
    let pass = (TN_PASS_VALUES / (strips * strip)).clamp(16, 512).min(k);
    let mut ap = vec![0f32; tiles * pass * MR];
    let mut bp = vec![0f32; strips * pass * strip];
    for t0 in (0..k).step_by(pass) {
        let kt = (k - t0).min(pass);
        // Row `t` of the pass: its twelve-value pieces into the tiles' panels, its strips into
        // theirs (the last ones short: their lanes past M or N are never read).
        for t in 0..kt {
            let row = &a[(t0 + t) * m..(t0 + t + 1) * m];
            for (i, piece) in row.chunks(MR).enumerate() {
                ap[(i * kt + t) * MR..][..piece.len()].copy_from_slice(piece);
            }
            let row = &b[(t0 + t) * n..(t0 + t + 1) * n];
            for (j, piece) in row.chunks(strip).enumerate() {
                bp[(j * kt + t) * strip..][..piece.len()].copy_from_slice(piece);
            }
        }
        for i in 0..tiles {
            let mr = (m - i * MR).min(MR);
            let at = ap.as_ptr().add(i * kt * MR);
            for j in 0..strips {
                let cols = (n - j * strip).min(strip);
                let bt = bp.as_ptr().add(j * kt * strip);
                let cp = c.as_mut_ptr().add(i * MR * n + j * strip);
                match kernel {
                    #[cfg(target_arch = "x86_64")]
                    Kernel::Avx512 => {
                        macro_rules! dispatch {
                            ($($r:literal)*) => {
                                match mr {
                                    $($r => avx512::tile_tn::<$r>((at, MR), (bt, strip), kt, (cp, n, cols)),)*
                                    _ => unreachable!("tiles have 1 to 12 rows"),
                                }
                            };
                        }
                        dispatch!(1 2 3 4 5 6 7 8 9 10 11 12);
                    }
                    #[cfg(target_arch = "x86_64")]
                    Kernel::Avx2 => {
                        // Two sub-tiles of at most 6 rows (12 of the 16 registers), the second
                        // reading the strip the first brought into L1.
                        for i0 in (0..mr).step_by(avx2::MR) {
                            let (at, cp) = (at.add(i0), cp.add(i0 * n));
                            macro_rules! dispatch {
                                ($($r:literal)*) => {
                                    match (mr - i0).min(avx2::MR) {
                                        $($r => avx2::tile_tn::<$r>((at, MR), (bt, strip), kt, (cp, n, cols)),)*
                                        _ => unreachable!("sub-tiles have 1 to 6 rows"),
                                    }
                                };
                            }
                            dispatch!(1 2 3 4 5 6);
                        }
                    }
                    _ => {
                        for r in 0..mr {
                            let crow = std::slice::from_raw_parts_mut(cp.add(r * n), cols);
                            for t in 0..kt {
                                let av = *at.add(t * MR + r);
                                let brow = std::slice::from_raw_parts(bt.add(t * strip), cols);
                                crow.iter_mut().zip(brow).for_each(|(c, &bv)| *c += av * bv);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// One task: rows `r0..r1`, columns `c0..c1` (whole panels but the last).
///
/// # Safety
/// `out` points at the `[M, N]` output and no one else touches this rectangle meanwhile.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn task(
    lhs: Lhs<'_>,
    (taps, depth): (usize, usize),
    w: &PackedWeight,
    bias: Option<&[f32]>,
    epilogue: Epilogue<'_>,
    out: Shared<f32>,
    (r0, r1): (usize, usize),
    (c0, c1): (usize, usize),
    kernel: Kernel,
) {
    let n = w.n;
    let rows = r1 - r0;
    // Shallow taps (a 3-channel stem): this task's im2col rows, gathered into one dense block.
    let gathered;
    let (src, taps, depth, local) = if matches!(lhs, Lhs::Conv { .. }) && depth < MIN_TAP_DEPTH {
        gathered = gather(lhs, r0..r1);
        let k = taps * depth;
        (Lhs::Rows { data: &gathered, m: rows }, 1, k, true)
    } else {
        (lhs, taps, depth, false)
    };
    let data = src.data().as_ptr();
    let slices = depth_slices(taps, depth);
    // Each row's window origin, found once (divisions per row and tap cost as much as a 64-channel
    // tap's multiply–adds).
    let origins = match src {
        Lhs::Conv { input: (_, h, w, _), kernel: (k, s, p), .. } => window_origins(r0..r1, (h, w), (k, s, p)),
        Lhs::Rows { .. } => Vec::new(),
    };
    let mut ptrs = Vec::new();
    for (i, &(tap0, ntaps, k0, kc)) in slices.iter().enumerate() {
        // The rows' pointers for this slice, tile by tile, tap-major within a tile.
        ptrs.clear();
        for t0 in (0..rows).step_by(MR) {
            let mr = (rows - t0).min(MR);
            for tap in tap0..tap0 + ntaps {
                match src {
                    Lhs::Rows { .. } => {
                        ptrs.extend((t0..t0 + mr).map(|r| data.add((if local { r } else { r0 + r }) * depth + k0)))
                    }
                    Lhs::Conv { input: (_, h, w, c), kernel: (k, ..), .. } => {
                        let (ky, kx) = ((tap / k) as isize, (tap % k) as isize);
                        ptrs.extend(origins[t0..t0 + mr].iter().map(|&(image, y, x)| {
                            let (iy, ix) = (y + ky, x + kx);
                            if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                ZEROS.as_ptr()
                            } else {
                                data.add(((image * h + iy as usize) * w + ix as usize) * c + k0)
                            }
                        }));
                    }
                }
            }
        }
        let (first, last) = (i == 0, i + 1 == slices.len());
        let panels = c0 / NR..c1.div_ceil(NR);
        for block in panels.clone().step_by(NC_PANELS) {
            for t0 in (0..rows).step_by(MR) {
                let mr = (rows - t0).min(MR);
                let a = &ptrs[t0 * ntaps..(t0 + mr) * ntaps];
                for p in block..(block + NC_PANELS).min(panels.end) {
                    let b = w.panel(p, tap0 * depth + k0);
                    let cols = (n - p * NR).min(NR);
                    let c = out.get().add((r0 + t0) * n + p * NR);
                    let start = match (first, bias) {
                        (true, Some(bias)) => Start::Bias(bias[p * NR..].as_ptr()),
                        (true, None) => Start::Zero,
                        (false, _) => Start::Accumulate,
                    };
                    if let (true, Some(residual)) = (last, epilogue.residual) {
                        // The shortcut streams from memory: ask for the tile's lines now.
                        let at = residual.as_ptr().add((r0 + t0) * n + p * NR);
                        for i in 0..mr {
                            prefetch(at.add(i * n));
                            prefetch(at.add(i * n + 16));
                        }
                    }
                    tile(kernel, a, ntaps, kc, b, (c, n, cols), start);
                    if last {
                        finish(epilogue, (c, n, cols), mr, (r0 + t0) * n + p * NR);
                    }
                }
            }
        }
    }
}

/// `(image, top, left)` of the input window under each output row of `range` (`top`, `left` may
/// be negative: padding), walking the output pixels in order.
fn window_origins(
    range: std::ops::Range<usize>,
    (h, w): (usize, usize),
    (k, s, p): (usize, usize, usize),
) -> Vec<(usize, isize, isize)> {
    let (ho, wo) = ((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1);
    let (mut image, rest) = (range.start / (ho * wo), range.start % (ho * wo));
    let (mut oy, mut ox) = (rest / wo, rest % wo);
    let mut out = Vec::with_capacity(range.len());
    for _ in range {
        out.push((image, (oy * s) as isize - p as isize, (ox * s) as isize - p as isize));
        ox += 1;
        if ox == wo {
            (ox, oy) = (0, oy + 1);
            if oy == ho {
                (oy, image) = (0, image + 1);
            }
        }
    }
    out
}

/// The im2col rows `range` of a convolution, zeros in the padding: a kernel row's taps that all
/// fall inside the input are one contiguous run of `k · C` values, copied at once.
fn gather(lhs: Lhs<'_>, range: std::ops::Range<usize>) -> Vec<f32> {
    let Lhs::Conv { data, input: (_, h, w, c), kernel: (k, s, p) } = lhs else {
        unreachable!("only convolutions are gathered")
    };
    let (ho, wo) = ((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1);
    let width = k * k * c;
    let mut block = vec![0f32; range.len() * width];
    for (row, r) in block.chunks_exact_mut(width).zip(range) {
        let (bi, rest) = (r / (ho * wo), r % (ho * wo));
        let (oy, ox) = (rest / wo, rest % wo);
        for ky in 0..k {
            let iy = (oy * s + ky) as isize - p as isize;
            if iy < 0 || iy >= h as isize {
                continue;
            }
            let line = (bi * h + iy as usize) * w;
            let dst = &mut row[ky * k * c..(ky + 1) * k * c];
            let ix0 = (ox * s) as isize - p as isize;
            if ix0 >= 0 && ix0 as usize + k <= w {
                let from = (line + ix0 as usize) * c;
                dst.copy_from_slice(&data[from..from + k * c]);
                continue;
            }
            for kx in 0..k {
                let ix = ix0 + kx as isize;
                if ix >= 0 && ix < w as isize {
                    let from = (line + ix as usize) * c;
                    dst[kx * c..(kx + 1) * c].copy_from_slice(&data[from..from + c]);
                }
            }
        }
    }
    block
}

/// The epilogue over a finished tile of `rows` rows at `c`, `at` its offset in the output.
#[inline(always)]
unsafe fn finish(epilogue: Epilogue<'_>, tile: (*mut f32, usize, usize), rows: usize, at: usize) {
    // One loop per activation, the match outside it.
    match (epilogue.residual, epilogue.act) {
        (None, None) => {}
        (residual, None) => finish_with(residual, tile, rows, at, |v| v),
        (residual, Some(act)) => super::cpu::with_activation!(act, |f| finish_with(residual, tile, rows, at, f)),
    }
    if let Some(scale) = epilogue.scale {
        let (c, ldc, cols) = tile;
        for i in 0..rows {
            let row = std::slice::from_raw_parts_mut(c.add(i * ldc), cols);
            for (v, s) in row.iter_mut().zip(&scale[at + i * ldc..at + i * ldc + cols]) {
                *v *= s;
            }
        }
    }
}

#[inline(always)]
unsafe fn finish_with(
    residual: Option<&[f32]>,
    (c, ldc, cols): (*mut f32, usize, usize),
    rows: usize,
    at: usize,
    f: impl Fn(f32) -> f32,
) {
    for i in 0..rows {
        let row = std::slice::from_raw_parts_mut(c.add(i * ldc), cols);
        match residual {
            Some(residual) => {
                let add = &residual[at + i * ldc..at + i * ldc + cols];
                row.iter_mut().zip(add).for_each(|(v, r)| *v = f(*v + r));
            }
            None => row.iter_mut().for_each(|v| *v = f(*v)),
        }
    }
}

/// The depth in passes `(first tap, taps, first channel, channels)`: whole taps, as many as fit
/// [`KC`] values (a 3×3 convolution of 64 channels is two passes of 5 and 4 taps, its sums in
/// registers throughout), or one deep tap in [`KC`]-value slices.
fn depth_slices(taps: usize, depth: usize) -> Vec<(usize, usize, usize, usize)> {
    let per = (KC / depth.max(1)).max(1);
    if per == 1 {
        (0..taps).flat_map(|t| (0..depth).step_by(KC).map(move |k0| (t, 1, k0, (depth - k0).min(KC)))).collect()
    } else {
        let passes = taps.div_ceil(per);
        let per = taps.div_ceil(passes);
        (0..taps).step_by(per).map(|t| (t, (taps - t).min(per), 0, depth)).collect()
    }
}

/// What a tile's sums land on: the output as it is, the bias, or nothing.
#[derive(Clone, Copy)]
enum Start {
    Accumulate,
    Bias(*const f32),
    Zero,
}

/// A hint to load the cache line at `p` (nothing where there is no such instruction).
#[inline(always)]
fn prefetch(p: *const f32) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch never faults, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast())
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Which micro-kernel runs: chosen from the CPU's features once per call, on the caller's thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kernel {
    /// 12 rows × 32 columns in 24 of the 32 zmm registers.
    #[cfg(target_arch = "x86_64")]
    Avx512,
    /// 6 rows × 16 columns in 12 of the 16 ymm registers (AVX2 + FMA: AMD Zen 1–3, Intel's
    /// client cores without AVX-512).
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// Plain arrays the compiler vectorises.
    Portable,
}

impl Kernel {
    /// The fastest kernel this CPU runs, at most what `VISTA_MAX_CPU_ISA` allows (`avx512`,
    /// `avx2` or `portable`, as oneDNN's `ONEDNN_MAX_CPU_ISA`: to compare kernels on one machine
    /// or rule one out) and what a test capped it to (see [`with_kernel_at_most`]).
    fn here() -> Self {
        static ENV_CAP: std::sync::OnceLock<u8> = std::sync::OnceLock::new();
        let env = *ENV_CAP.get_or_init(|| {
            match std::env::var("VISTA_MAX_CPU_ISA").map(|v| v.to_ascii_lowercase()).as_deref() {
                Ok("portable") => 0,
                Ok("avx2") => 1,
                _ => 2,
            }
        });
        let cap = KERNEL_CAP.with(|p| p.get()).min(env);
        #[cfg(target_arch = "x86_64")]
        {
            if cap >= 2 && std::arch::is_x86_feature_detected!("avx512f") {
                return Kernel::Avx512;
            }
            if cap >= 1 && std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                return Kernel::Avx2;
            }
        }
        let _ = cap;
        Kernel::Portable
    }
}

thread_local! {
    /// Set by tests to run a lesser kernel than the CPU's best: 2 any, 1 AVX2 at most, 0 portable.
    static KERNEL_CAP: std::cell::Cell<u8> = const { std::cell::Cell::new(2) };
}

#[cfg(test)]
thread_local! {
    /// Set by tests to pack with split (`true`) or interleaved halves whatever the CPU.
    static LAYOUT: std::cell::Cell<Option<bool>> = const { std::cell::Cell::new(None) };
}

/// Runs `f` with kernels no faster than `cap` on this thread (tests: every kernel on one machine).
#[cfg(test)]
fn with_kernel_at_most<R>(cap: u8, f: impl FnOnce() -> R) -> R {
    KERNEL_CAP.with(|p| p.set(cap));
    let r = f();
    KERNEL_CAP.with(|p| p.set(2));
    r
}

/// `C[i, j] (+)= Σ_t Σ_k a[t·R + i][k] · B[t·kc + k][j]` for the tile's rows `i < R ≤ 12`
/// (`R = a.len() / taps`) and columns `j < cols ≤ 32`, `B` a panel slice `[taps·kc][32]`, `C`
/// rows `ldc` apart, starting from `start`.
///
/// # Safety
/// Every `a[i]` is valid for `kc` reads, `b` for `taps · kc · 32`, `c` for the tile and a bias
/// pointer for `cols` reads.
#[inline(always)]
unsafe fn tile(
    kernel: Kernel,
    a: &[*const f32],
    taps: usize,
    kc: usize,
    b: Panel,
    c: (*mut f32, usize, usize),
    start: Start,
) {
    let rows = a.len() / taps;
    match kernel {
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 => {
            macro_rules! dispatch {
                ($($r:literal)*) => {
                    match rows {
                        $($r => avx512::tile::<$r>(a, kc, b, c, start),)*
                        _ => unreachable!("tiles have 1 to 12 rows"),
                    }
                };
            }
            dispatch!(1 2 3 4 5 6 7 8 9 10 11 12);
        }
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => {
            // Each half of the panel (one cache line per depth step) against the rows six at a
            // time: the second group of rows reads the half-panel the first just brought into
            // cache (L1 for a shallow pass, L2 for a 512-deep one).
            let (cp, ldc, cols) = c;
            for half in 0..cols.div_ceil(16) {
                let width = (cols - 16 * half).min(16);
                let start = match start {
                    Start::Bias(bias) => Start::Bias(bias.add(16 * half)),
                    s => s,
                };
                for i0 in (0..rows).step_by(avx2::MR) {
                    let c = (cp.add(i0 * ldc + 16 * half), ldc, width);
                    let b = (b.ptr.add(b.half * half), b.row);
                    macro_rules! dispatch {
                        ($($r:literal)*) => {
                            match (rows - i0).min(avx2::MR) {
                                $($r => avx2::tile::<$r>(a, rows, i0, kc, b, c, start),)*
                                _ => unreachable!("sub-tiles have 1 to 6 rows"),
                            }
                        };
                    }
                    dispatch!(1 2 3 4 5 6);
                }
            }
        }
        Kernel::Portable => {
            for i in (0..rows).step_by(4) {
                portable_tile(a, rows, i..(i + 4).min(rows), kc, b, c, start);
            }
        }
    }
}

/// Rows `range` (at most four) of a tile, in plain arrays the compiler vectorises.
#[inline(always)]
unsafe fn portable_tile(
    a: &[*const f32],
    rows: usize,
    range: std::ops::Range<usize>,
    kc: usize,
    b: Panel,
    (c, ldc, cols): (*mut f32, usize, usize),
    start: Start,
) {
    let mut acc = [[0f32; NR]; 4];
    for (t, tap) in a.chunks_exact(rows).enumerate() {
        for k in 0..kc {
            let step = b.at(t * kc + k);
            let halves = [&*(step.ptr as *const [f32; 16]), &*(step.ptr.add(step.half) as *const [f32; 16])];
            for (i, row) in tap[range.clone()].iter().enumerate() {
                let av = *row.add(k);
                for (s, &bv) in acc[i].iter_mut().zip(halves.into_iter().flatten()) {
                    *s += av * bv;
                }
            }
        }
    }
    for (i, sums) in acc.iter().enumerate().take(range.len()) {
        let dst = std::slice::from_raw_parts_mut(c.add((range.start + i) * ldc), cols);
        for (j, (d, s)) in dst.iter_mut().zip(sums).enumerate() {
            *d = match start {
                Start::Accumulate => *d + s,
                Start::Bias(bias) => *bias.add(j) + s,
                Start::Zero => *s,
            };
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::Start;

    /// Rows per sub-tile: 6 rows × 2 vectors of sums, two panel loads and a broadcast are 15 of
    /// the 16 registers (the layout of BLIS's Haswell and Zen kernels).
    pub const MR: usize = 6;

    /// How far ahead the half-panel is prefetched, in bytes (16 depth steps of an interleaved
    /// panel, 32 of a split one).
    const PREFETCH: usize = 2048;

    /// The lanes `< n` of 8 set, for masked loads and stores.
    #[inline(always)]
    unsafe fn lanes(n: usize) -> __m256i {
        _mm256_cmpgt_epi32(_mm256_set1_epi32(n as i32), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7))
    }

    /// `sums` added onto `base(row)` (the output, the bias or nothing) and stored into the
    /// first `width ≤ 16` columns of `R` rows of `c`.
    #[inline(always)]
    unsafe fn store<const R: usize>(sums: &[[__m256; 2]; R], (c, ldc, width): (*mut f32, usize, usize), start: Start) {
        if width == 16 {
            let bias = match start {
                Start::Bias(b) => [_mm256_loadu_ps(b), _mm256_loadu_ps(b.add(8))],
                _ => [_mm256_setzero_ps(); 2],
            };
            for (r, s) in sums.iter().enumerate() {
                let cp = c.add(r * ldc);
                let base = match start {
                    Start::Accumulate => [_mm256_loadu_ps(cp), _mm256_loadu_ps(cp.add(8))],
                    _ => bias,
                };
                _mm256_storeu_ps(cp, _mm256_add_ps(base[0], s[0]));
                _mm256_storeu_ps(cp.add(8), _mm256_add_ps(base[1], s[1]));
            }
            return;
        }
        let m = [lanes(width.min(8)), lanes(width.saturating_sub(8))];
        let bias = match start {
            Start::Bias(b) => [_mm256_maskload_ps(b, m[0]), _mm256_maskload_ps(b.add(8), m[1])],
            _ => [_mm256_setzero_ps(); 2],
        };
        for (r, s) in sums.iter().enumerate() {
            let cp = c.add(r * ldc);
            let base = match start {
                Start::Accumulate => [_mm256_maskload_ps(cp, m[0]), _mm256_maskload_ps(cp.add(8), m[1])],
                _ => bias,
            };
            _mm256_maskstore_ps(cp, m[0], _mm256_add_ps(base[0], s[0]));
            _mm256_maskstore_ps(cp.add(8), m[1], _mm256_add_ps(base[1], s[1]));
        }
    }

    /// Rows `i0..i0 + R` of a tile of `rows` (its pointers `a`, tap-major) against 16 columns of
    /// a panel (`b`: the half's first column, and the values between depth steps), stored into the first
    /// `width` columns of `c`: each depth step one cache line of the panel, two loads, `R`
    /// broadcasts and `2R` fused multiply–adds.
    ///
    /// # Safety
    /// As [`super::tile`]; `R ≤ rows - i0`, `1 ≤ width ≤ 16`, the CPU has AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn tile<const R: usize>(
        a: &[*const f32],
        rows: usize,
        i0: usize,
        kc: usize,
        (b, step): (*const f32, usize),
        c: (*mut f32, usize, usize),
        start: Start,
    ) {
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        let mut bp = b;
        for tap in a.chunks_exact(rows) {
            let mut p = [std::ptr::null::<f32>(); R];
            p.copy_from_slice(&tap[i0..i0 + R]);
            for k in 0..kc {
                _mm_prefetch::<_MM_HINT_T0>(bp.cast::<i8>().wrapping_add(PREFETCH));
                let b0 = _mm256_load_ps(bp);
                let b1 = _mm256_load_ps(bp.add(8));
                for r in 0..R {
                    let av = _mm256_broadcast_ss(&*p[r].add(k));
                    acc[r][0] = _mm256_fmadd_ps(av, b0, acc[r][0]);
                    acc[r][1] = _mm256_fmadd_ps(av, b1, acc[r][1]);
                }
                bp = bp.add(step);
            }
        }
        store(&acc, c, start);
    }

    /// [`super::gemm_tn`]'s sub-tile: `C[i, j] += Σ_t a[t·lda + i] · b[t·ldb + j]` for `i < R`,
    /// `j < width ≤ 16`, `t < kt`.
    ///
    /// # Safety
    /// `a` valid for `kt` rows of `lda` (its first `R` values each), `b` for `kt` rows of `ldb`
    /// (the first `width`), `c` for `R` rows of `ldc` (the first `width`); the CPU has AVX2, FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn tile_tn<const R: usize>(
        (a, lda): (*const f32, usize),
        (b, ldb): (*const f32, usize),
        kt: usize,
        c: (*mut f32, usize, usize),
    ) {
        let width = c.2;
        let m = [lanes(width.min(8)), lanes(width.saturating_sub(8))];
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        for t in 0..kt {
            let bp = b.add(t * ldb);
            let (b0, b1) = if width == 16 {
                (_mm256_loadu_ps(bp), _mm256_loadu_ps(bp.add(8)))
            } else {
                (_mm256_maskload_ps(bp, m[0]), _mm256_maskload_ps(bp.add(8), m[1]))
            };
            let ap = a.add(t * lda);
            for (r, sums) in acc.iter_mut().enumerate() {
                let av = _mm256_broadcast_ss(&*ap.add(r));
                sums[0] = _mm256_fmadd_ps(av, b0, sums[0]);
                sums[1] = _mm256_fmadd_ps(av, b1, sums[1]);
            }
        }
        store(&acc, c, Start::Accumulate);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{Panel, Start};

    /// How far ahead the panel is prefetched, in values: 16 depth steps (2 KiB). At batch 1 the
    /// weights stream from memory once per forward and this hides their latency.
    const PREFETCH: usize = 16 * 32;

    /// The AVX-512 micro-kernel: `R` rows × 32 columns of sums in `2R` registers, each depth step
    /// two panel loads and `R` broadcasts feeding `2R` fused multiply–adds; the taps one after
    /// another with the sums kept in registers.
    ///
    /// # Safety
    /// As [`super::tile`], `a.len()` a multiple of `R`, and the CPU has AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn tile<const R: usize>(
        a: &[*const f32],
        kc: usize,
        b: Panel,
        (c, ldc, cols): (*mut f32, usize, usize),
        start: Start,
    ) {
        if let Start::Accumulate = start {
            for r in 0..R {
                _mm_prefetch::<_MM_HINT_T0>(c.add(r * ldc).cast());
                _mm_prefetch::<_MM_HINT_T0>(c.add(r * ldc + 16).cast());
            }
        }
        let mut acc = [[_mm512_setzero_ps(); 2]; R];
        let (mut bp, step, half) = (b.ptr, b.row, b.half);
        for tap in a.chunks_exact(R) {
            let mut rows = [std::ptr::null::<f32>(); R];
            rows.copy_from_slice(tap);
            for k in 0..kc {
                // The panel streams from memory when its weight is not cached (one image:
                // every weight is read once per forward); fetch it ahead of use.
                _mm_prefetch::<_MM_HINT_T0>(bp.wrapping_add(PREFETCH).cast());
                _mm_prefetch::<_MM_HINT_T0>(bp.wrapping_add(PREFETCH + half).cast());
                let b0 = _mm512_load_ps(bp);
                let b1 = _mm512_load_ps(bp.add(half));
                for r in 0..R {
                    let av = _mm512_set1_ps(*rows[r].add(k));
                    acc[r][0] = _mm512_fmadd_ps(av, b0, acc[r][0]);
                    acc[r][1] = _mm512_fmadd_ps(av, b1, acc[r][1]);
                }
                bp = bp.add(step);
            }
        }
        let mask = |lo: usize| -> __mmask16 {
            let n = cols.saturating_sub(lo).min(16);
            ((1u32 << n) - 1) as __mmask16
        };
        let (m0, m1) = (mask(0), mask(16));
        let (base0, base1) = match start {
            Start::Bias(bias) => (_mm512_maskz_loadu_ps(m0, bias), _mm512_maskz_loadu_ps(m1, bias.add(16))),
            _ => (_mm512_setzero_ps(), _mm512_setzero_ps()),
        };
        for (r, sums) in acc.iter().enumerate() {
            let cp = c.add(r * ldc);
            let (s0, s1) = match start {
                Start::Accumulate => (_mm512_maskz_loadu_ps(m0, cp), _mm512_maskz_loadu_ps(m1, cp.add(16))),
                _ => (base0, base1),
            };
            _mm512_mask_storeu_ps(cp, m0, _mm512_add_ps(s0, sums[0]));
            _mm512_mask_storeu_ps(cp.add(16), m1, _mm512_add_ps(s1, sums[1]));
        }
    }

    /// [`super::gemm_tn`]'s tile: `C[i, j] += Σ_t a[t·lda + i] · b[t·ldb + j]` for `i < R`,
    /// `j < cols ≤ 32`, `t < kt`.
    ///
    /// # Safety
    /// `a` valid for `kt` rows of `lda` (its first `R` values each), `b` for `kt` rows of `ldb`
    /// (the first `cols`), `c` for `R` rows of `ldc` (the first `cols`); the CPU has AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn tile_tn<const R: usize>(
        (a, lda): (*const f32, usize),
        (b, ldb): (*const f32, usize),
        kt: usize,
        (c, ldc, cols): (*mut f32, usize, usize),
    ) {
        let mask = |lo: usize| -> __mmask16 {
            let n = cols.saturating_sub(lo).min(16);
            ((1u32 << n) - 1) as __mmask16
        };
        let (m0, m1) = (mask(0), mask(16));
        let mut acc = [[_mm512_setzero_ps(); 2]; R];
        for t in 0..kt {
            let bp = b.add(t * ldb);
            let b0 = _mm512_maskz_loadu_ps(m0, bp);
            let b1 = _mm512_maskz_loadu_ps(m1, bp.add(16));
            let ap = a.add(t * lda);
            for (r, sums) in acc.iter_mut().enumerate() {
                let av = _mm512_set1_ps(*ap.add(r));
                sums[0] = _mm512_fmadd_ps(av, b0, sums[0]);
                sums[1] = _mm512_fmadd_ps(av, b1, sums[1]);
            }
        }
        for (r, sums) in acc.iter().enumerate() {
            let cp = c.add(r * ldc);
            let s0 = _mm512_maskz_loadu_ps(m0, cp);
            let s1 = _mm512_maskz_loadu_ps(m1, cp.add(16));
            _mm512_mask_storeu_ps(cp, m0, _mm512_add_ps(s0, sums[0]));
            _mm512_mask_storeu_ps(cp.add(16), m1, _mm512_add_ps(s1, sums[1]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(seed: u64, len: usize) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// The naive product over explicit im2col rows.
    fn naive(rows: &[Vec<f32>], w: &[f32], n: usize, bias: Option<&[f32]>) -> Vec<f32> {
        let mut out = Vec::new();
        for row in rows {
            for j in 0..n {
                let mut s = bias.map_or(0.0, |b| b[j] as f64);
                for (kk, &a) in row.iter().enumerate() {
                    s += a as f64 * w[kk * n + j] as f64;
                }
                out.push(s as f32);
            }
        }
        out
    }

    fn close(a: &[f32], b: &[f32], what: &str) {
        assert_eq!(a.len(), b.len(), "{what}");
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= 1e-4 * (1.0 + y.abs()), "{what}: [{i}] {x} vs {y}");
        }
    }

    /// `f` once per kernel cap (the best kernel here, AVX2 at most, portable) and weight layout
    /// (interleaved, split halves).
    fn every_kernel(f: impl Fn(&str)) {
        for split in [false, true] {
            LAYOUT.with(|l| l.set(Some(split)));
            let layout = if split { "split" } else { "interleaved" };
            f(&format!("best, {layout}"));
            with_kernel_at_most(1, || f(&format!("avx2 at most, {layout}")));
            with_kernel_at_most(0, || f(&format!("portable, {layout}")));
        }
        LAYOUT.with(|l| l.set(None));
    }

    #[test]
    fn dense_products_equal_the_naive_sum_for_ragged_shapes() {
        every_kernel(|kernel| {
            for (m, k, n) in [(1, 1, 1), (5, 7, 3), (13, 300, 33), (50, 768, 96), (397, 40, 70), (25, 513, 64)] {
                let a = values(1, m * k);
                let w = values(2, k * n);
                let bias = values(3, n);
                let packed = PackedWeight::from_k_by_n(&w, k, n);
                for threads in [1, 2] {
                    let out =
                        gemm(Lhs::Rows { data: &a, m }, &packed, Some(&bias), Epilogue::default(), threads).unwrap();
                    let rows: Vec<Vec<f32>> = a.chunks(k).map(<[f32]>::to_vec).collect();
                    close(&out, &naive(&rows, &w, n, Some(&bias)), &format!("{kernel} {m}x{k}x{n} t{threads}"));
                    // The value-by-value factor: the same product times it, to the bit.
                    let factor = values(7, m * n);
                    let scaled =
                        gemm(Lhs::Rows { data: &a, m }, &packed, Some(&bias), Epilogue::scale(&factor), threads)
                            .unwrap();
                    let want: Vec<f32> = out.iter().zip(&factor).map(|(v, f)| v * f).collect();
                    assert_eq!(scaled, want, "{kernel} {m}x{k}x{n} t{threads}, scaled");
                }
            }
        });
    }

    #[test]
    fn transposed_products_equal_the_naive_sum_for_ragged_shapes() {
        every_kernel(|kernel| {
            for (k, m, n) in
                [(1, 1, 1), (7, 5, 3), (300, 13, 33), (600, 128, 96), (257, 40, 70), (1000, 25, 64), (2100, 30, 520)]
            {
                let (a, b) = (values(4, k * m), values(5, k * n));
                // aᵀ as rows: row i holds column i of a.
                let at: Vec<Vec<f32>> = (0..m).map(|i| (0..k).map(|t| a[t * m + i]).collect()).collect();
                for threads in [1, 2, 3] {
                    let out = gemm_tn(&a, &b, k, m, n, threads).unwrap();
                    close(&out, &naive(&at, &b, n, None), &format!("{kernel} tn {k}x{m}x{n} t{threads}"));
                }
            }
            assert!(gemm_tn(&[0.0; 5], &[0.0; 6], 2, 3, 3, 1).is_err());
        });
    }

    #[test]
    fn convolutions_read_their_taps_in_place_and_zeros_in_the_padding() {
        every_kernel(|kernel| {
            for (b, h, w, c, k, s, p, n) in [
                (2, 5, 7, 20, 3, 1, 1, 6),
                (1, 9, 8, 3, 3, 2, 1, 40),
                (1, 6, 6, 33, 1, 2, 0, 5),
                (2, 7, 7, 300, 3, 1, 1, 4),
            ] {
                let x = values(4, b * h * w * c);
                let wt = values(5, k * k * c * n);
                let lhs = Lhs::Conv { data: &x, input: (b, h, w, c), kernel: (k, s, p) };
                let (m, taps, depth) = lhs.geometry(k * k * c).unwrap();
                let res = values(6, m * n);
                let rows: Vec<Vec<f32>> = (0..m)
                    .map(|r| {
                        (0..taps)
                            .flat_map(|t| match lhs.offset(r, t, depth) {
                                Some(o) => x[o..o + depth].to_vec(),
                                None => vec![0.0; depth],
                            })
                            .collect()
                    })
                    .collect();
                let out = gemm(
                    lhs,
                    &PackedWeight::from_k_by_n(&wt, k * k * c, n),
                    None,
                    Epilogue { residual: Some(&res), act: Some(Activation::Relu), scale: None },
                    2,
                )
                .unwrap();
                let want: Vec<f32> =
                    naive(&rows, &wt, n, None).iter().zip(&res).map(|(v, r)| (v + r).max(0.0)).collect();
                close(&out, &want, &format!("{kernel} conv c{c} k{k} s{s} p{p}"));
            }
        });
    }

    #[test]
    fn mismatched_shapes_are_refused() {
        let packed = PackedWeight::from_k_by_n(&[0.0; 6], 3, 2);
        let none = Epilogue::default();
        assert!(gemm(Lhs::Rows { data: &[0.0; 8], m: 2 }, &packed, None, none, 1).is_err());
        assert!(gemm(Lhs::Rows { data: &[0.0; 6], m: 2 }, &packed, Some(&[0.0; 3]), none, 1).is_err());
        let short = Epilogue { residual: Some(&[0.0; 3]), act: None, scale: None };
        assert!(gemm(Lhs::Rows { data: &[0.0; 6], m: 2 }, &packed, None, short, 1).is_err());
        assert!(gemm(Lhs::Rows { data: &[0.0; 6], m: 2 }, &packed, None, Epilogue::scale(&[1.0; 3]), 1).is_err());
        let empty = PackedWeight::from_k_by_n(&[], 0, 2);
        let relu = Epilogue::act(Some(Activation::Relu));
        let out = gemm(Lhs::Rows { data: &[], m: 3 }, &empty, Some(&[1.0, -2.0]), relu, 1).unwrap();
        assert_eq!(out, [1.0, 0.0, 1.0, 0.0, 1.0, 0.0], "no depth: the bias, activated");
    }
}
