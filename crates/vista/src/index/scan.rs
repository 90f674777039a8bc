//! Walking the indexed folders and telling what changed since the last run.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use globset::{Glob, GlobSet, GlobSetBuilder};
use rayon::prelude::*;

use super::db::{FileRow, Hash};
use crate::data::files::has_image_extension;
use crate::{Error, Result};

/// The name of the folder an index keeps inside the tree it indexes; never indexed itself.
pub const INDEX_DIR: &str = ".vista";

/// Which files a walk takes.
#[derive(Debug, Clone, Default)]
pub struct ScanOptions {
    excludes: Option<GlobSet>,
}

impl ScanOptions {
    /// `excludes` are glob patterns matched against the full path and against the path relative
    /// to its root (`*.gif`, `**/thumbnails/**`, `raw/**`).
    pub fn new(excludes: &[String]) -> Result<Self> {
        if excludes.is_empty() {
            return Ok(Self::default());
        }
        let mut b = GlobSetBuilder::new();
        for pat in excludes {
            b.add(Glob::new(pat).map_err(|e| Error::arg("exclude", format!("`{pat}`: {e}")))?);
        }
        Ok(Self { excludes: Some(b.build().map_err(|e| Error::arg("exclude", e.to_string()))?) })
    }

    fn excluded(&self, root: &Path, path: &Path) -> bool {
        match &self.excludes {
            None => false,
            Some(g) => g.is_match(path) || path.strip_prefix(root).map(|r| g.is_match(r)).unwrap_or(false),
        }
    }
}

/// An image file found on disk.
#[derive(Debug, Clone)]
pub struct Found {
    /// Absolute path.
    pub path: PathBuf,
    /// Size in bytes.
    pub size: u64,
    /// Modification time in nanoseconds since the Unix epoch (0 when unknown).
    pub mtime_ns: i64,
}

/// Recursively lists image files under `roots` (absolute paths), skipping hidden entries, the
/// index's own folder, excluded paths and paths that are not UTF-8. Unreadable entries are
/// returned as problems rather than stopping the walk.
pub fn walk(roots: &[PathBuf], opts: &ScanOptions) -> (Vec<Found>, Vec<(PathBuf, String)>) {
    let mut found = Vec::new();
    let mut problems = Vec::new();
    for root in roots {
        walk_dir(root, root, opts, &mut found, &mut problems);
    }
    found.sort_by(|a, b| a.path.cmp(&b.path));
    found.dedup_by(|a, b| a.path == b.path);
    (found, problems)
}

fn walk_dir(
    root: &Path,
    dir: &Path,
    opts: &ScanOptions,
    found: &mut Vec<Found>,
    problems: &mut Vec<(PathBuf, String)>,
) {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            problems.push((dir.to_path_buf(), e.to_string()));
            return;
        }
    };
    for entry in entries {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                problems.push((dir.to_path_buf(), e.to_string()));
                continue;
            }
        };
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') {
            continue; // hidden files and folders, `.vista` among them
        }
        let path = entry.path();
        if opts.excluded(root, &path) {
            continue;
        }
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e) => {
                problems.push((path, e.to_string()));
                continue;
            }
        };
        if meta.is_dir() {
            walk_dir(root, &path, opts, found, problems);
        } else if meta.is_file() && has_image_extension(&path) {
            if path.to_str().is_none() {
                problems.push((path, "the path is not valid UTF-8".into()));
                continue;
            }
            let mtime_ns = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map(|d| d.as_nanos() as i64)
                .unwrap_or(0);
            found.push(Found { path, size: meta.len(), mtime_ns });
        }
    }
}

/// blake3 of a file's contents.
pub fn hash_file(path: &Path) -> Result<Hash> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = blake3::Hasher::new();
    std::io::copy(&mut f, &mut h).map_err(|e| Error::io(path, e))?;
    Ok(*h.finalize().as_bytes())
}

/// What a scan found against what the index knew.
#[derive(Debug, Default)]
pub struct ScanDiff {
    /// New or changed files, hashed: to upsert.
    pub upserts: Vec<(PathBuf, FileRow)>,
    /// Known files under the roots that are gone.
    pub deletes: Vec<PathBuf>,
    /// Files whose size and modification time are unchanged (not re-read).
    pub unchanged: usize,
    /// Files new to the index.
    pub new: usize,
    /// Known files whose size or modification time changed.
    pub changed: usize,
    /// New paths whose content the index already had under a path that is now gone.
    pub renamed: usize,
    /// Files that could not be read (path, error).
    pub problems: Vec<(PathBuf, String)>,
}

/// Compares a walk with the index: a file whose size and mtime are unchanged is trusted without
/// reading it; others are hashed (in parallel).
pub fn diff(roots: &[PathBuf], found: Vec<Found>, known: &HashMap<PathBuf, FileRow>) -> ScanDiff {
    let mut d = ScanDiff::default();
    let seen: HashSet<&Path> = found.iter().map(|f| f.path.as_path()).collect();
    d.deletes = known
        .keys()
        .filter(|p| roots.iter().any(|r| p.starts_with(r)) && !seen.contains(p.as_path()))
        .cloned()
        .collect();
    d.deletes.sort();
    let gone_hashes: HashSet<Hash> = d.deletes.iter().filter_map(|p| known.get(p)).map(|f| f.hash).collect();
    let to_hash: Vec<&Found> = found
        .iter()
        .filter(|f| match known.get(&f.path) {
            Some(k) => k.size != f.size || k.mtime_ns != f.mtime_ns,
            None => true,
        })
        .collect();
    d.unchanged = found.len() - to_hash.len();
    let hashed: Vec<(&Found, Result<Hash>)> = to_hash.par_iter().map(|f| (*f, hash_file(&f.path))).collect();
    for (f, h) in hashed {
        match h {
            Ok(hash) => {
                if known.contains_key(&f.path) {
                    d.changed += 1;
                } else if gone_hashes.contains(&hash) {
                    d.renamed += 1;
                } else {
                    d.new += 1;
                }
                d.upserts.push((f.path.clone(), FileRow { size: f.size, mtime_ns: f.mtime_ns, hash }));
            }
            Err(e) => d.problems.push((f.path.clone(), e.to_string())),
        }
    }
    d
}
