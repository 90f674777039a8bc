//! Near-duplicate groups: every pair of rows compared by blocked matrix products, linked pairs
//! joined by union-find.

use super::*;
use crate::nn::gemm::{matmul, MatMut, MatRef, Parallelism};

/// Groups of >= 2 rows whose pairwise links (cosine >= threshold) connect them (union-find over
/// all pairs; blocked matrix products so 50k rows stays reasonable), each group sorted, groups
/// ordered by their first member.
///
/// Every pair is compared, one matrix product per pair of row blocks. A link is a score
/// `>= threshold` as that product computes it; its summation order differs from [`VectorSet::score`]'s, so a pair
/// within ~1e-6 of the threshold may be judged differently there.
/// Cost: n²/2 · dim multiply-adds (50k × 512-d on 2 threads: `BENCHMARKS.md`, `bench_search.py`);
/// memory: a few MB of blocks per thread beyond the set.
pub fn near_duplicate_groups(set: &VectorSet, threshold: f32) -> Vec<Vec<usize>> {
    let n = set.len();
    let links = Mutex::new(UnionFind::new(n));
    for_each_block_pair(set, |ra, rb, scores| {
        let (m, p) = (ra.len(), rb.len());
        let same = ra == rb;
        // Local union-find over the block pair's rows (a: 0..m, b: m..m+p) keeps only the links
        // that join two components: at most m+p−1 per block pair reach the shared one.
        let mut local = UnionFind::new(m + p);
        let mut edges = Vec::new();
        for i in 0..m {
            let row = &scores[i * p..(i + 1) * p];
            let from = if same { i + 1 } else { 0 };
            for (j, &s) in row.iter().enumerate().skip(from) {
                if s >= threshold {
                    let lj = if same { j } else { m + j };
                    if local.union(i, lj) {
                        edges.push((ra.start + i, rb.start + j));
                    }
                }
            }
        }
        if !edges.is_empty() {
            let mut links = links.lock().unwrap_or_else(|e| e.into_inner());
            for &(i, j) in &edges {
                links.union(i, j);
            }
        }
    });
    let mut links = links.into_inner().unwrap_or_else(|e| e.into_inner());
    groups_of(&mut links)
}

/// Each row's highest cosine similarity to any other row (its nearest neighbour's score;
/// `-inf` for a set of one row): the distribution `vista dupes --stats` draws, where a
/// collection's near-duplicates separate from its distinct images. Same products and cost as
/// [`near_duplicate_groups`].
pub fn nearest_neighbour_similarities(set: &VectorSet) -> Vec<f32> {
    let best = Mutex::new(vec![f32::NEG_INFINITY; set.len()]);
    for_each_block_pair(set, |ra, rb, scores| {
        let (m, p) = (ra.len(), rb.len());
        let same = ra == rb;
        let (mut row_best, mut col_best) = (vec![f32::NEG_INFINITY; m], vec![f32::NEG_INFINITY; p]);
        for i in 0..m {
            for (j, &s) in scores[i * p..(i + 1) * p].iter().enumerate() {
                if same && i == j {
                    continue;
                }
                row_best[i] = row_best[i].max(s);
                col_best[j] = col_best[j].max(s);
            }
        }
        let mut best = best.lock().unwrap_or_else(|e| e.into_inner());
        for (i, s) in ra.zip(row_best) {
            best[i] = best[i].max(s);
        }
        for (j, s) in rb.zip(col_best) {
            best[j] = best[j].max(s);
        }
    });
    best.into_inner().unwrap_or_else(|e| e.into_inner())
}

/// Calls `visit(rows_a, rows_b, scores)` for every pair of row blocks of [`DUPES_BLOCK`] rows in
/// the upper triangle (a block with itself included), `scores` the `[|a|, |b|]` row-major
/// cosine matrix. The rows are widened to f32 one block at a time and each block pair is one
/// `gemm` on a rayon thread.
fn for_each_block_pair(set: &VectorSet, visit: impl Fn(Range<usize>, Range<usize>, &[f32]) + Sync) {
    let (n, dim) = (set.len(), set.dim);
    if n < 2 || dim == 0 {
        return;
    }
    let blocks = n.div_ceil(DUPES_BLOCK);
    let pairs: Vec<(usize, usize)> = (0..blocks).flat_map(|a| (a..blocks).map(move |b| (a, b))).collect();
    let widen = |block: usize, out: &mut Vec<f32>| {
        let rows = block * DUPES_BLOCK..((block + 1) * DUPES_BLOCK).min(n);
        out.resize(rows.len() * dim, 0.0);
        set.rows[rows.start * dim..rows.end * dim].convert_to_f32_slice(out);
        rows
    };
    pairs.par_iter().for_each_init(
        || (Vec::new(), Vec::new(), Vec::new()),
        |(a, b, scores), &(ba, bb)| {
            let ra = widen(ba, a);
            let rb = widen(bb, b);
            let (m, p) = (ra.len(), rb.len());
            scores.resize(m * p, 0.0f32);
            // scores[i][j] = Σ_d a[i][d] · b[j][d]   ([m, dim] x [dim, p])
            matmul(
                MatMut::row_major(scores, m, p),
                MatRef::row_major(a, m, dim),
                MatRef::row_major(b, p, dim).t(),
                1.0,
                false,
                Parallelism::None,
            );
            visit(ra, rb, scores);
        },
    );
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
