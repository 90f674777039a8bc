//! Segmenting image files with SAM: decode, encode once (or reuse a cached embedding), prompt.
//!
//! # The embedding cache
//! SAM's image encoder is the expensive step (seconds per image on a CPU); the decoder is
//! milliseconds. [`EmbeddingCache`] keeps each image embedding on disk so that a second session
//! on the same image, or many prompts from the command line, skip the encoder:
//!
//! * one safetensors file per (model, image): `DIR/<model key>/<image blake3>.safetensors`,
//!   holding `embedding` as f16 `[C, h, w]` (2 MiB for the releases instead of 4; f16's 11-bit
//!   mantissa moved the tiny fixture's low-resolution logits, of magnitude 1–10, by 3.9e-3 and
//!   left ≥ 99.9 % of mask pixels unchanged — `tests/segment.rs`) and the original image size in
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
use std::sync::Arc;

use candle_core::{Device, Tensor};
use half::f16;

use crate::image::{decode_rgb, DecodeOptions, RgbImage};
use crate::sam::loader::{self, LoadOptions};
use crate::sam::{Predictor, Sam, Session};
use crate::{Error, Result};

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

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, image_key: &str) -> PathBuf {
        self.dir.join(format!("{image_key}.safetensors"))
    }

    pub fn contains(&self, image_key: &str) -> bool {
        self.path(image_key).is_file()
    }

    /// The stored `[C, h, w]` embedding (as f32) and original `(height, width)`, if present and
    /// readable.
    pub fn load(&self, image_key: &str) -> Option<(Tensor, (usize, usize))> {
        let bytes = std::fs::read(self.path(image_key)).ok()?;
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).ok()?;
        let meta = meta.metadata().as_ref()?;
        let h: usize = meta.get("height")?.parse().ok()?;
        let w: usize = meta.get("width")?.parse().ok()?;
        let st = safetensors::SafeTensors::deserialize(&bytes).ok()?;
        let view = st.tensor("embedding").ok()?;
        if view.dtype() != safetensors::Dtype::F16 || view.shape().len() != 3 {
            return None;
        }
        let data: Vec<f32> = view.data().chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32()).collect();
        let t = Tensor::from_vec(data, view.shape(), &Device::Cpu).ok()?;
        Some((t, (h, w)))
    }

    /// Stores an embedding `[C, h, w]` atomically (temporary file, then rename).
    pub fn store(&self, image_key: &str, embedding: &Tensor, original_size: (usize, usize)) -> Result<()> {
        std::fs::create_dir_all(&self.dir).map_err(|e| Error::io(&self.dir, e))?;
        let shape = embedding.dims().to_vec();
        let values: Vec<f32> = embedding.flatten_all()?.to_vec1()?;
        let bytes: Vec<u8> = values.iter().flat_map(|v| f16::from_f32(*v).to_le_bytes()).collect();
        let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F16, shape, &bytes)
            .map_err(|e| Error::Cache { path: self.dir.clone(), message: e.to_string() })?;
        let meta: HashMap<String, String> = [
            ("height".to_string(), original_size.0.to_string()),
            ("width".to_string(), original_size.1.to_string()),
            ("format".to_string(), "vista-sam-embedding-1".to_string()),
        ]
        .into();
        let path = self.path(image_key);
        let tmp = self.dir.join(format!(".{image_key}.{}.tmp", std::process::id()));
        safetensors::serialize_to_file([("embedding", view)], Some(meta), &tmp)
            .map_err(|e| Error::Cache { path: tmp.clone(), message: e.to_string() })?;
        std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))
    }
}

/// The cache key of a model: its checkpoint's canonical path, size and modification time, and
/// its architecture.
pub fn model_key(checkpoint: &Path, model: &Sam) -> String {
    let mut h = blake3::Hasher::new();
    let canonical = checkpoint.canonicalize().unwrap_or_else(|_| checkpoint.to_path_buf());
    h.update(canonical.to_string_lossy().as_bytes());
    if let Ok(m) = std::fs::metadata(checkpoint) {
        h.update(&m.len().to_le_bytes());
        if let Ok(t) = m.modified() {
            let ns = t.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
            h.update(&ns.to_le_bytes());
        }
    }
    h.update(serde_json::to_string(&model.config).unwrap_or_default().as_bytes());
    h.finalize().to_hex()[..20].to_string()
}

/// A loaded SAM with decoding options and an optional embedding cache.
pub struct SegmentPipeline {
    pub predictor: Predictor,
    pub cache: Option<EmbeddingCache>,
    pub decode: DecodeOptions,
    pub report: crate::weights::LoadReport,
}

/// An encoded image file.
pub struct EncodedImage {
    pub session: Session,
    pub image: RgbImage,
    /// True when the embedding came from the cache.
    pub cached: bool,
}

impl SegmentPipeline {
    /// Loads a model argument (file, folder or hub id); `cache_root` enables the cache.
    pub fn load(model: &str, options: &LoadOptions, cache_root: Option<&Path>) -> Result<Self> {
        let files = loader::resolve(model)?;
        let loaded = loader::load(&files, options)?;
        let model = Arc::new(loaded.model);
        let cache = cache_root.map(|root| EmbeddingCache::new(root, &model_key(&files.weights, &model)));
        Ok(Self { predictor: Predictor::new(model), cache, decode: DecodeOptions::default(), report: loaded.report })
    }

    pub fn model(&self) -> &Arc<Sam> {
        self.predictor.model()
    }

    /// Decodes an image file and encodes it, or reuses its cached embedding.
    pub fn encode_file(&self, path: &Path) -> Result<EncodedImage> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let image = decode_rgb(&bytes, path, &self.decode)?;
        let key = blake3::hash(&bytes).to_hex().to_string();
        let original = (image.height() as usize, image.width() as usize);
        if let Some(cache) = &self.cache {
            if let Some((emb, size)) = cache.load(&key) {
                if size == original {
                    if let Ok(session) = self.predictor.session_from_embedding(&emb, size) {
                        return Ok(EncodedImage { session, image, cached: true });
                    }
                }
            }
        }
        let session = self.predictor.set_image(&image)?;
        if let Some(cache) = &self.cache {
            cache.store(&key, &session.embedding_chw()?, original)?;
        }
        Ok(EncodedImage { session, image, cached: false })
    }

    /// True when the file's embedding is already cached (reads and hashes the file).
    pub fn is_cached(&self, path: &Path) -> Result<bool> {
        let Some(cache) = &self.cache else { return Ok(false) };
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Ok(cache.contains(&blake3::hash(&bytes).to_hex()))
    }
}
