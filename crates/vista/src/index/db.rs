//! The index database: SQLite (bundled) in WAL mode, one transaction per batch.
//!
//! Embeddings are keyed by **content hash and model**, not by path: a renamed or moved file, or
//! the same photo in two folders, shares one embedding and is never embedded again; a changed file
//! gets a new hash and so a new embedding. A file that failed to decode is recorded against its
//! hash, so it is retried exactly when its content changes.
//!
//! Vectors are stored as little-endian f16 BLOBs (1 KB for 512-d, half of f32): the rows are unit
//! vectors with components of order 0.05, where f16's 11-bit significand keeps every score within
//! ~1e-3 of the f32 one; measured against exact f32 search, recall@10 is 1.0 at 100k vectors and
//! 0.999 at 1M (`tools/bench/bench_search.py`), and the indexed vectors of 2,000 photos keep a
//! cosine of 0.999995 or more to PyTorch's (`tools/bench/bench_index.py`).
//!
//! Crash safety comes from SQLite: every batch is one transaction, WAL with `synchronous=NORMAL`
//! survives a killed process with every committed transaction intact (only a power loss can drop
//! the last few), and the next run sees which hashes still lack an embedding.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension};

use super::vectors::{to_f16_bytes, VectorSet};
use crate::{Error, Result};

/// blake3 of a file's bytes.
pub type Hash = [u8; 32];

const SCHEMA_VERSION: i64 = 1;

/// A model an index is built with: the id its embeddings are stored under ([`model_id`]: a hub
/// id as given, a local path made absolute — which also loads it again) and the `--arch` preset
/// a bare checkpoint file needed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexedModel {
    /// The model argument, normalised by [`model_id`].
    pub id: String,
    /// The architecture preset given with it, if any.
    pub arch: Option<String>,
}

/// The id embeddings are stored under: a hub id as given, a local path made absolute, so the
/// index means the same model from any working directory.
pub fn model_id(model: &str) -> String {
    let p = Path::new(model);
    if p.exists() {
        std::fs::canonicalize(p).map(|c| c.display().to_string()).unwrap_or_else(|_| model.to_string())
    } else {
        model.to_string()
    }
}

/// What the index knows of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRow {
    /// Size in bytes.
    pub size: u64,
    /// Modification time in nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    /// blake3 of the content.
    pub hash: Hash,
}

/// How long a statement waits for another connection's lock before it fails.
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// A photo index: an SQLite database of files, their content hashes and their embeddings per model.
pub struct IndexDb {
    conn: Connection,
    path: PathBuf,
}

