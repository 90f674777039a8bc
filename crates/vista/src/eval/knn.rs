//! Weighted k-nearest-neighbour classification of frozen features, as DINO's `eval_knn.py`
//! (`knn_classifier`) defines it, the standard way to score self-supervised features.
//!
//! For each test feature (rows L2-normalised by the caller, see [`normalize_rows`]): the cosine
//! similarity to every train feature (`test · trainᵀ`), the `k` most similar train features, a
//! vote `exp(similarity / T)` for each neighbour's class, summed per class; classes ranked by
//! their summed vote, top-1 and top-5 accuracy in percent. Several `k` are scored from one
//! similarity pass and one top-k selection for the largest.
//!
//! What is the reference's and what differs only where values tie exactly:
//!
//! * **Chunking.** The reference walks the test set in 100 chunks of `n_test / 100` rows (it
//!   fails with fewer than 100 test images). Each row's result depends on that row alone, so the
//!   chunking changes nothing; here it is sized for memory (the similarity block ≤ 64 MiB).
//! * **Similarity.** An f32 matrix product (the `gemm` crate) as `torch.mm`; the summation order
//!   differs from MKL's, so similarities agree to a few ulp, not bit for bit.
//! * **Neighbour ties.** `torch.topk` on the CPU keeps among equal similarities whichever its
//!   `std::partial_sort` / `std::nth_element` leaves — not the lowest indices: the top 5 of a row
//!   of 1000 zeros with ones at 7 and 997 come back as 7, 997, 3, 1, 4 (torch 2.15) — and on the
//!   GPU whatever its radix select leaves. Here neighbours are ordered by similarity, descending,
//!   then train index, ascending: among equal similarities at the k-th place the lower index
//!   wins. Only exactly equal similarities (duplicate train features) of different classes
//!   straddling the k-th place can change a vote; the order *within* the top k never does.
//! * **Votes.** `exp(sim / T)` in f32 (`T` rounded to f32, as torch divides a float tensor by a
//!   Python scalar) with the platform's `expf`; torch's vectorised CPU `exp` is within an ulp of
//!   it. Votes are summed per class in neighbour order; torch reduces the one-hot `[B, k, C]`
//!   product over `k` in its own (cascaded, SIMD-width dependent) order. Sums agree to a few ulp:
//!   two classes' scores only swap if they are that close (the golden test's agree within 1e-5).
//! * **Class ties.** Every class without a vote scores exactly 0, so with fewer than 5 voted
//!   classes the top-5 depends on how the sort orders equal scores. `probs.sort(1, True)` on the
//!   CPU is libstdc++'s `std::sort` (not stable): an insertion sort up to 16 classes, which keeps
//!   equal scores in class order, and an introsort beyond. [`ClassTies::LowerIndexFirst`] (the
//!   default) ranks equal scores by class index, the CPU reference's outcome for ≤ 16 classes
//!   (Fashion-MNIST, CIFAR-10); [`ClassTies::TorchCpu`] replays libstdc++'s introsort step by
//!   step and gives torch's CPU order for any class count (ImageNet's 1000).
//! * **DINO's class count.** `eval_knn.py`'s `__main__` calls `knn_classifier` without
//!   `num_classes`, so with its default of 1000 whatever the dataset: on a 10-class set, 990
//!   always-zero classes join the sort and the introsort's tie order changes the top-5 (on the
//!   golden's 203 test samples, k = 10: 94.58 % instead of 95.57 %). To reproduce the numbers the
//!   script prints, pass `num_classes = 1000` with [`ClassTies::TorchCpu`]; the top-1 is the same
//!   either way.
//! * **Top-5.** Correct if the label is among the first `min(5, k)` ranked classes, as the
//!   reference's `predictions.narrow(1, 0, min(5, k))`; also capped at the class count (the
//!   reference errors below 5 classes).
//!
//! 60,000 × 10,000 features of 384 dimensions take one 2.3e11-flop product and one pass of
//! top-k selection over the 6e8 similarities: about 3 s on two cores.

use crate::nn::gemm::{matmul, MatMut, MatRef, Parallelism};
use rayon::prelude::*;

use crate::{Error, Result};

