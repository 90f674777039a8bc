//! Helpers shared by the CLI tests: the committed fixtures, running the binary, scratch folders.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../vista/tests/fixtures").canonicalize().expect("fixtures folder")
}

/// The tiny open_clip CLIP with the real vocabulary, as an absolute path (its model id in an index).
pub fn model() -> String {
    fixtures().join("clip/openclip_e2e").display().to_string()
}

pub fn vista(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vista")).args(args).output().expect("run vista")
}

/// [`vista`], asserting that it succeeds (naming its stderr when it does not).
#[track_caller]
pub fn vista_ok(args: &[&str]) -> Output {
    let o = vista(args);
    assert!(o.status.success(), "{}", stderr(&o));
    o
}

/// A run's standard output, as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

/// A run's standard error, as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// A fresh, empty, canonical scratch folder unique to this test process.
pub fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vista-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d.canonicalize().unwrap()
}

/// Every tensor of a safetensors file as (name, raw bytes), sorted by name: two files compare
/// equal only when every bit does.
pub fn tensor_bytes(path: &Path) -> Vec<(String, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut v: Vec<(String, Vec<u8>)> = st.tensors().into_iter().map(|(n, t)| (n, t.data().to_vec())).collect();
    v.sort();
    v
}

/// Waits until a training run's `checkpoint.json` (`state`) says it has saved `iteration ≥ n`,
/// then kills the run with SIGKILL (the run froze there: `VISTA_FREEZE_AT`). Fails when the
/// run ends first or takes over two minutes.
pub fn kill_after_saved_iteration(child: &mut std::process::Child, state: &Path, n: u64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let it = std::fs::read_to_string(state)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v["iteration"].as_u64())
            .unwrap_or(0);
        if it >= n {
            break;
        }
        assert!(child.try_wait().unwrap().is_none(), "the run ended before its freeze point");
        assert!(std::time::Instant::now() < deadline, "no {n} steps saved in 2 minutes");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    assert!(!child.wait().unwrap().success());
}

/// Two training run folders hold the same checkpoint, bit for bit, and the same number of step
/// lines in `metrics.jsonl` (a resumed run against one never interrupted).
pub fn assert_same_run(straight: &Path, resumed: &Path) {
    let (a, b) =
        (tensor_bytes(&straight.join("checkpoint.safetensors")), tensor_bytes(&resumed.join("checkpoint.safetensors")));
    assert_eq!(a.len(), b.len());
    for ((na, da), (nb, db)) in a.iter().zip(&b) {
        assert_eq!(na, nb);
        assert!(da == db, "`{na}` differs after the kill and resume");
    }
    let steps = |p: &Path| {
        std::fs::read_to_string(p.join("metrics.jsonl")).unwrap().lines().filter(|l| l.contains("\"loss\"")).count()
    };
    assert_eq!(steps(resumed), steps(straight), "one metrics line per step, none lost or doubled");
}
