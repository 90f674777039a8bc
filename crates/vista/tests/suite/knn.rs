//! Frozen-feature evaluation: k-NN against DINO's `eval_knn.py` golden, its properties, the
//! linear probe and its AdamW, and the labelled image sets.

use crate::common;

use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};
use proptest::prelude::*;
use vista::data::dataset::{LabelledSet, Split, FASHION_MNIST_CLASSES};
use vista::eval::knn::{
    class_votes, knn_classifier, knn_predict, nearest_neighbours, normalize_rows, rank_classes, ClassTies, KnnOptions,
};
use vista::eval::linear_probe::{FeatureNorm, LinearProbe, LinearProbeConfig, SplitMix64};
use vista::image::DecodeOptions;
use vista::optim::{AdamW, AdamWConfig};

// ---------------------------------------------------------------------------------------------
// k-NN: the golden from `tools/reference/gen_dino.py` (DINO's knn_classifier, verbatim, torch CPU)
// ---------------------------------------------------------------------------------------------

fn f32s(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1().unwrap()
}

fn usizes(t: &Tensor) -> Vec<usize> {
    t.to_dtype(DType::I64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<i64>()
        .unwrap()
        .into_iter()
        .map(|v| v as usize)
        .collect()
}

struct Golden {
    dir: PathBuf,
    tensors: std::collections::HashMap<String, Tensor>,
    manifest: serde_json::Value,
}

fn golden() -> Golden {
    let dir = common::fixtures().join("dino/knn");
    let tensors = common::load_golden(&dir.join("golden.safetensors"));
    let manifest = common::manifest(&dir.join("manifest.json"));
    Golden { dir, tensors, manifest }
}

impl Golden {
    fn get(&self, key: &str) -> &Tensor {
        self.tensors.get(key).unwrap_or_else(|| panic!("{}: no tensor `{key}`", self.dir.display()))
    }
    fn result(&self, k: usize, key: &str) -> f64 {
        self.manifest["results"][format!("k{k}")][key].as_f64().unwrap_or_else(|| panic!("manifest: k{k}.{key}"))
    }
}

const DIM: usize = 16;

/// The same count of 203 test samples: the manifest's percentages are Python's `count * 100.0 /
/// total`, computed here the same way, but serde_json's default float parser may read them 1 ulp
/// off (one sample is 0.49 %).
fn assert_same_percent(ours: f64, reference: f64, what: &str) {
    assert!((ours - reference).abs() < 1e-9, "{what}: {ours} vs reference {reference}");
}

#[test]
fn knn_neighbours_and_votes_match_dino() {
    let g = golden();
    let train = f32s(g.get("train_features"));
    let test = f32s(g.get("test_features"));
    let train_labels = usizes(g.get("train_labels"));
    let n_test = test.len() / DIM;
    for k in [10, 20] {
        let ours = nearest_neighbours(&train, &test, DIM, k, None).unwrap();
        let indices = usizes(g.get(&format!("k{k}.indices")));
        let distances = f32s(g.get(&format!("k{k}.distances")));
        assert_eq!(ours.indices, indices, "k{k}.indices");
        let worst = ours.similarities.iter().zip(&distances).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst <= 1e-6, "k{k}.distances: max abs diff {worst:e}");

        let probs = f32s(g.get(&format!("k{k}.probs")));
        let mut worst_rel = 0f32;
        for r in 0..n_test {
            let sims = &ours.similarities[r * k..(r + 1) * k];
            let labels: Vec<usize> = ours.indices[r * k..(r + 1) * k].iter().map(|&j| train_labels[j]).collect();
            let votes = class_votes(sims, &labels, 0.07, 10).unwrap();
            for (c, (a, b)) in votes.iter().zip(&probs[r * 10..(r + 1) * 10]).enumerate() {
                assert_eq!(*a == 0.0, *b == 0.0, "k{k}.probs[{r}, {c}]: ours {a}, reference {b}");
                if *b != 0.0 {
                    worst_rel = worst_rel.max((a - b).abs() / b.abs());
                }
            }
        }
        assert!(worst_rel <= 1e-5, "k{k}.probs: max rel diff {worst_rel:e}");
    }
}

