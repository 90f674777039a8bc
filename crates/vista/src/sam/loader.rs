//! From a user's model argument to a loaded [`Sam`]: resolve the files, map the tensor names,
//! read the architecture, build, report.

use std::path::Path;

use candle_core::Device;

use super::config::SamConfig;
use super::model::Sam;
use crate::device::Target;
use crate::weights::hub::{self, CheckpointFiles};
use crate::weights::sam::SamFamily;
use crate::weights::{formats, TensorStore};
use crate::{Error, Result};

/// The files a SAM model is read from.
pub type SamFiles = CheckpointFiles;

/// What the checkpoint cannot say about itself.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// A preset (`vit_b`, `vit_l`, `vit_h`, `vit_t`) instead of reading the shapes.
    pub arch: Option<String>,
    /// The encoder input size of a TinyViT (MobileSAM) checkpoint; 1024 when not given.
    pub image_size: Option<usize>,
    /// Where the model runs and in what precision (default: f32 on the CPU).
    pub target: Target,
}

/// Finds the weights (and config) for a model argument: a checkpoint file, a folder or a hub id.
pub fn resolve(model: &str) -> Result<SamFiles> {
    let official = ["sam_vit_b_01ec64.pth", "sam_vit_l_0b3195.pth", "sam_vit_h_4b8939.pth", "mobile_sam.pt"];
    hub::resolve_checkpoint(model, &official)
}

/// A loaded model with what the load found.
pub type Loaded = crate::weights::Loaded<Sam, SamFamily>;

/// Loads a model from resolved files (CPU, f32).
pub fn load(files: &SamFiles, options: &LoadOptions) -> Result<Loaded> {
    let tensors = formats::read_tensors(&files.weights, None, &Device::Cpu)?;
    let (target, path) = (&options.target, &files.weights);
    let (store, family) = TensorStore::from_family::<SamFamily>(path, tensors, &target.device, target.dtype)?;
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
    Loaded::build(&store, family, |s| Sam::load(&s.root(), config))
}

/// Convenience: [`resolve`] then [`load`].
pub fn load_model(model: &str, options: &LoadOptions) -> Result<Loaded> {
    load(&resolve(model)?, options)
}

/// What a transformers `SamConfig` adds to the shapes: the decoder's head count and the
/// layer-norm epsilons.
fn apply_hf_config(path: &Path, config: &mut SamConfig) -> Result<()> {
    let v = hub::read_json_config(path)?;
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
