//! `vista features`, `vista attention`, `vista knn` and `vista linear-probe` on the tiny DINO
//! fixtures.

use crate::common;

use std::path::{Path, PathBuf};

use common::{fixtures, stderr, stdout, tmpdir, vista};
use vista::data::npy;
use vista::image::{Rgb, RgbImage};

/// DINO ViT, 2 heads (not in the file: `--num-heads 2`), patch 8, width 32.
fn v1() -> String {
    fixtures().join("dino/v1_official/dino_vit_tiny_pretrain.pth").display().to_string()
}

/// DINOv2 with 4 registers, 4 heads, patch 7, width 32 (transformers format).
fn v2_reg() -> String {
    fixtures().join("dino/v2_hf_reg4_swiglu").display().to_string()
}

fn image(path: &Path, w: u32, h: u32, colour: [u8; 3], seed: u32) {
    RgbImage::from_fn(w, h, |x, y| Rgb(colour.map(|c| c.saturating_add(((x * 7 + y * 3 + seed * 13) % 40) as u8))))
        .save(path)
        .unwrap();
}

/// The JSON header of a `.safetensors` file (tensor dtypes, shapes, and `__metadata__`).
fn safetensors_header(path: &Path) -> serde_json::Value {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    serde_json::from_slice(&bytes[8..8 + n]).unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn features_skip_a_corrupt_file_with_exit_2_and_write_the_other_rows() {
    let dir = tmpdir("dino-features");
    let imgs = dir.join("imgs");
    std::fs::create_dir_all(&imgs).unwrap();
    image(&imgs.join("a.png"), 40, 30, [200, 30, 30], 0);
    image(&imgs.join("b.png"), 30, 40, [30, 200, 30], 1);
    std::fs::write(imgs.join("c-broken.png"), b"\x89PNG\r\n\x1a\ntruncated").unwrap();
    image(&imgs.join("d.png"), 32, 32, [30, 30, 200], 2);
    let m = v1();
    let out = dir.join("feats.npy");
    let o = vista(&["features", s(&imgs), "-m", &m, "--num-heads", "2", "-o", s(&out), "--batch", "2"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("c-broken.png"), "{}", stderr(&o));
    let (shape, values) = npy::read_f32(&out).unwrap();
    assert_eq!(shape, vec![3, 32]);
    assert!(values.iter().all(|v| v.is_finite()));
    let names = std::fs::read_to_string(dir.join("feats.txt")).unwrap();
    let names: Vec<&str> = names.lines().collect();
    assert_eq!(names.len(), 3);
    assert!(names[0].ends_with("a.png") && names[1].ends_with("b.png") && names[2].ends_with("d.png"), "{names:?}");

    // Patch tokens in .npy: eval mode gives one grid (224 / 8 = 28).
    let o = vista(&["features", s(&imgs), "-m", &m, "--num-heads", "2", "--what", "both", "-o", s(&out)]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let (shape, _) = npy::read_f32(&dir.join("feats.patch.npy")).unwrap();
    assert_eq!(shape, vec![3, 28 * 28, 32]);
    let (shape, cls) = npy::read_f32(&out).unwrap();
    assert_eq!(shape, vec![3, 32]);
    assert!(cls.iter().zip(&values).all(|(a, b)| (a - b).abs() <= 1e-4), "batching changed the CLS rows");

    // Whole images of different shapes have different grids: .npy refuses the patches, naming the
    // alternatives; safetensors and JSON lines take them.
    let good = [imgs.join("a.png"), imgs.join("b.png")];
    let whole = ["--mode", "whole", "--max-side", "32", "--num-heads", "2", "-m", &m];
    let mut args = vec!["features", s(&good[0]), s(&good[1]), "--what", "patch", "-o", s(&out)];
    args.extend(whole);
    let o = vista(&args);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains(".safetensors") && stderr(&o).contains("JSON lines"), "{}", stderr(&o));
    let st = dir.join("feats.safetensors");
    let mut args = vec!["features", s(&good[0]), s(&good[1]), "--what", "both", "-o", s(&st)];
    args.extend(whole);
    let o = vista(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let header = safetensors_header(&st);
    assert_eq!(header["cls"]["shape"], serde_json::json!([2, 32]));
    // 40x30 -> 32x24 (3x4 patches); 30x40 -> 24x32 (4x3).
    assert_eq!(header["patch.0"]["shape"], serde_json::json!([12, 32]));
    assert_eq!(header["patch.1"]["shape"], serde_json::json!([12, 32]));
    assert_eq!(header["__metadata__"]["grids"], "[[3,4],[4,3]]");
    assert!(dir.join("feats.txt").is_file());
    let mut args = vec!["features", s(&good[0]), s(&good[1]), "--what", "both", "-o", "-"];
    args.extend(whole);
    let o = vista(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let lines: Vec<serde_json::Value> = stdout(&o).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["grid"], serde_json::json!([3, 4]));
    assert_eq!(lines[1]["grid"], serde_json::json!([4, 3]));
    assert_eq!(lines[0]["cls"].as_array().unwrap().len(), 32);
    assert_eq!(lines[0]["patch"].as_array().unwrap().len(), 12);
    assert_eq!(lines[0]["patch"][0].as_array().unwrap().len(), 32);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn attention_writes_the_image_and_one_panel_per_head() {
    let dir = tmpdir("dino-attention");
    let img = dir.join("shop.png");
    image(&img, 50, 37, [180, 120, 60], 3);
    let (out, maps) = (dir.join("maps.png"), dir.join("maps.npy"));
    let m = v2_reg();
    let o = vista(&["attention", s(&img), "-m", &m, "--max-side", "70", "-o", s(&out), "--save-maps", s(&maps)]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("4 heads"), "{}", stdout(&o));
    // 50x37 -> 70x52 -> 70x49 (10x7 patches of 7); 5 panels in 3 columns, 2 rows, 4 px apart.
    let pic = vista::image::load_rgb(&out, &Default::default()).unwrap();
    assert_eq!(pic.dimensions(), (3 * 70 + 2 * 4, 2 * 49 + 4));
    let source = vista::image::load_rgb(&img, &Default::default()).unwrap();
    let seen = vista::image::resize_exact(&source, 70, 49, vista::image::Filter::Bicubic).unwrap();
    for (x, y, p) in seen.enumerate_pixels() {
        assert_eq!(pic.get_pixel(x, y), p, "panel 0 is the image at ({x}, {y})");
    }
    assert_eq!(pic.get_pixel(72, 10), &Rgb([255, 255, 255]), "gap between panels");
    assert_eq!(pic.get_pixel(pic.width() - 1, pic.height() - 1), &Rgb([255, 255, 255]), "the sixth cell is empty");
    let (shape, values) = npy::read_f32(&maps).unwrap();
    assert_eq!(shape, vec![4, 7, 10]);
    for head in values.chunks(70) {
        let sum: f32 = head.iter().sum();
        assert!(sum > 0.0 && sum <= 1.0 + 1e-5);
    }

    // Threshold masks, one row of panels, eval mode (224 / 7 = 32 patches a side).
    let out2 = dir.join("masks.png");
    let o = vista(&[
        "attention",
        s(&img),
        "-m",
        &m,
        "--mode",
        "eval",
        "--threshold",
        "0.6",
        "--columns",
        "5",
        "--upsample",
        "bilinear",
        "-o",
        s(&out2),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let pic = vista::image::load_rgb(&out2, &Default::default()).unwrap();
    assert_eq!(pic.dimensions(), (5 * 224 + 4 * 4, 224));
    let o = vista(&["attention", s(&img), "-m", &m, "--threshold", "1.5", "-o", s(&out2)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("--threshold"), "{}", stderr(&o));
    std::fs::remove_dir_all(dir).unwrap();
}

/// `root/{train,test}/{red,blue}/*.png`: two colours, two classes.
fn colour_dataset(root: &Path) -> (PathBuf, PathBuf) {
    for (split, n) in [("train", 6u32), ("test", 4)] {
        for (class, colour) in [("blue", [20u8, 30, 210]), ("red", [215, 25, 20])] {
            let d = root.join(split).join(class);
            std::fs::create_dir_all(&d).unwrap();
            for i in 0..n {
                image(&d.join(format!("{i}.png")), 24 + i, 20 + 2 * i, colour, i);
            }
        }
    }
    (root.join("train"), root.join("test"))
}

#[test]
fn knn_runs_end_to_end_and_caches_the_features() {
    let dir = tmpdir("dino-knn");
    let (train, test) = colour_dataset(&dir.join("data"));
    let cache = dir.join("cache");
    let m = v1();
    let args = [
        "knn",
        "--train",
        s(&train),
        "--test",
        s(&test),
        "-m",
        &m,
        "--num-heads",
        "2",
        "--k",
        "1,3,20",
        "--mode",
        "whole",
        "--max-side",
        "32",
        "--cache-dir",
        s(&cache),
    ];
    let o = vista(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    println!("{text}");
    assert!(text.contains("12 train / 8 test"), "{text}");
    assert!(stderr(&o).contains("k = [20] left out"), "{}", stderr(&o));
    let rows: Vec<Vec<f64>> = text
        .lines()
        .filter_map(|l| {
            let v: Vec<f64> = l.split_whitespace().map(|w| w.parse().ok()).collect::<Option<_>>()?;
            (v.len() == 3).then_some(v)
        })
        .collect();
    assert_eq!(rows.iter().map(|r| r[0]).collect::<Vec<_>>(), vec![1.0, 3.0], "{text}");
    for r in &rows {
        assert!((0.0..=100.0).contains(&r[1]) && r[2] >= r[1] && r[2] <= 100.0, "{text}");
    }
    let cached: Vec<_> = walk(&cache);
    assert_eq!(cached.len(), 2, "one file per data set: {cached:?}");
    assert!(cached.iter().all(|p| p.extension().unwrap() == "safetensors"));

    // Second run: from the cache, same numbers; JSON output.
    let mut json_args = args.to_vec();
    json_args.push("--json");
    let o = vista(&json_args);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stderr(&o).matches("from the cache").count(), 2, "{}", stderr(&o));
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(doc["train"], 12);
    assert_eq!(doc["classes"], 2);
    let results = doc["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    for (r, row) in results.iter().zip(&rows) {
        assert_eq!(r["k"].as_f64().unwrap(), row[0]);
        assert!((r["top1"].as_f64().unwrap() - row[1]).abs() < 0.01);
    }

    // Linear probe on the same (cached) features.
    let mut probe = vec!["linear-probe", "--epochs", "30", "--probe-batch", "4"];
    probe.extend(&args[1..9]);
    probe.extend(&args[11..]);
    let o = vista(&probe);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("test top-1"), "{}", stdout(&o));
    assert_eq!(stderr(&o).matches("from the cache").count(), 2, "{}", stderr(&o));
    std::fs::remove_dir_all(dir).unwrap();
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn write_idx(dir: &Path, prefix: &str, images: &[Vec<u8>], labels: &[u8]) {
    let mut bytes = vec![0, 0, 8, 3];
    for d in [images.len() as u32, 28, 28] {
        bytes.extend(d.to_be_bytes());
    }
    for img in images {
        bytes.extend(img);
    }
    std::fs::write(dir.join(format!("{prefix}-images-idx3-ubyte")), bytes).unwrap();
    let mut bytes = vec![0, 0, 8, 1];
    bytes.extend((labels.len() as u32).to_be_bytes());
    bytes.extend(labels);
    std::fs::write(dir.join(format!("{prefix}-labels-idx1-ubyte")), bytes).unwrap();
}

#[test]
fn knn_reads_an_idx_folder_with_both_splits() {
    let dir = tmpdir("dino-knn-idx");
    let data = dir.join("mnistlike");
    std::fs::create_dir_all(&data).unwrap();
    let img = |label: u8, i: usize| -> Vec<u8> {
        (0..784).map(|p| if label == 0 { ((p + i) % 30) as u8 } else { 200 + ((p * 3 + i) % 50) as u8 }).collect()
    };
    let labels: Vec<u8> = (0..10).map(|i| (i % 2) as u8).collect();
    let imgs: Vec<Vec<u8>> = labels.iter().enumerate().map(|(i, &l)| img(l, i)).collect();
    write_idx(&data, "train", &imgs, &labels);
    write_idx(&data, "t10k", &imgs[..6], &labels[..6]);
    let m = v1();
    let o = vista(&[
        "knn",
        "--train",
        s(&data),
        "-m",
        &m,
        "--num-heads",
        "2",
        "--k",
        "1,5",
        "--limit",
        "8",
        "--mode",
        "whole",
        "--max-side",
        "16",
        "--no-cache",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!((doc["train"].as_u64(), doc["test"].as_u64()), (Some(8), Some(6)));
    assert_eq!(doc["results"].as_array().unwrap().len(), 2);
    let o = vista(&["knn", "--train", s(&dir), "-m", &m, "--num-heads", "2", "--no-cache"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("--test"), "{}", stderr(&o));
    std::fs::remove_dir_all(dir).unwrap();
}
