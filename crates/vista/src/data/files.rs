//! Collecting image files from the paths a user names.

use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// Extensions decoded by [`crate::image::load_rgb`], lower-case.
pub const IMAGE_EXTENSIONS: [&str; 9] = ["jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff", "jfif"];

/// True when `p` ends in one of [`IMAGE_EXTENSIONS`] (any case).
pub fn has_image_extension(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .map(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        .unwrap_or(false)
}

/// Expands `inputs`: a file is taken as is (whatever its extension: the decoder decides), a folder
/// is walked recursively for image extensions, skipping hidden entries. Sorted within each folder
/// so runs are reproducible.
pub fn collect_images(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for input in inputs {
        let meta = std::fs::metadata(input).map_err(|e| Error::io(input, e))?;
        if meta.is_dir() {
            let mut found = Vec::new();
            walk(input, &mut found)?;
            found.sort();
            out.extend(found);
        } else {
            out.push(input.clone());
        }
    }
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let path = entry.path();
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let ft = entry.file_type().map_err(|e| Error::io(&path, e))?;
        if ft.is_dir() || (ft.is_symlink() && path.is_dir()) {
            walk(&path, out)?;
        } else if has_image_extension(&path) {
            out.push(path);
        }
    }
    Ok(())
}

/// Feeds a file's identity without reading it — size and modification time (nanoseconds) — to
/// `h`; nothing for a file that cannot be stat'ed. Cache keys use it where hashing the content
/// (gigabytes of weights, thousands of images) on every start would cost more than it saves.
pub fn hash_file_stamp(h: &mut blake3::Hasher, path: &Path) {
    if let Ok(m) = std::fs::metadata(path) {
        h.update(&m.len().to_le_bytes());
        if let Ok(t) = m.modified() {
            let ns = t.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
            h.update(&ns.to_le_bytes());
        }
    }
}
