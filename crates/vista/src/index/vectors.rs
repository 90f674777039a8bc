//! Exact nearest-neighbour search over L2-normalised embeddings, and near-duplicate grouping: the
//! in-memory half of the photo index (the SQLite store persists the same f16 rows as BLOBs).
//!
//! A query scans every row. At a million 512-d rows that is a gigabyte of f16 per query, so the
//! scan is bound by memory bandwidth, not arithmetic: it is written to stream the rows once, on
//! every core (rayon), with SIMD kernels whose arithmetic hides behind the loads, and a top-k heap
//! per chunk whose cost is one compare per row. Two representations are scanned:
//!
//! * [`Scan::F16`]: the stored f16 rows, widened to f32 on the fly (`vcvtph2ps`) and multiplied
//!   with the f32 query. The score of a row is always this kernel's result ([`VectorSet::score`]).
//! * [`Scan::Int8`]: a copy of the rows quantised to 8 bits per value (half the bytes), built on
//!   request. Each row's int8 score comes with a proven error bound (Cauchy–Schwarz on the
//!   quantisation residuals of row and query, plus float rounding), so the scan keeps exactly the
//!   rows that could still be in the top k and rescores only those with the f16 kernel: the
//!   result, scores included, is identical to the f16 scan's, not an approximation of it.
//!
//! Which one [`VectorSet::top_k`] uses, and why, is written at [`VectorSet::default_scan`]
//! (measurements in `BENCHMARKS.md`, `tools/bench/bench_search.py`).
//!
//! Ordering everywhere: higher score first, equal scores by lower row index, so results are
//! deterministic whatever the thread count.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::ops::Range;
use std::sync::{Mutex, OnceLock};

use half::f16;
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;

use crate::{Error, Result};

/// Rows scored per kernel call: the scores of one block sit in a stack buffer.
const BLOCK_ROWS: usize = 256;
/// Smallest number of rows handed to one rayon task (below it, task overhead shows).
const MIN_CHUNK_ROWS: usize = 4096;
/// Rows of the int8 copy are padded with zeros to a multiple of this (one 512-bit register).
const Q8_ALIGN: usize = 64;
/// Rows per side of one block product in [`near_duplicate_groups`].
const DUPES_BLOCK: usize = 512;

/// L2-normalised embeddings stored as f16, row-major.
pub struct VectorSet {
    dim: usize,
    /// Number of rows (kept apart from `rows.len()` so a set of dimension 0 is well defined).
    len: usize,
    /// `len * dim` values, row-major.
    rows: Vec<f16>,
    /// The int8 copy for [`Scan::Int8`]: built by `prepare_int8` or the first int8 search, then
    /// kept up to date by `push`.
    q8: OnceLock<Quantized>,
}

/// One search result: a row index and its score (dot product with the query).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    pub index: usize,
    pub score: f32,
}

/// Which representation a search scans (see the module documentation). Both return the same hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scan {
    /// The f16 rows, widened on the fly.
    F16,
    /// An int8 copy (built on first use if [`VectorSet::prepare_int8`] was not called: +50%
    /// memory), then an exact f16 rescoring of the rows
    /// that the int8 scores and their error bounds cannot rule out.
    Int8,
}

impl VectorSet {
    /// An empty set of `dim`-dimensional rows.
    pub fn new(dim: usize) -> Self {
        Self::with_capacity(dim, 0)
    }

    /// An empty set with room for `rows` rows.
    pub fn with_capacity(dim: usize, rows: usize) -> Self {
        VectorSet { dim, len: 0, rows: Vec::with_capacity(dim * rows), q8: OnceLock::new() }
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends a row, rounded to f16, as given (the caller normalises).
    ///
    /// # Panics
    /// If `v.len() != self.dim()`.
    pub fn push(&mut self, v: &[f32]) {
        assert_eq!(
            v.len(),
            self.dim,
            "VectorSet::push: row has {} values, the set has dimension {}",
            v.len(),
            self.dim
        );
        let start = self.rows.len();
        self.rows.resize(start + self.dim, f16::ZERO);
        self.rows[start..].convert_from_f32_slice(v);
        self.after_push();
    }

    /// Appends a row stored as a BLOB: `dim` little-endian f16 values (`dim * 2` bytes), the format
    /// [`to_f16_bytes`] writes.
    pub fn push_f16_bytes(&mut self, le_bytes: &[u8]) -> Result<()> {
        if le_bytes.len() != 2 * self.dim {
            return Err(Error::arg(
                "embedding",
                format!(
                    "{} bytes, expected {} ({} little-endian f16 values); was the index built with another model?",
                    le_bytes.len(),
                    2 * self.dim,
                    self.dim
                ),
            ));
        }
        self.rows.extend(le_bytes.chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]])));
        self.after_push();
        Ok(())
    }

    fn after_push(&mut self) {
        self.len += 1;
        let start = self.rows.len() - self.dim;
        if let Some(q8) = self.q8.get_mut() {
            q8.push(&self.rows[start..].to_f32_vec());
        }
    }

    /// Row `i` widened to f32.
    ///
    /// # Panics
    /// If `i >= self.len()`.
    pub fn row(&self, i: usize) -> Vec<f32> {
        self.f16_row(i).to_f32_vec()
    }

    fn f16_row(&self, i: usize) -> &[f16] {
        &self.rows[i * self.dim..(i + 1) * self.dim]
    }

    /// The score of row `i` for `query`, exactly as the searches compute it.
    pub fn score(&self, i: usize, query: &[f32]) -> f32 {
        assert_eq!(
            query.len(),
            self.dim,
            "VectorSet::score: query has {} values, the set has dimension {}",
            query.len(),
            self.dim
        );
        let mut s = [0.0f32];
        kernels::DotF16::detect().run(query, self.f16_row(i), &mut s);
        s[0]
    }

    /// Exact top-k by dot product (= cosine for normalised rows), best first; ties broken by lower
    /// index; rows with score < min_score skipped; `allow(i) == false` rows skipped. Multi-threaded.
    ///
    /// `allow` is only asked about rows whose score could enter the result, from several threads
    /// and in no particular order, so it must be a pure function of the index.
    ///
    /// # Panics
    /// If `query.len() != self.dim()` on a non-empty set.
    pub fn top_k(
        &self,
        query: &[f32],
        k: usize,
        min_score: Option<f32>,
        allow: Option<&(dyn Fn(usize) -> bool + Sync)>,
    ) -> Vec<Hit> {
        self.top_k_with(self.default_scan(), query, k, min_score, allow)
    }

    /// [`Self::top_k`] scanning the given representation (for benchmarks and tests: both return
    /// the same hits).
    pub fn top_k_with(
        &self,
        scan: Scan,
        query: &[f32],
        k: usize,
        min_score: Option<f32>,
        allow: Option<&(dyn Fn(usize) -> bool + Sync)>,
    ) -> Vec<Hit> {
        let k = k.min(self.len());
        if k == 0 {
            return Vec::new();
        }
        assert_eq!(
            query.len(),
            self.dim,
            "VectorSet::top_k: query has {} values, the set has dimension {}",
            query.len(),
            self.dim
        );
        let search = Search { set: self, query, k, floor: min_score.unwrap_or(f32::NEG_INFINITY), allow };
        match scan {
            Scan::F16 => search.f16(),
            Scan::Int8 => match QueryQ8::new(query, self.q8().stride) {
                Some(qq) => search.int8(&qq),
                // A non-finite query has no int8 form; the f16 scan handles it (NaN scores never rank).
                None => search.f16(),
            },
        }
    }

    /// Builds the int8 copy now (0.7 s and +520 MB for 1M × 512-d on 2 cores), so that
    /// [`Self::top_k`] scans it from now on: for a process that serves many queries.
    pub fn prepare_int8(&self) {
        self.q8();
    }

    /// The scan [`Self::top_k`] uses: int8 once its copy exists, else f16.
    ///
    /// Measured (1M × 512-d, top-10, 2 cores of an AMD EPYC Zen 5, `BENCHMARKS.md`): f16 18-25 ms,
    /// int8 + rescoring 11-13 ms; both run near the memory bandwidth (1 GB and 0.5 GB a query), so
    /// int8 wins by reading half the bytes. Building the int8 copy costs 0.7 s and +50% memory,
    /// more than a one-shot search (the CLI loads the index, searches once and exits) gains, and
    /// f16 is already 4× under the 100 ms target. So the copy is built only on request
    /// ([`Self::prepare_int8`]) or by an explicit [`Scan::Int8`] search, and then used.
    pub fn default_scan(&self) -> Scan {
        if self.q8.get().is_some() {
            Scan::Int8
        } else {
            Scan::F16
        }
    }

    fn q8(&self) -> &Quantized {
        self.q8.get_or_init(|| Quantized::build(self))
    }

    /// Row ranges for the parallel scans: a few per thread, so an unlucky slow chunk evens out.
    fn chunks(&self) -> Vec<Range<usize>> {
        let n = self.len();
        let per = n.div_ceil(rayon::current_num_threads() * 4).max(MIN_CHUNK_ROWS);
        (0..n).step_by(per).map(|s| s..(s + per).min(n)).collect()
    }
}