/// The `k` values DINO's `eval_knn.py` scores by default (`--nb_knn 10 20 100 200`).
pub const DEFAULT_KS: [usize; 4] = [10, 20, 100, 200];

/// DINO's default vote temperature (`--temperature 0.07`).
pub const DEFAULT_TEMPERATURE: f32 = 0.07;

/// Largest similarity block held at once, in f32 values (64 MiB).
const BLOCK_VALUES: usize = 16 << 20;

/// L2-normalises each `dim`-wide row of `data` in place, as `torch.nn.functional.normalize(x,
/// dim=1, p=2)`: `x / max(‖x‖, 1e-12)` (the norm accumulated in f64, rounded to f32).
pub fn normalize_rows(data: &mut [f32], dim: usize) {
    if dim == 0 {
        return;
    }
    data.par_chunks_mut(dim).for_each(|row| {
        let norm = row.iter().map(|&v| v as f64 * v as f64).sum::<f64>().sqrt() as f32;
        let denom = norm.max(1e-12);
        for v in row {
            *v /= denom;
        }
    });
}

/// How classes with exactly equal scores (typically the zero score of every class no neighbour
/// voted for) are ranked. See the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClassTies {
    /// Lower class index first (a stable sort): torch's CPU order for up to 16 classes.
    #[default]
    LowerIndexFirst,
    /// Exactly torch's CPU `sort(descending=True)` order: libstdc++'s introsort replayed.
    TorchCpu,
}

/// Settings of [`knn_predict`] / [`knn_classifier`].
#[derive(Debug, Clone, PartialEq)]
pub struct KnnOptions {
    /// Neighbour counts to score; each 1 ≤ k ≤ the number of train features.
    pub ks: Vec<usize>,
    /// Vote temperature `T`: a neighbour at similarity `s` votes `exp(s / T)`.
    pub temperature: f32,
    /// How equal class scores are ranked (matters for the top-5).
    pub class_ties: ClassTies,
    /// Test rows per similarity block; `None` sizes blocks to ≤ 64 MiB.
    pub chunk_rows: Option<usize>,
}

impl Default for KnnOptions {
    fn default() -> Self {
        Self {
            ks: DEFAULT_KS.to_vec(),
            temperature: DEFAULT_TEMPERATURE,
            class_ties: ClassTies::default(),
            chunk_rows: None,
        }
    }
}

/// The class rankings for one `k`.
#[derive(Debug, Clone, PartialEq)]
pub struct KnnPredictions {
    /// The neighbour count these rankings used.
    pub k: usize,
    /// Per test sample, the best `min(5, num_classes)` classes, best first (the first columns of
    /// the reference's `predictions`).
    pub rankings: Vec<Vec<usize>>,
}

impl KnnPredictions {
    /// Top-1 and top-5 accuracy in percent, as the reference counts them: top-5 looks at the
    /// first `min(5, k)` ranked classes.
    pub fn accuracy(&self, labels: &[usize]) -> Result<(f64, f64)> {
        if labels.len() != self.rankings.len() {
            return Err(Error::arg(
                "test_labels",
                format!("{} labels for {} test samples", labels.len(), self.rankings.len()),
            ));
        }
        if labels.is_empty() {
            return Err(Error::arg("test_labels", "no test samples"));
        }
        let top5_width = self.k.min(5);
        let (mut top1, mut top5) = (0usize, 0usize);
        for (ranking, &label) in self.rankings.iter().zip(labels) {
            top1 += usize::from(ranking.first() == Some(&label));
            top5 += usize::from(ranking.iter().take(top5_width).any(|&c| c == label));
        }
        let total = labels.len() as f64;
        Ok((top1 as f64 * 100.0 / total, top5 as f64 * 100.0 / total))
    }
}

/// The result of [`knn_classifier`] for one `k`.
#[derive(Debug, Clone, PartialEq)]
pub struct KnnEval {
    /// The neighbour count.
    pub k: usize,
    /// Top-1 accuracy, percent.
    pub top1: f64,
    /// Top-5 accuracy, percent (first `min(5, k)` classes).
    pub top5: f64,
    /// The per-sample rankings the accuracies were counted from.
    pub predictions: KnnPredictions,
}

