//! Image features of a labelled set (DINO CLS tokens, CLIP image embeddings), extracted once
//! and cached on disk: k-NN, linear probes, `vista fit` and the trainer's evaluation all score
//! the same frozen features, so they are computed once per (model, data set, preprocessing) and
//! read back after.
//!
//! A cache entry is one safetensors file `root/<model key>/<data set key>.safetensors` holding
//! `features` (f32 `[n, dim]`), `labels` and `items` (i64 `[n]`: each row's label and its index
//! in the set), with the classes and the skipped items in its metadata. The model key is the
//! source's ([`FeatureSource::model_key`]: checkpoint file and architecture); the data set key
//! ([`FeatureCache::dataset_key`]) hashes the source's view of the images (preprocessing and
//! decode options), the classes, and per item its label and either its file (canonical path,
//! size, modification time) or its pixels — so a changed file or setting misses, and an
//! unreadable entry counts as a miss.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use crate::clip::pipeline::ClipPipeline;
use crate::data::files::hash_file_stamp;
use crate::data::{ItemImage, LabelledSet};
use crate::dino::pipeline::DinoPipeline;
use crate::image::DecodeOptions;
use crate::weights::formats::{checkpoint_key, read_safetensors, write_safetensors};
use crate::{Error, Result};

/// The format tag of a cache entry (`-2`: rows carry their item index).
const CACHE_FORMAT: &str = "vista-dataset-features-2";

/// A model whose image features [`FeatureCache`] stores.
pub trait FeatureSource {
    /// The model: its checkpoint file and architecture (folder name below the cache root).
    fn model_key(&self) -> String;
    /// How the model sees an image file: preprocessing and decode options.
    fn view(&self) -> String;
}

impl FeatureSource for DinoPipeline {
    fn model_key(&self) -> String {
        DinoPipeline::model_key(self)
    }
    fn view(&self) -> String {
        format!("{}{:?}", self.preprocess.describe(), self.decode)
    }
}

impl FeatureSource for ClipPipeline {
    fn model_key(&self) -> String {
        let arch = format!(
            "clip {} {:?} {:?}",
            serde_json::to_string(self.model.config()).unwrap_or_default(),
            self.family,
            self.model.dtype()
        );
        checkpoint_key(&self.report.checkpoint, &arch)
    }
    fn view(&self) -> String {
        format!("{:?}{:?}", self.preprocess, self.decode)
    }
}

/// CLS features of a labelled set.
#[derive(Debug, Clone, PartialEq)]
pub struct DatasetFeatures {
    /// Feature width.
    pub dim: usize,
    /// `[n, dim]` row-major, raw (not normalised), one row per item that loaded, in item order.
    pub features: Vec<f32>,
    /// The label of each row.
    pub labels: Vec<usize>,
    /// Each row's index in the set's items (rows skip the items that did not load).
    pub items: Vec<usize>,
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
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True without rows.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// The on-disk cache of dataset features below a root folder.
#[derive(Debug, Clone)]
pub struct FeatureCache {
    root: PathBuf,
}

impl FeatureCache {
    /// A cache below `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The default root: the user's cache folder, `vista/features`.
    pub fn default_root() -> PathBuf {
        dirs::cache_dir().unwrap_or_else(std::env::temp_dir).join("vista").join("features")
    }

