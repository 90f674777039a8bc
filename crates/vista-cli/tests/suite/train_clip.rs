//! `vista train clip` on a captions file: trains on the pairs it can read (a missing image, an
//! empty caption, a torn line and a corrupt image are named, skipped and counted, exit code 2),
//! evaluates retrieval on held-out pairs, exports a model `vista embed` loads, resumes after a
//! `kill -9` to the same bits, and gates a fine-tuning run with WiSE-FT on its held-out score.

use crate::common;

use std::path::{Path, PathBuf};

use common::{stderr, tmpdir, vista};
use vista::image::{Rgb, RgbImage};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

const COLOURS: [(&str, [u8; 3]); 4] =
    [("red", [220, 30, 30]), ("green", [30, 200, 40]), ("blue", [30, 40, 220]), ("yellow", [230, 220, 30])];
const SHAPES: [&str; 2] = ["square", "circle"];

/// 32 pictures of coloured squares and circles with their captions, plus bad rows.
fn caption_set(dir: &Path) -> PathBuf {
    let imgs = dir.join("imgs");
    std::fs::create_dir_all(&imgs).unwrap();
    let mut tsv = String::from("filepath\ttitle\n");
    for i in 0..32u32 {
        let (name, c) = COLOURS[i as usize % 4];
        let shape = SHAPES[(i as usize / 4) % 2];
        let img = RgbImage::from_fn(24, 24, |x, y| {
            let (dx, dy) = (x as i32 - 12 + (i % 3) as i32, y as i32 - 12);
            let inside = if shape == "square" { dx.abs() < 7 && dy.abs() < 7 } else { dx * dx + dy * dy < 64 };
            if inside {
                Rgb(c)
            } else {
                Rgb([(120 + i * 3) as u8, 120, 120])
            }
        });
        let f = format!("imgs/{i:02}.png");
        img.save(dir.join(&f)).unwrap();
        tsv.push_str(&format!("{f}\ta {name} {shape}\n"));
    }
    std::fs::write(dir.join("imgs/corrupt.png"), b"\x89PNG\r\n\x1a\nnot really").unwrap();
    tsv.push_str("imgs/corrupt.png\ta broken picture\n");
    tsv.push_str("imgs/missing.png\ta picture that is not there\n");
    tsv.push_str("imgs/00.png\t   \n");
    tsv.push_str("only-one-field\n");
    let path = dir.join("captions.tsv");
    std::fs::write(&path, tsv).unwrap();
    path
}

fn args(data: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = [
        "train",
        "clip",
        "--data",
        s(data),
        "-o",
        s(out),
        "--image-size",
        "16",
        "--patch-size",
        "4",
        "--width",
        "64",
        "--layers",
        "1",
        "--text-width",
        "32",
        "--text-layers",
        "1",
        "--text-heads",
        "2",
        "--embed-dim",
        "16",
        "--context-length",
        "8",
        "--batch-size",
        "4",
        "--lr",
        "2e-3",
        "--warmup",
        "2",
        "--hold-out-every",
        "4",
    ]
    .map(String::from)
    .to_vec();
    // A flag given again replaces the default's value (clap refuses a flag twice).
    let mut rest = extra.iter();
    while let Some(flag) = rest.next() {
        let takes_value = rest.clone().next().is_some_and(|v| !v.starts_with("--"));
        match a.iter().position(|x| x == flag) {
            Some(i) if takes_value => a[i + 1] = rest.next().unwrap().to_string(),
            _ => {
                a.push(flag.to_string());
                if takes_value {
                    a.push(rest.next().unwrap().to_string());
                }
            }
        }
    }
    a
}

fn run(a: &[String]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_vista")).args(a).output().unwrap()
}

#[test]
fn train_clip_skips_bad_pairs_evaluates_and_exports_a_loadable_model() {
    let dir = tmpdir("train-clip");
    let data = caption_set(&dir);
    let out = dir.join("run");
    let o = run(&args(&data, &out, &["--epochs", "3"]));
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "skipped pairs give exit code 2: {err}");
    for bad in ["missing.png does not exist", "empty caption", ":37: expected a file and a caption", "corrupt.png"] {
        assert!(err.contains(bad), "`{bad}` not named: {err}");
    }
    assert!(err.contains("recall@1/5/10"), "{err}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["epochs"], 3);
    assert_eq!(report["skipped_samples"].as_u64(), Some(3), "the corrupt image, once per epoch: {report}");
    let r10 = report["trained"]["recall"]["image_to_text"][2].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&r10));
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    // 32 images, every 4th held out: 24 train (one corrupt), 6 steps of 4 per epoch.
    assert_eq!(metrics.lines().filter(|l| l.contains("\"loss\"")).count(), 18, "{metrics}");
    assert!(metrics.contains("logit_scale"));

    let o = vista(&["embed", "--model", s(&out.join("export")), s(&dir.join("imgs/01.png"))]);
    assert!(o.status.success(), "{}", stderr(&o));

    // The same folder again with another recipe is refused, naming the folder's run.
    let o = run(&args(&data, &out, &["--epochs", "3", "--lr", "1e-3"]));
    assert!(!o.status.success());
    assert!(stderr(&o).contains("another configuration"), "{}", stderr(&o));
}

