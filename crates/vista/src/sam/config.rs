//! Segment Anything hyper-parameters: the presets of `segment_anything/build_sam.py` and
//! MobileSAM's `build_sam_vit_t`, and the same read back from a checkpoint's tensor shapes.

use serde::Serialize;

use crate::weights::TensorStore;
use crate::{Error, Result};

/// SAM's image encoder, a plain ViT with windowed attention (`ImageEncoderViT`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VitConfig {
    /// Side of the square, padded input (`img_size`, 1024).
    pub image_size: usize,
    /// Patch side in pixels (16).
    pub patch_size: usize,
    /// Token width (`embed_dim`).
    pub embed_dim: usize,
    /// Transformer blocks (`depth`).
    pub depth: usize,
    /// Attention heads (`num_heads`).
    pub num_heads: usize,
    /// Hidden width of each block's MLP (`embed_dim · mlp_ratio`).
    pub mlp_dim: usize,
    /// Window side for the windowed blocks (14 in every release).
    pub window_size: usize,
    /// Blocks that attend globally instead of within windows.
    pub global_attn_indexes: Vec<usize>,
    /// Channels of the neck, i.e. of the image embedding.
    pub out_chans: usize,
    /// The ε of the blocks' LayerNorms (1e-6 in `build_sam.py`).
    pub layer_norm_eps: f64,
}

/// MobileSAM's TinyViT image encoder (`tiny_vit_sam.py`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TinyVitConfig {
    /// Side of the square, padded input (`img_size`, 1024).
    pub image_size: usize,
    /// Channels of each stage (`embed_dims`).
    pub embed_dims: Vec<usize>,
    /// Blocks in each stage (`depths`).
    pub depths: Vec<usize>,
    /// Heads of the attention stages (stage 0 is convolutional; its entry is unused).
    pub num_heads: Vec<usize>,
    /// Attention window side of each stage (`window_sizes`; stage 0's entry is unused).
    pub window_sizes: Vec<usize>,
    /// Hidden width of each stage's MLP (`dim · mlp_ratio`; stage 0: the MBConv hidden width).
    pub hidden_dims: Vec<usize>,
    /// Channels of the neck, i.e. of the image embedding.
    pub out_chans: usize,
}

/// The image encoder's architecture.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EncoderConfig {
    /// SAM's ViT-B/L/H encoder.
    Vit(VitConfig),
    /// MobileSAM's TinyViT encoder.
    TinyVit(TinyVitConfig),
}

impl EncoderConfig {
    /// Side of the square, padded encoder input (1024 for every release).
    pub fn image_size(&self) -> usize {
        match self {
            Self::Vit(c) => c.image_size,
            Self::TinyVit(c) => c.image_size,
        }
    }

    /// Side of the image embedding grid (64 for every release).
    pub fn grid(&self) -> usize {
        match self {
            Self::Vit(c) => c.image_size / c.patch_size,
            // Patch embedding /4, then two stride-2 merges (the last merge has stride 1).
            Self::TinyVit(c) => c.image_size / 16,
        }
    }

    /// Channels of the image embedding.
    pub fn out_chans(&self) -> usize {
        match self {
            Self::Vit(c) => c.out_chans,
            Self::TinyVit(c) => c.out_chans,
        }
    }
}

/// `PromptEncoder` and `MaskDecoder` (with its `TwoWayTransformer`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DecoderConfig {
    /// Width of prompts, image embedding and the two-way transformer (256 in every release).
    pub dim: usize,
    /// Hidden channels of the mask-input downscaling convolutions.
    pub mask_in_chans: usize,
    /// Blocks of the two-way transformer (`depth`, 2).
    pub depth: usize,
    /// Attention heads of the two-way transformer (8).
    pub num_heads: usize,
    /// Hidden width of the two-way blocks' MLPs (`mlp_dim`, 2048).
    pub mlp_dim: usize,
    /// The cross-attention projections narrow `dim` by this factor (`attention_downsample_rate`,
    /// 2).
    pub attention_downsample_rate: usize,
    /// Masks predicted in multimask mode (`num_multimask_outputs`, 3); a further token gives the
    /// single mask.
    pub num_multimask_outputs: usize,
    /// Layers of the IoU prediction head (`iou_head_depth`, 3).
    pub iou_head_depth: usize,
    /// Hidden width of the IoU prediction head (`iou_head_hidden_dim`, 256).
    pub iou_head_hidden_dim: usize,
    /// The ε of the two-way transformer blocks' LayerNorms: PyTorch's default 1e-5 in the
    /// reference, 1e-6 in transformers' port (its `mask_decoder_config.layer_norm_eps`); the
    /// final norm is 1e-5 in both.
    pub layer_norm_eps: f64,
}