impl IndexDb {
    /// Opens (creating if needed) the index at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
            }
        }
        let conn = Connection::open(path).map_err(|e| db_err(path, e))?;
        // Another process may hold the lock for a moment (an index run committing a batch while
        // a search or a second run opens the file): wait for it rather than fail at once with
        // "database is locked".
        conn.busy_timeout(BUSY_TIMEOUT).map_err(|e| db_err(path, e))?;
        let db = Self { conn, path: path.to_path_buf() };
        db.init()?;
        Ok(db)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, e: rusqlite::Error) -> Error {
        db_err(&self.path, e)
    }

    fn init(&self) -> Result<()> {
        self.conn
            .execute_batch(
                "PRAGMA journal_mode = WAL;
                 PRAGMA synchronous = NORMAL;
                 PRAGMA foreign_keys = ON;
                 CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
                 CREATE TABLE IF NOT EXISTS roots (path TEXT PRIMARY KEY);
                 CREATE TABLE IF NOT EXISTS files (
                     path TEXT PRIMARY KEY,
                     size INTEGER NOT NULL,
                     mtime_ns INTEGER NOT NULL,
                     hash BLOB NOT NULL
                 );
                 CREATE INDEX IF NOT EXISTS files_by_hash ON files (hash);
                 CREATE TABLE IF NOT EXISTS embeddings (
                     hash BLOB NOT NULL,
                     model TEXT NOT NULL,
                     dim INTEGER NOT NULL,
                     vector BLOB NOT NULL,
                     PRIMARY KEY (hash, model)
                 );
                 CREATE TABLE IF NOT EXISTS models (
                     id TEXT PRIMARY KEY,
                     arch TEXT
                 );
                 CREATE TABLE IF NOT EXISTS failures (
                     hash BLOB PRIMARY KEY,
                     error TEXT NOT NULL
                 );",
            )
            .map_err(|e| self.err(e))?;
        let version: Option<String> = self
            .conn
            .query_row("SELECT value FROM meta WHERE key = 'schema_version'", [], |r| r.get(0))
            .optional()
            .map_err(|e| self.err(e))?;
        match version {
            None => {
                self.conn
                    .execute(
                        "INSERT INTO meta (key, value) VALUES ('schema_version', ?1)",
                        [SCHEMA_VERSION.to_string()],
                    )
                    .map_err(|e| self.err(e))?;
            }
            Some(v) if v == SCHEMA_VERSION.to_string() => {}
            Some(v) => {
                return Err(Error::Index {
                    path: self.path.clone(),
                    message: format!("index schema version {v}, this vista reads {SCHEMA_VERSION}; rebuild the index"),
                })
            }
        }
        Ok(())
    }

    /// The folders this index covers.
    pub fn roots(&self) -> Result<Vec<PathBuf>> {
        let mut st = self.conn.prepare("SELECT path FROM roots ORDER BY path").map_err(|e| self.err(e))?;
        let rows = st.query_map([], |r| r.get::<_, String>(0)).map_err(|e| self.err(e))?;
        rows.map(|r| r.map(PathBuf::from).map_err(|e| self.err(e))).collect()
    }

    /// Adds folders to those the index covers (those already there are kept).
    pub fn add_roots(&self, roots: &[PathBuf]) -> Result<()> {
        for r in roots {
            self.conn
                .execute("INSERT OR IGNORE INTO roots (path) VALUES (?1)", [path_str(r)?])
                .map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    /// Every file row under `root` (all rows when `None`).
    pub fn files(&self) -> Result<HashMap<PathBuf, FileRow>> {
        let mut st = self.conn.prepare("SELECT path, size, mtime_ns, hash FROM files").map_err(|e| self.err(e))?;
        let rows = st
            .query_map([], |r| {
                let hash: Vec<u8> = r.get(3)?;
                Ok((
                    PathBuf::from(r.get::<_, String>(0)?),
                    FileRow { size: r.get::<_, i64>(1)? as u64, mtime_ns: r.get(2)?, hash: to_hash(&hash) },
                ))
            })
            .map_err(|e| self.err(e))?;
        rows.map(|r| r.map_err(|e| self.err(e))).collect()
    }

    /// Applies a scan in one transaction: new and changed files upserted, vanished ones deleted,
    /// then embeddings and failures no file refers to any more dropped.
    pub fn apply_scan(&mut self, upserts: &[(PathBuf, FileRow)], deletes: &[PathBuf]) -> Result<()> {
        let path = self.path.clone();
        let tx = self.conn.transaction().map_err(|e| db_err(&path, e))?;
        {
            let mut up = tx
                .prepare(
                    "INSERT INTO files (path, size, mtime_ns, hash) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (path) DO UPDATE SET size = excluded.size, mtime_ns = excluded.mtime_ns,
                     hash = excluded.hash",
                )
                .map_err(|e| db_err(&path, e))?;
            for (p, f) in upserts {
                up.execute(params![path_str(p)?, f.size as i64, f.mtime_ns, &f.hash[..]])
                    .map_err(|e| db_err(&path, e))?;
            }
            let mut del = tx.prepare("DELETE FROM files WHERE path = ?1").map_err(|e| db_err(&path, e))?;
            for p in deletes {
                del.execute([path_str(p)?]).map_err(|e| db_err(&path, e))?;
            }
        }
        tx.execute_batch(
            "DELETE FROM embeddings WHERE hash NOT IN (SELECT hash FROM files);
             DELETE FROM failures WHERE hash NOT IN (SELECT hash FROM files);",
        )
        .map_err(|e| db_err(&path, e))?;
        tx.commit().map_err(|e| db_err(&path, e))
    }

    /// Content still to embed for `model`: one path per hash that has neither an embedding nor a
    /// recorded failure, in path order.
    pub fn pending(&self, model: &str) -> Result<Vec<(Hash, PathBuf)>> {
        let mut st = self
            .conn
            .prepare(
                "SELECT f.hash, MIN(f.path) FROM files f
                 WHERE NOT EXISTS (SELECT 1 FROM embeddings e WHERE e.hash = f.hash AND e.model = ?1)
                   AND NOT EXISTS (SELECT 1 FROM failures x WHERE x.hash = f.hash)
                 GROUP BY f.hash ORDER BY MIN(f.path)",
            )
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map([model], |r| Ok((to_hash(&r.get::<_, Vec<u8>>(0)?), PathBuf::from(r.get::<_, String>(1)?))))
            .map_err(|e| self.err(e))?;
        rows.map(|r| r.map_err(|e| self.err(e))).collect()
    }

    /// Stores one batch of outcomes in one transaction.
    pub fn store_batch(
        &mut self,
        model: &str,
        results: &[(Hash, std::result::Result<Vec<f32>, String>)],
    ) -> Result<()> {
        let path = self.path.clone();
        let tx = self.conn.transaction().map_err(|e| db_err(&path, e))?;
        {
            let mut emb = tx
                .prepare("INSERT OR REPLACE INTO embeddings (hash, model, dim, vector) VALUES (?1, ?2, ?3, ?4)")
                .map_err(|e| db_err(&path, e))?;
            let mut fail = tx
                .prepare("INSERT OR REPLACE INTO failures (hash, error) VALUES (?1, ?2)")
                .map_err(|e| db_err(&path, e))?;
            for (hash, r) in results {
                match r {
                    Ok(v) => emb
                        .execute(params![&hash[..], model, v.len() as i64, to_f16_bytes(v)])
                        .map_err(|e| db_err(&path, e))?,
                    Err(msg) => fail.execute(params![&hash[..], msg]).map_err(|e| db_err(&path, e))?,
                };
            }
        }
        tx.commit().map_err(|e| db_err(&path, e))
    }

    /// Recorded decode failures: (path, error).
    pub fn failures(&self) -> Result<Vec<(PathBuf, String)>> {
        let mut st = self
            .conn
            .prepare("SELECT f.path, x.error FROM files f JOIN failures x ON x.hash = f.hash ORDER BY f.path")
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map([], |r| Ok((PathBuf::from(r.get::<_, String>(0)?), r.get::<_, String>(1)?)))
            .map_err(|e| self.err(e))?;
        rows.map(|r| r.map_err(|e| self.err(e))).collect()
    }

    /// Number of embeddings stored for `model`.
    pub fn count_embeddings(&self, model: &str) -> Result<usize> {
        self.conn
            .query_row("SELECT COUNT(*) FROM embeddings WHERE model = ?1", [model], |r| r.get::<_, i64>(0))
            .map(|n| n as usize)
            .map_err(|e| self.err(e))
    }

    /// Every indexed file with an embedding for `model` (optionally only below `under`), and the
    /// vectors in the same order.
    pub fn load_vectors(&self, model: &str, under: Option<&Path>) -> Result<(Vec<PathBuf>, VectorSet)> {
        let mut st = self
            .conn
            .prepare(
                "SELECT f.path, e.dim, e.vector FROM files f JOIN embeddings e ON e.hash = f.hash
                 WHERE e.model = ?1 ORDER BY f.path",
            )
            .map_err(|e| self.err(e))?;
        let mut rows = st.query([model]).map_err(|e| self.err(e))?;
        let mut paths = Vec::new();
        let mut set: Option<VectorSet> = None;
        while let Some(r) = rows.next().map_err(|e| self.err(e))? {
            let p = PathBuf::from(r.get::<_, String>(0).map_err(|e| self.err(e))?);
            if let Some(u) = under {
                if !p.starts_with(u) {
                    continue;
                }
            }
            let dim = r.get::<_, i64>(1).map_err(|e| self.err(e))? as usize;
            let blob = r
                .get_ref(2)
                .map_err(|e| self.err(e))?
                .as_blob()
                .map_err(|e| Error::Index { path: self.path.clone(), message: e.to_string() })?;
            let s = set.get_or_insert_with(|| VectorSet::new(dim));
            s.push_f16_bytes(blob)?;
            paths.push(p);
        }
        Ok((paths, set.unwrap_or_else(|| VectorSet::new(0))))
    }

    /// The models that have embeddings in this index.
    pub fn models(&self) -> Result<Vec<String>> {
        let mut st =
            self.conn.prepare("SELECT DISTINCT model FROM embeddings ORDER BY model").map_err(|e| self.err(e))?;
        let rows = st.query_map([], |r| r.get::<_, String>(0)).map_err(|e| self.err(e))?;
        rows.map(|r| r.map_err(|e| self.err(e))).collect()
    }

    /// Records that the index is built with `model` (idempotent).
    pub fn record_model(&self, model: &IndexedModel) -> Result<()> {
        self.conn
            .execute("INSERT OR REPLACE INTO models (id, arch) VALUES (?1, ?2)", params![model.id, model.arch])
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// The models the index was built with, by id: those recorded, and any other with embeddings
    /// (an index made before models were recorded), without an architecture.
    pub fn indexed_models(&self) -> Result<Vec<IndexedModel>> {
        let mut st = self
            .conn
            .prepare(
                "SELECT id, arch FROM models
                 UNION SELECT DISTINCT model, NULL FROM embeddings WHERE model NOT IN (SELECT id FROM models)
                 ORDER BY 1",
            )
            .map_err(|e| self.err(e))?;
        let rows =
            st.query_map([], |r| Ok(IndexedModel { id: r.get(0)?, arch: r.get(1)? })).map_err(|e| self.err(e))?;
        rows.map(|r| r.map_err(|e| self.err(e))).collect()
    }

    /// The model to search this index with. `requested` (a model argument as given, and its
    /// `--arch`) must be one the index was built with; without it the index's one model is used
    /// (an index built with several asks which).
    pub fn search_model(&self, requested: Option<&str>, arch: Option<&str>) -> Result<IndexedModel> {
        let models = self.indexed_models()?;
        let listed = || models.iter().map(|m| format!("`{}`", m.id)).collect::<Vec<_>>().join(", ");
        match requested {
            Some(r) => {
                let id = model_id(r);
                match models.iter().find(|m| m.id == id) {
                    Some(m) => Ok(IndexedModel { id, arch: arch.map(str::to_string).or_else(|| m.arch.clone()) }),
                    None if models.is_empty() => {
                        Err(self.index_error("holds no embeddings yet: run `vista index DIR`"))
                    }
                    None => Err(self.index_error(&format!(
                        "was built with {}, not `{id}`: search with that model, or index with this one first",
                        listed()
                    ))),
                }
            }
            None => match models.as_slice() {
                [one] => {
                    Ok(IndexedModel { id: one.id.clone(), arch: arch.map(str::to_string).or_else(|| one.arch.clone()) })
                }
                [] => Err(self.index_error("holds no embeddings yet: run `vista index DIR`")),
                _ => {
                    Err(self
                        .index_error(&format!("was built with several models ({}): choose one with --model", listed())))
                }
            },
        }
    }

    fn index_error(&self, message: &str) -> Error {
        Error::Index { path: self.path.clone(), message: message.to_string() }
    }
}

fn db_err(path: &Path, e: rusqlite::Error) -> Error {
    Error::Index { path: path.to_path_buf(), message: e.to_string() }
}

fn to_hash(b: &[u8]) -> Hash {
    let mut h = [0u8; 32];
    let n = b.len().min(32);
    h[..n].copy_from_slice(&b[..n]);
    h
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str().ok_or_else(|| Error::arg("path", format!("{}: not valid UTF-8, cannot be indexed", p.display())))
}
