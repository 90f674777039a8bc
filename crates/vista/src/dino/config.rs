//! DINO and DINOv2 ViT hyper-parameters: the released architectures and the same read back
//! from a checkpoint's tensor shapes.

use serde::Serialize;

use crate::weights::TensorStore;
use crate::{Error, Result};

/// The feed-forward network of a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Ffn {
    /// `fc1 → GELU → fc2`.
    Mlp,
    /// DINOv2's `SwiGLUFFNFused`: `w12 → (silu(x1) · x2) → w3` (ViT-g/14).
    SwiGlu,
}

/// How the position embedding is resampled for a grid other than the trained one; each
/// reference does it its own way, and a port must do it the same way to give the same features.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PosInterpolation {
    /// DINO's and DINOv2's own code (no registers): bicubic with `scale_factor = ((h0 + offset)
    /// / M, (w0 + offset) / M)` for the grid's rows and columns (the source scale is then
    /// `M / (g + offset)`, not `M / g`), no antialiasing; `offset` is 0.1 in both.
    ScaleFactorOffset {
        /// Added to the target grid side before dividing (`interpolate_offset`).
        offset: f64,
        /// Resample with antialiasing (`interpolate_antialias`).
        antialias: bool,
    },
    /// bicubic to `size = (h0, w0)`, `align_corners=False`: transformers' `ViTModel` and
    /// `Dinov2Model` without antialiasing; DINOv2's register models (the hub builds them with
    /// `interpolate_offset=0, interpolate_antialias=True`) and `Dinov2WithRegistersModel` with it.
    Size {
        /// Resample with antialiasing (`antialias=True`).
        antialias: bool,
    },
}

/// A DINO or DINOv2 ViT's architecture.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DinoConfig {
    /// Side of the square the position embedding was trained for (grid × patch).
    pub image_size: usize,
    /// Patch side in pixels (`patch_size`).
    pub patch_size: usize,
    /// Token width (`embed_dim`).
    pub embed_dim: usize,
    /// Transformer blocks (`depth`).
    pub depth: usize,
    /// Attention heads (`num_heads`).
    pub num_heads: usize,
    /// Hidden width of the feed-forward network.
    pub ffn_hidden: usize,
    /// The kind of feed-forward network (`ffn_layer`).
    pub ffn: Ffn,
    /// DINOv2's per-channel residual scales (`ls1.gamma`, `ls2.gamma`).
    pub layer_scale: bool,
    /// DINOv2 "registers" (0, or 4 for the `_reg` models).
    pub num_register_tokens: usize,
    /// Whether the `qkv` projection has a bias (`qkv_bias`).
    pub qkv_bias: bool,
    /// The ε of the LayerNorms (1e-6 in both references).
    pub layer_norm_eps: f64,
    /// How the position embedding is resampled for other grids.
    pub interpolation: PosInterpolation,
}

impl DinoConfig {
    /// The released backbones, by their hub names: `dino_vits16`, `dino_vits8`, `dino_vitb16`,
    /// `dino_vitb8` and `dinov2_vits14|vitb14|vitl14|vitg14` with an optional `_reg` suffix.
    pub fn preset(name: &str) -> Option<Self> {
        let v1 = |dim: usize, heads: usize, patch: usize| Self::dino_v1(224, patch, dim, 12, heads);
        let v2 = |dim: usize, depth: usize, heads: usize, swiglu: bool, reg: bool| Self {
            image_size: 518,
            patch_size: 14,
            embed_dim: dim,
            depth,
            num_heads: heads,
            ffn_hidden: if swiglu { swiglu_hidden(4 * dim) } else { 4 * dim },
            ffn: if swiglu { Ffn::SwiGlu } else { Ffn::Mlp },
            layer_scale: true,
            num_register_tokens: if reg { 4 } else { 0 },
            qkv_bias: true,
            layer_norm_eps: 1e-6,
            interpolation: PosInterpolation::ScaleFactorOffset { offset: 0.1, antialias: false },
        };
        let (base, reg) = match name.strip_suffix("_reg") {
            Some(b) => (b, true),
            None => (name, false),
        };
        Some(match (base, reg) {
            ("dino_vits16", false) => v1(384, 6, 16),
            ("dino_vits8", false) => v1(384, 6, 8),
            ("dino_vitb16", false) => v1(768, 12, 16),
            ("dino_vitb8", false) => v1(768, 12, 8),
            ("dinov2_vits14", r) => v2(384, 12, 6, false, r),
            ("dinov2_vitb14", r) => v2(768, 12, 12, false, r),
            ("dinov2_vitl14", r) => v2(1024, 24, 16, false, r),
            ("dinov2_vitg14", r) => v2(1536, 40, 24, true, r),
            _ => return None,
        })
    }

