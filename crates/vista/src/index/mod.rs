//! The persistent photo index: which files a folder holds, their content hashes, and their
//! embeddings per model, in SQLite; exact vector search over it.

pub mod db;
pub mod indexer;
pub mod scan;
pub mod vectors;

pub use db::{model_id, IndexDb, IndexedModel};
pub use indexer::{update, IndexOptions, IndexReport, Progress};
pub use scan::ScanOptions;
pub use vectors::{Hit, VectorSet};

use std::path::{Path, PathBuf};

/// Where the index of a tree lives by default: `ROOT/.vista/index.sqlite`, or, when the tree
/// cannot be written, the user's data directory (`~/.local/share/vista/indexes/<hash of ROOT>.sqlite`
/// on Linux).
pub fn default_db_path(root: &Path) -> PathBuf {
    let dir = root.join(scan::INDEX_DIR);
    if std::fs::create_dir_all(&dir).is_ok() && is_writable(&dir) {
        return dir.join("index.sqlite");
    }
    fallback_db_path(root)
}

fn fallback_db_path(root: &Path) -> PathBuf {
    let key = blake3::hash(root.to_string_lossy().as_bytes()).to_hex();
    let base = dirs::data_dir().unwrap_or_else(std::env::temp_dir);
    base.join("vista").join("indexes").join(format!("{}.sqlite", &key[..16]))
}

fn is_writable(dir: &Path) -> bool {
    let probe = dir.join(format!(".probe-{}", std::process::id()));
    let ok = std::fs::write(&probe, b"").is_ok();
    let _ = std::fs::remove_file(&probe);
    ok
}

/// Finds the index covering `start`: `.vista/index.sqlite` in it or an ancestor (as git finds
/// `.git`), else a data-directory index made for it or an ancestor.
pub fn find_db(start: &Path) -> Option<PathBuf> {
    for dir in start.ancestors() {
        let p = dir.join(scan::INDEX_DIR).join("index.sqlite");
        if p.is_file() {
            return Some(p);
        }
        let f = fallback_db_path(dir);
        if f.is_file() {
            return Some(f);
        }
    }
    None
}
