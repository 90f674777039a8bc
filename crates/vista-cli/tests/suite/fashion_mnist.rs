//! The whole DINO evaluation path on real data: Debian's `dataset-fashion-mnist` (IDX files),
//! a tiny random-weight DINO backbone from the committed fixtures, `vista knn` end to end.
//!
//! `.ci/run` installs the package and sets `VISTA_REQUIRE_DATASETS=1`, so in CI a missing
//! dataset is a failure; elsewhere the test says how to get it and passes.

use crate::common;

use common::{fixtures, tmpdir, vista};

const FASHION_MNIST: &str = "/usr/share/datasets/fashion-mnist";

fn dataset() -> Option<&'static str> {
    if std::path::Path::new(FASHION_MNIST).join("train-images-idx3-ubyte.gz").is_file() {
        return Some(FASHION_MNIST);
    }
    assert!(
        std::env::var("VISTA_REQUIRE_DATASETS").is_err(),
        "{FASHION_MNIST} is missing: `apt-get install dataset-fashion-mnist` (as .ci/run does)"
    );
    eprintln!("skipped: {FASHION_MNIST} is missing (apt-get install dataset-fashion-mnist)");
    None
}

#[test]
fn knn_on_fashion_mnist_with_a_tiny_random_backbone() {
    let Some(data) = dataset() else { return };
    let model = fixtures().join("dino/v1_official/dino_vit_tiny_pretrain.pth");
    let cache = tmpdir("fmnist-cache");
    let args = [
        "knn",
        "--train",
        data,
        "--model",
        model.to_str().unwrap(),
        "--num-heads",
        "2",
        "--mode",
        "whole",
        "--max-side",
        "32",
        "--limit",
        "2000",
        "--k",
        "10,20",
        "--cache-dir",
        cache.to_str().unwrap(),
        "--json",
    ];
    let o = vista(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let text = doc.to_string();
    // Random weights still separate Fashion-MNIST far above chance (10 %): the features keep the
    // pixels' structure. Ten classes, 2000 train and 2000 test images.
    let results = doc["results"].as_array().unwrap_or_else(|| panic!("no results in {text}"));
    assert_eq!(results.len(), 2, "{text}");
    for r in results {
        let top1 = r["top1"].as_f64().unwrap();
        let top5 = r["top5"].as_f64().unwrap();
        assert!(top1 > 40.0 && top5 > 80.0 && top5 >= top1, "{text}");
    }
    // The second run reads the cached features and gives the same numbers.
    let again = vista(&args);
    assert!(again.status.success());
    let doc2: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(doc["results"], doc2["results"]);
    std::fs::remove_dir_all(cache).unwrap();
}

/// `vista knn --pixels` (the raw-pixel baseline of the DINO training benchmark) against the same
/// weighted vote computed here by brute force from the IDX bytes.
#[test]
fn knn_on_raw_pixels_equals_a_brute_force_vote() {
    let Some(data) = dataset() else { return };
    let out =
        vista(&["knn", "--pixels", "--train", data, "--limit", "300", "--test-limit", "120", "--k", "20", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (doc["train"].as_u64(), doc["test"].as_u64(), doc["dim"].as_u64()),
        (Some(300), Some(120), Some(3 * 784))
    );
    let got = doc["results"][0]["top1"].as_f64().unwrap();

    let set = |split| vista::data::LabelledSet::open(std::path::Path::new(data), split, None).unwrap();
    let (train, test) = (set(vista::data::Split::Train), set(vista::data::Split::Test));
    let feats = |s: &vista::data::LabelledSet, n: usize| -> Vec<(Vec<f64>, usize)> {
        let (mean, std) = (vista::image::IMAGENET_MEAN, vista::image::IMAGENET_STD);
        s.items[..n]
            .iter()
            .map(|it| {
                let img = it.load(&Default::default()).unwrap();
                let mut v: Vec<f64> = (0..3)
                    .flat_map(|c| img.pixels().map(move |p| ((f32::from(p[c]) / 255.0 - mean[c]) / std[c]) as f64))
                    .collect();
                let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
                v.iter_mut().for_each(|x| *x /= norm);
                (v, it.label)
            })
            .collect()
    };
    let (bank, queries) = (feats(&train, 300), feats(&test, 120));
    let mut correct = 0;
    for (q, label) in &queries {
        let mut sims: Vec<(f64, usize)> =
            bank.iter().map(|(b, l)| (b.iter().zip(q).map(|(x, y)| x * y).sum::<f64>(), *l)).collect();
        sims.sort_by(|a, b| b.0.total_cmp(&a.0));
        let mut votes = [0f64; 10];
        for (s, l) in &sims[..20] {
            votes[*l] += (s / 0.07).exp();
        }
        let best = (0..10).max_by(|&a, &b| votes[a].total_cmp(&votes[b]).then(b.cmp(&a))).unwrap();
        correct += usize::from(best == *label);
    }
    let want = 100.0 * correct as f64 / 120.0;
    assert!((got - want).abs() < 1e-9, "vista {got} %, brute force {want} %");
}

/// `vista fit` on the first 1,000 Fashion-MNIST training images with real features: a small
/// ViT backbone trained by `vista train dino` (committed, `fixtures/fit/fmnist_dino_vit_tiny`)
/// and the raw pixels, k-NN and logistic regression, 5-fold cross-validation and learning
/// curves for 1–16 images per class. scikit-learn, refitted on the same features, folds, draws
/// and hyper-parameters (`tools/reference/fit_sklearn.py --golden`), got the accuracies in
/// `fixtures/fit/fashion_mnist_sklearn.json`; vista must be within 0.5 points of each (the
/// issue's bound: both solve the same convex problems to a tolerance, and k-NN ties may break
/// differently).
#[test]
fn fit_on_fashion_mnist_agrees_with_scikit_learn() {
    let Some(data) = dataset() else { return };
    let fit = fixtures().join("fit");
    let backbone = fit.join("fmnist_dino_vit_tiny.safetensors");
    let out = tmpdir("fmnist-fit");
    let report = out.join("report.json");
    #[rustfmt::skip]
    let o = vista(&[
        "fit", data, "--limit", "1000", "--dino", backbone.to_str().unwrap(), "--pixels",
        "--methods", "knn,logistic", "--shots", "1,2,4,8,16", "--repeats", "2",
        "--report", report.to_str().unwrap(), "--plots", out.to_str().unwrap(), "--no-cache",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let ours: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let theirs: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fit.join("fashion_mnist_sklearn.json")).unwrap()).unwrap();
    let key = |v: &serde_json::Value| (v["backbone"].as_str().unwrap().to_string(), v["method"].to_string());
    let mut checked = 0;
    for want in theirs["results"].as_array().unwrap() {
        let got = ours["results"].as_array().unwrap().iter().find(|r| key(r) == key(want)).expect("a result row");
        let (a, b) = (100.0 * got["accuracy"].as_f64().unwrap(), 100.0 * want["accuracy"].as_f64().unwrap());
        assert!((a - b).abs() <= 0.5, "{:?}: vista {a:.2} %, scikit-learn {b:.2} %", key(want));
        checked += 1;
    }
    for want in theirs["curves"].as_array().unwrap() {
        let got = ours["curves"].as_array().unwrap().iter().find(|c| key(c) == key(want)).expect("a curve");
        for (p, q) in got["points"].as_array().unwrap().iter().zip(want["points"].as_array().unwrap()) {
            assert_eq!(p["shots"], q["shots"]);
            let (a, b) = (100.0 * p["accuracy"].as_f64().unwrap(), 100.0 * q["accuracy"].as_f64().unwrap());
            assert!(
                (a - b).abs() <= 0.5,
                "{:?} at {} shots: vista {a:.2} %, scikit-learn {b:.2} %",
                key(want),
                p["shots"]
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 4 + 4 * 5, "every row and curve point of the golden");
    // More labels help every method on real features.
    for c in ours["curves"].as_array().unwrap() {
        let acc: Vec<f64> = c["points"].as_array().unwrap().iter().map(|p| p["accuracy"].as_f64().unwrap()).collect();
        assert!(acc[4] > acc[0] + 0.1, "{:?}: {acc:?}", key(c));
    }
    for f in ["curves.png", "confusion.png", "confused.png"] {
        assert!(::image::open(out.join(f)).is_ok(), "{f}");
    }
    std::fs::remove_dir_all(out).unwrap();
}

/// CLIP trained from scratch on 1,024 Fashion-MNIST images captioned "a photo of a {class}.":
/// after 3 epochs its zero-shot top-1 on 1,000 test images is far above chance (10 %). Every
/// draw is seeded, so the number is the same on every run of the same build (measured 0.43;
/// `tools/bench/bench_clip_train.py` compares longer runs with open_clip).
#[test]
fn clip_trained_on_fashion_mnist_beats_chance_zero_shot() {
    let Some(data) = dataset() else { return };
    let out = tmpdir("fmnist-clip").join("run");
    let o = vista(&[
        "train",
        "clip",
        "--data",
        data,
        "--limit",
        "1024",
        "--image-size",
        "28",
        "--patch-size",
        "4",
        "--width",
        "64",
        "--layers",
        "2",
        "--text-width",
        "64",
        "--text-layers",
        "2",
        "--text-heads",
        "2",
        "--embed-dim",
        "64",
        "--context-length",
        "16",
        "--epochs",
        "3",
        "--batch-size",
        "64",
        "--lr",
        "2e-3",
        "--warmup",
        "10",
        "--zero-shot-limit",
        "1000",
        "--eval-every",
        "0",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let (start, trained) =
        (report["start"]["zero_shot_top1"].as_f64().unwrap(), report["trained"]["zero_shot_top1"].as_f64().unwrap());
    assert!(trained >= 0.3, "zero-shot top-1 {trained} after 3 epochs (at the start {start})");
    assert!(trained > start + 0.15, "{start} -> {trained}");
}
