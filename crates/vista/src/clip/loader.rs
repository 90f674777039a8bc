//! From a user's model argument to a loaded [`ClipModel`]: resolve the files, read the config,
//! map the tensor names, build, report.

use std::path::{Path, PathBuf};

use candle_core::Device;

use super::config::{ClipConfig, VisionConfig};
use super::model::ClipModel;
use super::transformer::TowerDims;
use crate::device::Target;
use crate::weights::clip::ClipFamily;
use crate::weights::hub::{self, Source, HF_WEIGHTS};
use crate::weights::{formats, TensorStore};
use crate::{Error, Result};

/// The files a CLIP model is read from.
#[derive(Debug, Clone)]
pub struct ClipFiles {
    /// The checkpoint.
    pub weights: PathBuf,
    /// Where the architecture comes from.
    pub config: ConfigSource,
    /// The `tokenizer.json` of a transformers-layout checkpoint, when it has one.
    pub tokenizer: Option<PathBuf>,
}

/// Where a CLIP model's architecture comes from.
#[derive(Debug, Clone)]
pub enum ConfigSource {
    /// transformers `config.json`, with `preprocessor_config.json` when present.
    HuggingFace {
        /// The `config.json`.
        config: PathBuf,
        /// The `preprocessor_config.json`, if present.
        preprocessor: Option<PathBuf>,
    },
    /// open_clip `open_clip_config.json` or a `model_configs/*.json`.
    OpenClip(PathBuf),
    /// A named preset ([`ClipConfig::preset`]).
    Preset(String),
    /// Inferred from the tensor shapes, as open_clip's `build_model_from_openai_state_dict` does
    /// for OpenAI's releases (QuickGELU, head width 64).
    Infer,
}

const OC_WEIGHTS: [&str; 2] = ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"];

/// Finds the weights and config for a model argument (file, folder or hub id).
/// `arch`, when given, names a preset that overrides any config file.
pub fn resolve(model: &str, arch: Option<&str>) -> Result<ClipFiles> {
    let source = Source::parse(model)?;
    let preset = |a: &str| -> Result<ConfigSource> {
        ClipConfig::preset(a).map(|_| ConfigSource::Preset(a.to_string())).ok_or_else(|| {
            Error::arg("arch", format!("unknown CLIP architecture `{a}`; known: {}", ClipConfig::PRESETS.join(", ")))
        })
    };
    if let Source::File(path) = &source {
        let config = match arch {
            Some(a) => preset(a)?,
            None => sidecar_config(path).unwrap_or(ConfigSource::Infer),
        };
        let tokenizer = path.parent().map(|d| d.join("tokenizer.json")).filter(|t| t.is_file());
        return Ok(ClipFiles { weights: path.clone(), config, tokenizer });
    }
    // Folders and hub repos: the transformers layout first, then open_clip's.
    if let Some(config) = hub::find_file(&source, &["config.json"])? {
        if is_hf_clip_config(&config) {
            if let Some(weights) = hub::find_file(&source, &HF_WEIGHTS)? {
                let preprocessor = hub::find_file(&source, &["preprocessor_config.json"])?;
                let tokenizer = hub::find_file(&source, &["tokenizer.json"])?;
                let config = match arch {
                    Some(a) => preset(a)?,
                    None => ConfigSource::HuggingFace { config, preprocessor },
                };
                return Ok(ClipFiles { weights, config, tokenizer });
            }
        }
    }
    if let Some(config) = hub::find_file(&source, &["open_clip_config.json"])? {
        if let Some(weights) = hub::find_file(&source, &OC_WEIGHTS)? {
            let config = match arch {
                Some(a) => preset(a)?,
                None => ConfigSource::OpenClip(config),
            };
            return Ok(ClipFiles { weights, config, tokenizer: None });
        }
    }
    let mut wanted: Vec<&str> = vec!["config.json"];
    wanted.extend(HF_WEIGHTS);
    wanted.push("open_clip_config.json");
    wanted.extend(OC_WEIGHTS);
    Err(hub::not_found(&source, &wanted))
}

fn is_hf_clip_config(path: &Path) -> bool {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
        .map(|v| v.get("vision_config").is_some() || v.get("model_type").and_then(|m| m.as_str()) == Some("clip"))
        .unwrap_or(false)
}

/// A config file next to a checkpoint file, as the hub layouts put them.
fn sidecar_config(weights: &Path) -> Option<ConfigSource> {
    let dir = weights.parent()?;
    let oc = dir.join("open_clip_config.json");
    let name = weights.file_name()?.to_string_lossy().to_string();
    if name.starts_with("open_clip") && oc.is_file() {
        return Some(ConfigSource::OpenClip(oc));
    }
    let hf = dir.join("config.json");
    if HF_WEIGHTS.contains(&name.as_str()) && hf.is_file() && is_hf_clip_config(&hf) {
        let pp = dir.join("preprocessor_config.json");
        return Some(ConfigSource::HuggingFace { config: hf, preprocessor: pp.is_file().then_some(pp) });
    }
    None
}

/// A loaded model with what the load found.
pub type Loaded = crate::weights::Loaded<ClipModel, ClipFamily>;

