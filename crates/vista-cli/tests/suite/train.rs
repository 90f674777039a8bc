//! `vista train dino` on a folder of images: trains, skips a corrupt file with exit code 2,
//! resumes when run again, refuses a changed configuration, and its exported backbone is a
//! model `vista features` loads as it is.

use crate::common;

use std::path::Path;

use common::{tmpdir, vista};
use vista::data::npy;
use vista::image::{Rgb, RgbImage};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn train_args<'a>(data: &'a str, out: &'a str, epochs: &'a str) -> Vec<&'a str> {
    vec![
        "train",
        "dino",
        "--data",
        data,
        "-o",
        out,
        "--arch",
        "vit_tiny",
        "--embed-dim",
        "32",
        "--depth",
        "2",
        "--num-heads",
        "2",
        "--patch",
        "8",
        "--global-size",
        "32",
        "--local-size",
        "16",
        "--local-crops",
        "2",
        "--out-dim",
        "64",
        "--head-hidden",
        "64",
        "--bottleneck",
        "16",
        "--batch",
        "8",
        "--epochs",
        "2",
        "--warmup-epochs",
        "1",
        "--max-epochs",
        epochs,
    ]
}

#[test]
fn train_dino_on_a_folder_resumes_and_exports_a_loadable_backbone() {
    let dir = tmpdir("train-dino");
    let imgs = dir.join("imgs");
    std::fs::create_dir_all(imgs.join("sub")).unwrap();
    // 15 images + the broken file = 2 full batches of 8, so every file is drawn each epoch.
    for i in 0..15u32 {
        let sub = if i % 2 == 0 { imgs.clone() } else { imgs.join("sub") };
        RgbImage::from_fn(40 + i, 36, |x, y| Rgb([(x * 5 + i * 9) as u8, (y * 7) as u8, (i * 15) as u8]))
            .save(sub.join(format!("img{i:02}.png")))
            .unwrap();
    }
    std::fs::write(imgs.join("broken.jpg"), b"\xff\xd8\xffnot really").unwrap();
    let out = dir.join("run");
    // First epoch only; the broken file is skipped and reported.
    let o = vista(&train_args(s(&imgs), s(&out), "1"));
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("broken.jpg"), "{err}");
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("checkpoint.json")).unwrap()).unwrap();
    assert_eq!(state["epoch"], 1);
    // Run again: resumes at epoch 1 and finishes.
    let o = vista(&train_args(s(&imgs), s(&out), "5"));
    assert_eq!(o.status.code(), Some(2), "{}", String::from_utf8_lossy(&o.stderr));
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("checkpoint.json")).unwrap()).unwrap();
    assert_eq!(state["epoch"], 2);
    let lines = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert_eq!(lines.lines().filter(|l| l.contains("\"loss\"")).count(), 4, "2 epochs of 2 steps:\n{lines}");
    // A changed configuration is refused, naming the argument.
    let mut args = train_args(s(&imgs), s(&out), "1");
    args.extend(["--lr", "0.001"]);
    let o = vista(&args);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(o.status.code(), Some(1));
    assert!(err.contains("lr") && err.contains("another configuration"), "{err}");
    // The backbone is a DINO model for `vista features` (heads read from its metadata).
    let feats = dir.join("f.npy");
    let backbone = out.join("backbone.safetensors");
    let o = vista(&[
        "features",
        s(&imgs.join("img00.png")),
        "-m",
        s(&backbone),
        "--resize",
        "32",
        "--crop",
        "32",
        "-o",
        s(&feats),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (shape, _) = npy::read_f32(&feats).unwrap();
    assert_eq!(shape, vec![1, 32]);
}

#[test]
fn train_dino_names_a_bad_argument() {
    let dir = tmpdir("train-dino-args");
    let o = vista(&["train", "dino", "--data", s(&dir), "--arch", "vit_huge"]);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(err.contains("--arch") && err.contains("vit_tiny"), "{err}");
    let o = vista(&["train", "dino", "--data", s(&dir), "--patch", "16", "--global-size", "28"]);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(err.contains("global_size") && err.contains("16-pixel patch"), "{err}");
}

/// `kill -9` in the middle of an epoch, then the same command again: the run goes on from the
/// last step saved and ends with exactly the tensors of a run that was never interrupted.
#[test]
fn train_dino_killed_midway_resumes_to_the_same_bits() {
    let dir = tmpdir("train-dino-kill");
    let imgs = dir.join("imgs");
    std::fs::create_dir_all(&imgs).unwrap();
    for i in 0..48u32 {
        RgbImage::from_fn(36, 36, |x, y| Rgb([(x * 5 + i * 9) as u8, (y * 7 + i) as u8, (i * 5) as u8]))
            .save(imgs.join(format!("img{i:02}.png")))
            .unwrap();
    }
    let args = |out: &Path| -> Vec<String> {
        let mut a: Vec<String> = train_args(s(&imgs), s(out), "9").into_iter().map(String::from).collect();
        let e = a.iter().position(|x| x == "--epochs").unwrap();
        a[e + 1] = "3".into();
        a.extend(["--save-every-steps", "1"].map(String::from));
        a
    };
    let straight = dir.join("straight");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_vista")).args(args(&straight)).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let killed = dir.join("killed");
    // The run freezes right after its 8th checkpoint (VISTA_FREEZE_AT: a step in the second
    // epoch), so the kill lands there whatever the machine's speed.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_vista"))
        .args(args(&killed))
        .env("VISTA_FREEZE_AT", "train-saves:8")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    common::kill_after_saved_iteration(&mut child, &killed.join("checkpoint.json"), 8);
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_vista")).args(args(&killed)).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    common::assert_same_run(&straight, &killed);
}
