//! Near-duplicate groups: every pair of rows compared by blocked matrix products, linked pairs
//! joined by union-find.

use super::*;
use crate::nn::gemm::{matmul, MatMut, MatRef, Parallelism};

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
            matmul(
                MatMut::row_major(scores, m, p),
                MatRef::row_major(a, m, dim),
                MatRef::row_major(b, p, dim).t(),
                1.0,
                false,
                Parallelism::None,
            );
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
