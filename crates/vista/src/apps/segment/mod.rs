//! Segmenting image files with SAM — decode, encode once (or reuse the cached embedding,
//! [`cache`]), prompt — and exporting what comes out: [`mask`] (binary masks, PNG), [`rle`]
//! (COCO RLE, byte for byte pycocotools'), [`polygon`] (COCO polygons), [`overlay`] (pictures)
//! and [`export`] (COCO documents, `--mask-input` conversion, the low-resolution logits).

pub mod amg;
pub mod cache;
pub mod everything;
pub mod export;
pub mod mask;
pub mod overlay;
pub mod polygon;
pub mod rle;

use std::path::Path;
use std::sync::Arc;

pub use cache::{default_cache_dir, EmbeddingCache};
pub use everything::{AmgOptions, AutoMask, AutomaticMaskGenerator, OutputMode};
pub use mask::Mask;
pub use polygon::PolygonOptions;
pub use rle::Rle;

use crate::image::{decode_rgb, DecodeOptions, RgbImage};
use crate::sam::loader::{self, LoadOptions};
use crate::sam::{Predictor, Sam, Session};
use crate::{Error, Result};

/// A loaded SAM with decoding options and an optional embedding cache.
pub struct SegmentPipeline {
    /// The model, shared by the sessions.
    pub predictor: Predictor,
    /// The embedding cache, if enabled.
    pub cache: Option<EmbeddingCache>,
    /// How image files are decoded (pixel limit, EXIF orientation).
    pub decode: DecodeOptions,
    /// What the load did.
    pub report: crate::weights::LoadReport,
}

/// An encoded image file.
pub struct EncodedImage {
    /// The image's session, ready for prompts.
    pub session: Session,
    /// The decoded image.
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
        let cache = cache_root.map(|root| EmbeddingCache::new(root, &cache::model_key(&files.weights, &model)));
        Ok(Self { predictor: Predictor::new(model), cache, decode: DecodeOptions::default(), report: loaded.report })
    }

    /// The model.
    pub fn model(&self) -> &Arc<Sam> {
        self.predictor.model()
    }

    /// Decodes an image file and encodes it, or reuses its cached embedding.
    pub fn encode_file(&self, path: &Path) -> Result<EncodedImage> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let image = decode_rgb(&bytes, path, &self.decode)?;
        let key = blake3::hash(&bytes).to_hex().to_string();
        let (session, cached) = self.session_for(&key, &image)?;
        Ok(EncodedImage { session, image, cached })
    }

    /// The session of `image`: its cached embedding under `key` when there is one of the
    /// image's size, else a fresh encoding (then stored under `key`); true when it came from the
    /// cache.
    pub fn session_for(&self, key: &str, image: &RgbImage) -> Result<(Session, bool)> {
        let original = (image.height() as usize, image.width() as usize);
        if let Some(cache) = &self.cache {
            if let Some((emb, size)) = cache.load(key) {
                if size == original {
                    if let Ok(session) = self.predictor.session_from_embedding(&emb, size) {
                        return Ok((session, true));
                    }
                }
            }
        }
        let session = self.predictor.set_image(image)?;
        if let Some(cache) = &self.cache {
            cache.store(key, &session.embedding_chw()?, original)?;
        }
        Ok((session, false))
    }

    /// True when the file's embedding is already cached (reads and hashes the file).
    pub fn is_cached(&self, path: &Path) -> Result<bool> {
        let Some(cache) = &self.cache else { return Ok(false) };
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Ok(cache.contains(&blake3::hash(&bytes).to_hex()))
    }
}
