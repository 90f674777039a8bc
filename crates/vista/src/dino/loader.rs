//! From a user's model argument to a loaded [`DinoVit`]: resolve the files, read the checkpoint
//! (a training checkpoint's teacher by default), map the names, read the architecture, build.

use std::path::Path;

use candle_core::Device;

use super::backbone::Backbone;
use super::config::{DinoConfig, PosInterpolation};
use super::resnet::ResNet;
use super::vit::DinoVit;
use crate::device::Target;
use crate::weights::dino::DinoFamily;
use crate::weights::hub::{self, CheckpointFiles};
use crate::weights::{formats, TensorStore};
use crate::{Error, Result};

/// The files a DINO backbone is read from.
pub type DinoFiles = CheckpointFiles;

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
    /// Where the model runs and in what precision (default: f32 on the CPU).
    pub target: Target,
}

/// Finds the checkpoint (and a transformers `config.json` beside it) for a model argument (file,
/// folder or hub id).
pub fn resolve(model: &str) -> Result<DinoFiles> {
    hub::resolve_checkpoint(model, &[])
}

/// A loaded backbone with what the load found.
pub type Loaded = crate::weights::Loaded<DinoVit, DinoFamily>;

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

/// A loaded ViT or ResNet backbone with what the load found.
pub type LoadedBackbone = crate::weights::Loaded<Backbone, DinoFamily>;

/// Whether the checkpoint is a torchvision-named ResNet (`conv1`, `layer1.0.conv1`, no ViT tokens).
fn is_resnet(store: &TensorStore) -> bool {
    store.contains("layer1.0.conv1.weight") && !store.contains("cls_token")
}

fn read_store(files: &DinoFiles, options: &LoadOptions) -> Result<(TensorStore, DinoFamily)> {
    let tensors = read(&files.weights, options.checkpoint_key.as_deref())?;
    let (target, path) = (&options.target, &files.weights);
    TensorStore::from_family::<DinoFamily>(path, tensors, &target.device, target.dtype)
}

/// Loads a vision transformer backbone from resolved files (on the CPU, f32): the architecture from `options.arch`
/// or the tensor shapes, refined by the `config.json` and `options.num_heads`.
pub fn load(files: &DinoFiles, options: &LoadOptions) -> Result<Loaded> {
    let (store, family) = read_store(files, options)?;
    if is_resnet(&store) {
        return Err(Error::arg(
            "model",
            format!("{} is a ResNet; this needs a vision transformer", files.weights.display()),
        ));
    }
    load_vit(files, options, store, family)
}

/// Loads a ViT or a ResNet backbone (torchvision naming: DINO's `dino_resnet50_pretrain.pth`,
/// a `--arch resnet50` training checkpoint's teacher, torchvision's `resnet50` state dict).
pub fn load_backbone(files: &DinoFiles, options: &LoadOptions) -> Result<LoadedBackbone> {
    let (store, family) = read_store(files, options)?;
    if is_resnet(&store) {
        if let Some(a) = options.arch.as_deref().filter(|a| !a.to_ascii_lowercase().starts_with("resnet")) {
            return Err(Error::arg("arch", format!("`{a}` given, but {} is a ResNet", files.weights.display())));
        }
        return crate::weights::Loaded::build(&store, family, |s| Ok(Backbone::ResNet(ResNet::load(&s.root())?)));
    }
    let vit = load_vit(files, options, store, family)?;
    Ok(crate::weights::Loaded { model: Backbone::Vit(vit.model), family: vit.family, report: vit.report })
}

fn load_vit(files: &DinoFiles, options: &LoadOptions, store: TensorStore, family: DinoFamily) -> Result<Loaded> {
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
    Loaded::build(&store, family, |s| DinoVit::load(&s.root(), config))
}

/// Resolves a model argument (file, folder or hub id) and loads it.
pub fn load_model(model: &str, options: &LoadOptions) -> Result<Loaded> {
    load(&resolve(model)?, options)
}

/// transformers' `ViTConfig` / `Dinov2Config`: heads, ε, and the interpolation its
/// `model_type` implies.
fn apply_hf_config(path: &Path, config: &mut DinoConfig) -> Result<()> {
    let v = hub::read_json_config(path)?;
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
