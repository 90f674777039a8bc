//! A loaded DINO / DINOv2 backbone with its preprocessing: image files in, CLS and patch features
//! and attention maps out; labelled sets in, cached feature matrices out (for k-NN and linear
//! probes).
//!
//! # Preprocessing ([`DinoPreprocess`])
//!
//! * [`Mode::Eval`]: DINO's evaluation transform (`eval_knn.py`, `eval_linear.py`):
//!   `Resize(256, BICUBIC) → CenterCrop(224) → ToTensor → Normalize(IMAGENET_MEAN,
//!   IMAGENET_STD)`, the sizes configurable. The crop is [`ClipPreprocess::resize_crop`] with
//!   torchvision's rounding (Pillow-equivalent within ±1 on < 1 % of the values, see
//!   [`crate::image`]).
//! * [`Mode::Whole`]: the whole image at a multiple of the patch size, for dense features and
//!   attention maps. The target size keeps the aspect ratio with the longest side at
//!   `max_side` (`None`: the image's own size), computed as [`longest_side_size`] does
//!   (`int(side · max_side / longest + 0.5)`; up- or down-scaling); then **each side is
//!   rounded down to a multiple of the patch size** (at least one patch), and the image is
//!   resized to exactly that with Pillow's bicubic ([`resize_exact`]) — the aspect ratio moves
//!   by less than one patch per side, nothing is cropped. A side already at its target is not
//!   resampled. [`DEFAULT_MAX_SIDE`] (448) is a multiple of 8, 14 and 16, so every released
//!   patch size gets its longest side at exactly 448 pixels.
//!
//! Pixels go to the model channels-last (`[B, H, W, 3]`) normalised as torchvision's
//! `ToTensor` + `Normalize` in f32.
//!
//! # Attention maps
//!
//! [`DinoPipeline::attention_maps`] gives, per head, the CLS row of the last block's attention
//! over the patch tokens (the CLS and register columns left out), as DINO's
//! `visualize_attention.py`; [`threshold_attention`] is its `--threshold` masks and
//! [`render_attention`] draws a picture of them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use rayon::prelude::*;

use crate::apps::dataset::{Item, ItemImage, LabelledSet};
use crate::apps::masks::mask_color;
use crate::dino::loader::{self, LoadOptions, Loaded};
use crate::dino::DinoVit;
use crate::image::{
    self, longest_side_size, resize_exact, ClipPreprocess, CropRounding, DecodeOptions, Filter, Rgb, RgbImage,
    IMAGENET_MEAN, IMAGENET_STD,
};
use crate::weights::dino::DinoFamily;
use crate::weights::LoadReport;
use crate::{Error, Result};

/// Longest side of [`Mode::Whole`] when none is given: a multiple of 8, 14 and 16.
pub const DEFAULT_MAX_SIDE: u32 = 448;

/// `format` metadata of the feature files and caches written here.
pub const FEATURES_FORMAT: &str = "vista-dino-features-1";

/// How an image becomes the model's input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Shortest side to `resize_shortest` (bicubic), then a `crop` × `crop` centre crop
    /// (torchvision's rounding); DINO: 256 / 224.
    Eval { resize_shortest: u32, crop: u32 },
    /// The whole image, longest side at `max_side` (`None`: as it is), each side rounded down
    /// to a multiple of the patch size (see the module docs).
    Whole { max_side: Option<u32> },
}

/// DINO preprocessing: a [`Mode`], then `(v / 255 - mean) / std`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DinoPreprocess {
    pub mode: Mode,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    /// Resampling filter of the resize (DINO: bicubic).
    pub filter: Filter,
}

impl Default for DinoPreprocess {
    fn default() -> Self {
        Self::eval()
    }
}

impl DinoPreprocess {
    /// DINO's evaluation transform: resize 256, centre crop 224, ImageNet statistics.
    pub fn eval() -> Self {
        Self::eval_sized(256, 224)
    }

    /// The evaluation transform at other sizes.
    pub fn eval_sized(resize_shortest: u32, crop: u32) -> Self {
        Self {
            mode: Mode::Eval { resize_shortest, crop },
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
            filter: Filter::Bicubic,
        }
    }

    /// The whole image, longest side at `max_side` (see [`Mode::Whole`]).
    pub fn whole(max_side: Option<u32>) -> Self {
        Self { mode: Mode::Whole { max_side }, ..Self::eval() }
    }

    /// The [`ClipPreprocess`] equal to [`Mode::Eval`] (`None` for [`Mode::Whole`]).
    pub fn clip_preprocess(&self) -> Option<ClipPreprocess> {
        match self.mode {
            Mode::Eval { resize_shortest, crop } => Some(ClipPreprocess {
                size: crop,
                resize_shortest,
                mean: self.mean,
                std: self.std,
                crop: CropRounding::Torchvision,
                filter: self.filter,
            }),
            Mode::Whole { .. } => None,
        }
    }