/// DINO's `knn_classifier(train_features, train_labels, test_features, test_labels, k, T,
/// num_classes)` for every `k` of `options.ks` (in that order). Features are row-major f32,
/// `dim` wide, normalised by the caller ([`normalize_rows`]); labels are class indices below
/// `num_classes`.
pub fn knn_classifier(
    train: &[f32],
    train_labels: &[usize],
    test: &[f32],
    test_labels: &[usize],
    dim: usize,
    num_classes: usize,
    options: &KnnOptions,
) -> Result<Vec<KnnEval>> {
    if dim > 0 && test.len() / dim != test_labels.len() {
        return Err(Error::arg(
            "test_labels",
            format!("{} labels for {} test features", test_labels.len(), test.len() / dim),
        ));
    }
    check_labels("test_labels", test_labels, num_classes)?;
    knn_predict(train, train_labels, test, dim, num_classes, options)?
        .into_iter()
        .map(|predictions| {
            let (top1, top5) = predictions.accuracy(test_labels)?;
            Ok(KnnEval { k: predictions.k, top1, top5, predictions })
        })
        .collect()
}

/// The class rankings of [`knn_classifier`] without accuracies (no test labels needed).
pub fn knn_predict(
    train: &[f32],
    train_labels: &[usize],
    test: &[f32],
    dim: usize,
    num_classes: usize,
    options: &KnnOptions,
) -> Result<Vec<KnnPredictions>> {
    let (n_train, n_test) = check_features(train, test, dim)?;
    if train_labels.len() != n_train {
        return Err(Error::arg("train_labels", format!("{} labels for {n_train} train features", train_labels.len())));
    }
    if num_classes == 0 {
        return Err(Error::arg("num_classes", "must be positive"));
    }
    check_labels("train_labels", train_labels, num_classes)?;
    if options.ks.is_empty() {
        return Err(Error::arg("ks", "no k given"));
    }
    if let Some(&k) = options.ks.iter().find(|&&k| k == 0 || k > n_train) {
        return Err(Error::arg("ks", format!("k = {k} outside 1..={n_train} (the number of train features)")));
    }
    let t = options.temperature;
    if !(t.is_finite() && t > 0.0) {
        return Err(Error::arg("temperature", format!("{t} is not a positive number")));
    }
    let k_max = *options.ks.iter().max().expect("non-empty");
    let width = num_classes.min(5);
    let per_row = scan(train, test, dim, k_max, options.chunk_rows, |neighbours| {
        let mut scores = vec![0f32; num_classes];
        let mut scratch = Vec::new();
        options
            .ks
            .iter()
            .map(|&k| {
                scores.fill(0.0);
                add_votes(&neighbours[..k], train_labels, t, &mut scores);
                rank(&scores, width, options.class_ties, &mut scratch)
            })
            .collect::<Vec<_>>()
    });
    let mut rankings: Vec<Vec<Vec<usize>>> = vec![Vec::with_capacity(n_test); options.ks.len()];
    for row in per_row {
        for (out, r) in rankings.iter_mut().zip(row) {
            out.push(r);
        }
    }
    Ok(options.ks.iter().zip(rankings).map(|(&k, rankings)| KnnPredictions { k, rankings }).collect())
}

/// The `k` train rows most similar to each test row: the reference's `similarity.topk(k,
/// largest=True, sorted=True)` on `test · trainᵀ`.
#[derive(Debug, Clone, PartialEq)]
pub struct Neighbours {
    /// Neighbours per test row.
    pub k: usize,
    /// `[n_test, k]` similarities, descending along each row (the reference's `distances`).
    pub similarities: Vec<f32>,
    /// `[n_test, k]` train indices; among equal similarities the lower index comes first.
    pub indices: Vec<usize>,
}

/// The `k` nearest train features of every test feature by dot product (cosine for unit rows),
/// the first half of [`knn_predict`]; `chunk_rows` as [`KnnOptions::chunk_rows`].
pub fn nearest_neighbours(
    train: &[f32],
    test: &[f32],
    dim: usize,
    k: usize,
    chunk_rows: Option<usize>,
) -> Result<Neighbours> {
    let (n_train, n_test) = check_features(train, test, dim)?;
    if k == 0 || k > n_train {
        return Err(Error::arg("k", format!("k = {k} outside 1..={n_train} (the number of train features)")));
    }
    let rows = scan(train, test, dim, k, chunk_rows, |n| n.to_vec());
    let mut out =
        Neighbours { k, similarities: Vec::with_capacity(n_test * k), indices: Vec::with_capacity(n_test * k) };
    for row in rows {
        out.similarities.extend(row.iter().map(|p| p.0));
        out.indices.extend(row.iter().map(|p| p.1 as usize));
    }
    Ok(out)
}

