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

mod dupes;
mod int8;
mod kernels;
mod topk;

pub use dupes::{near_duplicate_groups, nearest_neighbour_similarities};
use int8::Quantized;
use int8::QueryQ8;
use topk::Search;

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
    /// The row's index in the set.
    pub index: usize,
    /// Dot product of the row with the query.
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

    /// Dimension of each row.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the set has no rows.
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
    fn nearest_neighbour_similarities_match_the_naive_maximum() {
        let mut rng = Rng(5);
        let dim = 16;
        let mut set = VectorSet::new(dim);
        assert!(nearest_neighbour_similarities(&set).is_empty());
        set.push(&rng.unit(dim));
        assert_eq!(nearest_neighbour_similarities(&set), vec![f32::NEG_INFINITY]);
        for _ in 0..1200 {
            set.push(&rng.unit(dim)); // three blocks
        }
        let nn = nearest_neighbour_similarities(&set);
        for i in (0..set.len()).step_by(97) {
            let want = (0..set.len()).filter(|&j| j != i).map(|j| set.score(i, &set.row(j))).fold(f32::MIN, f32::max);
            assert!((nn[i] - want).abs() < 1e-5, "row {i}: {} vs {want}", nn[i]);
        }
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