    /// Checks the sizes and the statistics.
    pub fn validate(&self) -> Result<()> {
        match self.mode {
            Mode::Eval { .. } => self.clip_preprocess().expect("eval").validate(),
            Mode::Whole { max_side } => {
                if max_side == Some(0) {
                    return Err(Error::arg("max_side", "must be positive"));
                }
                if self.std.iter().any(|s| !s.is_finite() || *s == 0.0) || self.mean.iter().any(|m| !m.is_finite()) {
                    return Err(Error::arg(
                        "std",
                        format!("mean {:?} / std {:?} must be finite, std non-zero", self.mean, self.std),
                    ));
                }
                Ok(())
            }
        }
    }

    /// `(width, height)` of the model input for a `width` × `height` image and patch size
    /// `patch` (in [`Mode::Eval`] the crop; the model drops any remainder beyond a multiple of
    /// the patch size).
    pub fn input_size(&self, width: u32, height: u32, patch: usize) -> (u32, u32) {
        match self.mode {
            Mode::Eval { crop, .. } => (crop, crop),
            Mode::Whole { max_side } => {
                let (w, h) = match max_side {
                    Some(m) => longest_side_size(width, height, m),
                    None => (width, height),
                };
                let p = patch.max(1) as u32;
                let round = |s: u32| (s / p).max(1) * p;
                (round(w), round(h))
            }
        }
    }

    /// The 8-bit image the model sees (before normalisation).
    pub fn prepare(&self, img: &RgbImage, patch: usize) -> Result<RgbImage> {
        let (w, h) = img.dimensions();
        if w == 0 || h == 0 {
            return Err(Error::arg("image", format!("the image is empty ({w}x{h})")));
        }
        match self.mode {
            Mode::Eval { .. } => Ok(self.clip_preprocess().expect("eval").resize_crop(img)),
            Mode::Whole { .. } => {
                let (tw, th) = self.input_size(w, h, patch);
                if (tw, th) == (w, h) {
                    Ok(img.clone())
                } else {
                    resize_exact(img, tw, th, self.filter)
                }
            }
        }
    }

    /// Per channel, the 256 possible outputs `(v / 255 - mean) / std` in f32, in torchvision's
    /// order of operations.
    fn lut(&self) -> [[f32; 256]; 3] {
        let mut lut = [[0f32; 256]; 3];
        for (c, table) in lut.iter_mut().enumerate() {
            for (v, out) in table.iter_mut().enumerate() {
                *out = (v as f32 / 255.0 - self.mean[c]) / self.std[c];
            }
        }
        lut
    }

    /// Normalised channels-last values of `img` (`[H, W, 3]`, `out.len() == 3·W·H`).
    pub fn normalize_into(&self, img: &RgbImage, out: &mut [f32]) -> Result<()> {
        if out.len() != img.as_raw().len() {
            return Err(Error::arg("out", format!("{} values for a {:?} image", out.len(), img.dimensions())));
        }
        normalize_hwc(&self.lut(), img.as_raw(), out);
        Ok(())
    }

    /// Normalised channels-last pixels `[B, H, W, 3]` of prepared images, all of one size.
    pub fn pixels(&self, imgs: &[&RgbImage]) -> Result<Tensor> {
        let Some(first) = imgs.first() else {
            return Err(Error::arg("imgs", "no image"));
        };
        let (w, h) = first.dimensions();
        if let Some(i) = imgs.iter().position(|im| im.dimensions() != (w, h)) {
            return Err(Error::arg(
                "imgs",
                format!("image {i} is {:?}, image 0 {:?}: a batch needs one size", imgs[i].dimensions(), (w, h)),
            ));
        }
        let per = 3 * w as usize * h as usize;
        let lut = self.lut();
        let mut data = vec![0f32; imgs.len() * per];
        data.par_chunks_mut(per).zip(imgs.par_iter()).for_each(|(out, img)| normalize_hwc(&lut, img.as_raw(), out));
        Ok(Tensor::from_vec(data, (imgs.len(), h as usize, w as usize, 3), &Device::Cpu)?)
    }

    /// A stable description, for cache keys.
    pub fn describe(&self) -> String {
        let mode = match self.mode {
            Mode::Eval { resize_shortest, crop } => format!("eval:{resize_shortest}:{crop}"),
            Mode::Whole { max_side } => format!("whole:{}", max_side.map_or("native".to_string(), |m| m.to_string())),
        };
        format!("{mode} mean={:?} std={:?} filter={:?}", self.mean, self.std, self.filter)
    }
}