/// `kill -9` in the middle of an epoch, then the same command: the run goes on from the last
/// step saved and ends with exactly the tensors of a run never interrupted. The uninterrupted
/// run saves only at the end of each epoch, so its token embedding's rows without a gradient
/// take their deferred updates once an epoch, the killed run's at every step's checkpoint: the
/// same bits either way.
#[test]
fn train_clip_killed_midway_resumes_to_the_same_bits() {
    let dir = tmpdir("train-clip-kill");
    let data = caption_set(&dir);
    let extra = ["--epochs", "3", "--save-every-steps", "1", "--accum-freq", "2", "--batch-size", "2"];
    let straight = dir.join("straight");
    let mut once_an_epoch = extra;
    once_an_epoch[3] = "0";
    let o = run(&args(&data, &straight, &once_an_epoch));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let killed = dir.join("killed");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_vista"))
        .args(args(&data, &killed, &extra))
        .env("VISTA_FREEZE_AT", "train-saves:8")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    common::kill_after_saved_iteration(&mut child, &killed.join("checkpoint.json"), 7);
    let o = run(&args(&data, &killed, &extra));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    common::assert_same_run(&straight, &killed);
}

/// Fine-tuning with WiSE-FT: the interpolated weights are evaluated against the starting
/// model's held-out recall and exported only if they are not worse; the report says which.
#[test]
fn train_clip_fine_tunes_with_wise_ft_behind_a_held_out_gate() {
    let dir = tmpdir("train-clip-ft");
    let data = caption_set(&dir);
    let base = dir.join("base");
    let o = run(&args(&data, &base, &["--epochs", "2"]));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let ft = dir.join("ft");
    let mut a = args(&data, &ft, &["--epochs", "1", "--lock-image", "--wise-ft", "0.5"]);
    a.extend(["--model".into(), s(&base.join("export")).to_string()]);
    let o = run(&a);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ft.join("report.json")).unwrap()).unwrap();
    let score = |e: &serde_json::Value| {
        (e["recall"]["image_to_text"][2].as_f64().unwrap() + e["recall"]["text_to_image"][2].as_f64().unwrap()) / 2.0
    };
    let (start, wise) = (score(&report["start"]), score(&report["wise_ft"][1]));
    let exported = report["exported"].as_str().unwrap();
    if wise < start {
        assert_eq!(exported, "start", "{report}");
    } else {
        assert_eq!(exported, "wise-ft", "{report}");
    }
    assert!(report["decision"].as_str().unwrap().contains(&format!("{start:.4}")), "{report}");
    // The image tower was locked: its exported weights are the starting model's, bit for bit.
    let (b, f) = (
        common::tensor_bytes(&base.join("export/open_clip_model.safetensors")),
        common::tensor_bytes(&ft.join("export/open_clip_model.safetensors")),
    );
    for ((nb, db), (nf, df)) in b.iter().zip(&f) {
        assert_eq!(nb, nf);
        if nb.starts_with("visual.") {
            assert!(db == df, "locked `{nb}` changed");
        }
    }
}

/// SigLIP's loss with feature-cached accumulation: the bias is trained and checkpointed, the
/// export (open_clip's CLIP layout, no bias) loads, and a resumed run refuses another loss.
#[test]
fn train_clip_with_the_siglip_loss_trains_its_bias() {
    let dir = tmpdir("train-clip-siglip");
    let data = caption_set(&dir);
    let out = dir.join("run");
    let o = run(&args(&data, &out, &["--epochs", "1", "--loss", "siglip", "--accum-freq", "2"]));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let ckpt = common::tensor_bytes(&out.join("checkpoint.safetensors"));
    let bias = ckpt.iter().find(|(n, _)| n == "model.logit_bias").expect("the bias is checkpointed");
    let b = f32::from_le_bytes(bias.1[..4].try_into().unwrap());
    assert!(b != -10.0 && b.is_finite(), "logit_bias {b} moved from its −10 start");
    let exported = common::tensor_bytes(&out.join("export/open_clip_model.safetensors"));
    assert!(exported.iter().all(|(n, _)| n != "logit_bias"));
    let o = vista(&["embed", "--model", s(&out.join("export")), s(&dir.join("imgs/02.png"))]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(&args(&data, &out, &["--epochs", "1", "--loss", "clip", "--accum-freq", "2"]));
    assert!(stderr(&o).contains("another configuration"), "{}", stderr(&o));
}

/// `--arch RN50`: open_clip's ModifiedResNet image tower (here at width 4, 32 px), BatchNorm in
/// training mode; the export carries its running statistics and `vista embed` loads it. The
/// ViT's size flags are refused for it.
#[test]
fn train_clip_trains_a_resnet_image_tower_and_exports_it() {
    let dir = tmpdir("train-clip-rn");
    let data = caption_set(&dir);
    let out = dir.join("run");
    let mut a = args(&data, &out, &["--epochs", "1", "--image-size", "32", "--width", "4", "--arch", "RN50"]);
    for flag in ["--patch-size", "--layers"] {
        let i = a.iter().position(|x| x == flag).unwrap();
        a.drain(i..i + 2);
    }
    let o = run(&a);
    assert_eq!(o.status.code(), Some(2), "trained, skipping the bad pairs: {}", stderr(&o));
    let export = out.join("export");
    let weights = std::fs::read(export.join("open_clip_model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&weights).unwrap();
    assert!(st.tensor("visual.layer4.2.bn3.running_var").is_ok(), "the running statistics are exported");
    assert!(st.tensor("visual.attnpool.c_proj.weight").is_ok());
    let o = vista(&["embed", "--model", s(&export), s(&dir.join("imgs/01.png"))]);
    assert!(o.status.success(), "{}", stderr(&o));

    // The defaults' --patch-size and --layers.
    let o = run(&args(&data, &dir.join("run2"), &["--arch", "RN50", "--image-size", "32"]));
    assert!(!o.status.success());
    assert!(stderr(&o).contains("a ResNet tower takes --width"), "{}", stderr(&o));
}