/// The reference's `probs` row for one test sample: each neighbour (similarity `s`, class
/// `label`) adds `exp(s / T)` to its class, in neighbour order; classes without a neighbour
/// score 0.
pub fn class_votes(similarities: &[f32], labels: &[usize], temperature: f32, num_classes: usize) -> Result<Vec<f32>> {
    if similarities.len() != labels.len() {
        return Err(Error::arg("labels", format!("{} labels for {} neighbours", labels.len(), similarities.len())));
    }
    check_labels("labels", labels, num_classes)?;
    let mut scores = vec![0f32; num_classes];
    for (&s, &c) in similarities.iter().zip(labels) {
        scores[c] += (s / temperature).exp();
    }
    Ok(scores)
}

fn add_votes(neighbours: &[(f32, u32)], train_labels: &[usize], t: f32, scores: &mut [f32]) {
    for &(s, j) in neighbours {
        scores[train_labels[j as usize]] += (s / t).exp();
    }
}

/// Checks both feature matrices; returns their row counts.
fn check_features(train: &[f32], test: &[f32], dim: usize) -> Result<(usize, usize)> {
    if dim == 0 {
        return Err(Error::arg("dim", "must be positive"));
    }
    for (name, data) in [("train", train), ("test", test)] {
        if !data.len().is_multiple_of(dim) {
            return Err(Error::arg(name, format!("{} values are not rows of {dim}", data.len())));
        }
        if let Some(i) = data.iter().position(|v| !v.is_finite()) {
            return Err(Error::arg(name, format!("row {} holds a non-finite value ({})", i / dim, data[i])));
        }
    }
    let n_train = train.len() / dim;
    if n_train == 0 {
        return Err(Error::arg("train", "no train features"));
    }
    if n_train > u32::MAX as usize {
        return Err(Error::arg("train", format!("{n_train} train features, over 2^32 - 1")));
    }
    Ok((n_train, test.len() / dim))
}

/// Runs `per_row` on each test row's `k` nearest train rows (similarity, index), in test order:
/// similarities a block of test rows at a time (≤ 64 MiB unless `chunk_rows` says otherwise),
/// rows of a block in parallel.
fn scan<R: Send>(
    train: &[f32],
    test: &[f32],
    dim: usize,
    k: usize,
    chunk_rows: Option<usize>,
    per_row: impl Fn(&[(f32, u32)]) -> R + Sync,
) -> Vec<R> {
    let (n_train, n_test) = (train.len() / dim, test.len() / dim);
    let chunk = chunk_rows.unwrap_or(BLOCK_VALUES / n_train).clamp(1, n_test.max(1));
    let mut out = Vec::with_capacity(n_test);
    let mut sim = vec![0f32; chunk * n_train];
    for start in (0..n_test).step_by(chunk) {
        let rows = chunk.min(n_test - start);
        let block = &mut sim[..rows * n_train];
        similarities(&test[start * dim..(start + rows) * dim], train, dim, rows, n_train, block);
        let results: Vec<R> = block
            .par_chunks(n_train)
            .map_init(
                || Vec::with_capacity(k),
                |neighbours, row| {
                    top_k(row, k, neighbours);
                    per_row(neighbours)
                },
            )
            .collect();
        out.extend(results);
    }
    out
}

fn check_labels(name: &str, labels: &[usize], num_classes: usize) -> Result<()> {
    if let Some(i) = labels.iter().position(|&l| l >= num_classes) {
        return Err(Error::arg(name, format!("label {} at {i} is not below num_classes = {num_classes}", labels[i])));
    }
    Ok(())
}