fn normalize_hwc(lut: &[[f32; 256]; 3], rgb: &[u8], out: &mut [f32]) {
    for (px, o) in rgb.chunks_exact(3).zip(out.chunks_exact_mut(3)) {
        o[0] = lut[0][px[0] as usize];
        o[1] = lut[1][px[1] as usize];
        o[2] = lut[2][px[2] as usize];
    }
}

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
    pub path: PathBuf,
    pub features: Result<DinoFeatures>,
}

/// Something that gives an image: a file, a dataset item, an image in memory.
pub trait ImageSource: Sync {
    fn load_image(&self, decode: &DecodeOptions) -> Result<RgbImage>;
    /// Names the source in errors.
    fn describe(&self) -> String;
}

impl ImageSource for PathBuf {
    fn load_image(&self, decode: &DecodeOptions) -> Result<RgbImage> {
        image::load_rgb(self, decode)
    }
    fn describe(&self) -> String {
        self.display().to_string()
    }
}

impl ImageSource for Item {
    fn load_image(&self, decode: &DecodeOptions) -> Result<RgbImage> {
        self.load(decode)
    }
    fn describe(&self) -> String {
        match &self.image {
            ItemImage::File(p) => p.display().to_string(),
            ItemImage::Gray(g) => format!("in-memory {}x{} image (label {})", g.width(), g.height(), self.label),
        }
    }
}

impl ImageSource for RgbImage {
    fn load_image(&self, _: &DecodeOptions) -> Result<RgbImage> {
        Ok(self.clone())
    }
    fn describe(&self) -> String {
        format!("in-memory {}x{} image", self.width(), self.height())
    }
}

/// A loaded DINO / DINOv2 backbone with its preprocessing.
pub struct DinoPipeline {
    pub model: DinoVit,
    pub preprocess: DinoPreprocess,
    pub decode: DecodeOptions,
    pub family: DinoFamily,
    pub report: LoadReport,
}

impl DinoPipeline {
    /// Loads a model argument (file, folder or hub id) with DINO's evaluation preprocessing.
    pub fn load(model: &str, options: &LoadOptions) -> Result<Self> {
        Ok(Self::new(loader::load_model(model, options)?))
    }

    /// Wraps a loaded backbone, with DINO's evaluation preprocessing.
    pub fn new(loaded: Loaded) -> Self {
        let Loaded { model, family, report } = loaded;
        Self { model, preprocess: DinoPreprocess::eval(), decode: DecodeOptions::default(), family, report }
    }

    pub fn patch_size(&self) -> usize {
        self.model.config.patch_size
    }

    /// The 8-bit image the model sees for `img`.
    pub fn prepare(&self, img: &RgbImage) -> Result<RgbImage> {
        self.preprocess.prepare(img, self.patch_size())
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
        let all: Vec<f32> = out.tokens.flatten_all()?.to_vec1()?;
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
        self.features(&image::load_rgb(path, &self.decode)?, patches)
    }

