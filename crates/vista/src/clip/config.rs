//! CLIP configuration: one struct, presets that cite their source, and readers for the two config
//! formats checkpoints ship with (transformers `config.json`, open_clip `open_clip_config.json`).

// OpenAI CLIP's normalisation statistics, the default when a config gives none.
use crate::image::{OPENAI_CLIP_MEAN as OPENAI_MEAN, OPENAI_CLIP_STD as OPENAI_STD};
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::transformer::TowerDims;
use crate::nn::Activation;
use crate::{Error, Result};

/// Where the text transformer's sequence summary is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TextPooling {
    /// The position of the largest token id: the end-of-text token, the last of the vocabulary
    /// (OpenAI `clip/model.py` `text.argmax(dim=-1)`; open_clip `pool_type="argmax"`; transformers
    /// when `eos_token_id == 2`, its legacy configs).
    Argmax,
    /// The first position holding this id (transformers `CLIPTextTransformer` otherwise).
    FirstEos(u32),
}

/// The image tower's dimensions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VisionConfig {
    /// Input side in pixels (`image_size`).
    pub image_size: usize,
    /// Patch side in pixels (`patch_size`).
    pub patch_size: usize,
    /// Token width (transformers `hidden_size`, open_clip `width`).
    pub width: usize,
    /// Transformer blocks (`num_hidden_layers`, open_clip `layers`).
    pub layers: usize,
    /// Attention heads (`num_attention_heads`; open_clip `width / head_width`).
    pub heads: usize,
    /// Hidden width of each block's MLP (`intermediate_size`; open_clip `width * mlp_ratio`).
    pub mlp_dim: usize,
    /// The MLP activation (`hidden_act`; open_clip `quick_gelu`).
    pub act: Activation,
    /// LayerNorm epsilon (`layer_norm_eps`).
    pub eps: f64,
}

impl VisionConfig {
    /// The transformer dimensions of this tower.
    pub fn tower(&self) -> TowerDims {
        TowerDims {
            width: self.width,
            layers: self.layers,
            heads: self.heads,
            mlp_dim: self.mlp_dim,
            act: self.act,
            eps: self.eps,
        }
    }

    /// Patches per side.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Tokens: patches plus the class token.
    pub fn num_tokens(&self) -> usize {
        self.grid() * self.grid() + 1
    }
}

/// The text tower's dimensions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextConfig {
    /// Tokens per text, including start and end (`max_position_embeddings`, open_clip
    /// `context_length`).
    pub context_length: usize,
    /// Vocabulary size (`vocab_size`).
    pub vocab_size: usize,
    /// Token width (transformers `hidden_size`, open_clip `width`).
    pub width: usize,
    /// Transformer blocks (`num_hidden_layers`, open_clip `layers`).
    pub layers: usize,
    /// Attention heads (`num_attention_heads`, open_clip `heads`).
    pub heads: usize,
    /// Hidden width of each block's MLP (`intermediate_size`; open_clip `width * mlp_ratio`).
    pub mlp_dim: usize,
    /// The MLP activation (`hidden_act`; open_clip `quick_gelu`).
    pub act: Activation,
    /// LayerNorm epsilon (`layer_norm_eps`).
    pub eps: f64,
    /// Where the sequence summary is read (from `eos_token_id`).
    pub pooling: TextPooling,
}

impl TextConfig {
    /// The transformer dimensions of this tower.
    pub fn tower(&self) -> TowerDims {
        TowerDims {
            width: self.width,
            layers: self.layers,
            heads: self.heads,
            mlp_dim: self.mlp_dim,
            act: self.act,
            eps: self.eps,
        }
    }
}

/// How images are brought to the model's input, from the checkpoint's preprocessing config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreprocessConfig {
    /// The shortest side is resized to this (bicubic), then the centre is cropped to
    /// `VisionConfig::image_size`.
    pub resize: usize,
    /// Per-channel mean subtracted after scaling to `[0, 1]` (`image_mean`).
    pub mean: [f32; 3],
    /// Per-channel standard deviation the centred values are divided by (`image_std`).
    pub std: [f32; 3],
    /// Hugging Face's `CLIPImageProcessor` centres crops with `(h - c) // 2`; torchvision (OpenAI,
    /// open_clip) with `int(round((h - c) / 2))`.
    pub hf_crop: bool,
}

/// A CLIP model's architecture and preprocessing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClipConfig {
    /// Width of the shared image–text embedding space (transformers `projection_dim`, open_clip
    /// `embed_dim`).
    pub embed_dim: usize,
    /// The image tower.
    pub vision: VisionConfig,
    /// The text tower.
    pub text: TextConfig,
    /// How images are prepared for the image tower.
    pub preprocess: PreprocessConfig,
}

struct Tower {
    width: usize,
    layers: usize,
    heads: usize,
}