#[test]
fn knn_predictions_and_accuracies_match_dino() {
    let g = golden();
    let train = f32s(g.get("train_features"));
    let test = f32s(g.get("test_features"));
    let train_labels = usizes(g.get("train_labels"));
    let test_labels = usizes(g.get("test_labels"));
    // Chunking is irrelevant: the reference's 2-row chunks, one row, odd sizes, one block.
    for chunk_rows in [None, Some(1), Some(2), Some(7), Some(1000)] {
        for ties in [ClassTies::LowerIndexFirst, ClassTies::TorchCpu] {
            let options = KnnOptions { ks: vec![20, 10], temperature: 0.07, class_ties: ties, chunk_rows };
            let evals = knn_classifier(&train, &train_labels, &test, &test_labels, DIM, 10, &options).unwrap();
            assert_eq!(evals.iter().map(|e| e.k).collect::<Vec<_>>(), [20, 10]);
            for e in &evals {
                let k = e.k;
                let top5 = usizes(g.get(&format!("k{k}.top5")));
                let ours: Vec<usize> = e.predictions.rankings.iter().flatten().copied().collect();
                // With 10 classes torch's tie order is the stable one, so even the ambiguous
                // (tied) entries agree, under both tie rules.
                assert_eq!(ours, top5, "k{k}.top5 ({ties:?}, chunk {chunk_rows:?})");
                assert_same_percent(e.top1, g.result(k, "top1"), &format!("k{k} top-1 ({ties:?})"));
                assert_same_percent(e.top5, g.result(k, "top5"), &format!("k{k} top-5 ({ties:?})"));
                let rankings = e.predictions.rankings.iter().zip(&test_labels);
                let correct1 = rankings.clone().filter(|(r, l)| r[0] == **l).count();
                let correct5 = rankings.filter(|(r, l)| r.contains(l)).count();
                assert_eq!(correct1 as f64, g.result(k, "correct_top1"), "k{k} correct top-1");
                assert_eq!(correct5 as f64, g.result(k, "correct_top5"), "k{k} correct top-5");
            }
        }
    }
}

/// `eval_knn.py`'s `__main__` calls `knn_classifier` without `num_classes`, so 1000: the 990
/// extra zero-score classes enter torch's (unstable) sort and change the top-5 on a 10-class set.
/// Replaying libstdc++'s introsort reproduces those numbers; the stable order does not.
#[test]
fn knn_with_dinos_default_1000_classes_matches_dino() {
    let g = golden();
    let train = f32s(g.get("train_features"));
    let test = f32s(g.get("test_features"));
    let train_labels = usizes(g.get("train_labels"));
    let test_labels = usizes(g.get("test_labels"));
    let options = KnnOptions { ks: vec![10, 20], class_ties: ClassTies::TorchCpu, ..KnnOptions::default() };
    for e in knn_classifier(&train, &train_labels, &test, &test_labels, DIM, 1000, &options).unwrap() {
        assert_same_percent(e.top1, g.result(e.k, "top1_num_classes_1000_default"), &format!("k{} top-1", e.k));
        assert_same_percent(e.top5, g.result(e.k, "top5_num_classes_1000_default"), &format!("k{} top-5", e.k));
    }
    // The stable order with 1000 classes is the 10-class result.
    let stable = KnnOptions { ks: vec![10], ..KnnOptions::default() };
    let e = &knn_classifier(&train, &train_labels, &test, &test_labels, DIM, 1000, &stable).unwrap()[0];
    assert_same_percent(e.top5, g.result(10, "top5"), "k10 top-5, stable order");
    assert!((e.top5 - g.result(10, "top5_num_classes_1000_default")).abs() > 0.1);
}

