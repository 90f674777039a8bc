//! A loaded DINO / DINOv2 backbone with its preprocessing ([`DinoPipeline`]): images in — files,
//! dataset items or images in memory, any [`ImageSource`] — CLS and patch features and
//! last-block attention maps out, in batches, one bad image never stopping the rest.
//!
//! Preprocessing is [`DinoPreprocess`] (see [`super::preprocess`]). [`DinoPipeline::attention_maps`]
//! gives, per head, the CLS row of the last block's attention over the patch tokens (the CLS
//! and register columns left out), as DINO's `visualize_attention.py`;
//! `apps::attention` thresholds and draws them.

use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::loader::{self, LoadOptions, Loaded};
use super::preprocess::DinoPreprocess;
use super::Backbone;
use crate::data::ImageSource;
use crate::image::{self, DecodeOptions, RgbImage};
use crate::weights::dino::DinoFamily;
use crate::weights::formats::checkpoint_key;
use crate::weights::LoadReport;
use crate::{Error, Result};

/// `format` metadata of the feature files and caches written from DINO features.
pub const FEATURES_FORMAT: &str = "vista-dino-features-1";

/// One image's features.
#[derive(Debug, Clone, PartialEq)]
pub struct DinoFeatures {
    /// The CLS token after the final norm, `[C]`.
    pub cls: Vec<f32>,
    /// Patch tokens `[h·w, C]`, row-major over the grid; empty unless asked for.
    pub patches: Vec<f32>,
    /// Patch grid `(h, w)` (rows, columns).
    pub grid: (usize, usize),
    /// Register tokens `[R, C]` (empty without registers).
    pub registers: Vec<f32>,
    /// `(width, height)` of the model input.
    pub input_size: (u32, u32),
}

impl DinoFeatures {
    /// Feature width `C`.
    pub fn dim(&self) -> usize {
        self.cls.len()
    }
}

/// One file's outcome: its features, or why it was skipped.
pub struct FileFeatures {
    /// The image file.
    pub path: PathBuf,
    /// Its features, or the error that stopped it.
    pub features: Result<DinoFeatures>,
}

/// A loaded DINO / DINOv2 backbone with its preprocessing.
pub struct DinoPipeline {
    /// The backbone (a ViT, or DINO's ResNet-50).
    pub model: Backbone,
    /// How images are brought to the model's input (evaluation preprocessing by default).
    pub preprocess: DinoPreprocess,
    /// How image files are decoded (pixel limit, EXIF orientation).
    pub decode: DecodeOptions,
    /// The naming of the checkpoint the backbone was loaded from.
    pub family: DinoFamily,
    /// What the load did.
    pub report: LoadReport,
}

impl DinoPipeline {
    /// Loads a model argument (file, folder or hub id) with its family's evaluation
    /// preprocessing: a transformers-layout checkpoint's `preprocessor_config.json` (as
    /// `AutoImageProcessor` reads it), DINO's own evaluation transform for the others — at the
    /// size a backbone exported by `vista train dino` was trained at (resize and crop to its
    /// global crop size, as the trainer's k-NN evaluation), else resize 256, crop 224.
    pub fn load(model: &str, options: &LoadOptions) -> Result<Self> {
        let files = loader::resolve(model)?;
        let loaded = loader::load_backbone(&files, options)?;
        let preprocess = match (loaded.family, &files.preprocessor) {
            (DinoFamily::HuggingFace, Some(path)) => DinoPreprocess::from_hf_processor(path)?,
            (DinoFamily::HuggingFace, None) => DinoPreprocess::hugging_face(),
            (DinoFamily::Official, _) => match trained_size(&files.weights) {
                // As the trainer's own k-NN evaluation sees the images.
                Some(size) => DinoPreprocess::eval_sized(size, size),
                None => DinoPreprocess::eval(),
            },
        };
        let crate::weights::Loaded { model, family, report } = loaded;
        Ok(Self { model, preprocess, decode: DecodeOptions::default(), family, report })
    }

    /// Wraps a loaded backbone (ViT or ResNet), with DINO's evaluation preprocessing.
    pub fn from_loaded(loaded: loader::LoadedBackbone) -> Self {
        let crate::weights::Loaded { model, family, report } = loaded;
        Self { model, preprocess: DinoPreprocess::eval(), decode: DecodeOptions::default(), family, report }
    }