fn preset(embed_dim: usize, image: usize, patch: usize, v: Tower, t: Tower, act: Activation) -> ClipConfig {
    ClipConfig {
        embed_dim,
        vision: VisionConfig {
            image_size: image,
            patch_size: patch,
            width: v.width,
            layers: v.layers,
            heads: v.heads,
            mlp_dim: v.width * 4,
            act,
            eps: 1e-5,
        },
        text: TextConfig {
            context_length: 77,
            vocab_size: 49408,
            width: t.width,
            layers: t.layers,
            heads: t.heads,
            mlp_dim: t.width * 4,
            act,
            eps: 1e-5,
            pooling: TextPooling::Argmax,
        },
        preprocess: PreprocessConfig { resize: image, mean: OPENAI_MEAN, std: OPENAI_STD, hf_crop: false },
    }
}

impl ClipConfig {
    /// The named architectures. OpenAI's come from `openai/CLIP` `clip/model.py::build_model`
    /// (QuickGELU, head width 64) and open_clip's `model_configs/ViT-*-quickgelu.json`; the LAION ones
    /// from open_clip `model_configs/ViT-B-32.json` and `ViT-H-14.json` (exact GELU).
    pub fn preset(name: &str) -> Option<Self> {
        use Activation::{Gelu, QuickGelu};
        let tw = |width, layers, heads| Tower { width, layers, heads };
        Some(match name.to_ascii_lowercase().replace(['/', '_'], "-").as_str() {
            // openai/CLIP ViT-B/32: width 768, 12 layers; text 512 x 12, embed 512.
            "vit-b-32" | "vit-b-32-openai" | "vit-b-32-quickgelu" => {
                preset(512, 224, 32, tw(768, 12, 12), tw(512, 12, 8), QuickGelu)
            }
            "vit-b-16" | "vit-b-16-openai" | "vit-b-16-quickgelu" => {
                preset(512, 224, 16, tw(768, 12, 12), tw(512, 12, 8), QuickGelu)
            }
            // openai/CLIP ViT-L/14: width 1024, 24 layers; text 768 x 12, embed 768.
            "vit-l-14" | "vit-l-14-openai" | "vit-l-14-quickgelu" => {
                preset(768, 224, 14, tw(1024, 24, 16), tw(768, 12, 12), QuickGelu)
            }
            "vit-l-14-336" | "vit-l-14@336" | "vit-l-14-336-openai" | "vit-l-14-336-quickgelu" => {
                preset(768, 336, 14, tw(1024, 24, 16), tw(768, 12, 12), QuickGelu)
            }
            // open_clip model_configs/ViT-B-32.json (LAION-2B weights): exact GELU.
            "vit-b-32-laion" | "laion-vit-b-32" => preset(512, 224, 32, tw(768, 12, 12), tw(512, 12, 8), Gelu),
            // open_clip model_configs/ViT-H-14.json: width 1280, 32 layers, head width 80; text 1024 x 24.
            "vit-h-14" | "vit-h-14-laion" | "laion-vit-h-14" => {
                preset(1024, 224, 14, tw(1280, 32, 16), tw(1024, 24, 16), Gelu)
            }
            _ => return None,
        })
    }