    /// Features of many images, `batch` per chunk: each chunk is decoded and resized in parallel
    /// (rayon), then its images of equal input size go through the model together (in
    /// [`Mode::Whole`] images of other sizes form their own batches). A source that fails to
    /// load gets its error in its slot and the rest go on; a model error is reported on every
    /// image of the failed batch, naming it. `progress` gets the number of sources done.
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
                chunk.par_iter().map(|s| s.load_image(&self.decode).and_then(|im| self.prepare(&im))).collect();
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
                            slots[i] = Some(Err(Error::arg("image", format!("{}: {e}", chunk[i].describe()))));
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
        let out = self.model.forward(&pixels, true, false)?;
        let attn = out.attention.as_ref().ok_or_else(|| Error::arg("attention", "the model gave no attention"))?;
        let (_, heads, n, _) = attn.dims4()?;
        let (h, w) = out.grid;
        let start = 1 + out.registers;
        if start + h * w != n {
            return Err(Error::arg("attention", format!("{n} tokens for 1 + {} registers + {h}x{w}", out.registers)));
        }
        let maps: Vec<f32> = attn.narrow(2, 0, 1)?.narrow(3, start, h * w)?.flatten_all()?.to_vec1()?;
        Ok(AttentionMaps { image: prepared, heads, grid: (h, w), patch_size: self.patch_size(), maps })
    }

    /// [`attention_maps`](Self::attention_maps) of an image file.
    pub fn attention_maps_file(&self, path: &Path) -> Result<AttentionMaps> {
        self.attention_maps(&image::load_rgb(path, &self.decode)?)
    }

    /// The feature-cache key of the model: its checkpoint's canonical path, size and
    /// modification time, and its architecture.
    pub fn model_key(&self) -> String {
        let mut h = blake3::Hasher::new();
        let checkpoint = &self.report.checkpoint;
        let canonical = checkpoint.canonicalize().unwrap_or_else(|_| checkpoint.to_path_buf());
        h.update(canonical.to_string_lossy().as_bytes());
        hash_file_stamp(&mut h, checkpoint);
        h.update(serde_json::to_string(&self.model.config).unwrap_or_default().as_bytes());
        h.finalize().to_hex()[..20].to_string()
    }

    /// The feature-cache key of a labelled set under this pipeline's preprocessing and decode
    /// options: the classes, and per item its label and either its file (canonical path, size,
    /// modification time) or its pixels.
    pub fn dataset_key(&self, set: &LabelledSet) -> String {
        let mut h = blake3::Hasher::new();
        h.update(FEATURES_FORMAT.as_bytes());
        h.update(self.preprocess.describe().as_bytes());
        h.update(format!("{:?}", self.decode).as_bytes());
        h.update(serde_json::to_string(&set.classes).unwrap_or_default().as_bytes());
        h.update(&(set.items.len() as u64).to_le_bytes());
        for item in &set.items {
            h.update(&(item.label as u64).to_le_bytes());
            match &item.image {
                ItemImage::File(p) => {
                    let canonical = p.canonicalize().unwrap_or_else(|_| p.clone());
                    h.update(canonical.to_string_lossy().as_bytes());
                    h.update(b"\0");
                    hash_file_stamp(&mut h, p);
                }
                ItemImage::Gray(g) => {
                    h.update(&g.width().to_le_bytes());
                    h.update(&g.height().to_le_bytes());
                    h.update(g.as_raw());
                }
            }
        }
        h.finalize().to_hex()[..32].to_string()
    }

    /// Where the CLS features of `set` are cached below `root`:
    /// `root/<model key>/<dataset key>.safetensors`.
    pub fn cache_path(&self, root: &Path, set: &LabelledSet) -> PathBuf {
        root.join(self.model_key()).join(format!("{}.safetensors", self.dataset_key(set)))
    }

    /// The cached CLS features of `set` below `root`, if present, readable and consistent with
    /// the set.
    pub fn load_cached(&self, root: &Path, set: &LabelledSet) -> Option<DatasetFeatures> {
        let path = self.cache_path(root, set);
        let mut f = read_dataset_cache(&path)?;
        if f.labels.len() + f.skipped.len() != set.len() {
            return None;
        }
        f.cache = Some(path);
        f.from_cache = true;
        Some(f)
    }

    /// CLS features of every item of `set` (in item order, the items that fail to load left out
    /// and listed in [`DatasetFeatures::skipped`]), read from the cache below `cache_root` when
    /// there, else extracted (`batch` images per forward pass) and stored there.
    pub fn dataset_features(
        &self,
        set: &LabelledSet,
        batch: usize,
        cache_root: Option<&Path>,
        progress: impl FnMut(usize),
    ) -> Result<DatasetFeatures> {
        if let Some(hit) = cache_root.and_then(|root| self.load_cached(root, set)) {
            return Ok(hit);
        }
        let results = self.extract(&set.items, batch, false, progress);
        let mut features = Vec::new();
        let mut labels = Vec::new();
        let mut skipped = Vec::new();
        let mut dim = 0;
        for (i, (item, r)) in set.items.iter().zip(results).enumerate() {
            match r {
                Ok(f) => {
                    dim = f.dim();
                    features.extend_from_slice(&f.cls);
                    labels.push(item.label);
                }
                Err(e) => skipped.push(match item.image {
                    ItemImage::File(_) => e.to_string(),
                    ItemImage::Gray(_) => format!("item {i}: {e}"),
                }),
            }
        }
        let mut out =
            DatasetFeatures { dim, features, labels, skipped, cache: None, from_cache: false, cache_error: None };
        if let Some(root) = cache_root {
            // A cache that cannot be written does not throw the features away.
            let path = self.cache_path(root, set);
            match write_dataset_cache(&path, &out, &set.classes) {
                Ok(()) => out.cache = Some(path),
                Err(e) => out.cache_error = Some(e.to_string()),
            }
        }
        Ok(out)
    }
}

fn hash_file_stamp(h: &mut blake3::Hasher, path: &Path) {
    if let Ok(m) = std::fs::metadata(path) {
        h.update(&m.len().to_le_bytes());
        if let Ok(t) = m.modified() {
            let ns = t.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
            h.update(&ns.to_le_bytes());
        }
    }
}

/// CLS features of a labelled set.
#[derive(Debug, Clone, PartialEq)]
pub struct DatasetFeatures {
    pub dim: usize,
    /// `[n, dim]` row-major, raw (not normalised), one row per item that loaded, in item order.
    pub features: Vec<f32>,
    /// The label of each row.
    pub labels: Vec<usize>,
    /// One message per item that could not be loaded.
    pub skipped: Vec<String>,
    /// The cache file read or written.
    pub cache: Option<PathBuf>,
    /// Whether the features came from the cache.
    pub from_cache: bool,
    /// Why the features could not be stored in the cache, if they could not.
    pub cache_error: Option<String>,
}