    /// Wraps a loaded vision transformer, with DINO's evaluation preprocessing.
    pub fn new(loaded: Loaded) -> Self {
        let Loaded { model, family, report } = loaded;
        let model = Backbone::Vit(model);
        Self { model, preprocess: DinoPreprocess::eval(), decode: DecodeOptions::default(), family, report }
    }

    /// Patch side in pixels (a ResNet's total stride, 32).
    pub fn patch_size(&self) -> usize {
        self.model.patch_size()
    }

    /// The 8-bit image the model sees for `img`.
    pub fn prepare(&self, img: &RgbImage) -> Result<RgbImage> {
        self.preprocess.prepare(img, self.patch_size())
    }

    /// [`prepare`](Self::prepare) of a decoded image, its transparency treated as the
    /// checkpoint family's reference does ([`DinoPreprocess::alpha`]).
    pub fn prepare_decoded(&self, img: &image::Decoded) -> Result<RgbImage> {
        self.prepare(&self.preprocess.flatten(img))
    }

    /// Features of images already [`prepare`](Self::prepare)d, all of one size, in one forward
    /// pass; patch tokens only when `patches`.
    pub fn features_of_prepared(&self, imgs: &[&RgbImage], patches: bool) -> Result<Vec<DinoFeatures>> {
        if imgs.is_empty() {
            return Ok(Vec::new());
        }
        let input_size = imgs[0].dimensions();
        let pixels = self.preprocess.pixels(imgs)?;
        let out = self.model.forward(&pixels, false, false)?;
        let (b, n, c) = out.tokens.dims3()?;
        let r = out.registers;
        let all: Vec<f32> = out.tokens.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1()?;
        Ok((0..b)
            .map(|i| {
                let t = &all[i * n * c..(i + 1) * n * c];
                DinoFeatures {
                    cls: t[..c].to_vec(),
                    registers: t[c..(1 + r) * c].to_vec(),
                    patches: if patches { t[(1 + r) * c..].to_vec() } else { Vec::new() },
                    grid: out.grid,
                    input_size,
                }
            })
            .collect())
    }

    /// Features of one image.
    pub fn features(&self, img: &RgbImage, patches: bool) -> Result<DinoFeatures> {
        let p = self.prepare(img)?;
        Ok(self.features_of_prepared(&[&p], patches)?.remove(0))
    }

    /// Features of one image file.
    pub fn features_file(&self, path: &Path, patches: bool) -> Result<DinoFeatures> {
        let p = self.prepare_decoded(&image::load_image(path, &self.decode)?)?;
        Ok(self.features_of_prepared(&[&p], patches)?.remove(0))
    }

    /// Features of many images, `batch` per chunk: each chunk is decoded and resized in parallel
    /// (rayon), then its images of equal input size go through the model together (in
    /// [`Mode::Whole`](super::preprocess::Mode::Whole) images of other sizes form their own
    /// batches). A source that fails to load gets its error in its slot and the rest go on; a
    /// model error is reported on every image of the failed batch, naming it. `progress` gets the
    /// number of sources done.
    pub fn extract<S: ImageSource>(
        &self,
        sources: &[S],
        batch: usize,
        patches: bool,
        mut progress: impl FnMut(usize),
    ) -> Vec<Result<DinoFeatures>> {
        let batch = batch.max(1);
        let mut out = Vec::with_capacity(sources.len());
        for chunk in sources.chunks(batch) {
            let prepared: Vec<Result<RgbImage>> =
                chunk.par_iter().map(|s| s.load_image(&self.decode).and_then(|im| self.prepare_decoded(&im))).collect();
            let mut groups: Vec<((u32, u32), Vec<usize>)> = Vec::new();
            for (i, img) in prepared.iter().enumerate().filter_map(|(i, p)| Some((i, p.as_ref().ok()?))) {
                let d = img.dimensions();
                match groups.iter_mut().find(|(size, _)| *size == d) {
                    Some((_, members)) => members.push(i),
                    None => groups.push((d, vec![i])),
                }
            }
            let mut slots: Vec<Option<Result<DinoFeatures>>> = (0..chunk.len()).map(|_| None).collect();
            for (_, members) in &groups {
                let imgs: Vec<&RgbImage> = members.iter().filter_map(|&i| prepared[i].as_ref().ok()).collect();
                match self.features_of_prepared(&imgs, patches) {
                    Ok(feats) => {
                        for (&i, f) in members.iter().zip(feats) {
                            slots[i] = Some(Ok(f));
                        }
                    }
                    Err(e) => {
                        for &i in members {
                            slots[i] =
                                Some(Err(Error::BatchFailed { item: chunk[i].describe(), message: e.to_string() }));
                        }
                    }
                }
            }
            for (slot, p) in slots.into_iter().zip(prepared) {
                out.push(match (slot, p) {
                    (Some(r), _) => r,
                    (None, Err(e)) => Err(e),
                    (None, Ok(_)) => unreachable!("every prepared image is in a group"),
                });
            }
            progress(chunk.len());
        }
        out
    }

