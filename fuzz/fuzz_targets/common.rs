//! The readers take paths: each input goes through one scratch file per process (in /dev/shm
//! when there is one, so the fuzzer is not bound by the disk).

use std::path::PathBuf;

pub fn scratch(name: &str, data: &[u8]) -> PathBuf {
    let dir = if std::path::Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { std::env::temp_dir() };
    let p = dir.join(format!("vista-fuzz-{}-{name}", std::process::id()));
    std::fs::write(&p, data).expect("scratch file");
    p
}
