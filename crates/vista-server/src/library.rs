//! The indexed photos as the server serves them: every file of the index with its vector and a
//! stable id (the first 16 bytes of its content hash, hex), loaded once from the index database.
//! A file is only ever served through its id, and only when its canonical path still lies under
//! one of the index's canonical roots — no path from a request is ever opened.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use vista::index::vectors::VectorSet;
use vista::index::IndexDb;

use crate::error::{ApiError, ApiResult};

/// One indexed file.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Photo {
    /// Stable id: 32 hex digits of the content hash.
    pub id: String,
    /// The file.
    pub path: PathBuf,
}

/// The photos, their vectors and the roots they may be served from.
pub struct Library {
    /// The photos, in vector order.
    pub photos: Vec<Photo>,
    /// One row per photo.
    pub vectors: VectorSet,
    /// Canonical roots of the index.
    pub roots: Vec<PathBuf>,
    /// The CLIP model id the vectors were made with.
    pub model: String,
    by_id: HashMap<String, usize>,
}

impl Library {
    /// Loads the photos embedded with `model` from the index database at `db`.
    pub fn load(db: &Path, model: &str) -> vista::Result<Self> {
        let db = IndexDb::open(db)?;
        let roots = db.roots()?.iter().map(|r| std::fs::canonicalize(r).unwrap_or_else(|_| r.clone())).collect();
        let files = db.files()?;
        let (paths, vectors) = db.load_vectors(model, None)?;
        let photos: Vec<Photo> = paths
            .into_iter()
            .map(|path| {
                let id = files.get(&path).map(|f| hex(&f.hash[..16])).unwrap_or_default();
                Photo { id, path }
            })
            .collect();
        let by_id = photos.iter().enumerate().map(|(i, p)| (p.id.clone(), i)).collect();
        Ok(Self { photos, vectors, roots, model: model.to_string(), by_id })
    }

    /// An empty library (no index given): search answers nothing, segmenting takes uploads.
    pub fn empty() -> Self {
        Self {
            photos: Vec::new(),
            vectors: VectorSet::new(0),
            roots: Vec::new(),
            model: String::new(),
            by_id: HashMap::new(),
        }
    }

    /// The row of an id.
    pub fn index_of(&self, id: &str) -> ApiResult<usize> {
        self.by_id.get(id).copied().ok_or_else(|| ApiError::not_found(format!("no indexed image has id `{id}`")))
    }

    /// The file of an id, canonical and confined to the index's roots (a file that was
    /// replaced by a link leading elsewhere is refused).
    pub fn path_of(&self, id: &str) -> ApiResult<PathBuf> {
        let p = &self.photos[self.index_of(id)?].path;
        let canonical = std::fs::canonicalize(p).map_err(|_| ApiError::not_found(format!("image `{id}` is gone")))?;
        if !self.roots.iter().any(|r| canonical.starts_with(r)) {
            return Err(ApiError::not_found(format!("image `{id}` is outside the indexed folders")));
        }
        Ok(canonical)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
