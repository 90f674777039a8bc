//! `vista index`, `search` and `dupes` end to end on generated photos with the committed tiny CLIP:
//! incremental updates (new, changed, deleted, renamed), a real `kill -9` mid-run, and search
//! results against a brute-force reference.

use crate::common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use vista::image::RgbImage;
use vista::index::IndexDb;

use common::{fixtures, model, tmpdir, vista};

/// A deterministic, distinct picture per seed.
fn picture(seed: u32, size: u32) -> RgbImage {
    RgbImage::from_fn(size, size, |x, y| {
        let v = x.wrapping_mul(31 + seed) ^ y.wrapping_mul(17 + 3 * seed) ^ seed.wrapping_mul(2654435761);
        vista::image::Rgb([(v % 251) as u8, ((v >> 3) % 241) as u8, ((x + y + seed) % 256) as u8])
    })
}

fn report(out: &Output) -> serde_json::Value {
    let s = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(s.trim())
        .unwrap_or_else(|e| panic!("{e}: stdout {s} stderr {}", String::from_utf8_lossy(&out.stderr)));
    v["report"].clone()
}

fn index(dir: &Path) -> serde_json::Value {
    let out = vista(&["index", dir.to_str().unwrap(), "--model", &model(), "--json", "--batch", "4"]);
    assert!(out.status.code() == Some(0) || out.status.code() == Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    report(&out)
}

#[test]
fn new_changed_deleted_and_renamed_files_are_handled_incrementally() {
    let dir = tmpdir("incremental");
    for i in 0..6 {
        picture(i, 40).save(dir.join(format!("p{i}.png"))).unwrap();
    }
    std::fs::create_dir_all(dir.join(".hidden")).unwrap();
    picture(99, 40).save(dir.join(".hidden/secret.png")).unwrap();
    let r = index(&dir);
    assert_eq!((r["files"].as_u64(), r["new"].as_u64(), r["embedded"].as_u64()), (Some(6), Some(6), Some(6)), "{r}");
    // Nothing changed: nothing embedded.
    let r = index(&dir);
    assert_eq!((r["unchanged"].as_u64(), r["embedded"].as_u64()), (Some(6), Some(0)), "{r}");
    // Changed content, a deletion, a rename and a brand-new file.
    std::thread::sleep(Duration::from_millis(20));
    picture(50, 40).save(dir.join("p0.png")).unwrap();
    std::fs::remove_file(dir.join("p1.png")).unwrap();
    std::fs::create_dir_all(dir.join("moved")).unwrap();
    std::fs::rename(dir.join("p2.png"), dir.join("moved/p2-renamed.png")).unwrap();
    picture(60, 40).save(dir.join("p6.png")).unwrap();
    let r = index(&dir);
    assert_eq!(r["changed"].as_u64(), Some(1), "{r}");
    assert_eq!(r["deleted"].as_u64(), Some(2), "p1 and p2's old path: {r}");
    assert_eq!(r["renamed"].as_u64(), Some(1), "{r}");
    assert_eq!(r["new"].as_u64(), Some(1), "{r}");
    assert_eq!(r["embedded"].as_u64(), Some(2), "only the changed and the new file: {r}");
    let db = IndexDb::open(&dir.join(".vista/index.sqlite")).unwrap();
    let (paths, set) = db.load_vectors(&model(), None).unwrap();
    assert_eq!(set.len(), 6);
    assert!(paths.contains(&dir.join("moved/p2-renamed.png")));
    assert!(!paths.iter().any(|p| p.to_string_lossy().contains(".hidden")));
    // A corrupt file is recorded and skipped (exit 2), and not retried until it changes.
    std::fs::write(dir.join("broken.jpg"), b"not a jpeg").unwrap();
    let out = vista(&["index", dir.to_str().unwrap(), "--model", &model(), "--json"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(report(&out)["failed"].as_u64(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("broken.jpg"));
    let out = vista(&["index", dir.to_str().unwrap(), "--model", &model(), "--json"]);
    assert_eq!(report(&out)["failed"].as_u64(), Some(0), "not retried while unchanged");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn kill_9_mid_run_keeps_committed_batches_and_a_rerun_finishes_the_rest() {
    let dir = tmpdir("kill");
    let n = 40;
    for i in 0..n {
        picture(i, 48).save(dir.join(format!("img{i:04}.png"))).unwrap();
    }
    let db_path = dir.join(".vista/index.sqlite");
    // The run freezes right after its 5th committed batch (VISTA_FREEZE_AT), so the kill lands
    // mid-run at a known point, whatever the machine's speed.
    let mut child = Command::new(env!("CARGO_BIN_EXE_vista"))
        .args(["index", dir.to_str().unwrap(), "--model", &model(), "--batch", "1", "--json"])
        .env("VISTA_FREEZE_AT", "index-batches:5")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("stderr.txt")).unwrap())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let mut committed = 0;
    while committed < 5 {
        assert!(start.elapsed() < Duration::from_secs(120), "no 5 batches committed in 2 minutes");
        if let Some(status) = child.try_wait().unwrap() {
            let stderr = std::fs::read_to_string(dir.join("stderr.txt")).unwrap_or_default();
            panic!("the run ended ({status}) before its freeze point:\n{stderr}");
        }
        std::thread::sleep(Duration::from_millis(20));
        if let Ok(db) = IndexDb::open(&db_path) {
            committed = db.count_embeddings(&model()).unwrap_or(0);
        }
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert_eq!(committed, 5, "the run froze after its 5th batch");
    let db = IndexDb::open(&db_path).expect("the database opens after kill -9");
    let kept = db.count_embeddings(&model()).unwrap();
    assert!(kept >= committed && kept < n as usize, "kept {kept} of {n} (committed {committed} when killed)");
    drop(db);
    let r = index(&dir);
    assert_eq!(r["embedded"].as_u64(), Some((n as usize - kept) as u64), "the rerun embeds only the rest: {r}");
    let db = IndexDb::open(&db_path).unwrap();
    assert_eq!(db.count_embeddings(&model()).unwrap(), n as usize);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn search_results_equal_a_brute_force_reference_and_dupes_find_copies() {
    let dir = tmpdir("search");
    for i in 0..12 {
        picture(i, 48).save(dir.join(format!("s{i:02}.png"))).unwrap();
    }
    std::fs::copy(dir.join("s03.png"), dir.join("s03-copy.png")).unwrap();
    index(&dir);
    let db_arg = dir.join(".vista/index.sqlite");
    let search = |image: &str| {
        let db = db_arg.to_str().unwrap();
        vista(&[
            "search",
            "a red saree",
            "-kurta",
            "--image",
            image,
            "--db",
            db,
            "--model",
            &model(),
            "--top",
            "5",
            "--json",
        ])
    };
    // "0.5:" is not an image: a clear error naming it.
    assert_eq!(search("0.5:").status.code(), Some(1));
    let q_img = dir.join("s05.png");
    let out = search(&format!("0.5:{}", q_img.display()));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got: Vec<(String, f64)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["path"].as_str().unwrap().to_string(), v["score"].as_f64().unwrap())
        })
        .collect();
    assert_eq!(got.len(), 5);

    // Reference: the same query computed here, scored against every stored vector by hand.
    let p = vista::clip::ClipPipeline::load(&model(), None, &candle_core::Device::Cpu).unwrap();
    use vista::apps::query::{embed, parse_image, parse_text};
    let terms = vec![
        parse_text("a red saree").unwrap(),
        parse_text("-kurta").unwrap(),
        parse_image(&format!("0.5:{}", q_img.display())),
    ];
    let q = embed(&p, &terms, &vista::apps::Templates::Default).unwrap();
    let db = IndexDb::open(&db_arg).unwrap();
    let (paths, set) = db.load_vectors(&model(), None).unwrap();
    let mut all: Vec<(usize, f32)> =
        (0..set.len()).map(|i| (i, set.row(i).iter().zip(&q).map(|(a, b)| a * b).sum::<f32>())).collect();
    all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    for (k, (path, score)) in got.iter().enumerate() {
        // The k-th best score, and the returned file really has the score reported (files with
        // equal scores, like the copied one, may come in either order).
        assert!((score - all[k].1 as f64).abs() < 1e-4, "rank {k}: {score} vs {}", all[k].1);
        let i = paths.iter().position(|p| &p.display().to_string() == path).unwrap();
        let own = all.iter().find(|(j, _)| *j == i).unwrap().1;
        assert!((score - own as f64).abs() < 1e-4, "{path}: reported {score}, brute force {own}");
    }

    let out =
        vista(&["dupes", "--db", db_arg.to_str().unwrap(), "--model", &model(), "--json", "--threshold", "0.999"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let groups: Vec<Vec<String>> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(
        groups.iter().any(|g| g.len() == 2
            && g.iter().any(|p| p.ends_with("s03.png"))
            && g.iter().any(|p| p.ends_with("s03-copy.png"))),
        "{groups:?}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn several_models_live_side_by_side_in_one_index() {
    let dir = tmpdir("models");
    for i in 0..5 {
        picture(i, 40).save(dir.join(format!("m{i}.png"))).unwrap();
    }
    // A second model: the same checkpoint under another folder is another model id.
    let other = tmpdir("models-other-ckpt");
    for f in ["open_clip_config.json", "open_clip_model.safetensors"] {
        std::fs::copy(Path::new(&model()).join(f), other.join(f)).unwrap();
    }
    let other_model = other.display().to_string();
    assert_eq!(index(&dir)["embedded"].as_u64(), Some(5));
    let out = vista(&["index", dir.to_str().unwrap(), "--model", &other_model, "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(report(&out)["embedded"].as_u64(), Some(5), "the second model embeds everything once");
    assert_eq!(index(&dir)["embedded"].as_u64(), Some(0), "the first model's embeddings are still there");
    let db = IndexDb::open(&dir.join(".vista/index.sqlite")).unwrap();
    assert_eq!(db.count_embeddings(&model()).unwrap(), 5);
    assert_eq!(db.count_embeddings(&other_model).unwrap(), 5);
    assert_eq!(db.models().unwrap().len(), 2);
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_dir_all(other);
}

#[test]
fn a_tree_that_cannot_hold_its_index_gets_one_in_the_data_directory() {
    // Tests run as root, which writes through permissions; a file named `.vista` blocks the
    // index folder just as a read-only tree does.
    let dir = tmpdir("readonly");
    picture(1, 40).save(dir.join("a.png")).unwrap();
    std::fs::write(dir.join(".vista"), b"in the way").unwrap();
    let data = tmpdir("readonly-data");
    let run = |args: &[&str], cwd: &Path| {
        Command::new(env!("CARGO_BIN_EXE_vista"))
            .args(args)
            .current_dir(cwd)
            .env("XDG_DATA_HOME", &data)
            .output()
            .unwrap()
    };
    let out = run(&["index", dir.to_str().unwrap(), "--model", &model(), "--json"], &dir);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let db = v["db"].as_str().unwrap();
    assert!(db.starts_with(data.to_str().unwrap()), "index at {db}");
    // `search` run inside the tree finds that index without --db.
    let out = run(&["search", "a photo", "--model", &model(), "--json", "--no-update"], &dir);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("a.png"));
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_dir_all(data);
}

/// Connected components of the pairs scoring `>= threshold`, brute force (groups of two or more,
/// each sorted, ordered by their first member), as file names.
fn reference_groups(names: &[String], sims: &[Vec<f32>], threshold: f32) -> Vec<Vec<String>> {
    let n = names.len();
    let mut label: Vec<usize> = (0..n).collect();
    let mut changed = true;
    while changed {
        changed = false;
        for i in 0..n {
            for j in 0..n {
                if i != j && sims[i][j] >= threshold && label[j] > label[i] {
                    label[j] = label[i];
                    changed = true;
                }
            }
        }
    }
    let mut groups: Vec<Vec<String>> = Vec::new();
    for l in 0..n {
        let mut g: Vec<String> = (0..n).filter(|&i| label[i] == l).map(|i| names[i].clone()).collect();
        if g.len() >= 2 {
            g.sort();
            groups.push(g);
        }
    }
    groups.sort();
    groups
}

#[test]
fn dupes_of_edited_photos_follow_the_threshold_exactly() {
    let dir = tmpdir("dupes-edits");
    let photos = fixtures().join("preprocess");
    // Edits of three photos (re-encoded as JPEG, resized to 80 %, 5 % cropped off each side,
    // brightened) among the originals and four other pictures.
    for stem in ["astronaut", "coffee", "chelsea"] {
        let img = vista::image::load_rgb(photos.join(format!("{stem}.png")), &Default::default()).unwrap();
        let (w, h) = img.dimensions();
        img.save(dir.join(format!("{stem}.png"))).unwrap();
        let mut jpeg = std::fs::File::create(dir.join(format!("{stem}-q80.jpg"))).unwrap();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 80).encode_image(&img).unwrap();
        image::imageops::resize(&img, w * 4 / 5, h * 4 / 5, image::imageops::FilterType::Triangle)
            .save(dir.join(format!("{stem}-small.png")))
            .unwrap();
        image::imageops::crop_imm(&img, w / 20, h / 20, w - w / 10, h - h / 10)
            .to_image()
            .save(dir.join(format!("{stem}-crop.png")))
            .unwrap();
        image::imageops::brighten(&img, 25).save(dir.join(format!("{stem}-bright.png"))).unwrap();
    }
    for i in 0..4 {
        picture(100 + i, 64).save(dir.join(format!("other{i}.png"))).unwrap();
    }
    index(&dir);
    let db_arg = dir.join(".vista/index.sqlite");
    let db = IndexDb::open(&db_arg).unwrap();
    let (paths, set) = db.load_vectors(&model(), None).unwrap();
    let names: Vec<String> = paths.iter().map(|p| p.file_name().unwrap().to_string_lossy().to_string()).collect();
    assert_eq!(names.len(), 19);
    let sims: Vec<Vec<f32>> =
        (0..set.len()).map(|i| (0..set.len()).map(|j| set.score(i, &set.row(j))).collect()).collect();
    let model = model();
    let dupes = |threshold: Option<f32>| -> Vec<Vec<String>> {
        // `--threshold=-0.2`: a negative value as a separate word would read as a flag.
        let t = threshold.map(|t| format!("--threshold={t}"));
        let mut args = vec!["dupes", "--db", db_arg.to_str().unwrap(), "--model", &model, "--json"];
        if let Some(t) = &t {
            args.push(t.as_str());
        }
        let out = vista(&args);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let mut groups: Vec<Vec<String>> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| {
                let g: Vec<String> = serde_json::from_str(l).unwrap();
                let mut g: Vec<String> =
                    g.iter().map(|p| Path::new(p).file_name().unwrap().to_string_lossy().to_string()).collect();
                g.sort();
                g
            })
            .collect();
        groups.sort();
        groups
    };
    // Thresholds halfway between consecutive distinct pair scores (far from any score, so the
    // blocked products and the brute force cannot round across them), and the default.
    let mut scores: Vec<f32> =
        (0..set.len()).flat_map(|i| ((i + 1)..set.len()).map(move |j| (i, j))).map(|(i, j)| sims[i][j]).collect();
    scores.sort_by(f32::total_cmp);
    let mut thresholds: Vec<f32> =
        scores.windows(2).filter(|w| w[1] - w[0] > 1e-4).map(|w| (w[0] + w[1]) / 2.0).step_by(9).collect();
    thresholds.push(0.99);
    let mut distinct_results = std::collections::BTreeSet::new();
    for &t in &thresholds {
        let got = dupes(Some(t));
        assert_eq!(got, reference_groups(&names, &sims, t), "threshold {t}");
        distinct_results.insert(format!("{got:?}"));
    }
    assert!(distinct_results.len() >= 5, "the thresholds should give different groupings: {distinct_results:?}");
    // No --threshold: this model is not a ViT-B/32, so the unanchored default 0.99, said so.
    let default_margin = scores.iter().map(|s| (s - 0.99).abs()).fold(f32::MAX, f32::min);
    if default_margin > 1e-5 {
        assert_eq!(dupes(None), reference_groups(&names, &sims, 0.99));
    }
    let out = vista(&["dupes", "--db", db_arg.to_str().unwrap(), "--model", &model]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no anchor"), "{}", String::from_utf8_lossy(&out.stderr));

    // --stats: quantiles of each image's nearest neighbour, and the histogram.
    let png = dir.join("stats.png");
    let out = vista(&[
        "dupes",
        "--db",
        db_arg.to_str().unwrap(),
        "--model",
        &model,
        "--json",
        "--threshold",
        "0.9",
        "--stats",
        png.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let doc: serde_json::Value = serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    let mut nearest: Vec<f32> = (0..set.len())
        .map(|i| (0..set.len()).filter(|&j| j != i).map(|j| sims[i][j]).fold(f32::MIN, f32::max))
        .collect();
    nearest.sort_by(f32::total_cmp);
    assert_eq!(doc["images"], 19);
    assert_eq!(doc["at_or_above"].as_u64().unwrap() as usize, nearest.iter().filter(|&&s| s >= 0.9).count());
    for (q, want) in [("0", nearest[0]), ("1", nearest[18]), ("0.5", nearest[9])] {
        let got = doc["quantiles"][q].as_f64().unwrap() as f32;
        assert!((got - want).abs() < 1e-5, "quantile {q}: {got} vs {want}");
    }
    let img = vista::image::load_rgb(&png, &Default::default()).unwrap();
    assert_eq!(img.dimensions(), (800, 300));
    let _ = std::fs::remove_dir_all(dir);
}
