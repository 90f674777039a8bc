//! SAM image embeddings cached on disk.
//!
//! SAM's image encoder is the expensive step (seconds per image on a CPU); the decoder is
//! milliseconds. [`EmbeddingCache`] keeps each image embedding on disk so that a second session
//! on the same image, or many prompts from the command line, skip the encoder:
//!
//! * one safetensors file per (model, image): `DIR/<model key>/<image blake3>.safetensors`,
//!   holding `embedding` as f16 `[C, h, w]` (2 MiB for the releases instead of 4; f16's 11-bit
//!   mantissa moved the tiny fixture's low-resolution logits, of magnitude 1–10, by 3.9e-3 and
//!   left ≥ 99.9 % of mask pixels unchanged — `tests/suite/segment.rs`) and the original image size in
//!   the metadata;
//! * the image key is the blake3 hash of the file's bytes, so renames and copies hit the cache
//!   and an edited file misses it;
//! * the model key hashes the checkpoint's canonical path, size and modification time (hashing
//!   gigabytes of weights on every start would cost more than it saves), plus the resolved
//!   architecture;
//! * files are written to a temporary name and renamed into place, so an interrupted run never
//!   leaves a truncated entry; an unreadable entry is treated as a miss and rewritten.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use crate::sam::Sam;
use crate::weights::formats::{checkpoint_key, read_safetensors, write_safetensors};
use crate::{Error, Result};

/// `format` metadata of a cached embedding.
const EMBEDDING_FORMAT: &str = "vista-sam-embedding-1";

/// Where cached embeddings go by default: `$XDG_CACHE_HOME/vista/sam` (or the platform's cache
/// folder).
pub fn default_cache_dir() -> PathBuf {
    dirs::cache_dir().unwrap_or_else(std::env::temp_dir).join("vista").join("sam")
}

/// On-disk image embeddings of one model.
#[derive(Debug, Clone)]
pub struct EmbeddingCache {
    dir: PathBuf,
}

impl EmbeddingCache {
    /// The cache of the model with key `model_key` below `root`.
    pub fn new(root: impl AsRef<Path>, model_key: &str) -> Self {
        Self { dir: root.as_ref().join(model_key) }
    }

    /// The model's folder of the cache.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, image_key: &str) -> PathBuf {
        self.dir.join(format!("{image_key}.safetensors"))
    }

    /// Whether an embedding is stored for `image_key`.
    pub fn contains(&self, image_key: &str) -> bool {
        self.path(image_key).is_file()
    }

    /// The stored `[C, h, w]` embedding (as f32) and original `(height, width)`, if present and
    /// readable.
    pub fn load(&self, image_key: &str) -> Option<(Tensor, (usize, usize))> {
        let (tensors, meta) = read_safetensors(&self.path(image_key), &Device::Cpu).ok()?;
        if meta.get("format").map(String::as_str) != Some(EMBEDDING_FORMAT) {
            return None;
        }
        let h: usize = meta.get("height")?.parse().ok()?;
        let w: usize = meta.get("width")?.parse().ok()?;
        let t = tensors.get("embedding")?;
        if t.dtype() != DType::F16 || t.rank() != 3 {
            return None;
        }
        Some((t.to_dtype(DType::F32).ok()?, (h, w)))
    }

    /// Stores an embedding `[C, h, w]` as f16, atomically.
    pub fn store(&self, image_key: &str, embedding: &Tensor, original_size: (usize, usize)) -> Result<()> {
        let meta: HashMap<String, String> = [
            ("height".to_string(), original_size.0.to_string()),
            ("width".to_string(), original_size.1.to_string()),
            ("format".to_string(), EMBEDDING_FORMAT.to_string()),
        ]
        .into();
        let half = embedding.to_dtype(DType::F16)?;
        write_safetensors(&self.path(image_key), [("embedding", &half)], &meta)
            .map_err(|e| Error::Cache { path: self.dir.clone(), message: e.to_string() })
    }
}

/// The cache key of a model: its checkpoint's canonical path, size and modification time, and
/// its architecture.
pub fn model_key(checkpoint: &Path, model: &Sam) -> String {
    // f32 keeps the keys of caches written before models had a dtype.
    let dtype = match model.dtype() {
        candle_core::DType::F32 => String::new(),
        other => format!(" {other:?}"),
    };
    checkpoint_key(checkpoint, &(serde_json::to_string(&model.config).unwrap_or_default() + &dtype))
}