    /// The root folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The key of a labelled set under `source`'s preprocessing and decode options.
    pub fn dataset_key(source: &impl FeatureSource, set: &LabelledSet) -> String {
        let mut h = blake3::Hasher::new();
        h.update(CACHE_FORMAT.as_bytes());
        h.update(source.view().as_bytes());
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

    /// Where the features of `set` under `source` are stored.
    pub fn path(&self, source: &impl FeatureSource, set: &LabelledSet) -> PathBuf {
        self.root.join(source.model_key()).join(format!("{}.safetensors", Self::dataset_key(source, set)))
    }

    /// The cached features of `set`, if present, readable and consistent with the set.
    pub fn load(&self, source: &impl FeatureSource, set: &LabelledSet) -> Option<DatasetFeatures> {
        let path = self.path(source, set);
        let mut f = read_entry(&path)?;
        let consistent = f.labels.len() + f.skipped.len() == set.len()
            && f.items.iter().zip(&f.labels).all(|(&i, &l)| set.items.get(i).is_some_and(|item| item.label == l));
        if !consistent {
            return None;
        }
        f.cache = Some(path);
        f.from_cache = true;
        Some(f)
    }

    fn store(&self, path: &Path, f: &DatasetFeatures, classes: &[String]) -> Result<()> {
        let features = Tensor::from_slice(&f.features, (f.len(), f.dim), &Device::Cpu)?;
        let labels: Vec<i64> = f.labels.iter().map(|&l| l as i64).collect();
        let labels = Tensor::from_vec(labels, f.len(), &Device::Cpu)?;
        let items: Vec<i64> = f.items.iter().map(|&i| i as i64).collect();
        let items = Tensor::from_vec(items, f.len(), &Device::Cpu)?;
        let metadata: HashMap<String, String> = [
            ("format".to_string(), CACHE_FORMAT.to_string()),
            ("classes".to_string(), serde_json::to_string(classes).unwrap_or_default()),
            ("skipped".to_string(), serde_json::to_string(&f.skipped).unwrap_or_default()),
        ]
        .into();
        write_safetensors(path, [("features", &features), ("labels", &labels), ("items", &items)], &metadata)
    }
}

fn read_entry(path: &Path) -> Option<DatasetFeatures> {
    let (tensors, meta) = read_safetensors(path, &Device::Cpu).ok()?;
    if meta.get("format").map(String::as_str) != Some(CACHE_FORMAT) {
        return None;
    }
    let skipped: Vec<String> = serde_json::from_str(meta.get("skipped")?).ok()?;
    let (feats, labels, items) = (tensors.get("features")?, tensors.get("labels")?, tensors.get("items")?);
    let (n, dim) = feats.dims2().ok()?;
    if labels.dims1().ok()? != n || items.dims1().ok()? != n {
        return None;
    }
    let features = feats.to_dtype(candle_core::DType::F32).ok()?.flatten_all().ok()?.to_vec1().ok()?;
    let indices = |t: &Tensor| -> Option<Vec<usize>> {
        t.to_vec1::<i64>().ok()?.into_iter().map(|v| usize::try_from(v).ok()).collect()
    };
    let (labels, items) = (indices(labels)?, indices(items)?);
    Some(DatasetFeatures { dim, features, labels, items, skipped, cache: None, from_cache: false, cache_error: None })
}

/// CLS features of every item of `set` (in item order; items that fail to load are left out and
/// listed in [`DatasetFeatures::skipped`]), read from `cache` when there, else extracted (`batch`
/// images per forward pass) and stored there. A cache that cannot be written does not throw the
/// features away ([`DatasetFeatures::cache_error`]).
pub fn dataset_features(
    pipeline: &DinoPipeline,
    set: &LabelledSet,
    batch: usize,
    cache: Option<&FeatureCache>,
    progress: impl FnMut(usize),
) -> Result<DatasetFeatures> {
    if let Some(hit) = cache.and_then(|c| c.load(pipeline, set)) {
        return Ok(hit);
    }
    let results = pipeline.extract(&set.items, batch, false, progress);
    let mut features = Vec::new();
    let mut labels = Vec::new();
    let mut items = Vec::new();
    let mut skipped = Vec::new();
    let mut dim = 0;
    for (i, (item, r)) in set.items.iter().zip(results).enumerate() {
        match r {
            Ok(f) => {
                dim = f.dim();
                features.extend_from_slice(&f.cls);
                labels.push(item.label);
                items.push(i);
            }
            Err(e) => skipped.push(match item.image {
                ItemImage::File(_) => e.to_string(),
                ItemImage::Gray(_) => format!("item {i}: {e}"),
            }),
        }
    }
    let out =
        DatasetFeatures { dim, features, labels, items, skipped, cache: None, from_cache: false, cache_error: None };
    Ok(store_in(cache, pipeline, set, out))
}

/// Stores `out` in `cache` (when there is one), noting where or why not.
fn store_in(
    cache: Option<&FeatureCache>,
    source: &impl FeatureSource,
    set: &LabelledSet,
    mut out: DatasetFeatures,
) -> DatasetFeatures {
    if let Some(c) = cache {
        let path = c.path(source, set);
        match c.store(&path, &out, &set.classes) {
            Ok(()) => out.cache = Some(path),
            Err(e) => out.cache_error = Some(e.to_string()),
        }
    }
    out
}

/// CLIP image embeddings (normalised, the model's own preprocessing) of every item of `set`, in
/// item order, `batch` images per forward pass; items that fail to load are left out and listed
/// in [`DatasetFeatures::skipped`]. Read from `cache` when there, else stored there.
pub fn clip_features(
    pipeline: &ClipPipeline,
    set: &LabelledSet,
    batch: usize,
    cache: Option<&FeatureCache>,
    mut progress: impl FnMut(usize),
) -> Result<DatasetFeatures> {
    if let Some(hit) = cache.and_then(|c| c.load(pipeline, set)) {
        return Ok(hit);
    }
    let mut out = DatasetFeatures {
        dim: 0,
        features: Vec::new(),
        labels: Vec::new(),
        items: Vec::new(),
        skipped: Vec::new(),
        cache: None,
        from_cache: false,
        cache_error: None,
    };
    for (c, chunk) in set.items.chunks(batch.max(1)).enumerate() {
        let mut crops = Vec::with_capacity(chunk.len());
        let mut labels = Vec::with_capacity(chunk.len());
        let mut items = Vec::with_capacity(chunk.len());
        for (j, item) in chunk.iter().enumerate() {
            match item.load(&pipeline.decode) {
                Ok(img) => {
                    crops.push(pipeline.preprocess.prepare(&crate::image::Decoded::Rgb(img)));
                    labels.push(item.label);
                    items.push(c * batch.max(1) + j);
                }
                Err(e) => out.skipped.push(match &item.image {
                    ItemImage::File(_) => e.to_string(),
                    ItemImage::Gray(_) => format!("item {}: {e}", c * batch.max(1) + j),
                }),
            }
        }
        if !crops.is_empty() {
            let refs: Vec<&crate::image::RgbImage> = crops.iter().collect();
            for row in pipeline.embed_cropped(&refs)? {
                out.dim = row.len();
                out.features.extend(row);
            }
            out.labels.extend(labels);
            out.items.extend(items);
        }
        progress(chunk.len());
    }
    Ok(store_in(cache, pipeline, set, out))
}

/// The raw-pixel baseline of a k-NN evaluation: each item's pixels as its feature vector, as
/// DINO's `eval_knn.py` would see the images themselves — `ToTensor` + `Normalize(mean, std)`
/// (greyscale replicated to RGB, as `convert("RGB")` gives it), channel-planar, flattened. A
/// representation is worth its training when it beats this. Every item must have the size of
/// the first (an error names the first that does not); items that fail to load are skipped.
pub fn pixel_features(
    set: &LabelledSet,
    decode: &DecodeOptions,
    mean: [f32; 3],
    std: [f32; 3],
) -> Result<DatasetFeatures> {
    let mut features = Vec::new();
    let mut labels = Vec::new();
    let mut items = Vec::new();
    let mut skipped = Vec::new();
    let mut size = None;
    for (i, item) in set.items.iter().enumerate() {
        let name = || match &item.image {
            ItemImage::File(p) => p.display().to_string(),
            ItemImage::Gray(_) => format!("item {i}"),
        };
        let img = match item.load(decode) {
            Ok(img) => img,
            Err(e) => {
                skipped.push(match item.image {
                    ItemImage::File(_) => e.to_string(),
                    ItemImage::Gray(_) => format!("item {i}: {e}"),
                });
                continue;
            }
        };
        let (w, h) = img.dimensions();
        if *size.get_or_insert((w, h)) != (w, h) {
            return Err(Error::arg(
                "dataset",
                format!("{} is {w}x{h}, the first image {:?}: raw pixels need one size", name(), size.unwrap()),
            ));
        }
        let plane = (w * h) as usize;
        let start = features.len();
        features.resize(start + 3 * plane, 0.0);
        for (j, px) in img.pixels().enumerate() {
            for c in 0..3 {
                // torchvision's order of operations: v / 255, then (x - mean) / std, in f32.
                features[start + c * plane + j] = (f32::from(px[c]) / 255.0 - mean[c]) / std[c];
            }
        }
        labels.push(item.label);
        items.push(i);
    }
    let dim = size.map_or(0, |(w, h)| 3 * (w * h) as usize);
    Ok(DatasetFeatures { dim, features, labels, items, skipped, cache: None, from_cache: false, cache_error: None })
}

#[cfg(test)]
mod pixel_tests {
    use super::*;
    use crate::data::Item;

    #[test]
    fn pixels_are_normalised_planar_and_one_size() {
        let gray = ::image::GrayImage::from_fn(2, 1, |x, _| ::image::Luma([if x == 0 { 0 } else { 255 }]));
        let set = LabelledSet {
            items: vec![Item { image: ItemImage::Gray(gray.clone()), label: 3 }],
            classes: (0..4).map(|c| c.to_string()).collect(),
        };
        let f = pixel_features(&set, &DecodeOptions::default(), [0.5; 3], [0.25; 3]).unwrap();
        assert_eq!((f.dim, f.labels.clone()), (6, vec![3]));
        assert_eq!(f.features, vec![-2.0, 2.0, -2.0, 2.0, -2.0, 2.0]);
        let other = ::image::GrayImage::new(1, 1);
        let set = LabelledSet {
            items: vec![
                Item { image: ItemImage::Gray(gray), label: 0 },
                Item { image: ItemImage::Gray(other), label: 1 },
            ],
            classes: vec!["a".into(), "b".into()],
        };
        assert!(pixel_features(&set, &DecodeOptions::default(), [0.5; 3], [0.25; 3]).is_err());
    }
}