    /// DINO's (v1) `VisionTransformer` of that size: MLP ratio 4, qkv bias, LayerNorm ε 1e-6, no
    /// layer scale or registers, its position embedding made for `image_size` and resampled as
    /// DINO's `interpolate_pos_encoding` does.
    pub fn dino_v1(image_size: usize, patch_size: usize, embed_dim: usize, depth: usize, num_heads: usize) -> Self {
        Self {
            image_size,
            patch_size,
            embed_dim,
            depth,
            num_heads,
            ffn_hidden: 4 * embed_dim,
            ffn: Ffn::Mlp,
            layer_scale: false,
            num_register_tokens: 0,
            qkv_bias: true,
            layer_norm_eps: 1e-6,
            interpolation: PosInterpolation::ScaleFactorOffset { offset: 0.1, antialias: false },
        }
    }

    /// The names [`DinoConfig::preset`] accepts, each also with a `_reg` suffix for DINOv2.
    pub const PRESETS: [&'static str; 8] = [
        "dino_vits16",
        "dino_vits8",
        "dino_vitb16",
        "dino_vitb8",
        "dinov2_vits14",
        "dinov2_vitb14",
        "dinov2_vitl14",
        "dinov2_vitg14",
    ];

    /// Side of the trained position-embedding grid.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Reads the architecture from canonical tensor shapes. The head count is not in the
    /// shapes: DINO and DINOv2 use 64-wide heads throughout, so `heads = dim / 64` unless the
    /// caller knows better (a config file).
    pub fn infer(store: &TensorStore) -> Result<Self> {
        let shape = |name: &str| -> Result<Vec<usize>> {
            store.shape_of(name).ok_or_else(|| Error::MissingTensor {
                path: store.path().to_path_buf(),
                name: name.to_string(),
                hint: " (needed to infer the ViT architecture)".into(),
            })
        };
        let pe = shape("patch_embed.proj.weight")?;
        let (dim, patch) = (pe[0], pe[2]);
        let pos = shape("pos_embed")?;
        let grid = ((pos[1] - 1) as f64).sqrt().round() as usize;
        if grid * grid + 1 != pos[1] {
            return Err(Error::Config {
                path: store.path().to_path_buf(),
                message: format!("pos_embed has {} positions, not 1 + a square grid", pos[1]),
            });
        }
        let depth = (0..).take_while(|i| store.contains(&format!("blocks.{i}.norm1.weight"))).count();
        let swiglu = store.contains("blocks.0.mlp.w12.weight");
        let ffn_hidden =
            if swiglu { shape("blocks.0.mlp.w12.weight")?[0] / 2 } else { shape("blocks.0.mlp.fc1.weight")?[0] };
        let layer_scale = store.contains("blocks.0.ls1.gamma");
        let num_register_tokens = store.shape_of("register_tokens").map(|s| s[1]).unwrap_or(0);
        Ok(Self {
            image_size: grid * patch,
            patch_size: patch,
            embed_dim: dim,
            depth,
            num_heads: (dim / 64).max(1),
            ffn_hidden,
            ffn: if swiglu { Ffn::SwiGlu } else { Ffn::Mlp },
            layer_scale,
            num_register_tokens,
            qkv_bias: store.contains("blocks.0.attn.qkv.bias"),
            layer_norm_eps: 1e-6,
            interpolation: PosInterpolation::ScaleFactorOffset { offset: 0.1, antialias: false },
        })
    }

    /// Checks the heads divide the width and the patches fit the image.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.num_heads == 0 || !self.embed_dim.is_multiple_of(self.num_heads) {
            return Err(format!("{} heads do not divide width {}", self.num_heads, self.embed_dim));
        }
        if self.depth == 0 || self.patch_size == 0 || self.image_size < self.patch_size {
            return Err(format!("inconsistent ViT: {self:?}"));
        }
        Ok(())
    }
}

/// `SwiGLUFFNFused`'s hidden width for `mlp_ratio · dim`: two thirds, rounded up to a
/// multiple of 8.
pub fn swiglu_hidden(hidden: usize) -> usize {
    (hidden * 2 / 3).div_ceil(8) * 8
}