/// `torch.sort(descending=True)` index orders on the CPU (torch 2.15.0), printed for rows with
/// `x[i] = (13 i mod 5) if 37 i ≡ 0 (mod 7) else 0`.
#[test]
fn torch_cpu_tie_order_is_reproduced() {
    let row = |n: usize| -> Vec<f32> {
        (0..n).map(|i| if (i * 37) % 7 == 0 { ((i * 13) % 5) as f32 } else { 0.0 }).collect()
    };
    let expected: [(usize, &[usize]); 3] = [
        (20, &[14, 7, 10, 19, 18, 17, 16, 15, 13, 12, 11, 0, 9, 8, 6, 5, 4, 3, 2, 1]),
        (
            100,
            &[
                98, 63, 28, 91, 21, 56, 49, 14, 84, 7, 77, 42, 71, 73, 70, 69, 68, 72, 67, 54, 66, 65, 64, 62, 61, 60,
                59, 58, 57, 55, 50, 87, 99, 97, 96, 95, 94, 93, 92, 90,
            ],
        ),
        (
            1000,
            &[
                203, 308, 28, 973, 553, 378, 273, 168, 763, 483, 63, 938, 588, 658, 868, 413, 343, 238, 98, 693, 448,
                903, 798, 623, 133, 518, 833, 728, 336, 266, 196, 56, 826, 161, 406, 476, 581, 126, 931, 511,
            ],
        ),
    ];
    for (n, want) in expected {
        assert_eq!(rank_classes(&row(n), want.len(), ClassTies::TorchCpu), want, "n = {n}");
    }
    // The stable order ranks ties by index.
    assert_eq!(rank_classes(&row(20), 6, ClassTies::LowerIndexFirst), [14, 7, 0, 1, 2, 3]);
}

#[test]
fn normalize_rows_is_torch_normalize() {
    let mut x = vec![3.0, 4.0, 0.0, 0.0, 1e-20, 0.0];
    normalize_rows(&mut x, 2);
    assert_eq!(x[..2], [0.6, 0.8]);
    assert_eq!(x[2..4], [0.0, 0.0]); // x / max(0, 1e-12)
    assert_eq!(x[4..], [1e-20 / 1e-12, 0.0]);
}

#[test]
fn knn_rejects_bad_arguments() {
    let train = [1.0, 0.0, 0.0, 1.0];
    let labels = [0, 1];
    let ok = KnnOptions { ks: vec![1], ..KnnOptions::default() };
    let err = |r: vista::Result<Vec<vista::eval::knn::KnnPredictions>>| r.unwrap_err().to_string();
    assert!(err(knn_predict(&train, &labels, &[1.0, 0.0], 2, 2, &KnnOptions::default())).contains("k = "));
    assert!(err(knn_predict(&train, &[0, 2], &[1.0, 0.0], 2, 2, &ok)).contains("not below num_classes"));
    assert!(err(knn_predict(&train, &labels, &[1.0, f32::NAN], 2, 2, &ok)).contains("non-finite"));
    assert!(err(knn_predict(&train, &labels, &[1.0, 0.0, 1.0], 2, 2, &ok)).contains("not rows of 2"));
    let t0 = KnnOptions { temperature: 0.0, ..ok.clone() };
    assert!(err(knn_predict(&train, &labels, &[1.0, 0.0], 2, 2, &t0)).contains("temperature"));
    // Fewer than 5 classes: rankings and top-5 stop at the class count (the reference errors).
    let e = &knn_classifier(&train, &labels, &[1.0, 0.0], &[0], 2, 2, &ok).unwrap()[0];
    assert_eq!((e.top1, e.top5, e.predictions.rankings.clone()), (100.0, 100.0, vec![vec![0, 1]]));
}

/// A larger problem through several similarity blocks, against a straightforward f64 k-NN.
#[test]
fn knn_matches_a_naive_implementation() {
    let (n_train, n_test, dim, classes) = (3000, 257, 24, 13);
    let mut rng = SplitMix64::new(7);
    let mut train: Vec<f32> = (0..n_train * dim).map(|_| rng.next_normal() as f32).collect();
    let mut test: Vec<f32> = (0..n_test * dim).map(|_| rng.next_normal() as f32).collect();
    normalize_rows(&mut train, dim);
    normalize_rows(&mut test, dim);
    let labels: Vec<usize> = (0..n_train).map(|_| rng.below(classes)).collect();
    let options = KnnOptions { ks: vec![1, 5, 50], chunk_rows: Some(40), ..KnnOptions::default() };
    let preds = knn_predict(&train, &labels, &test, dim, classes, &options).unwrap();
    for r in 0..n_test {
        let q = &test[r * dim..(r + 1) * dim];
        let mut sims: Vec<(f64, usize)> = (0..n_train)
            .map(|j| (train[j * dim..(j + 1) * dim].iter().zip(q).map(|(a, b)| *a as f64 * *b as f64).sum(), j))
            .collect();
        sims.sort_by(|a, b| b.0.total_cmp(&a.0));
        for p in &preds {
            let mut scores = vec![0f64; classes];
            for &(s, j) in &sims[..p.k] {
                scores[labels[j]] += (s / 0.07).exp();
            }
            let mut order: Vec<usize> = (0..classes).collect();
            order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
            assert_eq!(p.rankings[r], order[..5], "row {r}, k {}", p.k);
        }
    }
}