impl DatasetFeatures {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// The default root of the dataset-feature cache: the user's cache folder, `vista/features`.
pub fn default_feature_cache_dir() -> PathBuf {
    dirs::cache_dir().unwrap_or_else(std::env::temp_dir).join("vista").join("features")
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Writes named tensors (`(name, dtype, shape, bytes)`) with metadata, atomically (a temporary
/// file in the same folder, then a rename).
fn write_safetensors(
    path: &Path,
    tensors: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)>,
    metadata: HashMap<String, String>,
) -> Result<()> {
    let bad = |m: String| Error::Cache { path: path.to_path_buf(), message: m };
    let views = tensors
        .iter()
        .map(|(name, dtype, shape, bytes)| {
            safetensors::tensor::TensorView::new(*dtype, shape.clone(), bytes)
                .map(|v| (name.clone(), v))
                .map_err(|e| bad(e.to_string()))
        })
        .collect::<Result<Vec<_>>>()?;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    safetensors::serialize_to_file(views, Some(metadata), &tmp).map_err(|e| bad(e.to_string()))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

fn write_dataset_cache(path: &Path, f: &DatasetFeatures, classes: &[String]) -> Result<()> {
    let labels: Vec<u8> = f.labels.iter().flat_map(|&l| (l as i64).to_le_bytes()).collect();
    let tensors = vec![
        ("features".to_string(), safetensors::Dtype::F32, vec![f.len(), f.dim], f32_bytes(&f.features)),
        ("labels".to_string(), safetensors::Dtype::I64, vec![f.len()], labels),
    ];
    let metadata: HashMap<String, String> = [
        ("format".to_string(), FEATURES_FORMAT.to_string()),
        ("classes".to_string(), serde_json::to_string(classes).unwrap_or_default()),
        ("skipped".to_string(), serde_json::to_string(&f.skipped).unwrap_or_default()),
    ]
    .into();
    write_safetensors(path, tensors, metadata)
}

fn read_dataset_cache(path: &Path) -> Option<DatasetFeatures> {
    let bytes = std::fs::read(path).ok()?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).ok()?;
    let meta = meta.metadata().as_ref()?;
    if meta.get("format").map(String::as_str) != Some(FEATURES_FORMAT) {
        return None;
    }
    let skipped: Vec<String> = serde_json::from_str(meta.get("skipped")?).ok()?;
    let st = safetensors::SafeTensors::deserialize(&bytes).ok()?;
    let feats = st.tensor("features").ok()?;
    let labels = st.tensor("labels").ok()?;
    if feats.dtype() != safetensors::Dtype::F32 || labels.dtype() != safetensors::Dtype::I64 {
        return None;
    }
    let (&[n, dim], &[m]) = (feats.shape(), labels.shape()) else {
        return None;
    };
    if n != m {
        return None;
    }
    let features = feats.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    let labels = labels
        .data()
        .chunks_exact(8)
        .map(|b| usize::try_from(i64::from_le_bytes(b.try_into().expect("8 bytes"))).ok())
        .collect::<Option<Vec<usize>>>()?;
    Some(DatasetFeatures { dim, features, labels, skipped, cache: None, from_cache: false, cache_error: None })
}

/// Writes features to a `.safetensors` file:
///
/// * `cls` `[N, C]` when `cls`;
/// * when `patches`: `patch` `[N, h·w, C]` if every grid is the same, else `patch.<i>`
///   `[h_i·w_i, C]` per image;
/// * `registers` `[N, R, C]` when the model has registers;
///
/// with metadata `format` ([`FEATURES_FORMAT`]), `names` (JSON array), `grids` (JSON array of
/// `[h, w]`) and whatever `extra` holds.
pub fn save_features_safetensors(
    path: &Path,
    names: &[String],
    features: &[DinoFeatures],
    cls: bool,
    patches: bool,
    extra: &[(&str, String)],
) -> Result<()> {
    if names.len() != features.len() {
        return Err(Error::arg("names", format!("{} names for {} feature sets", names.len(), features.len())));
    }
    let n = features.len();
    let c = features.first().map_or(0, DinoFeatures::dim);
    let mut tensors = Vec::new();
    if cls {
        let flat: Vec<f32> = features.iter().flat_map(|f| f.cls.iter().copied()).collect();
        tensors.push(("cls".to_string(), safetensors::Dtype::F32, vec![n, c], f32_bytes(&flat)));
    }
    if patches {
        match common_grid(features) {
            Some((h, w)) => {
                let flat: Vec<f32> = features.iter().flat_map(|f| f.patches.iter().copied()).collect();
                tensors.push(("patch".to_string(), safetensors::Dtype::F32, vec![n, h * w, c], f32_bytes(&flat)));
            }
            None => {
                for (i, f) in features.iter().enumerate() {
                    let (h, w) = f.grid;
                    tensors.push((
                        format!("patch.{i}"),
                        safetensors::Dtype::F32,
                        vec![h * w, c],
                        f32_bytes(&f.patches),
                    ));
                }
            }
        }
    }
    let r = features.first().map_or(0, |f| f.registers.len() / c.max(1));
    if r > 0 {
        let flat: Vec<f32> = features.iter().flat_map(|f| f.registers.iter().copied()).collect();
        tensors.push(("registers".to_string(), safetensors::Dtype::F32, vec![n, r, c], f32_bytes(&flat)));
    }
    let grids: Vec<[usize; 2]> = features.iter().map(|f| [f.grid.0, f.grid.1]).collect();
    let mut metadata: HashMap<String, String> = [
        ("format".to_string(), FEATURES_FORMAT.to_string()),
        ("names".to_string(), serde_json::to_string(names).unwrap_or_default()),
        ("grids".to_string(), serde_json::to_string(&grids).unwrap_or_default()),
    ]
    .into();
    for (k, v) in extra {
        metadata.insert(k.to_string(), v.clone());
    }
    write_safetensors(path, tensors, metadata)
}

/// The grid every feature set shares, if any (`None` for none or several).
pub fn common_grid(features: &[DinoFeatures]) -> Option<(usize, usize)> {
    let g = features.first()?.grid;
    features.iter().all(|f| f.grid == g).then_some(g)
}

/// Per head, the CLS token's attention to every patch in the last block.
#[derive(Debug, Clone)]
pub struct AttentionMaps {
    /// The 8-bit image the model saw (after preprocessing); patch `(r, c)` covers pixels
    /// `[c·p, (c+1)·p) × [r·p, (r+1)·p)`.
    pub image: RgbImage,
    pub heads: usize,
    /// Patch grid `(h, w)` (rows, columns).
    pub grid: (usize, usize),
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

    /// [`threshold_attention`] of every head.
    pub fn threshold_masks(&self, threshold: f32) -> Result<Vec<Vec<bool>>> {
        check_threshold(threshold)?;
        Ok((0..self.heads).map(|i| threshold_attention(self.head(i), threshold)).collect())
    }
}

fn check_threshold(threshold: f32) -> Result<()> {
    if !(threshold > 0.0 && threshold <= 1.0) {
        return Err(Error::arg("threshold", format!("{threshold} is not in (0, 1]")));
    }
    Ok(())
}

/// DINO's `visualize_attention.py --threshold`: the patches holding the top `threshold` fraction
/// of a head's attention mass. Values sorted ascending, divided by their sum, cumulated; a patch
/// is kept where the cumulative value is `> 1 - threshold`. The kept mass is therefore at least
/// `threshold` of the total, and less than it without the smallest kept patch. Equal values
/// sort by position (the reference's `torch.sort` leaves their order unspecified); sums in f64.
pub fn threshold_attention(map: &[f32], threshold: f32) -> Vec<bool> {
    let mut order: Vec<usize> = (0..map.len()).collect();
    order.sort_by(|&a, &b| map[a].total_cmp(&map[b]).then(a.cmp(&b)));
    let total: f64 = map.iter().map(|&v| f64::from(v)).sum();
    let mut keep = vec![false; map.len()];
    if total <= 0.0 || !total.is_finite() {
        return keep;
    }
    let cut = 1.0 - f64::from(threshold);
    let mut cum = 0.0;
    for i in order {
        cum += f64::from(map[i]) / total;
        keep[i] = cum > cut;
    }
    keep
}

/// How a patch map is scaled to the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Upsample {
    /// Each patch a flat block (DINO's `interpolate(..., mode="nearest")`).
    #[default]
    Nearest,
    /// Bilinear between patch centres (`align_corners=False`).
    Bilinear,
}

/// Settings of [`render_attention`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RenderOptions {
    /// Draw [`threshold_attention`] masks at this threshold instead of heat maps.
    pub threshold: Option<f32>,
    pub upsample: Upsample,
    /// Panels per row (default: `ceil(sqrt(heads + 1))`).
    pub columns: Option<usize>,
    /// White pixels between panels.
    pub gap: u32,
    /// Opacity of the heat map over the image.
    pub alpha: f32,
}