    /// The canonical names of the presets [`ClipConfig::preset`] knows.
    pub const PRESETS: [&'static str; 6] =
        ["ViT-B-32", "ViT-B-16", "ViT-L-14", "ViT-L-14-336", "ViT-B-32-laion", "ViT-H-14"];

    /// Reads a transformers `config.json` (`CLIPModel`), with `preprocessor_config.json` if given.
    pub fn from_hf_json(path: &Path, preprocessor: Option<&Path>) -> Result<Self> {
        let v = read_json(path)?;
        let err = |m: String| Error::Config { path: path.to_path_buf(), message: m };
        if let Some(mt) = v.get("model_type").and_then(Value::as_str) {
            if mt != "clip" {
                return Err(err(format!("model_type is `{mt}`, expected `clip`")));
            }
        }
        // transformers lets `*_config_dict` override `*_config` (old OpenAI exports carry both).
        let section = |name: &str| -> Value {
            let mut base = v.get(name).cloned().unwrap_or(Value::Object(Default::default()));
            if let (Some(Value::Object(over)), Value::Object(b)) = (v.get(format!("{name}_dict")), &mut base) {
                for (k, val) in over {
                    b.insert(k.clone(), val.clone());
                }
            }
            base
        };
        let tc = section("text_config");
        let vc = section("vision_config");
        let get = |c: &Value, k: &str, default: usize| {
            c.get(k).and_then(Value::as_u64).map(|x| x as usize).unwrap_or(default)
        };
        let getf = |c: &Value, k: &str, default: f64| c.get(k).and_then(Value::as_f64).unwrap_or(default);
        let act = |c: &Value| -> Result<Activation> {
            let name = c.get("hidden_act").and_then(Value::as_str).unwrap_or("quick_gelu");
            Activation::from_hf(name).ok_or_else(|| err(format!("unsupported hidden_act `{name}`")))
        };
        // Defaults are those of transformers' CLIPTextConfig / CLIPVisionConfig.
        let eos = get(&tc, "eos_token_id", 2) as u32;
        let vision = VisionConfig {
            image_size: get(&vc, "image_size", 224),
            patch_size: get(&vc, "patch_size", 32),
            width: get(&vc, "hidden_size", 768),
            layers: get(&vc, "num_hidden_layers", 12),
            heads: get(&vc, "num_attention_heads", 12),
            mlp_dim: get(&vc, "intermediate_size", 3072),
            act: act(&vc)?,
            eps: getf(&vc, "layer_norm_eps", 1e-5),
        };
        let text = TextConfig {
            context_length: get(&tc, "max_position_embeddings", 77),
            vocab_size: get(&tc, "vocab_size", 49408),
            width: get(&tc, "hidden_size", 512),
            layers: get(&tc, "num_hidden_layers", 12),
            heads: get(&tc, "num_attention_heads", 8),
            mlp_dim: get(&tc, "intermediate_size", 2048),
            act: act(&tc)?,
            eps: getf(&tc, "layer_norm_eps", 1e-5),
            // modeling_clip.py: `if self.eos_token_id == 2: ... argmax` (legacy), else first eos.
            pooling: if eos == 2 { TextPooling::Argmax } else { TextPooling::FirstEos(eos) },
        };
        let embed_dim = get(&v, "projection_dim", 512);
        let mut preprocess =
            PreprocessConfig { resize: vision.image_size, mean: OPENAI_MEAN, std: OPENAI_STD, hf_crop: true };
        if let Some(pp) = preprocessor {
            apply_hf_preprocessor(pp, &mut preprocess)?;
        }
        let cfg = ClipConfig { embed_dim, vision, text, preprocess };
        cfg.validate().map_err(err)?;
        Ok(cfg)
    }

    /// Reads open_clip's `open_clip_config.json` (`{"model_cfg": ..., "preprocess_cfg": ...}`) or a
    /// bare model config (`model_configs/*.json`).
    pub fn from_open_clip_json(path: &Path) -> Result<Self> {
        let v = read_json(path)?;
        let err = |m: String| Error::Config { path: path.to_path_buf(), message: m };
        let model = v.get("model_cfg").unwrap_or(&v);
        let vc = model.get("vision_cfg").ok_or_else(|| err("no `vision_cfg`".into()))?;
        let tc = model.get("text_cfg").ok_or_else(|| err("no `text_cfg`".into()))?;
        if vc.get("layers").map(Value::is_array).unwrap_or(false) {
            return Err(err("ResNet CLIP towers (`layers` as a list) are not supported; use a ViT model".into()));
        }
        if tc.get("hf_model_name").map(|x| !x.is_null()).unwrap_or(false) {
            return Err(err("text towers from Hugging Face models (`hf_model_name`) are not supported".into()));
        }
        for (c, keys) in [
            (vc, &["ls_init_value", "attentional_pool", "timm_model_name"][..]),
            (tc, &["ls_init_value", "embed_cls"][..]),
        ] {
            for k in keys {
                if c.get(*k).map(|x| !x.is_null() && x != &Value::Bool(false)).unwrap_or(false) {
                    return Err(err(format!("option `{k}` is not supported")));
                }
            }
        }
        let pool = vc.get("pool_type").and_then(Value::as_str).unwrap_or("tok");
        if pool != "tok" {
            return Err(err(format!("vision pool_type `{pool}` is not supported (only `tok`)")));
        }
        let tpool = tc.get("pool_type").and_then(Value::as_str).unwrap_or("argmax");
        if tpool != "argmax" {
            return Err(err(format!("text pool_type `{tpool}` is not supported (only `argmax`)")));
        }
        let get = |c: &Value, k: &str, default: usize| {
            c.get(k).and_then(Value::as_u64).map(|x| x as usize).unwrap_or(default)
        };
        let getf = |c: &Value, k: &str, default: f64| c.get(k).and_then(Value::as_f64).unwrap_or(default);
        let quick = model.get("quick_gelu").and_then(Value::as_bool).unwrap_or(false);
        let act = if quick { Activation::QuickGelu } else { Activation::Gelu };
        // open_clip VisionTransformer: heads = width // head_width (head_width default 64).
        let vwidth = get(vc, "width", 768);
        let vheads = vwidth / get(vc, "head_width", 64);
        let twidth = get(tc, "width", 512);
        let image_size = get(vc, "image_size", 224);
        let vision = VisionConfig {
            image_size,
            patch_size: get(vc, "patch_size", 16),
            width: vwidth,
            layers: get(vc, "layers", 12),
            heads: vheads,
            mlp_dim: (vwidth as f64 * getf(vc, "mlp_ratio", 4.0)) as usize,
            act,
            eps: 1e-5,
        };
        let text = TextConfig {
            context_length: get(tc, "context_length", 77),
            vocab_size: get(tc, "vocab_size", 49408),
            width: twidth,
            layers: get(tc, "layers", 12),
            heads: get(tc, "heads", 8),
            mlp_dim: (twidth as f64 * getf(tc, "mlp_ratio", 4.0)) as usize,
            act,
            eps: 1e-5,
            pooling: TextPooling::Argmax,
        };
        let mut preprocess =
            PreprocessConfig { resize: image_size, mean: OPENAI_MEAN, std: OPENAI_STD, hf_crop: false };
        if let Some(pp) = v.get("preprocess_cfg") {
            if let Some(m) = triple(pp.get("mean")) {
                preprocess.mean = m;
            }
            if let Some(s) = triple(pp.get("std")) {
                preprocess.std = s;
            }
            let mode = pp.get("resize_mode").and_then(Value::as_str).unwrap_or("shortest");
            if mode != "shortest" {
                return Err(err(format!("preprocess resize_mode `{mode}` is not supported (only `shortest`)")));
            }
            let interp = pp.get("interpolation").and_then(Value::as_str).unwrap_or("bicubic");
            if interp != "bicubic" {
                return Err(err(format!("preprocess interpolation `{interp}` is not supported (only `bicubic`)")));
            }
        }
        let cfg = ClipConfig { embed_dim: get(model, "embed_dim", 512), vision, text, preprocess };
        cfg.validate().map_err(err)?;
        Ok(cfg)
    }

    /// Checks the derived values make sense (heads divide widths, patches tile the image).
    pub fn validate(&self) -> std::result::Result<(), String> {
        let v = &self.vision;
        let t = &self.text;
        if !v.width.is_multiple_of(v.heads) {
            return Err(format!("vision width {} is not divisible by {} heads", v.width, v.heads));
        }
        if !t.width.is_multiple_of(t.heads) {
            return Err(format!("text width {} is not divisible by {} heads", t.width, t.heads));
        }
        if v.patch_size == 0 || v.image_size < v.patch_size {
            return Err(format!("patch size {} does not fit image size {}", v.patch_size, v.image_size));
        }
        if self.preprocess.resize < v.image_size {
            return Err(format!("resize {} is smaller than the crop {}", self.preprocess.resize, v.image_size));
        }
        Ok(())
    }
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text)
        .map_err(|e| Error::Config { path: path.to_path_buf(), message: format!("invalid JSON: {e}") })
}