/// Fashion-MNIST / ImageNet-subset scale: 60,000 train × 10,000 test × 384 dimensions, the
/// default k (10, 20, 100, 200). `cargo test --release -p vista --test suite knn:: -- --ignored --nocapture`.
#[test]
#[ignore = "timing run, ~2 GB·s of work"]
fn knn_at_scale() {
    let (n_train, n_test, dim, classes) = (60_000, 10_000, 384, 10);
    let train = unit_rows(n_train, dim, 1);
    let test = unit_rows(n_test, dim, 2);
    let mut rng = SplitMix64::new(3);
    let train_labels: Vec<usize> = (0..n_train).map(|_| rng.below(classes)).collect();
    let test_labels: Vec<usize> = (0..n_test).map(|_| rng.below(classes)).collect();
    let start = std::time::Instant::now();
    let evals =
        knn_classifier(&train, &train_labels, &test, &test_labels, dim, classes, &KnnOptions::default()).unwrap();
    eprintln!("{n_train} × {n_test} × {dim}, k = 10/20/100/200: {:.2?}", start.elapsed());
    for e in &evals {
        eprintln!("k {}: top-1 {:.2}, top-5 {:.2}", e.k, e.top1, e.top5);
    }
    let start = std::time::Instant::now();
    let options = KnnOptions { class_ties: ClassTies::TorchCpu, ..KnnOptions::default() };
    knn_classifier(&train, &train_labels, &test, &test_labels, dim, 1000, &options).unwrap();
    eprintln!("same with 1000 classes, torch's CPU tie order: {:.2?}", start.elapsed());
}