/// Loads a model from resolved files onto `device`.
pub fn load(files: &ClipFiles, target: impl Into<Target>) -> Result<Loaded> {
    let target = target.into();
    let tensors = formats::read_tensors(&files.weights, None, &Device::Cpu)?;
    let (store, family) =
        TensorStore::from_family::<ClipFamily>(&files.weights, tensors, &target.device, target.dtype)?;
    let cfg = read_config(files, &store)?;
    Loaded::build(&store, family, |s| ClipModel::from_store(&cfg, s))
}

/// The architecture and every tensor of a checkpoint under its canonical (OpenAI) name, f32 on
/// the CPU, and the family it came in: the starting point of a fine-tuning run.
pub fn load_tensors(
    files: &ClipFiles,
) -> Result<(ClipConfig, std::collections::HashMap<String, candle_core::Tensor>, ClipFamily)> {
    let tensors = formats::read_tensors(&files.weights, None, &Device::Cpu)?;
    let (store, family) =
        TensorStore::from_family::<ClipFamily>(&files.weights, tensors, &Device::Cpu, candle_core::DType::F32)?;
    let cfg = read_config(files, &store)?;
    let names: Vec<String> = store.names().map(str::to_string).collect();
    let mut out = std::collections::HashMap::new();
    for n in names {
        let shape = store.shape_of(&n).unwrap_or_default();
        out.insert(n.clone(), store.get(&n, &shape)?);
    }
    Ok((cfg, out, family))
}

fn read_config(files: &ClipFiles, store: &TensorStore) -> Result<ClipConfig> {
    Ok(match &files.config {
        ConfigSource::HuggingFace { config, preprocessor } => {
            ClipConfig::from_hf_json(config, preprocessor.as_deref())?
        }
        ConfigSource::OpenClip(p) => ClipConfig::from_open_clip_json(p)?,
        ConfigSource::Preset(name) => {
            ClipConfig::preset(name).ok_or_else(|| Error::arg("arch", format!("unknown `{name}`")))?
        }
        ConfigSource::Infer => infer_config(store)?,
    })
}

/// Convenience: [`resolve`] then [`load`].
pub fn load_model(model: &str, arch: Option<&str>, target: impl Into<Target>) -> Result<Loaded> {
    load(&resolve(model, arch)?, target)
}

/// Reads the architecture off the tensor shapes (open_clip `build_model_from_openai_state_dict`):
/// widths from the embeddings, depth from the block count, patch from `conv1`, image size from the
/// position embedding, heads = width / 64, QuickGELU (OpenAI's activation); for a ResNet tower
/// (`visual.layer1.*`) the stage depths, width and image size as that function reads them.
fn infer_config(store: &TensorStore) -> Result<ClipConfig> {
    let shape = |n: &str| {
        store.shape_of(n).ok_or_else(|| Error::MissingTensor {
            path: store.path().to_path_buf(),
            name: n.to_string(),
            hint: " (needed to infer the architecture; or pass a config / --arch)".into(),
        })
    };
    let count = |prefix: &str| {
        store
            .names()
            .filter_map(|n| n.strip_prefix(prefix))
            .filter_map(|r| r.split('.').next()?.parse::<usize>().ok())
            .max()
            .map(|m| m + 1)
            .unwrap_or(0)
    };
    let resnet = store.contains("visual.layer1.0.conv1.weight");
    let embed_dim = shape("text_projection")?[1];
    let tok = shape("token_embedding.weight")?;
    let ctx = shape("positional_embedding")?[0];
    let mut cfg = ClipConfig::preset("ViT-B-32").expect("preset exists");
    let base = cfg.vision.tower;
    // The blocks below `prefix` of `width`; the activation and ε stay the preset's.
    let tower = |prefix: &str, width: usize| -> Result<TowerDims> {
        Ok(TowerDims {
            width,
            layers: count(prefix),
            heads: width / 64,
            mlp_dim: shape(&format!("{prefix}0.mlp.c_fc.weight"))?[0],
            ..base
        })
    };
    if resnet {
        // Stages: the distinct block indices below `visual.layerN.`; width: layer1's first
        // convolution; image size: 32 × the attention pool's grid.
        let mut layers = [0; 4];
        for (i, l) in layers.iter_mut().enumerate() {
            *l = count(&format!("visual.layer{}.", i + 1));
        }
        let width = shape("visual.layer1.0.conv1.weight")?[0];
        let ntok = shape("visual.attnpool.positional_embedding")?[0];
        let grid = ((ntok.max(1) - 1) as f64).sqrt().round() as usize;
        cfg.vision = VisionConfig::resnet(grid * 32, layers, width, 64, base.act);
    } else {
        let conv = shape("visual.conv1.weight")?;
        let (vw, patch) = (conv[0], conv[2]);
        let ntok = shape("visual.positional_embedding")?[0];
        let grid = ((ntok - 1) as f64).sqrt().round() as usize;
        cfg.vision.image_size = grid * patch;
        cfg.vision.patch_size = patch;
        cfg.vision.tower = tower("visual.transformer.resblocks.", vw)?;
    }
    cfg.text.tower = tower("transformer.resblocks.", tok[1])?;
    cfg.embed_dim = embed_dim;
    cfg.text.context_length = ctx;
    cfg.text.vocab_size = tok[0];
    cfg.preprocess.resize = cfg.vision.image_size;
    cfg.validate().map_err(|m| Error::Config { path: store.path().to_path_buf(), message: m })?;
    Ok(cfg)
}