impl Default for RenderOptions {
    fn default() -> Self {
        Self { threshold: None, upsample: Upsample::Nearest, columns: None, gap: 4, alpha: 0.6 }
    }
}

/// `(columns, rows)` of a grid of `panels` panels.
pub fn panel_grid(panels: usize, columns: Option<usize>) -> (usize, usize) {
    let cols = columns.unwrap_or_else(|| (panels as f64).sqrt().ceil() as usize).clamp(1, panels.max(1));
    (cols, panels.div_ceil(cols))
}

/// A `[h, w]` map at `width` × `height` pixels.
pub fn upsample_map(map: &[f32], grid: (usize, usize), width: u32, height: u32, mode: Upsample) -> Vec<f32> {
    let (gh, gw) = grid;
    let (w, h) = (width as usize, height as usize);
    let mut out = Vec::with_capacity(w * h);
    if gh == 0 || gw == 0 {
        out.resize(w * h, 0.0);
        return out;
    }
    match mode {
        Upsample::Nearest => {
            let cols: Vec<usize> = (0..w).map(|x| (x * gw / w).min(gw - 1)).collect();
            for y in 0..h {
                let row = &map[(y * gh / h).min(gh - 1) * gw..][..gw];
                out.extend(cols.iter().map(|&c| row[c]));
            }
        }
        Upsample::Bilinear => {
            // align_corners=False: source = (dst + 0.5) · in / out - 0.5, clamped to the edges.
            let axis = |n: usize, len: usize| -> Vec<(usize, usize, f32)> {
                (0..n)
                    .map(|d| {
                        let s = ((d as f64 + 0.5) * len as f64 / n as f64 - 0.5).max(0.0);
                        let i0 = (s.floor() as usize).min(len - 1);
                        let i1 = (i0 + 1).min(len - 1);
                        (i0, i1, (s - i0 as f64).clamp(0.0, 1.0) as f32)
                    })
                    .collect()
            };
            let xs = axis(w, gw);
            for &(y0, y1, fy) in &axis(h, gh) {
                for &(x0, x1, fx) in &xs {
                    let top = map[y0 * gw + x0] * (1.0 - fx) + map[y0 * gw + x1] * fx;
                    let bottom = map[y1 * gw + x0] * (1.0 - fx) + map[y1 * gw + x1] * fx;
                    out.push(top * (1.0 - fy) + bottom * fy);
                }
            }
        }
    }
    out
}

