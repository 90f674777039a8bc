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