/// Encodes a vector as the f16 little-endian BLOB the index stores.
pub fn to_f16_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|&x| f16::from_f32(x).to_le_bytes()).collect()
}

// ---------------------------------------------------------------------------------------------
// Top-k selection
// ---------------------------------------------------------------------------------------------

/// A hit ordered by rank: `a < b` when `a` ranks before `b` (higher score, then lower index), so a
/// max-heap of these has the worst kept hit on top.
#[derive(Clone, Copy)]
struct Ranked(Hit);

impl Ord for Ranked {
    fn cmp(&self, other: &Self) -> Ordering {
        // `+ 0.0` turns -0.0 into 0.0: equal scores are IEEE-equal ones, as the scans compare them.
        (other.0.score + 0.0).total_cmp(&(self.0.score + 0.0)).then(self.0.index.cmp(&other.0.index))
    }
}
impl PartialOrd for Ranked {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl PartialEq for Ranked {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Ranked {}

/// The best `k` hits offered so far.
struct TopK {
    k: usize,
    heap: BinaryHeap<Ranked>,
}

impl TopK {
    fn new(k: usize) -> Self {
        TopK { k, heap: BinaryHeap::with_capacity(k.min(1024) + 1) }
    }

    /// Offers a hit; kept if it ranks before the worst kept one (or there is room).
    #[inline]
    fn offer(&mut self, hit: Hit) {
        if self.heap.len() < self.k {
            self.heap.push(Ranked(hit));
        } else if let Some(mut worst) = self.heap.peek_mut() {
            if Ranked(hit) < *worst {
                *worst = Ranked(hit);
            }
        }
    }

    /// The score a hit at a higher index than all kept ones must exceed to enter, once full.
    #[inline]
    fn bar(&self) -> Option<f32> {
        (self.heap.len() == self.k).then(|| self.heap.peek().map_or(f32::NEG_INFINITY, |w| w.0.score))
    }

    fn merge(mut self, other: TopK) -> TopK {
        for r in other.heap {
            self.offer(r.0);
        }
        self
    }

    fn into_sorted(self) -> Vec<Hit> {
        self.heap.into_sorted_vec().into_iter().map(|r| r.0).collect()
    }
}

/// The `k` largest of a stream of f32 (the lower bounds of the int8 scan).
struct KLargest {
    k: usize,
    /// Min-heap through `Reverse`, by total order.
    heap: BinaryHeap<std::cmp::Reverse<TotalF32>>,
}

#[derive(Clone, Copy, PartialEq)]
struct TotalF32(f32);
impl Eq for TotalF32 {}
impl PartialOrd for TotalF32 {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for TotalF32 {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}

impl KLargest {
    fn new(k: usize) -> Self {
        KLargest { k, heap: BinaryHeap::with_capacity(k.min(1024) + 1) }
    }

    #[inline]
    fn offer(&mut self, x: f32) {
        if self.heap.len() < self.k {
            self.heap.push(std::cmp::Reverse(TotalF32(x)));
        } else if let Some(mut min) = self.heap.peek_mut() {
            if x > min.0 .0 {
                *min = std::cmp::Reverse(TotalF32(x));
            }
        }
    }

    /// The k-th largest value offered, once k were offered.
    #[inline]
    fn kth(&self) -> Option<f32> {
        (self.heap.len() == self.k).then(|| self.heap.peek().map_or(f32::NEG_INFINITY, |m| m.0 .0))
    }
}

/// One top-k search: the query, its parameters and the set.
struct Search<'a> {
    set: &'a VectorSet,
    query: &'a [f32],
    k: usize,
    /// `min_score`, or -inf.
    floor: f32,
    allow: Option<&'a (dyn Fn(usize) -> bool + Sync)>,
}

impl Search<'_> {
    fn allowed(&self, i: usize) -> bool {
        self.allow.is_none_or(|f| f(i))
    }

    /// The f16 scan: every row's exact score, a top-k heap per chunk, chunks merged.
    fn f16(&self) -> Vec<Hit> {
        let kernel = kernels::DotF16::detect();
        let dim = self.set.dim;
        let scan = |range: Range<usize>| {
            let mut top = TopK::new(self.k);
            let mut scores = [0.0f32; BLOCK_ROWS];
            let mut start = range.start;
            while start < range.end {
                let n = (range.end - start).min(BLOCK_ROWS);
                kernel.run(self.query, &self.set.rows[start * dim..(start + n) * dim], &mut scores[..n]);
                for (r, &score) in scores[..n].iter().enumerate() {
                    // Rows come in increasing index, so a tie with the worst kept hit loses.
                    let enters = match top.bar() {
                        Some(bar) => score > bar,
                        None => score >= self.floor,
                    };
                    if enters && score >= self.floor && self.allowed(start + r) {
                        top.offer(Hit { index: start + r, score });
                    }
                }
                start += n;
            }
            top
        };
        let chunks = self.set.chunks();
        let top = if chunks.len() == 1 {
            scan(chunks[0].clone())
        } else {
            chunks.into_par_iter().map(scan).reduce(|| TopK::new(self.k), TopK::merge)
        };
        top.into_sorted()
    }