/// Matplotlib's viridis at nine evenly spaced stops.
const VIRIDIS: [[f32; 3]; 9] = [
    [68.0, 1.0, 84.0],
    [71.0, 44.0, 122.0],
    [59.0, 81.0, 139.0],
    [44.0, 113.0, 142.0],
    [33.0, 144.0, 141.0],
    [39.0, 173.0, 129.0],
    [92.0, 200.0, 99.0],
    [170.0, 220.0, 50.0],
    [253.0, 231.0, 37.0],
];

/// The viridis colour of `t` in [0, 1].
pub fn heat_color(t: f32) -> [f32; 3] {
    let t = if t.is_finite() { t.clamp(0.0, 1.0) } else { 0.0 } * (VIRIDIS.len() - 1) as f32;
    let i = (t.floor() as usize).min(VIRIDIS.len() - 2);
    let f = t - i as f32;
    let (a, b) = (VIRIDIS[i], VIRIDIS[i + 1]);
    [0, 1, 2].map(|c| a[c] + (b[c] - a[c]) * f)
}

/// A picture of attention maps: panels as large as the preprocessed image in a grid
/// ([`panel_grid`], `gap` white pixels between them, row by row): the image first, then one
/// panel per head. A head's panel is, without a threshold, its map scaled to `[0, 1]` (its own
/// minimum and maximum), upsampled and drawn in viridis over the image at opacity `alpha`; with
/// a threshold, the image with the head's [`threshold_attention`] mask blended at 50 % in
/// [`mask_color`]`(head)` and outlined in that colour darkened. Unused cells stay white.
pub fn render_attention(maps: &AttentionMaps, options: &RenderOptions) -> Result<RgbImage> {
    if let Some(t) = options.threshold {
        check_threshold(t)?;
    }
    if !(0.0..=1.0).contains(&options.alpha) {
        return Err(Error::arg("alpha", format!("{} is not in [0, 1]", options.alpha)));
    }
    let (pw, ph) = maps.image.dimensions();
    let panels = maps.heads + 1;
    let (cols, rows) = panel_grid(panels, options.columns);
    let gap = options.gap;
    let width = cols as u32 * pw + (cols as u32 - 1) * gap;
    let height = rows as u32 * ph + (rows as u32 - 1) * gap;
    let mut canvas = RgbImage::from_pixel(width, height, Rgb([255, 255, 255]));
    let masks = match options.threshold {
        Some(t) => Some(maps.threshold_masks(t)?),
        None => None,
    };
    for panel in 0..panels {
        let img = if panel == 0 {
            maps.image.clone()
        } else {
            let head = panel - 1;
            match &masks {
                Some(m) => mask_panel(maps, &m[head], head, options.upsample),
                None => heat_panel(maps, head, options),
            }
        };
        let (x0, y0) = ((panel % cols) as u32 * (pw + gap), (panel / cols) as u32 * (ph + gap));
        for (x, y, p) in img.enumerate_pixels() {
            canvas.put_pixel(x0 + x, y0 + y, *p);
        }
    }
    Ok(canvas)
}

