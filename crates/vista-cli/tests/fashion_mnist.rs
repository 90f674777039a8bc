//! The whole DINO evaluation path on real data: Debian's `dataset-fashion-mnist` (IDX files),
//! a tiny random-weight DINO backbone from the committed fixtures, `vista knn` end to end.
//!
//! `.ci/run` installs the package and sets `VISTA_REQUIRE_DATASETS=1`, so in CI a missing
//! dataset is a failure; elsewhere the test says how to get it and passes.

mod common;

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