    /// The int8 scan, then the f16 rescoring of the rows it could not rule out.
    ///
    /// For row x and query q with int8 reconstructions x̂, q̂ and residuals e = x − x̂, e_q = q − q̂:
    /// x·q − x̂·q̂ = x·e_q + e·q̂, so |x·q − x̂·q̂| ≤ ‖x‖‖e_q‖ + ‖e‖‖q̂‖ (plus a float-rounding slack
    /// covering both the f32 f16-kernel sum and the f32 evaluation of x̂·q̂). Every row's exact score
    /// therefore lies in [lower, upper]. If k allowed rows have lower ≥ t, the k-th best exact score
    /// is ≥ t, so a row with upper < max(t, min_score) cannot be in the result. The scan keeps the
    /// other rows; their exact scores decide.
    fn int8(&self, qq: &QueryQ8) -> Vec<Hit> {
        let q8 = self.set.q8();
        let kernel = kernels::DotU8::detect();
        let dim = self.set.dim;
        // Rounding slack, relative to ‖x‖‖q‖: the f16 kernel's f32 sum errs by at most dim·u·Σ|xᵢqᵢ|
        // (u = EPSILON/2) in any summation order; x̂·q̂ is an exact integer times two rounded scales.
        let slack = 2.0 * (dim as f32 + 32.0) * f32::EPSILON;
        struct Kept {
            lowers: KLargest,
            /// (row, upper bound), increasing row.
            rows: Vec<(usize, f32)>,
        }
        let scan = |range: Range<usize>| {
            let mut lowers = KLargest::new(self.k);
            let mut rows: Vec<(usize, f32)> = Vec::new();
            let mut prune_at = 4 * self.k + 1024;
            let mut cut = self.floor;
            let mut dots = [0i32; BLOCK_ROWS];
            let mut start = range.start;
            while start < range.end {
                let n = (range.end - start).min(BLOCK_ROWS);
                kernel.run(qq, &q8.codes[start * q8.stride..(start + n) * q8.stride], &mut dots[..n]);
                for (r, &dot) in dots[..n].iter().enumerate() {
                    let i = start + r;
                    let m = q8.meta[i];
                    let approx = (dot - qq.offset) as f32 * (m.scale * qq.scale);
                    let (upper, lower) = if m.err.is_finite() {
                        let bound = qq.err * m.norm + m.err * qq.norm_hat + slack * m.norm * qq.norm;
                        (approx + bound, approx - bound)
                    } else {
                        (f32::INFINITY, f32::NEG_INFINITY)
                    };
                    if upper < cut || !self.allowed(i) {
                        continue;
                    }
                    rows.push((i, upper));
                    lowers.offer(lower);
                    if let Some(t) = lowers.kth() {
                        cut = cut.max(t);
                    }
                    if rows.len() >= prune_at {
                        rows.retain(|&(_, u)| u >= cut);
                        prune_at = (2 * rows.len()).max(4 * self.k + 1024);
                    }
                }
                start += n;
            }
            Kept { lowers, rows }
        };
        let kept: Vec<Kept> = self.set.chunks().into_par_iter().map(scan).collect();

        let mut all_lowers = KLargest::new(self.k);
        for kept in &kept {
            for l in kept.lowers.heap.iter() {
                all_lowers.offer(l.0 .0);
            }
        }
        let cut = all_lowers.kth().map_or(self.floor, |t| t.max(self.floor));
        let candidates: Vec<usize> =
            kept.iter().flat_map(|c| c.rows.iter()).filter(|&&(_, u)| u >= cut).map(|&(i, _)| i).collect();

        let f16_kernel = kernels::DotF16::detect();
        let rescore = |rows: &[usize]| {
            let mut top = TopK::new(self.k);
            let mut s = [0.0f32];
            for &i in rows {
                f16_kernel.run(self.query, self.set.f16_row(i), &mut s);
                if s[0] >= self.floor {
                    top.offer(Hit { index: i, score: s[0] });
                }
            }
            top
        };
        let top = if candidates.len() <= MIN_CHUNK_ROWS {
            rescore(&candidates)
        } else {
            candidates.par_chunks(MIN_CHUNK_ROWS).map(rescore).reduce(|| TopK::new(self.k), TopK::merge)
        };
        top.into_sorted()
    }
}

// ---------------------------------------------------------------------------------------------
// The int8 copy
// ---------------------------------------------------------------------------------------------

/// Per-row int8 codes with one scale per row (max-abs to ±127), stored offset by +128 as u8 so
/// the VNNI instruction (u8 × i8) takes them directly; the query's offset term is removed once.
struct Quantized {
    /// Row length in codes: `dim` rounded up to [`Q8_ALIGN`]; the padding is code 128 (zero).
    stride: usize,
    codes: Vec<u8>,
    meta: Vec<RowMeta>,
}

#[derive(Clone, Copy)]
struct RowMeta {
    /// x̂ = scale · (code − 128).
    scale: f32,
    /// ‖x − x̂‖, rounded up; infinite for a row with a non-finite value (never ruled out).
    err: f32,
    /// ‖x‖, rounded up.
    norm: f32,
}

impl Quantized {
    fn build(set: &VectorSet) -> Self {
        let (dim, n) = (set.dim, set.len());
        let stride = dim.div_ceil(Q8_ALIGN) * Q8_ALIGN;
        let mut codes = vec![128u8; n * stride];
        let mut meta = vec![RowMeta { scale: 0.0, err: 0.0, norm: 0.0 }; n];
        codes.par_chunks_mut(stride).zip(meta.par_iter_mut()).enumerate().with_min_len(1024).for_each_init(
            || vec![0.0f32; dim],
            |row, (i, (codes, meta))| {
                set.f16_row(i).convert_to_f32_slice(row);
                *meta = quantize(row, codes);
            },
        );
        Quantized { stride, codes, meta }
    }