fn unit_rows(rows: usize, dim: usize, seed: u64) -> Vec<f32> {
    let mut rng = SplitMix64::new(seed);
    let mut x: Vec<f32> = (0..rows * dim).map(|_| rng.next_normal() as f32).collect();
    normalize_rows(&mut x, dim);
    x
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// k = 1 on a test point equal to a train point returns that point's label.
    #[test]
    fn k1_on_a_train_point_predicts_its_label(
        n_train in 2usize..60, dim in 2usize..12, classes in 2usize..8, seed in any::<u64>(), pick in any::<usize>()
    ) {
        let train = unit_rows(n_train, dim, seed);
        let mut rng = SplitMix64::new(seed ^ 1);
        let labels: Vec<usize> = (0..n_train).map(|_| rng.below(classes)).collect();
        let i = pick % n_train;
        let q = &train[i * dim..(i + 1) * dim];
        // Away from ties: the point itself is clearly the nearest.
        let own = dot(q, q);
        prop_assume!((0..n_train).filter(|&j| j != i).all(|j| dot(&train[j * dim..(j + 1) * dim], q) < own - 1e-4));
        let options = KnnOptions { ks: vec![1], ..KnnOptions::default() };
        let p = &knn_predict(&train, &labels, q, dim, classes, &options).unwrap()[0];
        prop_assert_eq!(p.rankings[0][0], labels[i]);
        let n = nearest_neighbours(&train, q, dim, 1, None).unwrap();
        prop_assert_eq!(n.indices[0], i);
    }

    /// Permuting the train rows (with their labels) changes no prediction, away from ties.
    #[test]
    fn train_order_does_not_matter(
        n_train in 10usize..80, n_test in 1usize..20, dim in 2usize..10, classes in 2usize..12, seed in any::<u64>()
    ) {
        let train = unit_rows(n_train, dim, seed);
        let test = unit_rows(n_test, dim, seed ^ 2);
        let mut rng = SplitMix64::new(seed ^ 3);
        let labels: Vec<usize> = (0..n_train).map(|_| rng.below(classes)).collect();
        let ks = vec![1, 3, 7];
        // Away from ties: distinct similarities around every k-th place.
        for r in 0..n_test {
            let q = &test[r * dim..(r + 1) * dim];
            let mut s: Vec<f64> = (0..n_train).map(|j| dot(&train[j * dim..(j + 1) * dim], q)).collect();
            s.sort_by(|a, b| b.total_cmp(a));
            prop_assume!(ks.iter().all(|&k| s[k - 1] - s[k] > 1e-5));
        }
        let mut perm: Vec<usize> = (0..n_train).collect();
        rng.shuffle(&mut perm);
        let train_p: Vec<f32> = perm.iter().flat_map(|&j| train[j * dim..(j + 1) * dim].to_vec()).collect();
        let labels_p: Vec<usize> = perm.iter().map(|&j| labels[j]).collect();
        let options = KnnOptions { ks, ..KnnOptions::default() };
        let a = knn_predict(&train, &labels, &test, dim, classes, &options).unwrap();
        let b = knn_predict(&train_p, &labels_p, &test, dim, classes, &options).unwrap();
        for (a, b) in a.iter().zip(&b) {
            for (r, (x, y)) in a.rankings.iter().zip(&b.rankings).enumerate() {
                // Classes can only swap if their summed votes are within rounding of each other.
                let q = &test[r * dim..(r + 1) * dim];
                let n = nearest_neighbours(&train, q, dim, a.k, None).unwrap();
                let nl: Vec<usize> = n.indices.iter().map(|&j| labels[j]).collect();
                let votes = class_votes(&n.similarities, &nl, 0.07, classes).unwrap();
                let mut v: Vec<f32> = votes.iter().copied().filter(|&s| s > 0.0).collect();
                v.sort_by(|p, q| q.total_cmp(p));
                prop_assume!(v.windows(2).all(|w| w[0] - w[1] > 1e-5 * w[0]));
                prop_assert_eq!(x, y, "k {} row {}", a.k, r);
            }
        }
    }

    /// Up to 16 classes torch's CPU sort is an insertion sort: the two tie rules agree.
    #[test]
    fn tie_rules_agree_up_to_16_classes(scores in proptest::collection::vec(0u8..3, 1..=16)) {
        let s: Vec<f32> = scores.iter().map(|&v| v as f32).collect();
        prop_assert_eq!(
            rank_classes(&s, 5, ClassTies::TorchCpu),
            rank_classes(&s, 5, ClassTies::LowerIndexFirst)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Linear probe
// ---------------------------------------------------------------------------------------------

#[test]
fn splitmix64_matches_the_reference_sequence() {
    // Vigna's splitmix64.c from state 0.
    let mut r = SplitMix64::new(0);
    assert_eq!(
        [r.next_u64(), r.next_u64(), r.next_u64()],
        [0xe220a8397b1dcdaf, 0x6e789e6aa1b965f4, 0x06c45d188009454f]
    );
}

/// AdamW against `torch.optim.AdamW(lr=0.01, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1)`.
///
/// Step 1 by hand: m = 0.1·g, v = 0.001·g², bias corrections 1 − 0.9 = 0.1 and 1 − 0.999 =
/// 0.001, so m̂ = g, √v̂ = |g| and the update is lr·g / (|g| + ε) ≈ lr·sign(g) (0 where g = 0),
/// after the decay p·(1 − lr·λ) = p·0.999: p₁ = 0.999·p₀ − 0.01·sign(g).
/// Steps 2 and 3: torch 2.15.0's output (`float(p[i])` after each `opt.step()`), within a few
/// ulp (of the 0.01-sized update where the parameter cancels towards 0): torch's CPU square root
/// (MKL) is itself ±1 ulp from the correctly rounded one.
#[test]
fn adamw_matches_torch() {
    let mut p = vec![0.5f32, -1.0, 2.0, 0.0, 3.0, -0.25];
    let grads =
        [[0.1f32, -0.2, 0.3, 0.0, -1.5, 2.0], [0.05, 0.4, -0.3, 1e-3, -1.0, 2.5], [-0.2, 0.1, 0.0, -0.5, 0.25, 3.0]];
    let hand: Vec<f32> = p
        .iter()
        .zip(&grads[0])
        .map(|(&p0, &g)| {
            let sign = if g == 0.0 { 0.0 } else { g.signum() as f64 };
            (0.999 * p0 as f64 - 0.01 * sign) as f32
        })
        .collect();
    let torch: [[f64; 6]; 3] = [
        [0.4895000159740448, -0.9890000224113464, 1.9880000352859497, 0.0, 3.006999969482422, -0.25975000858306885],
        [
            0.47968870401382446,
            -0.9916720986366272,
            1.9865384101867676,
            -0.007441262248903513,
            3.0136966705322266,
            -0.269486665725708,
        ],
        [
            0.4812726080417633,
            -0.9948369860649109,
            1.9849587678909302,
            -0.0010571968741714954,
            3.0172345638275146,
            -0.27922356128692627,
        ],
    ];
    let mut opt = AdamW::new(6, AdamWConfig { betas: (0.9, 0.999), eps: 1e-8 }, 0.1);
    for (step, (g, want)) in grads.iter().zip(&torch).enumerate() {
        opt.step(&mut p, g, 0.01);
        if step == 0 {
            for (a, b) in p.iter().zip(&hand) {
                assert!((a - b).abs() <= 1e-7, "step 1: {p:?} vs hand-computed {hand:?}");
            }
        }
        for (i, (a, b)) in p.iter().zip(want).enumerate() {
            let b = *b as f32;
            assert!(
                (a - b).abs() <= 4.0 * f32::EPSILON * b.abs().max(0.01),
                "step {} param {i}: {a} vs torch {b}",
                step + 1
            );
        }
    }
    assert_eq!(opt.steps(), 3);
}

/// Gaussian blobs around well-separated centres, offset and scaled so normalisation matters.
fn blobs(n: usize, dim: usize, classes: usize, seed: u64) -> (Vec<f32>, Vec<usize>) {
    let mut rng = SplitMix64::new(99);
    let centres: Vec<f64> = (0..classes * dim).map(|_| rng.next_normal() * 3.0).collect();
    let mut rng = SplitMix64::new(seed);
    let labels: Vec<usize> = (0..n).map(|_| rng.below(classes)).collect();
    let x = labels
        .iter()
        .flat_map(|&c| {
            (0..dim).map(|d| (50.0 + 10.0 * (centres[c * dim + d] + rng.next_normal())) as f32).collect::<Vec<_>>()
        })
        .collect();
    (x, labels)
}

#[test]
fn linear_probe_learns_a_separable_problem() {
    let (dim, classes) = (32, 7);
    let (train, train_labels) = blobs(2000, dim, classes, 1);
    let (test, test_labels) = blobs(500, dim, classes, 2);
    for normalization in [FeatureNorm::Standardize, FeatureNorm::L2] {
        let lr = if normalization == FeatureNorm::L2 { 1e-2 } else { 1e-3 };
        let config =
            LinearProbeConfig { epochs: 20, batch_size: 64, lr, warmup_epochs: 1, normalization, ..Default::default() };
        let (probe, report) = LinearProbe::train(&train, &train_labels, dim, classes, &config).unwrap();
        assert_eq!(report.steps, 20 * 2000usize.div_ceil(64));
        let l = &report.epoch_losses;
        assert!(l.windows(2).all(|w| w[1] <= w[0] * 1.01), "{normalization:?}: losses {l:?}");
        assert!(l[l.len() - 1] < 0.5 * l[0], "{normalization:?}: losses {l:?}");
        let (top1, top5) = probe.evaluate(&test, &test_labels).unwrap();
        assert!(top1 > 95.0, "{normalization:?}: top-1 {top1}");
        assert!(top5 >= top1);
        // Same seed, same probe.
        let (again, _) = LinearProbe::train(&train, &train_labels, dim, classes, &config).unwrap();
        assert_eq!(again, probe);
    }
}

#[test]
fn linear_probe_first_steps_lower_the_loss() {
    let (dim, classes) = (8, 3);
    let (x, y) = blobs(300, dim, classes, 3);
    let config = LinearProbeConfig { epochs: 3, batch_size: 300, lr: 0.05, ..Default::default() };
    let (_, report) = LinearProbe::train(&x, &y, dim, classes, &config).unwrap();
    // Full-batch: the first epoch's loss is at the N(0, 0.01²) initialisation, about ln 3.
    assert!((report.epoch_losses[0] - 3f64.ln()).abs() < 0.05, "{:?}", report.epoch_losses);
    assert!(report.epoch_losses.windows(2).all(|w| w[1] < w[0]), "{:?}", report.epoch_losses);
}

#[test]
fn linear_probe_rejects_bad_arguments() {
    let cfg = LinearProbeConfig::default();
    assert!(LinearProbe::train(&[1.0, 2.0], &[0], 2, 1, &cfg).is_ok());
    assert!(LinearProbe::train(&[1.0, 2.0], &[1], 2, 1, &cfg).unwrap_err().to_string().contains("not below"));
    assert!(LinearProbe::train(&[1.0, 2.0, 3.0], &[0], 2, 1, &cfg).unwrap_err().to_string().contains("rows of 2"));
    let zero = LinearProbeConfig { batch_size: 0, ..Default::default() };
    assert!(LinearProbe::train(&[1.0, 2.0], &[0], 2, 1, &zero).is_err());
}

// ---------------------------------------------------------------------------------------------
// Labelled sets
// ---------------------------------------------------------------------------------------------

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vista-knn-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn idx_bytes(magic: u32, dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut b = magic.to_be_bytes().to_vec();
    for d in dims {
        b.extend_from_slice(&d.to_be_bytes());
    }
    b.extend_from_slice(data);
    b
}

fn write(path: &Path, bytes: &[u8], gz: bool) {
    let mut f = std::fs::File::create(path).unwrap();
    if gz {
        let mut e = flate2::write::GzEncoder::new(f, flate2::Compression::default());
        e.write_all(bytes).unwrap();
        e.finish().unwrap();
    } else {
        f.write_all(bytes).unwrap();
    }
}

/// Three 2×3 images, pixel value = 10·item + position.
fn write_idx_pair(dir: &Path, prefix: &str, gz: bool) {
    let pixels: Vec<u8> = (0..3u8).flat_map(|i| (0..6u8).map(move |p| 10 * i + p)).collect();
    let ext = if gz { ".gz" } else { "" };
    write(&dir.join(format!("{prefix}-images-idx3-ubyte{ext}")), &idx_bytes(0x803, &[3, 2, 3], &pixels), gz);
    write(&dir.join(format!("{prefix}-labels-idx1-ubyte{ext}")), &idx_bytes(0x801, &[3], &[4, 0, 9]), gz);
}

#[test]
fn idx_files_are_read() {
    let root = temp_dir("idx");
    let plain = root.join("mnist");
    let fashion = root.join("Fashion-MNIST");
    std::fs::create_dir_all(&plain).unwrap();
    std::fs::create_dir_all(&fashion).unwrap();
    write_idx_pair(&plain, "train", false);
    write_idx_pair(&plain, "t10k", true);
    write_idx_pair(&fashion, "t10k", true);

    let set = LabelledSet::from_idx_dir(&plain, Split::Train, None).unwrap();
    assert_eq!(set.labels(), [4, 0, 9]);
    assert_eq!(set.classes, (0..10).map(|i| i.to_string()).collect::<Vec<_>>());
    let img = set.items[1].load(&DecodeOptions::default()).unwrap();
    assert_eq!(img.dimensions(), (3, 2));
    assert_eq!(img.get_pixel(2, 1).0, [15, 15, 15]);
    assert!(set.items[1].path().is_none());

    let test = LabelledSet::from_idx_dir(&plain, Split::Test, Some(2)).unwrap();
    assert_eq!(test.labels(), [4, 0]);
    let f = LabelledSet::from_idx_dir(&fashion, Split::Test, None).unwrap();
    assert_eq!(f.classes, FASHION_MNIST_CLASSES);
    assert_eq!(f.classes[f.items[2].label], "Ankle boot");

    let err = LabelledSet::from_idx_dir(&fashion, Split::Train, None).unwrap_err().to_string();
    assert!(err.contains("train-images-idx3-ubyte"), "{err}");

    // Errors name the file.
    let images = plain.join("train-images-idx3-ubyte");
    let labels = plain.join("train-labels-idx1-ubyte");
    let err = LabelledSet::from_idx(&labels, &images, None).unwrap_err().to_string();
    assert!(err.contains("train-labels-idx1-ubyte") && err.contains("bad magic 0x00000801"), "{err}");
    let short = root.join("short-labels");
    write(&short, &idx_bytes(0x801, &[3], &[1, 2]), false);
    let err = LabelledSet::from_idx(&images, &short, None).unwrap_err().to_string();
    assert!(err.contains("short-labels") && err.contains("truncated"), "{err}");
    assert!(LabelledSet::from_idx(&images, &short, Some(2)).is_ok());
    let two = root.join("two-labels");
    write(&two, &idx_bytes(0x801, &[2], &[1, 2]), false);
    let err = LabelledSet::from_idx(&images, &two, None).unwrap_err().to_string();
    assert!(err.contains("3 images") && err.contains("2 labels") && err.contains("two-labels"), "{err}");
    let truncated = root.join("truncated.gz");
    let full = std::fs::read(plain.join("t10k-images-idx3-ubyte.gz")).unwrap();
    std::fs::write(&truncated, &full[..full.len() - 12]).unwrap();
    let err = LabelledSet::from_idx(&truncated, &labels, None).unwrap_err().to_string();
    assert!(err.contains("truncated.gz"), "{err}");
    std::fs::remove_dir_all(root).unwrap();
}

#[test]
fn image_folders_are_read_as_torchvision_does() {
    let root = temp_dir("folder");
    let img = vista::image::RgbImage::from_pixel(2, 2, vista::image::Rgb([1, 2, 3]));
    for p in [
        "dog/b.png",
        "dog/a.PNG",
        "dog/a b/z.png",
        "dog/a/y.png",
        "dog/a/x/w.png",
        "cat/x.jpg.png",
        "Zebra/1.png",
        ".hidden/q.png",
    ] {
        let p = root.join(p);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        img.save(&p).unwrap();
    }
    std::fs::write(root.join("dog/notes.txt"), "not an image").unwrap();
    std::fs::write(root.join("top-level.png"), "ignored").unwrap();
    let set = LabelledSet::from_dir(&root).unwrap();
    // Sorted by code point: '.' < 'Z' < 'c' < 'd'.
    assert_eq!(set.classes, [".hidden", "Zebra", "cat", "dog"]);
    let got: Vec<(String, usize)> = set
        .items
        .iter()
        .map(|i| (i.path().unwrap().strip_prefix(&root).unwrap().to_string_lossy().into_owned(), i.label))
        .collect();
    let want = [(".hidden/q.png", 0), ("Zebra/1.png", 1), ("cat/x.jpg.png", 2)];
    let mut want: Vec<(String, usize)> = want.iter().map(|(p, l)| (p.to_string(), *l)).collect();
    // sorted(os.walk(...)) orders folders by their path string: "dog" < "dog/a" < "dog/a b" <
    // "dog/a/x" (' ' is 0x20, '/' 0x2f), not depth-first.
    for p in ["dog/a.PNG", "dog/b.png", "dog/a/y.png", "dog/a b/z.png", "dog/a/x/w.png"] {
        want.push((p.to_string(), 3));
    }
    assert_eq!(got, want);
    assert_eq!(set.items[0].load(&DecodeOptions::default()).unwrap(), img);

    std::fs::create_dir_all(root.join("empty")).unwrap();
    let err = LabelledSet::from_dir(&root).unwrap_err().to_string();
    assert!(err.contains("empty") && err.contains("no image"), "{err}");
    std::fs::remove_dir_all(root).unwrap();
}

/// The real Fashion-MNIST, where Debian's `dataset-fashion-mnist` put it (or `VISTA_FASHION_MNIST`).
#[test]
fn debian_fashion_mnist_if_installed() {
    let dir = std::env::var_os("VISTA_FASHION_MNIST")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(vista::data::dataset::DEBIAN_FASHION_MNIST_DIR));
    if !dir.is_dir() {
        eprintln!("skipped: no {}", dir.display());
        return;
    }
    let train = LabelledSet::from_idx_dir(&dir, Split::Train, None).unwrap();
    let test = LabelledSet::from_idx_dir(&dir, Split::Test, None).unwrap();
    assert_eq!((train.len(), test.len()), (60_000, 10_000));
    assert_eq!(train.classes, FASHION_MNIST_CLASSES);
    assert_eq!(train.items[0].label, 9); // the first training image is an ankle boot
    assert_eq!(train.items[0].load(&DecodeOptions::default()).unwrap().dimensions(), (28, 28));
    let mut counts = [0usize; 10];
    test.items.iter().for_each(|i| counts[i.label] += 1);
    assert_eq!(counts, [1000; 10]);
}
