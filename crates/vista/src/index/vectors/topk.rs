//! Top-k selection: bounded heaps that keep the best hits of a scan (higher score first, equal
//! scores by lower row index), and one search over a [`VectorSet`]'s rows.

use super::int8::QueryQ8;
use super::*;

/// A hit ordered by rank: `a < b` when `a` ranks before `b` (higher score, then lower index), so a
/// max-heap of these has the worst kept hit on top.
#[derive(Clone, Copy)]
pub(super) struct Ranked(Hit);

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
pub(super) struct TopK {
    k: usize,
    heap: BinaryHeap<Ranked>,
}

impl TopK {
    pub(super) fn new(k: usize) -> Self {
        TopK { k, heap: BinaryHeap::with_capacity(k.min(1024) + 1) }
    }

    /// Offers a hit; kept if it ranks before the worst kept one (or there is room).
    #[inline]
    pub(super) fn offer(&mut self, hit: Hit) {
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
    pub(super) fn bar(&self) -> Option<f32> {
        (self.heap.len() == self.k).then(|| self.heap.peek().map_or(f32::NEG_INFINITY, |w| w.0.score))
    }

    pub(super) fn merge(mut self, other: TopK) -> TopK {
        for r in other.heap {
            self.offer(r.0);
        }
        self
    }

    pub(super) fn into_sorted(self) -> Vec<Hit> {
        self.heap.into_sorted_vec().into_iter().map(|r| r.0).collect()
    }
}

/// The `k` largest of a stream of f32 (the lower bounds of the int8 scan).
pub(super) struct KLargest {
    pub(super) k: usize,
    /// Min-heap through `Reverse`, by total order.
    pub(super) heap: BinaryHeap<std::cmp::Reverse<TotalF32>>,
}

#[derive(Clone, Copy, PartialEq)]
pub(super) struct TotalF32(f32);
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
    pub(super) fn new(k: usize) -> Self {
        KLargest { k, heap: BinaryHeap::with_capacity(k.min(1024) + 1) }
    }

    #[inline]
    pub(super) fn offer(&mut self, x: f32) {
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
    pub(super) fn kth(&self) -> Option<f32> {
        (self.heap.len() == self.k).then(|| self.heap.peek().map_or(f32::NEG_INFINITY, |m| m.0 .0))
    }
}

/// One top-k search: the query, its parameters and the set.
pub(super) struct Search<'a> {
    pub(super) set: &'a VectorSet,
    pub(super) query: &'a [f32],
    pub(super) k: usize,
    /// `min_score`, or -inf.
    pub(super) floor: f32,
    pub(super) allow: Option<&'a (dyn Fn(usize) -> bool + Sync)>,
}

impl Search<'_> {
    pub(super) fn allowed(&self, i: usize) -> bool {
        self.allow.is_none_or(|f| f(i))
    }

    /// The f16 scan: every row's exact score, a top-k heap per chunk, chunks merged.
    pub(super) fn f16(&self) -> Vec<Hit> {
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
    pub(super) fn int8(&self, qq: &QueryQ8) -> Vec<Hit> {
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
