//! From a user's model argument to a loaded [`DinoVit`]: resolve the files, read the checkpoint
//! (a training checkpoint's teacher by default), map the names, read the architecture, build.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};

use super::config::{DinoConfig, PosInterpolation};
use super::vit::DinoVit;
use crate::weights::dino::{self as family, DinoFamily};
use crate::weights::hub::{self, Source};
use crate::weights::{formats, LoadReport};
use crate::{Error, Result};

/// The files a DINO backbone is read from.
#[derive(Debug, Clone)]
pub struct DinoFiles {
    /// The checkpoint.
    pub weights: PathBuf,
    /// transformers `config.json`, for Hugging Face checkpoints.
    pub hf_config: Option<PathBuf>,
}

/// What an official checkpoint cannot say about itself.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// A preset (`dino_vits16`, `dinov2_vitb14_reg`, ...) instead of reading the shapes.
    pub arch: Option<String>,
    /// Attention heads (official checkpoints do not store it; default: width / 64, as every
    /// release).
    pub num_heads: Option<usize>,
    /// Which network of a DINO training checkpoint (`teacher`, the one DINO evaluates, or
    /// `student`).
    pub checkpoint_key: Option<String>,
}

const HF_WEIGHTS: [&str; 2] = ["model.safetensors", "pytorch_model.bin"];

/// Finds the checkpoint (and a transformers `config.json` beside it) for a model argument (file,
/// folder or hub id).
pub fn resolve(model: &str) -> Result<DinoFiles> {
    let source = Source::parse(model)?;
    if let Source::File(path) = &source {
        let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        let cfg = path.parent().map(|d| d.join("config.json"));
        let hf_config = cfg.filter(|c| HF_WEIGHTS.contains(&name.as_str()) && c.is_file());
        return Ok(DinoFiles { weights: path.clone(), hf_config });
    }
    if let Some(weights) = hub::find_file(&source, &HF_WEIGHTS)? {
        let hf_config = hub::find_file(&source, &["config.json"])?;
        return Ok(DinoFiles { weights, hf_config });
    }
    Err(hub::not_found(&source, &HF_WEIGHTS))
}

/// A loaded backbone with what the load found.
pub struct Loaded {
    /// The backbone.
    pub model: DinoVit,
    /// The naming of the checkpoint.
    pub family: DinoFamily,
    /// What the load did.
    pub report: LoadReport,
}

/// Reads the tensors; for a DINO training checkpoint (`{"teacher": ..., "student": ...}`) the
/// chosen network's.
fn read(path: &Path, key: Option<&str>) -> Result<std::collections::HashMap<String, candle_core::Tensor>> {
    let device = Device::Cpu;
    if let Some(k) = key {
        return formats::read_tensors(path, Some(k), &device);
    }
    match formats::read_tensors(path, None, &device) {
        Ok(t) => Ok(t),
        Err(first) => formats::read_tensors(path, Some("teacher"), &device).map_err(|_| first),
    }
}

/// Loads a backbone from resolved files (on the CPU, f32): the architecture from `options.arch`
/// or the tensor shapes, refined by the `config.json` and `options.num_heads`.
pub fn load(files: &DinoFiles, options: &LoadOptions) -> Result<Loaded> {
    let tensors = read(&files.weights, options.checkpoint_key.as_deref())?;
    let (store, family) = family::into_store(&files.weights, tensors, &Device::Cpu, DType::F32)?;
    let mut config = match &options.arch {
        Some(a) => DinoConfig::preset(a).ok_or_else(|| {
            Error::arg("arch", format!("unknown DINO architecture `{a}`; known: {}", DinoConfig::PRESETS.join(", ")))
        })?,
        None => DinoConfig::infer(&store)?,
    };
    match (&files.hf_config, family) {
        (Some(cfg), DinoFamily::HuggingFace) => apply_hf_config(cfg, &mut config)?,
        (None, DinoFamily::HuggingFace) => {
            config.interpolation = PosInterpolation::Size { antialias: config.num_register_tokens > 0 };
        }
        (_, DinoFamily::Official) => {
            // DINOv2's hub builds its register models with offset 0 and antialiasing.
            if config.num_register_tokens > 0 {
                config.interpolation = PosInterpolation::Size { antialias: true };
            }
        }
    }
    // A backbone exported by `vista train dino` records its heads in the metadata.
    if options.num_heads.is_none() && matches!(formats::detect(&files.weights), Ok(formats::Format::Safetensors)) {
        let meta = formats::safetensors_metadata(&files.weights)?;
        if let Some(h) = meta.get("num_heads") {
            config.num_heads = h.parse().map_err(|_| Error::Config {
                path: files.weights.clone(),
                message: format!("metadata num_heads = {h:?} is not a number"),
            })?;
        }
    }
    if let Some(h) = options.num_heads {
        config.num_heads = h;
    }
    config.validate().map_err(|message| Error::Config { path: files.weights.clone(), message })?;
    let model = DinoVit::load(&store.root(), config)?;
    let report = store.report();
    Ok(Loaded { model, family, report })
}

/// Resolves a model argument (file, folder or hub id) and loads it.
pub fn load_model(model: &str, options: &LoadOptions) -> Result<Loaded> {
    load(&resolve(model)?, options)
}

/// transformers' `ViTConfig` / `Dinov2Config`: heads, ε, and the interpolation its
/// `model_type` implies.
fn apply_hf_config(path: &Path, config: &mut DinoConfig) -> Result<()> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::Config { path: path.to_path_buf(), message: e.to_string() })?;
    if let Some(h) = v["num_attention_heads"].as_u64() {
        config.num_heads = h as usize;
    }
    // transformers' defaults when the key is absent: ViT 1e-12, Dinov2 1e-6.
    let model_type = v["model_type"].as_str().unwrap_or("dinov2");
    let default_eps = if model_type == "vit" { 1e-12 } else { 1e-6 };
    config.layer_norm_eps = v["layer_norm_eps"].as_f64().unwrap_or(default_eps);
    config.interpolation = PosInterpolation::Size { antialias: model_type == "dinov2_with_registers" };
    Ok(())
}
