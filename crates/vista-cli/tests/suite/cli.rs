//! The `vista` binary end to end on the committed tiny CLIP (real vocabulary) and photos.

use crate::common;

use std::path::PathBuf;

use common::{fixtures, model, stderr, tmpdir, vista};
use std::process::Command;

/// A folder with two real photos, a nested one, a hidden one and a corrupt "jpg".
fn photo_folder(name: &str) -> PathBuf {
    let d = tmpdir(name);
    let src = fixtures().join("preprocess");
    std::fs::copy(src.join("astronaut.png"), d.join("astronaut.png")).unwrap();
    std::fs::create_dir_all(d.join("sub")).unwrap();
    std::fs::copy(src.join("coffee.png"), d.join("sub/coffee.png")).unwrap();
    std::fs::create_dir_all(d.join(".hidden")).unwrap();
    std::fs::copy(src.join("chelsea.png"), d.join(".hidden/chelsea.png")).unwrap();
    std::fs::write(d.join("broken.jpg"), b"\xff\xd8\xff\xe0 definitely not a jpeg").unwrap();
    d
}

#[test]
fn classify_reports_every_image_and_skips_the_corrupt_one_with_exit_2() {
    let dir = photo_folder("classify");
    let out = vista(&[
        "classify",
        dir.to_str().unwrap(),
        "--labels",
        "astronaut,coffee,cat",
        "--json",
        "-k",
        "2",
        "--model",
        &model(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(stderr.contains("broken.jpg"), "the skipped file is named: {stderr}");
    let lines: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2, "two decodable, non-hidden images: {stdout}");
    for l in &lines {
        let preds = l["predictions"].as_array().unwrap();
        assert_eq!(preds.len(), 2);
        let p0 = preds[0]["prob"].as_f64().unwrap();
        let p1 = preds[1]["prob"].as_f64().unwrap();
        assert!(p0 >= p1 && p0 + p1 <= 1.0 + 1e-6 && p1 > 0.0, "{l}");
    }
    assert!(lines[0]["path"].as_str().unwrap().ends_with("astronaut.png"));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn classify_csv_has_a_header_and_one_row_per_rank() {
    let img = fixtures().join("preprocess/coffee.png");
    let out = vista(&["classify", img.to_str().unwrap(), "--labels", "cup, cat", "--csv", "--model", &model()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let s = String::from_utf8_lossy(&out.stdout);
    let rows: Vec<&str> = s.lines().collect();
    assert_eq!(rows[0], "path,rank,label,probability");
    assert_eq!(rows.len(), 3, "{s}");
    assert!(rows[1].contains(",1,") && rows[2].contains(",2,"));
}

#[test]
fn embed_texts_to_npy_writes_rows_and_names() {
    let dir = tmpdir("embed");
    let out_path = dir.join("t.npy");
    let out = vista(&[
        "embed",
        "--text",
        "a red saree",
        "--text",
        "a kurta",
        "--out",
        out_path.to_str().unwrap(),
        "--model",
        &model(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let bytes = std::fs::read(&out_path).unwrap();
    let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    assert!(std::str::from_utf8(&bytes[10..10 + hlen]).unwrap().contains("(2, 16)"));
    assert_eq!(bytes.len(), 10 + hlen + 2 * 16 * 4);
    // Normalised rows.
    let row0: Vec<f32> =
        bytes[10 + hlen..10 + hlen + 64].chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    let norm: f32 = row0.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-5, "norm {norm}");
    assert_eq!(std::fs::read_to_string(dir.join("t.txt")).unwrap(), "a red saree\na kurta\n");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn offline_without_cached_files_says_how_to_supply_them() {
    let home = tmpdir("hf-home");
    let out = Command::new(env!("CARGO_BIN_EXE_vista"))
        .args(["embed", "--text", "hello", "--model", "openai/clip-vit-base-patch32"])
        .env("HF_HOME", &home)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("openai/clip-vit-base-patch32") && err.contains("HF_HUB_OFFLINE"), "{err}");
    assert!(err.contains("local checkpoint file or folder"), "{err}");
    let _ = std::fs::remove_dir_all(home);
}

#[test]
fn bad_arguments_are_named() {
    let img = fixtures().join("preprocess/coffee.png");
    let out = vista(&["classify", img.to_str().unwrap(), "--labels", "only-one", "--model", &model()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least two labels"));
    let out = vista(&["classify", img.to_str().unwrap(), "--labels", "a,b", "--model", "./no/such/dir"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no/such/dir"));
    let out = vista(&[
        "classify",
        img.to_str().unwrap(),
        "--labels",
        "a,b",
        "--templates",
        "/no/such/templates.txt",
        "--model",
        &model(),
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("templates"));
}

#[test]
fn fit_compares_backbones_and_methods_by_cross_validation() {
    let dir = tmpdir("fit");
    let data = dir.join("shop");
    let colours = [("kurta", [200u8, 30, 30]), ("lehenga", [30, 200, 30]), ("saree", [30, 30, 200])];
    for (c, (name, rgb)) in colours.iter().enumerate() {
        std::fs::create_dir_all(data.join(name)).unwrap();
        let n = if c == 2 { 1 } else { 6 };
        for i in 0..n {
            let img = vista::image::RgbImage::from_fn(24, 24, |x, y| {
                let noise = ((x * 7 + y * 13 + i * 31) % 40) as u8;
                vista::image::Rgb(rgb.map(|v| v.saturating_add(noise)))
            });
            img.save(data.join(name).join(format!("{i}.png"))).unwrap();
        }
    }
    std::fs::write(data.join("kurta").join("broken.png"), b"not a png").unwrap();
    std::fs::create_dir_all(data.join("dupatta")).unwrap();
    let report = dir.join("report.json");
    let o = vista(&[
        "fit",
        data.to_str().unwrap(),
        "--pixels",
        "--clip",
        &model(),
        "--folds",
        "3",
        "--report",
        report.to_str().unwrap(),
        "--cache-dir",
        dir.join("cache").to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("`saree` has 1 image"), "{}", stderr(&o));
    assert!(stderr(&o).contains("broken.png"), "{}", stderr(&o));
    assert!(stderr(&o).contains("class folder `dupatta` holds no image file: left out"), "{}", stderr(&o));
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(doc, serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(&report).unwrap()).unwrap());
    assert_eq!(doc["folds"], 3);
    assert_eq!(doc["empty_classes"], serde_json::json!(["dupatta"]));
    let rows = doc["results"].as_array().unwrap();
    let methods: Vec<(&str, &str)> =
        rows.iter().map(|r| (r["backbone"].as_str().unwrap(), r["method"].as_str().unwrap())).collect();
    assert_eq!(rows.len(), 5 + 2, "{methods:?}");
    assert!(methods.contains(&("pixels", "knn")) && !methods.contains(&("pixels", "zero-shot")));
    for r in rows {
        let folds = r["fold_accuracy"].as_array().unwrap();
        assert_eq!(folds.len(), 3);
        let confusion: u64 = r["confusion"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|row| row.as_array().unwrap())
            .map(|v| v.as_u64().unwrap())
            .sum();
        assert_eq!(confusion, 12, "every image of the two testable classes tested once (the broken one skipped)");
    }
    // Colour alone separates the classes: the pixel baseline gets them all.
    let pixel_knn = rows.iter().find(|r| r["backbone"] == "pixels" && r["method"] == "knn").unwrap();
    assert_eq!(pixel_knn["accuracy"], 1.0);
    let o = vista(&["fit", data.to_str().unwrap()]);
    assert!(!o.status.success() && stderr(&o).contains("nothing to compare"), "{}", stderr(&o));

    // Second run: the CLIP features come from the cache; the data folder's labels.txt gives
    // one class its own prompts (the zero-shot head changes, nothing else).
    std::fs::write(data.join("labels.txt"), "# prompts\nsaree: a blue {} | a draped blue cloth\n").unwrap();
    let (m, cache) = (model(), dir.join("cache"));
    let again = |extra: &[&str]| {
        let mut a = vec!["fit", data.to_str().unwrap(), "--clip", &m, "--folds", "3", "--json"];
        a.extend(["--cache-dir", cache.to_str().unwrap()]);
        a.extend(extra);
        vista(&a)
    };
    let o = again(&["--methods", "knn,zero-shot"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let cached: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(cached["backbones"][0]["from_cache"], true);
    assert_eq!(doc["backbones"][0]["from_cache"], false);
    assert!(cached["prompts"].as_str().unwrap().ends_with("labels.txt"));
    assert!(stderr(&o).contains("1 classes use their own prompts"), "{}", stderr(&o));
    let row = |d: &serde_json::Value, m: &str| {
        d["results"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["backbone"] == "clip:openclip_e2e" && r["method"] == m)
            .cloned()
    };
    assert_eq!(
        row(&cached, "knn"),
        row(&doc, "knn").map(|mut r| {
            r["cv_seconds"] = cached["results"][0]["cv_seconds"].clone();
            r["seconds_per_image"] = cached["results"][0]["seconds_per_image"].clone();
            r
        })
    );
    std::fs::write(data.join("labels.txt"), "sari: a blue sari\n").unwrap();
    let o = again(&["--methods", "zero-shot"]);
    assert!(!o.status.success() && stderr(&o).contains("labels.txt: line 1: `sari`"), "{}", stderr(&o));
    std::fs::remove_file(data.join("labels.txt")).unwrap();

    // The same set as a CSV of file,label (paths relative to the CSV).
    let csv = dir.join("labels.csv");
    let mut text = String::from("file,label\n");
    for (name, _) in &colours {
        for e in std::fs::read_dir(data.join(name)).unwrap() {
            let f = e.unwrap().file_name().to_string_lossy().to_string();
            text += &format!("shop/{name}/{f},\"{name}\"\n");
        }
    }
    std::fs::write(&csv, text).unwrap();
    let o = vista(&["fit", csv.to_str().unwrap(), "--pixels", "--folds", "3", "--methods", "knn", "--json"]);
    let from_csv: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(from_csv["classes"], doc["classes"]);
    assert_eq!(from_csv["images"], doc["images"]);
    std::fs::write(&csv, "a.png,kurta,extra\n").unwrap();
    let o = vista(&["fit", csv.to_str().unwrap(), "--pixels"]);
    assert!(!o.status.success() && stderr(&o).contains("labels.csv:1"), "{}", stderr(&o));

    // CLIP and DINO side by side.
    let dino = fixtures().join("dino/v1_hf");
    let o = vista(&[
        "fit",
        data.to_str().unwrap(),
        "--clip",
        &model(),
        "--dino",
        dino.to_str().unwrap(),
        "--concat",
        "--methods",
        "knn",
        "--no-cache",
        "--json",
    ]);
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let names: Vec<&str> = doc["results"].as_array().unwrap().iter().map(|r| r["backbone"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["clip:openclip_e2e", "dino:v1_hf", "clip:openclip_e2e+dino:v1_hf"]);
    let dims: Vec<u64> = doc["backbones"].as_array().unwrap().iter().map(|b| b["dim"].as_u64().unwrap()).collect();
    assert_eq!(dims[2], dims[0] + dims[1]);

    // Learning curves and pictures.
    let plots = dir.join("plots");
    let o = vista(&[
        "fit",
        data.to_str().unwrap(),
        "--pixels",
        "--methods",
        "knn,logistic",
        "--shots",
        "1,2,4",
        "--repeats",
        "2",
        "--plots",
        plots.to_str().unwrap(),
        "--json",
    ]);
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let curves = doc["curves"].as_array().unwrap();
    assert_eq!(curves.len(), 2);
    for c in curves {
        let shots: Vec<u64> = c["points"].as_array().unwrap().iter().map(|p| p["shots"].as_u64().unwrap()).collect();
        assert_eq!(shots, vec![1, 2, 4]);
        assert!(c["points"].as_array().unwrap().iter().all(|p| p["accuracies"].as_array().unwrap().len() == 2));
    }
    for f in ["curves.png", "confusion.png", "confused.png"] {
        assert!(::image::open(plots.join(f)).is_ok(), "{f}");
    }
    assert!(doc["most_confused"].is_array());

    // The chosen classifier, saved and used: every training image comes back with its class.
    for (method, backbone) in [("knn", "pixels"), ("logistic", "pixels"), ("tip-adapter", "clip:openclip_e2e")] {
        let head = dir.join(format!("{method}.safetensors"));
        let o = vista(&[
            "fit",
            data.to_str().unwrap(),
            "--pixels",
            "--clip",
            &model(),
            "--folds",
            "2",
            "--methods",
            method,
            "--save-head",
            head.to_str().unwrap(),
            "--use-backbone",
            backbone,
            "--no-cache",
        ]);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        let info: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(head.with_extension("json")).unwrap()).unwrap();
        assert_eq!(info["method"], method);
        assert_eq!(info["classes"], serde_json::json!(["kurta", "lehenga", "saree"]));
        let o = vista(&["classify", "--head", head.to_str().unwrap(), data.to_str().unwrap(), "--json", "-k", "1"]);
        assert_eq!(o.status.code(), Some(2), "the broken image is skipped: {}", stderr(&o));
        let lines: Vec<serde_json::Value> =
            String::from_utf8_lossy(&o.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 13);
        if backbone == "pixels" {
            // (The one-image class may lose to the regularisation; the others may not.)
            for l in &lines {
                let path = l["path"].as_str().unwrap();
                if let Some(want) = ["kurta", "lehenga"].into_iter().find(|c| path.contains(&format!("/{c}/"))) {
                    assert_eq!(l["predictions"][0]["label"], want, "{method}: {path}");
                }
            }
        }
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn serve_refuses_to_expose_itself_without_a_key() {
    let o = vista(&["serve", "--host", "0.0.0.0", "--port", "0"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("needs an API key"), "{}", stderr(&o));
}