/// A SAM model's architecture (image encoder, prompt encoder, mask decoder) and its pixel
/// normalisation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SamConfig {
    /// The image encoder.
    pub encoder: EncoderConfig,
    /// The prompt encoder and mask decoder.
    pub decoder: DecoderConfig,
    /// In 0–255 units, as `Sam.pixel_mean` / `pixel_std`.
    pub pixel_mean: [f32; 3],
    /// In 0–255 units, as `Sam.pixel_std`.
    pub pixel_std: [f32; 3],
}

impl SamConfig {
    /// The names [`SamConfig::preset`] accepts (besides the alias `mobile_sam`).
    pub const PRESETS: [&'static str; 4] = ["vit_b", "vit_l", "vit_h", "vit_t"];

    /// `build_sam.py`'s `build_sam_vit_b|l|h` and MobileSAM's `build_sam_vit_t` ("mobile_sam"
    /// is accepted for the latter).
    pub fn preset(name: &str) -> Option<Self> {
        let vit = |embed_dim: usize, depth: usize, global: [usize; 4]| {
            EncoderConfig::Vit(VitConfig {
                image_size: 1024,
                patch_size: 16,
                embed_dim,
                depth,
                num_heads: if embed_dim == 768 { 12 } else { 16 },
                mlp_dim: embed_dim * 4,
                window_size: 14,
                global_attn_indexes: global.to_vec(),
                out_chans: 256,
                layer_norm_eps: 1e-6,
            })
        };
        let encoder = match name {
            "vit_b" => vit(768, 12, [2, 5, 8, 11]),
            "vit_l" => vit(1024, 24, [5, 11, 17, 23]),
            "vit_h" => vit(1280, 32, [7, 15, 23, 31]),
            "vit_t" | "mobile_sam" => EncoderConfig::TinyVit(TinyVitConfig {
                image_size: 1024,
                embed_dims: vec![64, 128, 160, 320],
                depths: vec![2, 2, 6, 2],
                num_heads: vec![2, 4, 5, 10],
                window_sizes: vec![7, 7, 14, 7],
                hidden_dims: vec![256, 512, 640, 1280],
                out_chans: 256,
            }),
            _ => return None,
        };
        Some(Self { encoder, decoder: DecoderConfig::sam(), pixel_mean: PIXEL_MEAN, pixel_std: PIXEL_STD })
    }

    /// Reads the architecture from a checkpoint's tensor shapes (canonical names). Everything
    /// is determined by shapes except the decoder's head count, which is 8 in every release,
    /// and TinyViT's input size, which is `image_size` (1024 in the release).
    pub fn infer(store: &TensorStore, image_size: Option<usize>) -> Result<Self> {
        let shape = |name: &str| -> Result<Vec<usize>> {
            store.shape_of(name).ok_or_else(|| Error::MissingTensor {
                path: store.path().to_path_buf(),
                name: name.to_string(),
                hint: " (needed to infer the SAM architecture)".into(),
            })
        };
        let count = |prefix: &str| -> usize {
            (0..).take_while(|i| store.names().any(|n| n.starts_with(&format!("{prefix}.{i}.")))).count()
        };
        let bad = |message: String| Error::Config { path: store.path().to_path_buf(), message };

        let encoder = if store.contains("image_encoder.patch_embed.proj.weight") {
            let pe = shape("image_encoder.patch_embed.proj.weight")?;
            let pos = shape("image_encoder.pos_embed")?;
            let (embed_dim, patch_size, grid) = (pe[0], pe[2], pos[1]);
            let depth = count("image_encoder.blocks");
            if depth == 0 {
                return Err(bad("the image encoder has no blocks".into()));
            }
            let rel = shape("image_encoder.blocks.0.attn.rel_pos_h")?;
            let head_dim = rel[1];
            let mut window_size = 14;
            let mut global = Vec::new();
            for i in 0..depth {
                let len = shape(&format!("image_encoder.blocks.{i}.attn.rel_pos_h"))?[0];
                if len == 2 * grid - 1 {
                    global.push(i);
                } else {
                    window_size = len.div_ceil(2);
                }
            }
            EncoderConfig::Vit(VitConfig {
                image_size: grid * patch_size,
                patch_size,
                embed_dim,
                depth,
                num_heads: embed_dim / head_dim,
                mlp_dim: shape("image_encoder.blocks.0.mlp.lin1.weight")?[0],
                window_size,
                global_attn_indexes: global,
                out_chans: shape("image_encoder.neck.0.weight")?[0],
                layer_norm_eps: 1e-6,
            })
        } else if store.contains("image_encoder.patch_embed.seq.0.c.weight") {
            let stages = count("image_encoder.layers");
            if stages < 2 {
                return Err(bad("TinyViT needs at least two stages".into()));
            }
            let mut cfg = TinyVitConfig {
                image_size: image_size.unwrap_or(1024),
                embed_dims: vec![],
                depths: vec![],
                num_heads: vec![],
                window_sizes: vec![],
                hidden_dims: vec![],
                out_chans: shape("image_encoder.neck.0.weight")?[0],
            };
            for s in 0..stages {
                let p = format!("image_encoder.layers.{s}.blocks");
                cfg.depths.push(count(&p));
                if s == 0 {
                    let c1 = shape(&format!("{p}.0.conv1.c.weight"))?;
                    cfg.embed_dims.push(c1[1]);
                    cfg.hidden_dims.push(c1[0]);
                    cfg.num_heads.push(0);
                    cfg.window_sizes.push(0);
                } else {
                    let fc1 = shape(&format!("{p}.0.mlp.fc1.weight"))?;
                    let ab = shape(&format!("{p}.0.attn.attention_biases"))?;
                    let ws = (ab[1] as f64).sqrt().round() as usize;
                    if ws * ws != ab[1] {
                        return Err(bad(format!("{p}.0.attn.attention_biases has {} offsets, not a square", ab[1])));
                    }
                    cfg.embed_dims.push(fc1[1]);
                    cfg.hidden_dims.push(fc1[0]);
                    cfg.num_heads.push(ab[0]);
                    cfg.window_sizes.push(ws);
                }
            }
            EncoderConfig::TinyVit(cfg)
        } else {
            return Err(bad(
                "no SAM image encoder found (expected image_encoder.patch_embed.proj.weight or, for MobileSAM, \
                 image_encoder.patch_embed.seq.0.c.weight)"
                    .into(),
            ));
        };

        let dim = shape("mask_decoder.iou_token.weight")?[1];
        let decoder = DecoderConfig {
            dim,
            mask_in_chans: shape("prompt_encoder.mask_downscaling.3.weight")?[0],
            depth: count("mask_decoder.transformer.layers"),
            num_heads: 8,
            mlp_dim: shape("mask_decoder.transformer.layers.0.mlp.lin1.weight")?[0],
            attention_downsample_rate: dim
                / shape("mask_decoder.transformer.layers.0.cross_attn_token_to_image.q_proj.weight")?[0],
            num_multimask_outputs: shape("mask_decoder.mask_tokens.weight")?[0] - 1,
            iou_head_depth: count("mask_decoder.iou_prediction_head.layers"),
            iou_head_hidden_dim: shape("mask_decoder.iou_prediction_head.layers.0.weight")?[0],
            layer_norm_eps: 1e-5,
        };
        let cfg = Self { encoder, decoder, pixel_mean: PIXEL_MEAN, pixel_std: PIXEL_STD };
        cfg.validate().map_err(bad)?;
        Ok(cfg)
    }

    /// Consistency checks a hand-written or inferred config must pass.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.encoder.out_chans() != self.decoder.dim {
            return Err(format!(
                "the image embedding has {} channels but the mask decoder works in {}",
                self.encoder.out_chans(),
                self.decoder.dim
            ));
        }
        let d = &self.decoder;
        let internal = d.dim / d.attention_downsample_rate.max(1);
        if d.num_heads == 0 || !d.dim.is_multiple_of(d.num_heads) || !internal.is_multiple_of(d.num_heads) {
            return Err(format!("{} decoder heads do not divide widths {} and {internal}", d.num_heads, d.dim));
        }
        match &self.encoder {
            EncoderConfig::Vit(v) => {
                if v.num_heads == 0
                    || !v.image_size.is_multiple_of(v.patch_size)
                    || !v.embed_dim.is_multiple_of(v.num_heads)
                {
                    return Err(format!("inconsistent ViT: {v:?}"));
                }
            }
            EncoderConfig::TinyVit(t) => {
                if !t.image_size.is_multiple_of(16) {
                    return Err(format!("TinyViT input size {} is not a multiple of 16", t.image_size));
                }
            }
        }
        Ok(())
    }
}

/// ImageNet mean and std in 0–255 units (`Sam.pixel_mean`, `Sam.pixel_std`).
pub const PIXEL_MEAN: [f32; 3] = [123.675, 116.28, 103.53];
/// ImageNet std in 0–255 units (`Sam.pixel_std`).
pub const PIXEL_STD: [f32; 3] = [58.395, 57.12, 57.375];

impl DecoderConfig {
    /// The prompt encoder and mask decoder of every SAM release (`_build_sam`).
    pub fn sam() -> Self {
        Self {
            dim: 256,
            mask_in_chans: 16,
            depth: 2,
            num_heads: 8,
            mlp_dim: 2048,
            attention_downsample_rate: 2,
            num_multimask_outputs: 3,
            iou_head_depth: 3,
            iou_head_hidden_dim: 256,
            layer_norm_eps: 1e-5,
        }
    }
}