    fn push(&mut self, row: &[f32]) {
        let start = self.codes.len();
        self.codes.resize(start + self.stride, 128);
        self.meta.push(quantize(row, &mut self.codes[start..]));
    }
}

/// Rounds `x` to `scale · code` with `scale = max|x| / 127`; writes code + 128 into `out` (its
/// tail past `x.len()` stays 128) and returns the row's metadata.
fn quantize(x: &[f32], out: &mut [u8]) -> RowMeta {
    const L: usize = 8;
    // Lane-wise, so the loops vectorise.
    let (mut maxes, mut poison) = ([0.0f32; L], [0.0f32; L]);
    for (i, &v) in x.iter().enumerate() {
        let a = v.abs();
        maxes[i % L] = if a > maxes[i % L] { a } else { maxes[i % L] };
        poison[i % L] += v * 0.0;
    }
    let max = maxes.iter().fold(0.0f32, |m, &v| m.max(v));
    if poison.iter().any(|p| p.is_nan()) {
        // A NaN or infinite value (v · 0 is NaN exactly then): never ruled out by the int8 pass.
        return RowMeta { scale: 0.0, err: f32::INFINITY, norm: f32::INFINITY };
    }
    if max == 0.0 {
        return RowMeta { scale: 0.0, err: 0.0, norm: 0.0 };
    }
    let scale = max / 127.0;
    let inv = 127.0 / max;
    // Residuals in f64: scale · code is exact there.
    let (mut err2, mut norm2) = ([0.0f64; L], [0.0f64; L]);
    let mut lane = |l: usize, v: f32, o: &mut u8| {
        let c = round_small(v * inv).clamp(-127.0, 127.0);
        *o = (c as i32 + 128) as u8;
        let e = v as f64 - scale as f64 * c as f64;
        err2[l] += e * e;
        norm2[l] += v as f64 * v as f64;
    };
    let body = x.len() / L * L;
    let ((x_body, x_tail), (o_body, o_tail)) = (x.split_at(body), out[..x.len()].split_at_mut(body));
    for (x8, o8) in x_body.chunks_exact(L).zip(o_body.chunks_exact_mut(L)) {
        for l in 0..L {
            lane(l, x8[l], &mut o8[l]);
        }
    }
    for (l, (&v, o)) in x_tail.iter().zip(o_tail).enumerate() {
        lane(l, v, o);
    }
    let (err2, norm2): (f64, f64) = (err2.iter().sum(), norm2.iter().sum());
    RowMeta { scale, err: round_up(err2.sqrt()), norm: round_up(norm2.sqrt()) }
}

/// Rounds to the nearest integer (ties to even) for |x| < 2^22 with two additions, which
/// vectorise on baseline x86_64 (`round_ties_even` there is a libm call per value).
#[inline]
fn round_small(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 · 2^23: x + MAGIC has no fraction bits left
    (x + MAGIC) - MAGIC
}

/// An f64 magnitude as an f32 no smaller than it.
fn round_up(x: f64) -> f32 {
    let f = x as f32;
    if (f as f64) < x {
        f.next_up()
    } else {
        f
    }
}

/// The query quantised like a row, as i8 (for VNNI) and i16 (for the widening kernels).
struct QueryQ8 {
    i8: Vec<i8>,
    i16: Vec<i16>,
    scale: f32,
    /// 128 · Σ codes: what the rows' +128 offset adds to every raw dot product.
    offset: i32,
    /// ‖q − q̂‖, ‖q̂‖, ‖q‖, each rounded up.
    err: f32,
    norm_hat: f32,
    norm: f32,
}

impl QueryQ8 {
    /// `None` for a query with a non-finite value.
    fn new(q: &[f32], stride: usize) -> Option<Self> {
        if !q.iter().all(|v| v.is_finite()) {
            return None;
        }
        let max = q.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let (scale, inv) = if max == 0.0 { (0.0, 0.0) } else { (max / 127.0, 127.0 / max) };
        let mut i8 = vec![0i8; stride];
        let (mut err2, mut hat2, mut norm2) = (0.0f64, 0.0f64, 0.0f64);
        for (o, &v) in i8.iter_mut().zip(q) {
            let c = round_small(v * inv).clamp(-127.0, 127.0);
            *o = c as i8;
            let hat = scale as f64 * c as f64;
            err2 += (v as f64 - hat) * (v as f64 - hat);
            hat2 += hat * hat;
            norm2 += v as f64 * v as f64;
        }
        let offset = 128 * i8.iter().map(|&c| c as i32).sum::<i32>();
        let i16 = i8.iter().map(|&c| c as i16).collect();
        Some(QueryQ8 {
            i8,
            i16,
            scale,
            offset,
            err: round_up(err2.sqrt()),
            norm_hat: round_up(hat2.sqrt()),
            norm: round_up(norm2.sqrt()),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Near-duplicates
// ---------------------------------------------------------------------------------------------

/// Groups of >= 2 rows whose pairwise links (cosine >= threshold) connect them (union-find over
/// all pairs; blocked matrix products so 50k rows stays reasonable), each group sorted, groups
/// ordered by their first member.
///
/// Every pair is compared: the rows are widened to f32 one block of 512 rows at a time
/// and each pair of blocks (upper triangle) is one `gemm` on a rayon thread. A link is a score
/// `>= threshold` as that product computes it; its summation order differs from
/// [`VectorSet::score`]'s, so a pair within ~1e-6 of the threshold may be judged differently there.
/// Cost: n²/2 · dim multiply-adds, 3.6 s for 50k × 512-d on 2 Zen 5 cores (`BENCHMARKS.md`);
/// memory: a few MB of blocks per thread beyond the set.
pub fn near_duplicate_groups(set: &VectorSet, threshold: f32) -> Vec<Vec<usize>> {
    let (n, dim) = (set.len(), set.dim);
    if n < 2 || dim == 0 {
        return Vec::new();
    }
    let blocks = n.div_ceil(DUPES_BLOCK);
    let pairs: Vec<(usize, usize)> = (0..blocks).flat_map(|a| (a..blocks).map(move |b| (a, b))).collect();
    let links = Mutex::new(UnionFind::new(n));
    let widen = |block: usize, out: &mut Vec<f32>| {
        let rows = block * DUPES_BLOCK..((block + 1) * DUPES_BLOCK).min(n);
        out.resize(rows.len() * dim, 0.0);
        set.rows[rows.start * dim..rows.end * dim].convert_to_f32_slice(out);
        rows
    };
    pairs.par_iter().for_each_init(
        || (Vec::new(), Vec::new(), Vec::new(), UnionFind::new(2 * DUPES_BLOCK), Vec::new()),
        |(a, b, scores, local, edges), &(ba, bb)| {
            let ra = widen(ba, a);
            let rb = widen(bb, b);
            let (m, p) = (ra.len(), rb.len());
            scores.resize(m * p, 0.0f32);
            // SAFETY: a is m×dim and b is p×dim, both row-major; scores is m×p row-major.
            // scores[i][j] = Σ_d a[i][d] · b[j][d]   ([m, dim] x [dim, p])
            unsafe {
                gemm::gemm(
                    m,
                    p,
                    dim,
                    scores.as_mut_ptr(),
                    1,
                    p as isize,
                    false,
                    a.as_ptr(),
                    1,
                    dim as isize,
                    b.as_ptr(),
                    dim as isize,
                    1,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                )
            };
            // Local union-find over the block pair's rows (a: 0..m, b: m..m+p) keeps only the links
            // that join two components: at most m+p−1 per block pair reach the shared one.
            local.reset(m + p);
            edges.clear();
            for i in 0..m {
                let row = &scores[i * p..(i + 1) * p];
                let from = if ba == bb { i + 1 } else { 0 };
                for (j, &s) in row.iter().enumerate().skip(from) {
                    if s >= threshold {
                        let lj = if ba == bb { j } else { m + j };
                        if local.union(i, lj) {
                            edges.push((ra.start + i, rb.start + j));
                        }
                    }
                }
            }
            if !edges.is_empty() {
                let mut links = links.lock().unwrap_or_else(|e| e.into_inner());
                for &(i, j) in edges.iter() {
                    links.union(i, j);
                }
            }
        },
    );
    let mut links = links.into_inner().unwrap_or_else(|e| e.into_inner());
    groups_of(&mut links)
}

/// The components of size >= 2, each in increasing order, ordered by their smallest member.
fn groups_of(uf: &mut UnionFind) -> Vec<Vec<usize>> {
    let n = uf.parent.len();
    let mut group_of_root = vec![usize::MAX; n];
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for i in 0..n {
        let r = uf.find(i);
        if group_of_root[r] == usize::MAX {
            group_of_root[r] = groups.len();
            groups.push(Vec::new());
        }
        groups[group_of_root[r]].push(i);
    }
    groups.retain(|g| g.len() >= 2);
    groups
}

/// Disjoint sets with path halving and union by size.
struct UnionFind {
    parent: Vec<u32>,
    size: Vec<u32>,
}

impl UnionFind {
    fn new(n: usize) -> Self {
        assert!(n <= u32::MAX as usize, "near_duplicate_groups: at most 2^32 rows");
        UnionFind { parent: (0..n as u32).collect(), size: vec![1; n] }
    }

    fn reset(&mut self, n: usize) {
        self.parent.clear();
        self.parent.extend(0..n as u32);
        self.size.clear();
        self.size.resize(n, 1);
    }

    fn find(&mut self, mut i: usize) -> usize {
        while self.parent[i] as usize != i {
            let grand = self.parent[self.parent[i] as usize];
            self.parent[i] = grand;
            i = grand as usize;
        }
        i
    }

    /// Joins the sets of `a` and `b`; true if they were apart.
    fn union(&mut self, a: usize, b: usize) -> bool {
        let (mut a, mut b) = (self.find(a), self.find(b));
        if a == b {
            return false;
        }
        if self.size[a] < self.size[b] {
            std::mem::swap(&mut a, &mut b);
        }
        self.parent[b] = a as u32;
        self.size[a] += self.size[b];
        true
    }
}

// ---------------------------------------------------------------------------------------------
// Kernels
// ---------------------------------------------------------------------------------------------

/// The scan kernels, each chosen once per search by runtime CPU feature detection, with a portable
/// fallback (any target) that the SIMD versions are tested against.
mod kernels {
    use half::f16;
    use half::slice::HalfFloatSliceExt;

    use super::QueryQ8;

    /// `out[r] = rows[r] · query` for the `out.len()` consecutive rows of `rows`, f16 widened to f32.
    #[derive(Clone, Copy)]
    pub(super) struct DotF16(unsafe fn(&[f32], &[f16], &mut [f32]));

    impl DotF16 {
        pub fn detect() -> Self {
            #[cfg(target_arch = "x86_64")]
            {
                if is_x86_feature_detected!("avx512f") {
                    return DotF16(x86::dot_f16_avx512);
                }
                if is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
                    && is_x86_feature_detected!("f16c")
                {
                    return DotF16(x86::dot_f16_avx2);
                }
            }
            Self::portable()
        }

        pub fn portable() -> Self {
            DotF16(dot_f16_portable)
        }

        #[cfg(all(test, target_arch = "x86_64"))]
        pub fn all_available() -> Vec<(&'static str, Self)> {
            let mut v = vec![("portable", Self::portable())];
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c") {
                v.push(("avx2", DotF16(x86::dot_f16_avx2)));
            }
            if is_x86_feature_detected!("avx512f") {
                v.push(("avx512", DotF16(x86::dot_f16_avx512)));
            }
            v
        }

        #[inline]
        pub fn run(self, query: &[f32], rows: &[f16], out: &mut [f32]) {
            assert_eq!(rows.len(), query.len() * out.len());
            // SAFETY: the kernel was chosen after checking its CPU features; lengths match.
            unsafe { (self.0)(query, rows, out) }
        }
    }

    /// `out[r] = Σ codes[r]·query` (u8 codes with their +128 offset, i8 query codes) for the
    /// `out.len()` consecutive rows of `codes`, each `query.i8.len()` long (a multiple of 64).
    #[derive(Clone, Copy)]
    pub(super) struct DotU8(unsafe fn(&QueryQ8, &[u8], &mut [i32]));

    impl DotU8 {
        pub fn detect() -> Self {
            #[cfg(target_arch = "x86_64")]
            {
                if is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vnni")
                {
                    return DotU8(x86::dot_u8_vnni);
                }
                if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw") {
                    return DotU8(x86::dot_u8_avx512bw);
                }
                if is_x86_feature_detected!("avx2") {
                    return DotU8(x86::dot_u8_avx2);
                }
            }
            DotU8(dot_u8_portable)
        }

        #[cfg(all(test, target_arch = "x86_64"))]
        pub fn all_available() -> Vec<(&'static str, Self)> {
            let mut v = vec![("portable", DotU8(dot_u8_portable))];
            if is_x86_feature_detected!("avx2") {
                v.push(("avx2", DotU8(x86::dot_u8_avx2)));
            }
            if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw") {
                v.push(("avx512bw", DotU8(x86::dot_u8_avx512bw)));
                if is_x86_feature_detected!("avx512vnni") {
                    v.push(("vnni", DotU8(x86::dot_u8_vnni)));
                }
            }
            v
        }

        #[inline]
        pub fn run(self, query: &QueryQ8, codes: &[u8], out: &mut [i32]) {
            let stride = query.i8.len();
            assert!(stride.is_multiple_of(64) && query.i16.len() == stride && codes.len() == stride * out.len());
            // SAFETY: the kernel was chosen after checking its CPU features; lengths match.
            unsafe { (self.0)(query, codes, out) }
        }
    }

    unsafe fn dot_f16_portable(query: &[f32], rows: &[f16], out: &mut [f32]) {
        const W: usize = 64;
        let dim = query.len();
        let mut buf = [0.0f32; W];
        for (o, row) in out.iter_mut().zip(rows.chunks_exact(dim)) {
            let mut acc = [0.0f32; 8];
            for (xs, qs) in row.chunks(W).zip(query.chunks(W)) {
                let buf = &mut buf[..xs.len()];
                xs.convert_to_f32_slice(buf);
                let mut lanes_x = buf.chunks_exact(8);
                let mut lanes_q = qs.chunks_exact(8);
                for (x8, q8) in (&mut lanes_x).zip(&mut lanes_q) {
                    for l in 0..8 {
                        acc[l] = x8[l].mul_add(q8[l], acc[l]);
                    }
                }
                for (l, (x, q)) in lanes_x.remainder().iter().zip(lanes_q.remainder()).enumerate() {
                    acc[l] = x.mul_add(*q, acc[l]);
                }
            }
            *o = acc.iter().sum();
        }
    }

    unsafe fn dot_u8_portable(query: &QueryQ8, codes: &[u8], out: &mut [i32]) {
        let stride = query.i16.len();
        for (o, row) in out.iter_mut().zip(codes.chunks_exact(stride)) {
            *o = row.iter().zip(&query.i16).map(|(&c, &q)| c as i32 * q as i32).sum();
        }
    }

    #[cfg(target_arch = "x86_64")]
    mod x86 {
        use std::arch::x86_64::*;

        use half::f16;

        use super::super::QueryQ8;

        /// Scalar tail of an f16 dot product (dims not a multiple of the vector width).
        #[inline]
        fn tail(query: &[f32], row: &[f16], from: usize) -> f32 {
            row[from..].iter().zip(&query[from..]).map(|(x, q)| x.to_f32() * q).sum()
        }

        #[target_feature(enable = "avx512f")]
        pub(super) unsafe fn dot_f16_avx512(query: &[f32], rows: &[f16], out: &mut [f32]) {
            let dim = query.len();
            let q = query.as_ptr();
            for (r, o) in out.iter_mut().enumerate() {
                let row = &rows[r * dim..(r + 1) * dim];
                let x = row.as_ptr() as *const u16;
                let (mut a0, mut a1, mut a2, mut a3) =
                    (_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps());
                let mut j = 0;
                while j + 64 <= dim {
                    let x0 = _mm512_cvtph_ps(_mm256_loadu_si256(x.add(j) as *const __m256i));
                    let x1 = _mm512_cvtph_ps(_mm256_loadu_si256(x.add(j + 16) as *const __m256i));
                    let x2 = _mm512_cvtph_ps(_mm256_loadu_si256(x.add(j + 32) as *const __m256i));
                    let x3 = _mm512_cvtph_ps(_mm256_loadu_si256(x.add(j + 48) as *const __m256i));
                    a0 = _mm512_fmadd_ps(x0, _mm512_loadu_ps(q.add(j)), a0);
                    a1 = _mm512_fmadd_ps(x1, _mm512_loadu_ps(q.add(j + 16)), a1);
                    a2 = _mm512_fmadd_ps(x2, _mm512_loadu_ps(q.add(j + 32)), a2);
                    a3 = _mm512_fmadd_ps(x3, _mm512_loadu_ps(q.add(j + 48)), a3);
                    j += 64;
                }
                while j + 16 <= dim {
                    let x0 = _mm512_cvtph_ps(_mm256_loadu_si256(x.add(j) as *const __m256i));
                    a0 = _mm512_fmadd_ps(x0, _mm512_loadu_ps(q.add(j)), a0);
                    j += 16;
                }
                let acc = _mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3));
                *o = _mm512_reduce_add_ps(acc) + tail(query, row, j);
            }
        }