    /// [`extract`](Self::extract) over image files, each result with its path.
    pub fn extract_files(
        &self,
        paths: &[PathBuf],
        batch: usize,
        patches: bool,
        progress: impl FnMut(usize),
    ) -> Vec<FileFeatures> {
        let results = self.extract(paths, batch, patches, progress);
        paths.iter().zip(results).map(|(p, features)| FileFeatures { path: p.clone(), features }).collect()
    }

    /// The last block's attention from the CLS token to every patch, per head (see
    /// [`AttentionMaps`]).
    pub fn attention_maps(&self, img: &RgbImage) -> Result<AttentionMaps> {
        let prepared = self.prepare(img)?;
        let pixels = self.preprocess.pixels(&[&prepared])?;
        if self.model.vit().is_none() {
            return Err(Error::arg("model", "a ResNet has no attention maps; use a DINO vision transformer"));
        }
        let out = self.model.forward(&pixels, true, false)?;
        let attn = out.attention.as_ref().ok_or_else(|| Error::arg("attention", "the model gave no attention"))?;
        let (_, heads, n, _) = attn.dims4()?;
        let (h, w) = out.grid;
        let start = 1 + out.registers;
        if start + h * w != n {
            return Err(Error::arg("attention", format!("{n} tokens for 1 + {} registers + {h}x{w}", out.registers)));
        }
        let maps = attn.narrow(2, 0, 1)?.narrow(3, start, h * w)?;
        let maps: Vec<f32> = maps.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1()?;
        Ok(AttentionMaps { image: prepared, heads, grid: (h, w), patch_size: self.patch_size(), maps })
    }

    /// [`attention_maps`](Self::attention_maps) of an image file.
    pub fn attention_maps_file(&self, path: &Path) -> Result<AttentionMaps> {
        self.attention_maps(&self.preprocess.flatten(&image::load_image(path, &self.decode)?))
    }

    /// The cache key of the model ([`checkpoint_key`]: its checkpoint and architecture).
    pub fn model_key(&self) -> String {
        // f32 keeps the keys of caches written before models had a dtype.
        let dtype = match self.model.dtype() {
            candle_core::DType::F32 => String::new(),
            other => format!(" {other:?}"),
        };
        let arch = self.model.arch_key() + &dtype;
        checkpoint_key(&self.report.checkpoint, &arch)
    }
}

/// The global crop size a backbone exported by `vista train dino` was trained at (its
/// safetensors metadata `config.global_size`); `None` for any other checkpoint.
fn trained_size(weights: &std::path::Path) -> Option<u32> {
    if !matches!(crate::weights::formats::detect(weights), Ok(crate::weights::formats::Format::Safetensors)) {
        return None;
    }
    let meta = crate::weights::formats::safetensors_metadata(weights).ok()?;
    if !meta.get("format")?.starts_with("vista-dino-backbone/") {
        return None;
    }
    let config: serde_json::Value = serde_json::from_str(meta.get("config")?).ok()?;
    config.get("global_size")?.as_u64().and_then(|s| u32::try_from(s).ok()).filter(|&s| s > 0)
}

/// Per head, the CLS token's attention to every patch in the last block.
#[derive(Debug, Clone)]
pub struct AttentionMaps {
    /// The 8-bit image the model saw (after preprocessing); patch `(r, c)` covers pixels
    /// `[c·p, (c+1)·p) × [r·p, (r+1)·p)`.
    pub image: RgbImage,
    /// Number of attention heads.
    pub heads: usize,
    /// Patch grid `(h, w)` (rows, columns).
    pub grid: (usize, usize),
    /// Patch side in pixels.
    pub patch_size: usize,
    /// `[heads, h, w]`: attention probabilities of the CLS row over the patch columns (the CLS
    /// and register columns excluded, so a head's map sums to one minus what it puts there).
    pub maps: Vec<f32>,
}

impl AttentionMaps {
    /// Head `i`'s map, `[h·w]` row-major.
    pub fn head(&self, i: usize) -> &[f32] {
        let n = self.grid.0 * self.grid.1;
        &self.maps[i * n..(i + 1) * n]
    }
}