/// `out[r, j] = test[r] · train[j]` for a block of `rows` test rows.
fn similarities(test: &[f32], train: &[f32], dim: usize, rows: usize, n_train: usize, out: &mut [f32]) {
    let threads = rayon::current_num_threads();
    let parallelism = if threads > 1 { Parallelism::Rayon(threads) } else { Parallelism::None };
    // SAFETY: `test` is rows × dim row-major, `train` n_train × dim row-major (read as its
    // transpose, dim × n_train, with column stride dim), `out` rows × n_train row-major; the
    // lengths are checked by the caller.
    matmul(
        MatMut::row_major(out, rows, n_train),
        MatRef::row_major(test, rows, dim),
        MatRef::row_major(train, n_train, dim).t(),
        1.0,
        false,
        parallelism,
    )
}

/// A candidate neighbour ordered by "worse": lower similarity, then higher index. The heap's
/// maximum is the worst kept.
#[derive(Clone, Copy)]
struct Worse(f32, u32);

impl PartialEq for Worse {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}
impl Eq for Worse {}
impl PartialOrd for Worse {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Worse {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other.0.total_cmp(&self.0).then(self.1.cmp(&other.1))
    }
}

/// The `k` largest of `row` as (similarity, index), by similarity descending then index
/// ascending.
fn top_k(row: &[f32], k: usize, out: &mut Vec<(f32, u32)>) {
    let mut heap: std::collections::BinaryHeap<Worse> =
        row[..k].iter().enumerate().map(|(j, &s)| Worse(s, j as u32)).collect();
    let mut threshold = heap.peek().expect("k ≥ 1").0;
    for (j, &s) in row.iter().enumerate().skip(k) {
        // Scanning in index order, an equal similarity comes later and loses: strictly greater.
        if s > threshold {
            *heap.peek_mut().expect("k ≥ 1") = Worse(s, j as u32);
            threshold = heap.peek().expect("k ≥ 1").0;
        }
    }
    out.clear();
    out.extend(heap.into_sorted_vec().into_iter().map(|w| (w.0, w.1)));
}

/// The best `width` classes of `scores` (a class's summed vote), best first, equal scores
/// ordered by `ties`: the first `width` columns of the reference's `probs.sort(1, True)` indices.
pub fn rank_classes(scores: &[f32], width: usize, ties: ClassTies) -> Vec<usize> {
    rank(scores, width.min(scores.len()), ties, &mut Vec::new())
}

fn rank(scores: &[f32], width: usize, ties: ClassTies, scratch: &mut Vec<(f32, u32)>) -> Vec<usize> {
    if width == 0 {
        return Vec::new();
    }
    match ties {
        ClassTies::LowerIndexFirst => {
            let mut best: Vec<(f32, usize)> = Vec::with_capacity(width + 1);
            for (c, &s) in scores.iter().enumerate() {
                if best.len() == width && s <= best[width - 1].0 {
                    continue;
                }
                let at = best.iter().position(|&(b, _)| s > b).unwrap_or(best.len());
                best.insert(at, (s, c));
                best.truncate(width);
            }
            best.into_iter().map(|(_, c)| c).collect()
        }
        ClassTies::TorchCpu => {
            scratch.clear();
            scratch.extend(scores.iter().enumerate().map(|(c, &s)| (s, c as u32)));
            libstdcxx::sort(scratch, |a, b| a.0 > b.0);
            scratch[..width].iter().map(|&(_, c)| c as usize).collect()
        }
    }
}

/// libstdc++'s `std::sort` (GCC's `bits/stl_algo.h`: introsort, median-of-three pivot,
/// unguarded partition, heapsort past `2·⌊log₂ n⌋` levels, final insertion sort with a
/// threshold of 16), reproduced step for step so that elements the comparator calls equal end
/// up where torch's CPU sort puts them. `less(a, b)`: `a` goes before `b`.
mod libstdcxx {
    const THRESHOLD: usize = 16;

    /// Sorts `v` exactly as `std::sort(v.begin(), v.end(), less)` does.
    pub fn sort<T: Copy>(v: &mut [T], less: impl Fn(&T, &T) -> bool + Copy) {
        let n = v.len();
        if n < 2 {
            return;
        }
        let depth = 2 * (usize::BITS - 1 - n.leading_zeros()) as usize;
        introsort_loop(v, 0, n, depth, less);
        if n > THRESHOLD {
            insertion_sort(v, 0, THRESHOLD, less);
            for i in THRESHOLD..n {
                unguarded_linear_insert(v, i, less);
            }
        } else {
            insertion_sort(v, 0, n, less);
        }
    }

