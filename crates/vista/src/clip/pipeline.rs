//! A loaded CLIP with its tokenizer and image preprocessing: strings and image files in,
//! L2-normalised embeddings out.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{Device, Tensor};
use rayon::prelude::*;

use crate::clip::loader::{self, Loaded};
use crate::clip::tokenizer::{ClipTokenizer, HfTokenizer, TextTokenizer};
use crate::clip::{l2_normalize, ClipConfig, ClipModel};
use crate::device::Target;
use crate::image::{self, AlphaRule, ClipPreprocess, CropRounding, DecodeOptions, Filter, RgbImage};
use crate::weights::clip::ClipFamily;
use crate::weights::LoadReport;
use crate::{Error, Result};

/// A loaded CLIP with its tokenizer, image preprocessing and decode options.
pub struct ClipPipeline {
    /// The model.
    pub model: ClipModel,
    /// The tokenizer of the checkpoint's family (cheap to clone, it is read-only).
    pub tokenizer: TextTokenizer,
    /// How images are resized, cropped and normalised, from the checkpoint's config.
    pub preprocess: ClipPreprocess,
    /// How image files are decoded (pixel limit, EXIF orientation).
    pub decode: DecodeOptions,
    /// The naming of the checkpoint the model was loaded from.
    pub family: ClipFamily,
    /// What the load did.
    pub report: LoadReport,
}

/// One image's outcome: its embedding, or why it was skipped.
pub struct ImageEmbedding {
    /// The image file.
    pub path: PathBuf,
    /// Its normalised embedding `[D]`, or the error that stopped it.
    pub embedding: Result<Vec<f32>>,
}

/// The preprocessing a checkpoint's config asks for.
pub fn preprocess_for(cfg: &ClipConfig) -> ClipPreprocess {
    ClipPreprocess {
        size: cfg.vision.image_size as u32,
        resize_shortest: cfg.preprocess.resize as u32,
        mean: cfg.preprocess.mean,
        std: cfg.preprocess.std,
        crop: if cfg.preprocess.hf_crop { CropRounding::Floor } else { CropRounding::Torchvision },
        filter: Filter::Bicubic,
        // transformers' processors composite onto white; open_clip resizes premultiplied.
        alpha: if cfg.preprocess.hf_crop { AlphaRule::OverWhite } else { AlphaRule::Premultiplied },
    }
}

/// The tokenizer a checkpoint family's reference uses: transformers' `CLIPTokenizer` for
/// transformers-layout checkpoints (their `tokenizer.json`, or OpenAI's vocabulary under the
/// same rules when they have none), open_clip's `SimpleTokenizer` for the others.
pub fn tokenizer_for(family: ClipFamily, tokenizer_json: Option<&Path>) -> Result<TextTokenizer> {
    Ok(match (family, tokenizer_json) {
        (ClipFamily::HuggingFace, Some(path)) => TextTokenizer::Transformers(Arc::new(HfTokenizer::from_file(path)?)),
        (ClipFamily::HuggingFace, None) => TextTokenizer::Transformers(Arc::new(HfTokenizer::openai()?)),
        (ClipFamily::OpenClip, _) => TextTokenizer::OpenClip(Arc::new(ClipTokenizer::new()?)),
    })
}

impl ClipPipeline {
    /// Loads a model argument (file, folder or hub id; `arch` optionally names a preset).
    pub fn load(model: &str, arch: Option<&str>, target: impl Into<Target>) -> Result<Self> {
        let files = loader::resolve(model, arch)?;
        let Loaded { model, family, report } = loader::load(&files, target)?;
        let tokenizer = tokenizer_for(family, files.tokenizer.as_deref())?;
        if model.config().text.vocab_size != tokenizer.vocab_size() {
            return Err(Error::Config {
                path: report.checkpoint.clone(),
                message: format!(
                    "the text tower has {} tokens but the CLIP tokenizer has {}",
                    model.config().text.vocab_size,
                    tokenizer.vocab_size()
                ),
            });
        }
        let preprocess = preprocess_for(model.config());
        Ok(Self { model, tokenizer, preprocess, decode: DecodeOptions::default(), family, report })
    }

    /// The device the model runs on.
    pub fn device(&self) -> &Device {
        self.model.device()
    }

    /// Normalised text embeddings `[N, D]`.
    pub fn embed_texts(&self, texts: &[&str]) -> Result<Tensor> {
        let ids = self.tokenizer.tokenize_batch(texts, self.model.config().text.context_length)?;
        l2_normalize(&self.model.encode_text(&ids)?)
    }

    /// Normalised embeddings of images already resized and cropped by
    /// [`ClipPreprocess::resize_crop`] (the indexer crops on its decode threads).
    pub fn embed_cropped(&self, images: &[&RgbImage]) -> Result<Vec<Vec<f32>>> {
        let s = self.preprocess.size as usize;
        let per = 3 * s * s;
        let mut data = vec![0f32; images.len() * per];
        for (img, out) in images.iter().zip(data.chunks_exact_mut(per)) {
            self.preprocess.normalize_into(img, out)?;
        }
        let pixels = Tensor::from_vec(data, (images.len(), 3, s, s), self.device())?;
        Ok(l2_normalize(&self.model.encode_image(&pixels)?)?.to_vec2::<f32>()?)
    }

    /// Decodes and embeds image files in batches of `batch`. A file that fails to decode gets its
    /// error in its slot and the rest go on. `progress` is called with the number of files done.
    pub fn embed_files(&self, paths: &[PathBuf], batch: usize, mut progress: impl FnMut(usize)) -> Vec<ImageEmbedding> {
        let batch = batch.max(1);
        let mut out = Vec::with_capacity(paths.len());
        for chunk in paths.chunks(batch) {
            // Decode and crop in parallel; only the small crops are kept for the batch.
            let decoded: Vec<Result<RgbImage>> = chunk
                .par_iter()
                .map(|p| image::load_image(p, &self.decode).map(|im| self.preprocess.prepare(&im)))
                .collect();
            let ok: Vec<&RgbImage> = decoded.iter().filter_map(|r| r.as_ref().ok()).collect();
            let embedded = if ok.is_empty() { Ok(Vec::new()) } else { self.embed_cropped(&ok) };
            match embedded {
                Ok(rows) => {
                    let mut rows = rows.into_iter();
                    for (p, d) in chunk.iter().zip(decoded) {
                        let embedding = d.map(|_| rows.next().expect("one row per decoded image"));
                        out.push(ImageEmbedding { path: p.clone(), embedding });
                    }
                }
                Err(e) => {
                    // The model failed on the whole batch (not a decode error): report it on each.
                    let msg = e.to_string();
                    for (p, d) in chunk.iter().zip(decoded) {
                        let embedding = d.and_then(|_| Err(Error::arg("image", msg.clone())));
                        out.push(ImageEmbedding { path: p.clone(), embedding });
                    }
                }
            }
            progress(chunk.len());
        }
        out
    }

    /// Embeds one image file.
    pub fn embed_file(&self, path: &Path) -> Result<Vec<f32>> {
        let img = self.preprocess.prepare(&image::load_image(path, &self.decode)?);
        Ok(self.embed_cropped(&[&img])?.remove(0))
    }
}