fn triple(v: Option<&Value>) -> Option<[f32; 3]> {
    let a = v?.as_array()?;
    if a.len() != 3 {
        return None;
    }
    Some([a[0].as_f64()? as f32, a[1].as_f64()? as f32, a[2].as_f64()? as f32])
}

/// transformers `CLIPImageProcessor` fields: `size.shortest_edge` (or an int), `crop_size`,
/// `image_mean`, `image_std`, `resample` (3 = bicubic).
fn apply_hf_preprocessor(path: &Path, pp: &mut PreprocessConfig) -> Result<()> {
    let v = read_json(path)?;
    let err = |m: String| Error::Config { path: path.to_path_buf(), message: m };
    match v.get("size") {
        Some(Value::Number(n)) => pp.resize = n.as_u64().unwrap_or(pp.resize as u64) as usize,
        Some(Value::Object(o)) => {
            if let Some(n) = o.get("shortest_edge").and_then(Value::as_u64) {
                pp.resize = n as usize;
            } else {
                return Err(err("only `size.shortest_edge` resizing is supported".into()));
            }
        }
        _ => {}
    }
    if let Some(r) = v.get("resample").and_then(Value::as_u64) {
        if r != 3 {
            return Err(err(format!("resample {r} is not supported (only 3 = bicubic)")));
        }
    }
    if let Some(m) = triple(v.get("image_mean")) {
        pp.mean = m;
    }
    if let Some(s) = triple(v.get("image_std")) {
        pp.std = s;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_is_valid_and_named() {
        for name in ClipConfig::PRESETS {
            let c = ClipConfig::preset(name).unwrap_or_else(|| panic!("preset {name}"));
            c.validate().unwrap();
        }
        let h = ClipConfig::preset("ViT-H-14").unwrap();
        assert_eq!(h.vision.width / h.vision.heads, 80);
        assert_eq!(ClipConfig::preset("ViT-L/14@336").unwrap().vision.image_size, 336);
    }
}