        #[target_feature(enable = "avx2,fma,f16c")]
        pub(super) unsafe fn dot_f16_avx2(query: &[f32], rows: &[f16], out: &mut [f32]) {
            let dim = query.len();
            let q = query.as_ptr();
            for (r, o) in out.iter_mut().enumerate() {
                let row = &rows[r * dim..(r + 1) * dim];
                let x = row.as_ptr() as *const u16;
                let (mut a0, mut a1, mut a2, mut a3) =
                    (_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps());
                let mut j = 0;
                while j + 32 <= dim {
                    let x0 = _mm256_cvtph_ps(_mm_loadu_si128(x.add(j) as *const __m128i));
                    let x1 = _mm256_cvtph_ps(_mm_loadu_si128(x.add(j + 8) as *const __m128i));
                    let x2 = _mm256_cvtph_ps(_mm_loadu_si128(x.add(j + 16) as *const __m128i));
                    let x3 = _mm256_cvtph_ps(_mm_loadu_si128(x.add(j + 24) as *const __m128i));
                    a0 = _mm256_fmadd_ps(x0, _mm256_loadu_ps(q.add(j)), a0);
                    a1 = _mm256_fmadd_ps(x1, _mm256_loadu_ps(q.add(j + 8)), a1);
                    a2 = _mm256_fmadd_ps(x2, _mm256_loadu_ps(q.add(j + 16)), a2);
                    a3 = _mm256_fmadd_ps(x3, _mm256_loadu_ps(q.add(j + 24)), a3);
                    j += 32;
                }
                while j + 8 <= dim {
                    let x0 = _mm256_cvtph_ps(_mm_loadu_si128(x.add(j) as *const __m128i));
                    a0 = _mm256_fmadd_ps(x0, _mm256_loadu_ps(q.add(j)), a0);
                    j += 8;
                }
                let acc = _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3));
                // [8] -> [4] -> [2] -> [1]
                let s4 = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps::<1>(acc));
                let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
                let s1 = _mm_add_ss(s2, _mm_shuffle_ps::<0b01>(s2, s2));
                *o = _mm_cvtss_f32(s1) + tail(query, row, j);
            }
        }

        /// u8 × i8 → i32 in one instruction (`vpdpbusd`), 64 codes per step.
        #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
        pub(super) unsafe fn dot_u8_vnni(query: &QueryQ8, codes: &[u8], out: &mut [i32]) {
            let stride = query.i8.len();
            let q = query.i8.as_ptr();
            for (r, o) in out.iter_mut().enumerate() {
                let x = codes.as_ptr().add(r * stride);
                let (mut a0, mut a1) = (_mm512_setzero_si512(), _mm512_setzero_si512());
                let mut j = 0;
                while j + 128 <= stride {
                    let x0 = _mm512_loadu_si512(x.add(j) as *const _);
                    let x1 = _mm512_loadu_si512(x.add(j + 64) as *const _);
                    a0 = _mm512_dpbusd_epi32(a0, x0, _mm512_loadu_si512(q.add(j) as *const _));
                    a1 = _mm512_dpbusd_epi32(a1, x1, _mm512_loadu_si512(q.add(j + 64) as *const _));
                    j += 128;
                }
                if j < stride {
                    let x0 = _mm512_loadu_si512(x.add(j) as *const _);
                    a0 = _mm512_dpbusd_epi32(a0, x0, _mm512_loadu_si512(q.add(j) as *const _));
                }
                *o = _mm512_reduce_add_epi32(_mm512_add_epi32(a0, a1));
            }
        }

        /// Codes widened to i16 and multiplied pairwise (`vpmaddwd`), 32 codes per step.
        #[target_feature(enable = "avx512f,avx512bw")]
        pub(super) unsafe fn dot_u8_avx512bw(query: &QueryQ8, codes: &[u8], out: &mut [i32]) {
            let stride = query.i16.len();
            let q = query.i16.as_ptr();
            for (r, o) in out.iter_mut().enumerate() {
                let x = codes.as_ptr().add(r * stride);
                let (mut a0, mut a1) = (_mm512_setzero_si512(), _mm512_setzero_si512());
                let mut j = 0;
                while j + 64 <= stride {
                    let x0 = _mm512_cvtepu8_epi16(_mm256_loadu_si256(x.add(j) as *const __m256i));
                    let x1 = _mm512_cvtepu8_epi16(_mm256_loadu_si256(x.add(j + 32) as *const __m256i));
                    a0 = _mm512_add_epi32(a0, _mm512_madd_epi16(x0, _mm512_loadu_si512(q.add(j) as *const _)));
                    a1 = _mm512_add_epi32(a1, _mm512_madd_epi16(x1, _mm512_loadu_si512(q.add(j + 32) as *const _)));
                    j += 64;
                }
                *o = _mm512_reduce_add_epi32(_mm512_add_epi32(a0, a1));
            }
        }

        #[target_feature(enable = "avx2")]
        pub(super) unsafe fn dot_u8_avx2(query: &QueryQ8, codes: &[u8], out: &mut [i32]) {
            let stride = query.i16.len();
            let q = query.i16.as_ptr();
            for (r, o) in out.iter_mut().enumerate() {
                let x = codes.as_ptr().add(r * stride);
                let (mut a0, mut a1) = (_mm256_setzero_si256(), _mm256_setzero_si256());
                let mut j = 0;
                while j + 32 <= stride {
                    let x0 = _mm256_cvtepu8_epi16(_mm_loadu_si128(x.add(j) as *const __m128i));
                    let x1 = _mm256_cvtepu8_epi16(_mm_loadu_si128(x.add(j + 16) as *const __m128i));
                    a0 = _mm256_add_epi32(a0, _mm256_madd_epi16(x0, _mm256_loadu_si256(q.add(j) as *const __m256i)));
                    a1 = _mm256_add_epi32(
                        a1,
                        _mm256_madd_epi16(x1, _mm256_loadu_si256(q.add(j + 16) as *const __m256i)),
                    );
                    j += 32;
                }
                let acc = _mm256_add_epi32(a0, a1);
                // [8] -> [4] -> [1]
                let s4 = _mm_add_epi32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256::<1>(acc));
                let s2 = _mm_add_epi32(s4, _mm_shuffle_epi32::<0b01_00_11_10>(s4));
                let s1 = _mm_add_epi32(s2, _mm_shuffle_epi32::<0b10_11_00_01>(s2));
                *o = _mm_cvtsi128_si32(s1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// xorshift64*: deterministic test data without a dependency.
    struct Rng(u64);
    impl Rng {
        fn next_u64(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        /// Uniform in [-1, 1).
        fn uniform(&mut self) -> f32 {
            (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        }
        /// Approximately normal (sum of uniforms).
        fn normal(&mut self) -> f32 {
            (0..4).map(|_| self.uniform()).sum::<f32>() * 0.866
        }
        fn unit(&mut self, dim: usize) -> Vec<f32> {
            normalised((0..dim).map(|_| self.normal()).collect())
        }
    }

    fn normalised(mut v: Vec<f32>) -> Vec<f32> {
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter_mut().for_each(|x| *x /= n);
        v
    }

    fn random_set(rng: &mut Rng, n: usize, dim: usize) -> VectorSet {
        let mut set = VectorSet::with_capacity(dim, n);
        for _ in 0..n {
            set.push(&rng.unit(dim));
        }
        set
    }

    /// The reference: every row's score, filtered, fully sorted (score desc, index asc), cut at k.
    fn brute_force(
        set: &VectorSet,
        q: &[f32],
        k: usize,
        min_score: Option<f32>,
        allow: Option<&(dyn Fn(usize) -> bool + Sync)>,
    ) -> Vec<Hit> {
        let mut all: Vec<Hit> = (0..set.len())
            .map(|i| Hit { index: i, score: set.score(i, q) })
            .filter(|h| !h.score.is_nan())
            .filter(|h| min_score.is_none_or(|m| h.score >= m))
            .filter(|h| allow.is_none_or(|f| f(h.index)))
            .collect();
        all.sort_by(|a, b| (b.score + 0.0).total_cmp(&(a.score + 0.0)).then(a.index.cmp(&b.index)));
        all.truncate(k);
        all
    }

    fn check_all_scans(
        set: &VectorSet,
        q: &[f32],
        k: usize,
        min_score: Option<f32>,
        allow: Option<&(dyn Fn(usize) -> bool + Sync)>,
        what: &str,
    ) {
        let want = brute_force(set, q, k, min_score, allow);
        for scan in [Scan::F16, Scan::Int8] {
            let got = set.top_k_with(scan, q, k, min_score, allow);
            if got != want {
                let at = got.iter().zip(&want).position(|(g, w)| g != w).unwrap_or(got.len().min(want.len()));
                panic!(
                    "{what}: {scan:?} scan differs from the brute-force reference (k={k}, min_score={min_score:?}): \
                     {} hits vs {}, first difference at rank {at}: {:?} vs {:?}",
                    got.len(),
                    want.len(),
                    got.get(at),
                    want.get(at)
                );
            }
        }
    }

    #[test]
    fn top_k_equals_brute_force_for_every_k_filter_and_scan() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        // 20_000 rows: several parallel chunks; 70 dims: tails in every kernel, int8 padding.
        for (n, dim) in [(20_000, 64), (9_000, 70), (300, 512)] {
            let set = random_set(&mut rng, n, dim);
            for _ in 0..3 {
                let q = rng.unit(dim);
                for k in [1, 10, 100, n - 1, n, n + 5] {
                    check_all_scans(&set, &q, k, None, None, &format!("n={n} dim={dim}"));
                }
                let even = |i: usize| i.is_multiple_of(2);
                let sparse = |i: usize| i % 97 == 3;
                for k in [1, 10, 1000] {
                    check_all_scans(&set, &q, k, Some(0.1), None, "min_score 0.1");
                    check_all_scans(&set, &q, k, None, Some(&even), "allow even");
                    check_all_scans(&set, &q, k, Some(0.05), Some(&sparse), "allow sparse + min_score");
                    check_all_scans(&set, &q, k, Some(2.0), None, "min_score above every score");
                }
            }
            // A query close to a row: one outstanding hit and a crowd far below it.
            let near = normalised(set.row(n / 3).iter().map(|x| x + 0.01 * rng.normal()).collect());
            check_all_scans(&set, &near, 10, None, None, "query near a row");
            assert_eq!(set.top_k(&near, 1, None, None)[0].index, n / 3);
        }
    }

    #[test]
    fn top_k_breaks_ties_by_lower_index() {
        let mut rng = Rng(7);
        let dim = 32;
        let (a, b) = (rng.unit(dim), rng.unit(dim));
        let mut set = VectorSet::new(dim);
        // 30_000 rows, spread over several chunks, of two vectors: massive ties on both scans.
        for i in 0..30_000 {
            set.push(if i % 3 == 0 { &a } else { &b });
        }
        for k in [1, 5, 50, 20_000] {
            check_all_scans(&set, &a, k, None, None, "two distinct rows repeated");
        }
        let top = set.top_k(&a, 4, None, None);
        assert_eq!(top.iter().map(|h| h.index).collect::<Vec<_>>(), vec![0, 3, 6, 9]);
        // The zero query scores every row 0: the first k rows.
        let zero = vec![0.0; dim];
        let top = set.top_k_with(Scan::Int8, &zero, 3, None, None);
        assert_eq!(top, vec![0, 1, 2].into_iter().map(|i| Hit { index: i, score: 0.0 }).collect::<Vec<_>>());
        check_all_scans(&set, &zero, 7, Some(0.0), None, "zero query");
    }

    #[test]
    fn top_k_of_empty_set_or_k_zero_is_empty() {
        let set = VectorSet::new(8);
        assert!(set.is_empty());
        assert_eq!(set.top_k(&[0.5; 8], 10, None, None), vec![]);
        assert_eq!(set.top_k_with(Scan::Int8, &[0.5; 8], 10, None, None), vec![]);
        let mut set = VectorSet::new(8);
        set.push(&[1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
        assert_eq!(set.top_k(&[0.5; 8], 0, None, None), vec![]);
        assert_eq!(set.top_k(&[0.5; 8], 3, None, None), vec![Hit { index: 0, score: 0.5 }]);
    }

    #[test]
    fn top_k_never_returns_nan_rows_and_agrees_across_scans() {
        let mut rng = Rng(11);
        let dim = 16;
        let mut set = random_set(&mut rng, 5000, dim);
        let mut bad = rng.unit(dim);
        bad[3] = f32::NAN;
        set.push(&bad);
        let q = rng.unit(dim);
        check_all_scans(&set, &q, 5000, None, None, "a NaN row");
        assert!(set.top_k(&q, 6000, None, None).iter().all(|h| h.index != 5000));
    }

    #[test]
    fn pushes_after_the_int8_copy_is_built_are_searched() {
        let mut rng = Rng(3);
        let dim = 96;
        let mut set = random_set(&mut rng, 1000, dim);
        set.prepare_int8();
        let target = rng.unit(dim);
        set.push(&target);
        set.push_f16_bytes(&to_f16_bytes(&rng.unit(dim))).unwrap();
        let hits = set.top_k_with(Scan::Int8, &target, 3, None, None);
        assert_eq!(hits[0].index, 1000);
        check_all_scans(&set, &target, 3, None, None, "after pushes");
    }

    #[test]
    fn scores_match_an_f64_dot_of_the_f16_rows() {
        let mut rng = Rng(5);
        for dim in [1, 7, 16, 33, 512, 768] {
            let set = random_set(&mut rng, 3, dim);
            let q = rng.unit(dim);
            for i in 0..3 {
                let want: f64 = set.row(i).iter().zip(&q).map(|(&x, &y)| x as f64 * y as f64).sum();
                let got = set.score(i, &q);
                assert!((got as f64 - want).abs() < 1e-5, "dim {dim} row {i}: {got} vs {want}");
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn simd_kernels_agree_with_the_portable_ones() {
        let mut rng = Rng(13);
        for dim in [5, 16, 64, 100, 512] {
            let rows: Vec<f16> = (0..7 * dim).map(|_| f16::from_f32(rng.normal() * 0.1)).collect();
            let q = rng.unit(dim);
            let mut want = vec![0.0; 7];
            kernels::DotF16::portable().run(&q, &rows, &mut want);
            for (name, kernel) in kernels::DotF16::all_available() {
                let mut got = vec![0.0; 7];
                kernel.run(&q, &rows, &mut got);
                for (g, w) in got.iter().zip(&want) {
                    assert!((g - w).abs() < 1e-5, "f16 kernel {name}, dim {dim}: {g} vs {w}");
                }
            }
            let stride = dim.div_ceil(Q8_ALIGN) * Q8_ALIGN;
            let qq = QueryQ8::new(&q, stride).unwrap();
            let codes: Vec<u8> = (0..7 * stride).map(|_| (rng.next_u64() % 255 + 1) as u8).collect();
            let kernels = kernels::DotU8::all_available();
            let mut want = vec![0; 7];
            kernels[0].1.run(&qq, &codes, &mut want);
            for (name, kernel) in kernels {
                let mut got = vec![0; 7];
                kernel.run(&qq, &codes, &mut got);
                assert_eq!(got, want, "int8 kernel {name}, dim {dim}");
            }
        }
    }

    #[test]
    fn int8_error_bound_holds_for_every_row() {
        let mut rng = Rng(17);
        let dim = 512;
        let mut set = random_set(&mut rng, 2000, dim);
        // Rows with one large outlier value: coarse quantisation, large residuals.
        for _ in 0..50 {
            let mut v = rng.unit(dim);
            v[rng.next_u64() as usize % dim] = 3.0;
            set.push(&normalised(v));
        }
        let q8 = set.q8();
        let slack = 2.0 * (dim as f32 + 32.0) * f32::EPSILON;
        for _ in 0..5 {
            let q = rng.unit(dim);
            let qq = QueryQ8::new(&q, q8.stride).unwrap();
            let mut dots = vec![0i32; set.len()];
            kernels::DotU8::detect().run(&qq, &q8.codes, &mut dots);
            for (i, &dot) in dots.iter().enumerate() {
                let m = q8.meta[i];
                let approx = (dot - qq.offset) as f32 * (m.scale * qq.scale);
                let bound = qq.err * m.norm + m.err * qq.norm_hat + slack * m.norm * qq.norm;
                let exact = set.score(i, &q);
                assert!((exact - approx).abs() <= bound, "row {i}: exact {exact}, int8 {approx}, bound {bound}");
            }
        }
    }

    #[test]
    fn f16_bytes_round_trip() {
        let mut rng = Rng(19);
        let v = rng.unit(40);
        let bytes = to_f16_bytes(&v);
        assert_eq!(bytes.len(), 80);
        let mut a = VectorSet::new(40);
        a.push_f16_bytes(&bytes).unwrap();
        let mut b = VectorSet::new(40);
        b.push(&v);
        assert_eq!(a.row(0), b.row(0));
        assert_eq!(to_f16_bytes(&a.row(0)), bytes);
        for (x, y) in a.row(0).iter().zip(&v) {
            assert!((x - y).abs() <= y.abs() * 1e-3 + 1e-7, "{x} vs {y}");
        }
        // Little-endian: 1.0 is 0x3C00.
        assert_eq!(to_f16_bytes(&[1.0]), vec![0x00, 0x3C]);
        let err = a.push_f16_bytes(&bytes[..78]).unwrap_err().to_string();
        assert!(err.contains("78 bytes, expected 80"), "{err}");
        assert_eq!(a.len(), 1);
    }

    #[test]
    #[should_panic(expected = "has dimension 4")]
    fn push_of_wrong_dimension_panics() {
        VectorSet::new(4).push(&[1.0, 0.0, 0.0]);
    }

    /// Reference grouping: every pair scored with the f64 dot of the stored rows, naive
    /// union-find, groups of two or more ordered by first member.
    fn naive_groups(set: &VectorSet, threshold: f32) -> Vec<Vec<usize>> {
        let n = set.len();
        let rows: Vec<Vec<f32>> = (0..n).map(|i| set.row(i)).collect();
        let mut label: Vec<usize> = (0..n).collect();
        for i in 0..n {
            for j in i + 1..n {
                let s: f64 = rows[i].iter().zip(&rows[j]).map(|(&a, &b)| a as f64 * b as f64).sum();
                if s >= threshold as f64 {
                    let (from, to) = (label[j].max(label[i]), label[j].min(label[i]));
                    label.iter_mut().filter(|l| **l == from).for_each(|l| *l = to);
                }
            }
        }
        let mut groups: Vec<Vec<usize>> = vec![Vec::new(); n];
        for i in 0..n {
            groups[label[i]].push(i);
        }
        groups.retain(|g| g.len() >= 2);
        groups
    }

    #[test]
    fn near_duplicate_groups_find_planted_groups_and_match_naive_reference() {
        let mut rng = Rng(23);
        let dim = 64;
        let n = 1300; // three blocks: diagonal and off-diagonal block pairs, a partial last block
        let mut rows: Vec<Vec<f32>> = (0..n).map(|_| rng.unit(dim)).collect();
        let mut planted: Vec<Vec<usize>> = Vec::new();
        // Pairs and triples of near-copies (cosine ~0.999), spread across blocks.
        for g in 0..20 {
            let members: Vec<usize> = (0..2 + g % 2).map(|m| (g * 61 + m * 523) % n).collect();
            let base = rows[members[0]].clone();
            for &m in &members[1..] {
                rows[m] = normalised(base.iter().map(|x| x + 0.004 * rng.normal()).collect());
            }
            planted.push(members);
        }
        // A chain a–b–c on one great circle, 0.25 rad apart: a·b = b·c = cos 0.25 = 0.969 pass
        // the threshold, a·c = cos 0.5 = 0.878 does not. Only transitivity joins a and c.
        let a = rng.unit(dim);
        let d = rng.unit(dim);
        let ad: f32 = a.iter().zip(&d).map(|(x, y)| x * y).sum();
        let d = normalised(d.iter().zip(&a).map(|(y, x)| y - ad * x).collect()); // ⟂ a
        let at = |t: f32| normalised(a.iter().zip(&d).map(|(x, y)| t.cos() * x + t.sin() * y).collect());
        let chain = [1100, 40, 700];
        rows[chain[0]] = at(0.0);
        rows[chain[1]] = at(0.25);
        rows[chain[2]] = at(0.5);
        let mut set = VectorSet::new(dim);
        for r in &rows {
            set.push(r);
        }
        let threshold = 0.95;
        let cos = |i: usize, j: usize| set.score(i, &set.row(j));
        assert!(cos(chain[0], chain[1]) >= threshold && cos(chain[1], chain[2]) >= threshold);
        assert!(cos(chain[0], chain[2]) < threshold - 0.01, "chain ends must not link directly");

        let groups = near_duplicate_groups(&set, threshold);
        assert_eq!(groups, naive_groups(&set, threshold));
        for p in &planted {
            let mut p = p.clone();
            p.sort();
            assert!(groups.contains(&p), "planted group {p:?} not found in {groups:?}");
        }
        let mut c = chain.to_vec();
        c.sort();
        assert!(groups.contains(&c), "the chain {c:?} must be one group: {groups:?}");
        // Nothing else: every other pair of random 64-d vectors is far below 0.95.
        assert_eq!(groups.len(), planted.len() + 1);
        for g in &groups {
            assert!(g.windows(2).all(|w| w[0] < w[1]));
        }
        assert!(groups.windows(2).all(|w| w[0][0] < w[1][0]));

        assert_eq!(near_duplicate_groups(&set, 1.5), Vec::<Vec<usize>>::new());
        // Threshold -1: everything links.
        assert_eq!(near_duplicate_groups(&set, -1.0), vec![(0..n).collect::<Vec<_>>()]);
    }

    #[test]
    fn near_duplicate_groups_of_identical_rows_is_one_group() {
        let mut set = VectorSet::new(8);
        assert!(near_duplicate_groups(&set, 0.9).is_empty());
        let v = normalised(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]);
        set.push(&v);
        assert!(near_duplicate_groups(&set, 0.9).is_empty());
        for _ in 0..1100 {
            set.push(&v);
        }
        assert_eq!(near_duplicate_groups(&set, 0.99), vec![(0..1101).collect::<Vec<_>>()]);
    }
}
