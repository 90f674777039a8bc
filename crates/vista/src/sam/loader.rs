//! From a user's model argument to a loaded [`Sam`]: resolve the files, map the tensor names,
//! read the architecture, build, report.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};

use super::config::SamConfig;
use super::model::Sam;
use crate::weights::hub::{self, Source};
use crate::weights::sam::{self as family, SamFamily};
use crate::weights::{formats, LoadReport};
use crate::{Error, Result};

/// The files a SAM model is read from.
#[derive(Debug, Clone)]
pub struct SamFiles {
    /// The checkpoint.
    pub weights: PathBuf,
    /// transformers `config.json`, for Hugging Face checkpoints.
    pub hf_config: Option<PathBuf>,
}

/// What the checkpoint cannot say about itself.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// A preset (`vit_b`, `vit_l`, `vit_h`, `vit_t`) instead of reading the shapes.
    pub arch: Option<String>,
    /// The encoder input size of a TinyViT (MobileSAM) checkpoint; 1024 when not given.
    pub image_size: Option<usize>,
}

const HF_WEIGHTS: [&str; 2] = ["model.safetensors", "pytorch_model.bin"];

/// Finds the weights (and config) for a model argument: a checkpoint file, a folder or a hub id.
pub fn resolve(model: &str) -> Result<SamFiles> {
    let source = Source::parse(model)?;
    if let Source::File(path) = &source {
        let hf_config = sidecar_hf_config(path);
        return Ok(SamFiles { weights: path.clone(), hf_config });
    }
    if let Some(weights) = hub::find_file(&source, &HF_WEIGHTS)? {
        let hf_config = hub::find_file(&source, &["config.json"])?;
        return Ok(SamFiles { weights, hf_config });
    }
    let official = ["sam_vit_b_01ec64.pth", "sam_vit_l_0b3195.pth", "sam_vit_h_4b8939.pth", "mobile_sam.pt"];
    if let Some(weights) = hub::find_file(&source, &official)? {
        return Ok(SamFiles { weights, hf_config: None });
    }
    let mut wanted: Vec<&str> = HF_WEIGHTS.to_vec();
    wanted.extend(official);
    Err(hub::not_found(&source, &wanted))
}

fn sidecar_hf_config(weights: &Path) -> Option<PathBuf> {
    let name = weights.file_name()?.to_string_lossy().to_string();
    let cfg = weights.parent()?.join("config.json");
    (HF_WEIGHTS.contains(&name.as_str()) && cfg.is_file()).then_some(cfg)
}

/// A loaded model with what the load found.
pub struct Loaded {
    /// The model.
    pub model: Sam,
    /// The naming of the checkpoint.
    pub family: SamFamily,
    /// What the load did.
    pub report: LoadReport,
}

/// Loads a model from resolved files (CPU, f32).
pub fn load(files: &SamFiles, options: &LoadOptions) -> Result<Loaded> {
    let device = Device::Cpu;
    let tensors = formats::read_tensors(&files.weights, None, &device)?;
    let (store, family) = family::into_store(&files.weights, tensors, &device, DType::F32)?;
    let mut config = match &options.arch {
        Some(a) => SamConfig::preset(a).ok_or_else(|| {
            Error::arg("arch", format!("unknown SAM architecture `{a}`; known: {}", SamConfig::PRESETS.join(", ")))
        })?,
        None => SamConfig::infer(&store, options.image_size)?,
    };
    if family == SamFamily::HuggingFace {
        config.decoder.layer_norm_eps = 1e-6;
        if let Some(cfg) = &files.hf_config {
            apply_hf_config(cfg, &mut config)?;
        }
    }
    if let (Some(size), super::config::EncoderConfig::TinyVit(t)) = (options.image_size, &mut config.encoder) {
        t.image_size = size;
    }
    config.validate().map_err(|message| Error::Config { path: files.weights.clone(), message })?;
    let model = Sam::load(&store.root(), config)?;
    let report = store.report();
    Ok(Loaded { model, family, report })
}

/// Convenience: [`resolve`] then [`load`].
pub fn load_model(model: &str, options: &LoadOptions) -> Result<Loaded> {
    load(&resolve(model)?, options)
}

/// What a transformers `SamConfig` adds to the shapes: the decoder's head count and the
/// layer-norm epsilons.
fn apply_hf_config(path: &Path, config: &mut SamConfig) -> Result<()> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::Config { path: path.to_path_buf(), message: e.to_string() })?;
    let dec = &v["mask_decoder_config"];
    if let Some(h) = dec["num_attention_heads"].as_u64() {
        config.decoder.num_heads = h as usize;
    }
    if let Some(e) = dec["layer_norm_eps"].as_f64() {
        config.decoder.layer_norm_eps = e;
    }
    if let (Some(e), super::config::EncoderConfig::Vit(vit)) =
        (v["vision_config"]["layer_norm_eps"].as_f64(), &mut config.encoder)
    {
        vit.layer_norm_eps = e;
    }
    Ok(())
}
