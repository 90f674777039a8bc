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

/// A ResNet image tower's stages (OpenAI `ModifiedResNet`; open_clip `vision_cfg.layers` as a list).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResNetDims {
    /// Bottleneck blocks per stage (`[3, 4, 6, 3]` for RN50).
    pub layers: [usize; 4],
    /// The stem's output width (`width`, 64 for RN50); stage `i` ends at `width · 4 · 2^i` channels.
    pub width: usize,
}

/// The image tower's dimensions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VisionConfig {
    /// Input side in pixels (`image_size`).
    pub image_size: usize,
    /// Patch side in pixels (`patch_size`); for a ResNet tower its total stride, 32.
    pub patch_size: usize,
    /// The transformer (open_clip: `heads = width / head_width`); for a ResNet tower its attention
    /// pool: width `32 · width`, `heads = 32 · width / head_width`, no layers.
    #[serde(flatten)]
    pub tower: TowerDims,
    /// Present for a ResNet tower (`ModifiedResNet`): its stages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resnet: Option<ResNetDims>,
}

impl VisionConfig {
    /// A `ModifiedResNet` tower (OpenAI `clip/model.py`, open_clip `modified_resnet.py`) for
    /// `image_size` inputs, its attention pool's heads `32 · width / head_width`.
    pub fn resnet(image_size: usize, layers: [usize; 4], width: usize, head_width: usize, act: Activation) -> Self {
        VisionConfig {
            image_size,
            patch_size: 32,
            tower: TowerDims {
                width: width * 32,
                layers: 0,
                heads: width * 32 / head_width.max(1),
                mlp_dim: 0,
                act,
                eps: 1e-5,
            },
            resnet: Some(ResNetDims { layers, width }),
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
    /// The transformer (open_clip: `heads`).
    #[serde(flatten)]
    pub tower: TowerDims,
    /// Where the sequence summary is read (from `eos_token_id`).
    pub pooling: TextPooling,
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

/// A named architecture: towers given as `(width, layers, heads)`, MLPs 4× wide, LayerNorm ε 1e-5.
fn preset(
    embed_dim: usize,
    image: usize,
    patch: usize,
    v: (usize, usize, usize),
    t: (usize, usize, usize),
    act: Activation,
) -> ClipConfig {
    let tower = |(width, layers, heads): (usize, usize, usize)| TowerDims {
        width,
        layers,
        heads,
        mlp_dim: width * 4,
        act,
        eps: 1e-5,
    };
    ClipConfig {
        embed_dim,
        vision: VisionConfig { image_size: image, patch_size: patch, tower: tower(v), resnet: None },
        text: TextConfig { context_length: 77, vocab_size: 49408, tower: tower(t), pooling: TextPooling::Argmax },
        preprocess: PreprocessConfig { resize: image, mean: OPENAI_MEAN, std: OPENAI_STD, hf_crop: false },
    }
}

/// A ResNet CLIP as OpenAI released it: QuickGELU, head width 64, text 12 layers of `text_width`.
fn resnet_preset(embed_dim: usize, image: usize, layers: [usize; 4], width: usize, text_width: usize) -> ClipConfig {
    let mut cfg = preset(
        embed_dim,
        image,
        32,
        (width * 32, 0, width / 2),
        (text_width, 12, text_width / 64),
        Activation::QuickGelu,
    );
    cfg.vision = VisionConfig::resnet(image, layers, width, 64, Activation::QuickGelu);
    cfg
}

impl ClipConfig {
    /// The named architectures. OpenAI's come from `openai/CLIP` `clip/model.py::build_model`
    /// (QuickGELU, head width 64) and open_clip's `model_configs/ViT-*-quickgelu.json`; the LAION ones
    /// from open_clip `model_configs/ViT-B-32.json` and `ViT-H-14.json` (exact GELU).
    pub fn preset(name: &str) -> Option<Self> {
        use Activation::{Gelu, QuickGelu};
        Some(match name.to_ascii_lowercase().replace(['/', '_'], "-").as_str() {
            // openai/CLIP ViT-B/32: width 768, 12 layers; text 512 x 12, embed 512.
            "vit-b-32" | "vit-b-32-openai" | "vit-b-32-quickgelu" => {
                preset(512, 224, 32, (768, 12, 12), (512, 12, 8), QuickGelu)
            }
            "vit-b-16" | "vit-b-16-openai" | "vit-b-16-quickgelu" => {
                preset(512, 224, 16, (768, 12, 12), (512, 12, 8), QuickGelu)
            }
            // openai/CLIP ViT-L/14: width 1024, 24 layers; text 768 x 12, embed 768.
            "vit-l-14" | "vit-l-14-openai" | "vit-l-14-quickgelu" => {
                preset(768, 224, 14, (1024, 24, 16), (768, 12, 12), QuickGelu)
            }
            "vit-l-14-336" | "vit-l-14@336" | "vit-l-14-336-openai" | "vit-l-14-336-quickgelu" => {
                preset(768, 336, 14, (1024, 24, 16), (768, 12, 12), QuickGelu)
            }
            // open_clip model_configs/ViT-B-32.json (LAION-2B weights): exact GELU.
            "vit-b-32-laion" | "laion-vit-b-32" => preset(512, 224, 32, (768, 12, 12), (512, 12, 8), Gelu),
            // open_clip model_configs/ViT-H-14.json: width 1280, 32 layers, head width 80; text 1024 x 24.
            "vit-h-14" | "vit-h-14-laion" | "laion-vit-h-14" => {
                preset(1024, 224, 14, (1280, 32, 16), (1024, 24, 16), Gelu)
            }
            // open_clip model_configs/RN*.json, OpenAI clip/model.py: ModifiedResNet towers (their
            // text towers 12 layers, heads = width / 64); OpenAI's weights use QuickGELU.
            "rn50" | "rn50-openai" | "rn50-quickgelu" => resnet_preset(1024, 224, [3, 4, 6, 3], 64, 512),
            "rn101" | "rn101-openai" | "rn101-quickgelu" => resnet_preset(512, 224, [3, 4, 23, 3], 64, 512),
            "rn50x4" | "rn50x4-openai" | "rn50x4-quickgelu" => resnet_preset(640, 288, [4, 6, 10, 6], 80, 640),
            "rn50x16" | "rn50x16-openai" | "rn50x16-quickgelu" => resnet_preset(768, 384, [6, 8, 18, 8], 96, 768),
            "rn50x64" | "rn50x64-openai" | "rn50x64-quickgelu" => resnet_preset(1024, 448, [3, 15, 36, 10], 128, 1024),
            _ => return None,
        })
    }

    /// The canonical names of the presets [`ClipConfig::preset`] knows.
    pub const PRESETS: [&'static str; 11] = [
        "ViT-B-32",
        "ViT-B-16",
        "ViT-L-14",
        "ViT-L-14-336",
        "ViT-B-32-laion",
        "ViT-H-14",
        "RN50",
        "RN101",
        "RN50x4",
        "RN50x16",
        "RN50x64",
    ];

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
        // Defaults are those of transformers' CLIPTextConfig / CLIPVisionConfig: `hidden_size`,
        // `num_hidden_layers`, `num_attention_heads`, `intermediate_size`.
        let tower = |c: &Value, (width, layers, heads, mlp_dim): (usize, usize, usize, usize)| -> Result<TowerDims> {
            let name = c.get("hidden_act").and_then(Value::as_str).unwrap_or("quick_gelu");
            Ok(TowerDims {
                width: get(c, "hidden_size", width),
                layers: get(c, "num_hidden_layers", layers),
                heads: get(c, "num_attention_heads", heads),
                mlp_dim: get(c, "intermediate_size", mlp_dim),
                act: Activation::from_hf(name).ok_or_else(|| err(format!("unsupported hidden_act `{name}`")))?,
                eps: getf(c, "layer_norm_eps", 1e-5),
            })
        };
        let eos = get(&tc, "eos_token_id", 2) as u32;
        let vision = VisionConfig {
            image_size: get(&vc, "image_size", 224),
            patch_size: get(&vc, "patch_size", 32),
            tower: tower(&vc, (768, 12, 12, 3072))?,
            resnet: None,
        };
        let text = TextConfig {
            context_length: get(&tc, "max_position_embeddings", 77),
            vocab_size: get(&tc, "vocab_size", 49408),
            tower: tower(&tc, (512, 12, 8, 2048))?,
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
        only(vc, "vision", "pool_type", "tok").map_err(err)?;
        only(tc, "text", "pool_type", "argmax").map_err(err)?;
        let quick = model.get("quick_gelu").and_then(Value::as_bool).unwrap_or(false);
        let act = if quick { Activation::QuickGelu } else { Activation::Gelu };
        let tower = |c: &Value, width: usize, heads: usize| TowerDims {
            width,
            layers: get(c, "layers", 12),
            heads,
            mlp_dim: (width as f64 * getf(c, "mlp_ratio", 4.0)) as usize,
            act,
            eps: 1e-5,
        };
        // open_clip VisionTransformer: heads = width // head_width (head_width default 64).
        let vwidth = get(vc, "width", 768);
        let image_size = get(vc, "image_size", 224);
        let vision = match vc.get("layers").and_then(Value::as_array) {
            // `layers` as a list: ModifiedResNet, heads = width · 32 // head_width.
            Some(stages) => {
                let depths: Vec<usize> = stages.iter().filter_map(Value::as_u64).map(|d| d as usize).collect();
                let layers: [usize; 4] = depths
                    .try_into()
                    .map_err(|d: Vec<usize>| err(format!("vision `layers` has {} stages, expected 4", d.len())))?;
                VisionConfig::resnet(image_size, layers, get(vc, "width", 64), get(vc, "head_width", 64), act)
            }
            None => VisionConfig {
                image_size,
                patch_size: get(vc, "patch_size", 16),
                tower: tower(vc, vwidth, vwidth / get(vc, "head_width", 64)),
                resnet: None,
            },
        };
        let text = TextConfig {
            context_length: get(tc, "context_length", 77),
            vocab_size: get(tc, "vocab_size", 49408),
            tower: tower(tc, get(tc, "width", 512), get(tc, "heads", 8)),
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
            only(pp, "preprocess", "resize_mode", "shortest").map_err(err)?;
            only(pp, "preprocess", "interpolation", "bicubic").map_err(err)?;
        }
        let cfg = ClipConfig { embed_dim: get(model, "embed_dim", 512), vision, text, preprocess };
        cfg.validate().map_err(err)?;
        Ok(cfg)
    }

    /// Checks the derived values make sense (heads divide widths, patches tile the image).
    pub fn validate(&self) -> std::result::Result<(), String> {
        let v = &self.vision;
        for (name, t) in [("vision", &v.tower), ("text", &self.text.tower)] {
            if !t.width.is_multiple_of(t.heads) {
                return Err(format!("{name} width {} is not divisible by {} heads", t.width, t.heads));
            }
        }
        if v.resnet.is_some() && v.tower.heads == 0 {
            return Err(format!("the attention pool of width {} has no heads", v.tower.width));
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

/// Checks that the string option `key` of `c` (a `part` of the config) is absent or `supported`,
/// the one value vista supports.
fn only(c: &Value, part: &str, key: &str, supported: &str) -> std::result::Result<(), String> {
    match c.get(key).and_then(Value::as_str).unwrap_or(supported) {
        v if v == supported => Ok(()),
        v => Err(format!("{part} {key} `{v}` is not supported (only `{supported}`)")),
    }
}

/// `c[k]` as a count, or `default`.
fn get(c: &Value, k: &str, default: usize) -> usize {
    c.get(k).and_then(Value::as_u64).map(|x| x as usize).unwrap_or(default)
}

/// `c[k]` as a number, or `default`.
fn getf(c: &Value, k: &str, default: f64) -> f64 {
    c.get(k).and_then(Value::as_f64).unwrap_or(default)
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
        assert_eq!(h.vision.tower.width / h.vision.tower.heads, 80);
        assert_eq!(ClipConfig::preset("ViT-L/14@336").unwrap().vision.image_size, 336);
        // OpenAI clip/model.py: vision_heads = vision_width * 32 // 64.
        let rn = ClipConfig::preset("RN50x4").unwrap();
        assert_eq!((rn.vision.tower.width, rn.vision.tower.heads, rn.vision.image_size), (2560, 40, 288));
        assert_eq!((rn.text.tower.width, rn.text.tower.heads, rn.embed_dim), (640, 10, 640));
    }
}