fn heat_panel(maps: &AttentionMaps, head: usize, options: &RenderOptions) -> RgbImage {
    let map = maps.head(head);
    let (lo, hi) = map.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let span = hi - lo;
    let scaled: Vec<f32> = map.iter().map(|&v| if span > 0.0 { (v - lo) / span } else { 0.0 }).collect();
    let (w, h) = maps.image.dimensions();
    let up = upsample_map(&scaled, maps.grid, w, h, options.upsample);
    let a = options.alpha;
    let mut out = maps.image.clone();
    for (p, &t) in out.pixels_mut().zip(&up) {
        let c = heat_color(t);
        for (ch, heat) in p.0.iter_mut().zip(c) {
            *ch = (f32::from(*ch) * (1.0 - a) + heat * a).round().clamp(0.0, 255.0) as u8;
        }
    }
    out
}

fn mask_panel(maps: &AttentionMaps, mask: &[bool], head: usize, upsample: Upsample) -> RgbImage {
    let (w, h) = maps.image.dimensions();
    let as_f32: Vec<f32> = mask.iter().map(|&m| if m { 1.0 } else { 0.0 }).collect();
    let up: Vec<bool> = upsample_map(&as_f32, maps.grid, w, h, upsample).into_iter().map(|v| v >= 0.5).collect();
    let color = mask_color(head);
    let dark = color.map(|c| (f32::from(c) * 0.55).round() as u8);
    let (wu, hu) = (w as usize, h as usize);
    let mut out = maps.image.clone();
    for (i, p) in out.pixels_mut().enumerate() {
        if !up[i] {
            continue;
        }
        let (x, y) = (i % wu, i / wu);
        let edge = (x > 0 && !up[i - 1])
            || (x + 1 < wu && !up[i + 1])
            || (y > 0 && !up[i - wu])
            || (y + 1 < hu && !up[i + wu]);
        if edge {
            p.0 = dark;
        } else {
            for (ch, &c) in p.0.iter_mut().zip(&color) {
                *ch = (u16::from(*ch) + u16::from(c)).div_ceil(2) as u8;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_rounds_each_side_down_to_the_patch() {
        let p = DinoPreprocess::whole(Some(448));
        assert_eq!(p.input_size(640, 480, 14), (448, 336));
        // 448 · 300 / 1000 = 134.4 -> 134 -> 126 (9 patches of 14)
        assert_eq!(p.input_size(1000, 300, 14), (448, 126));
        assert_eq!(p.input_size(28, 28, 14), (448, 448));
        assert_eq!(p.input_size(2000, 10, 16), (448, 16));
        let native = DinoPreprocess::whole(None);
        assert_eq!(native.input_size(301, 199, 16), (288, 192));
        assert_eq!(native.input_size(5, 5, 8), (8, 8));
        assert_eq!(DinoPreprocess::eval().input_size(640, 480, 14), (224, 224));
    }

    #[test]
    fn threshold_keeps_the_top_mass() {
        let map = [0.1, 0.4, 0.05, 0.3, 0.15];
        // sorted: .05 .1 .15 .3 .4, cumulative .05 .15 .3 .6 1.0; > 0.4 keeps .3 and .4
        assert_eq!(threshold_attention(&map, 0.6), vec![false, true, false, true, false]);
        assert_eq!(threshold_attention(&map, 1.0), vec![true; 5]);
        assert_eq!(threshold_attention(&map, 0.3), vec![false, true, false, false, false]);
    }

    #[test]
    fn panel_grid_is_near_square() {
        assert_eq!(panel_grid(5, None), (3, 2));
        assert_eq!(panel_grid(7, None), (3, 3));
        assert_eq!(panel_grid(13, None), (4, 4));
        assert_eq!(panel_grid(7, Some(7)), (7, 1));
        assert_eq!(panel_grid(3, Some(10)), (3, 1));
    }

    #[test]
    fn upsampling() {
        let map = [0.0, 1.0, 2.0, 3.0];
        let n = upsample_map(&map, (2, 2), 4, 4, Upsample::Nearest);
        assert_eq!(&n[..4], &[0.0, 0.0, 1.0, 1.0]);
        assert_eq!(&n[12..], &[2.0, 2.0, 3.0, 3.0]);
        let b = upsample_map(&map, (2, 2), 4, 4, Upsample::Bilinear);
        assert_eq!(&b[..4], &[0.0, 0.25, 0.75, 1.0]);
        assert_eq!(b[15], 3.0);
    }
}