    fn introsort_loop<T: Copy>(
        v: &mut [T],
        first: usize,
        mut last: usize,
        mut depth: usize,
        less: impl Fn(&T, &T) -> bool + Copy,
    ) {
        while last - first > THRESHOLD {
            if depth == 0 {
                heap_sort(v, first, last, less);
                return;
            }
            depth -= 1;
            let mid = first + (last - first) / 2;
            move_median_to_first(v, first, first + 1, mid, last - 1, less);
            let cut = unguarded_partition(v, first + 1, last, first, less);
            introsort_loop(v, cut, last, depth, less);
            last = cut;
        }
    }

    fn move_median_to_first<T: Copy>(
        v: &mut [T],
        result: usize,
        a: usize,
        b: usize,
        c: usize,
        less: impl Fn(&T, &T) -> bool,
    ) {
        let pick = if less(&v[a], &v[b]) {
            if less(&v[b], &v[c]) {
                b
            } else if less(&v[a], &v[c]) {
                c
            } else {
                a
            }
        } else if less(&v[a], &v[c]) {
            a
        } else if less(&v[b], &v[c]) {
            c
        } else {
            b
        };
        v.swap(result, pick);
    }

    fn unguarded_partition<T: Copy>(
        v: &mut [T],
        mut first: usize,
        mut last: usize,
        pivot: usize,
        less: impl Fn(&T, &T) -> bool,
    ) -> usize {
        loop {
            while less(&v[first], &v[pivot]) {
                first += 1;
            }
            last -= 1;
            while less(&v[pivot], &v[last]) {
                last -= 1;
            }
            if first >= last {
                return first;
            }
            v.swap(first, last);
            first += 1;
        }
    }

    fn insertion_sort<T: Copy>(v: &mut [T], first: usize, last: usize, less: impl Fn(&T, &T) -> bool + Copy) {
        for i in first + 1..last {
            if less(&v[i], &v[first]) {
                let val = v[i];
                v.copy_within(first..i, first + 1);
                v[first] = val;
            } else {
                unguarded_linear_insert(v, i, less);
            }
        }
    }

    fn unguarded_linear_insert<T: Copy>(v: &mut [T], mut last: usize, less: impl Fn(&T, &T) -> bool) {
        let val = v[last];
        while less(&val, &v[last - 1]) {
            v[last] = v[last - 1];
            last -= 1;
        }
        v[last] = val;
    }

    /// `std::__partial_sort(first, last, last)`: `make_heap` then `sort_heap`.
    fn heap_sort<T: Copy>(v: &mut [T], first: usize, last: usize, less: impl Fn(&T, &T) -> bool + Copy) {
        let len = last - first;
        if len >= 2 {
            let mut parent = (len - 2) / 2;
            loop {
                let val = v[first + parent];
                adjust_heap(v, first, parent, len, val, less);
                if parent == 0 {
                    break;
                }
                parent -= 1;
            }
        }
        let mut end = last;
        while end - first > 1 {
            end -= 1;
            let val = v[end];
            v[end] = v[first];
            adjust_heap(v, first, 0, end - first, val, less);
        }
    }

    fn adjust_heap<T: Copy>(
        v: &mut [T],
        first: usize,
        mut hole: usize,
        len: usize,
        val: T,
        less: impl Fn(&T, &T) -> bool,
    ) {
        let top = hole;
        let mut second = hole;
        while second < (len - 1) / 2 {
            second = 2 * (second + 1);
            if less(&v[first + second], &v[first + second - 1]) {
                second -= 1;
            }
            v[first + hole] = v[first + second];
            hole = second;
        }
        if len.is_multiple_of(2) && second == (len - 2) / 2 {
            second = 2 * (second + 1);
            v[first + hole] = v[first + second - 1];
            hole = second - 1;
        }
        // __push_heap
        while hole > top {
            let parent = (hole - 1) / 2;
            if !less(&v[first + parent], &val) {
                break;
            }
            v[first + hole] = v[first + parent];
            hole = parent;
        }
        v[first + hole] = val;
    }
}
