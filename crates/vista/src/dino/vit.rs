//! The DINO / DINOv2 vision transformer (`dino/vision_transformer.py`,
//! `dinov2/models/vision_transformer.py`): patch embedding, a CLS token, position embeddings
//! resampled to any input grid, optional register tokens, pre-norm blocks with optional layer
//! scale and an MLP or SwiGLU feed-forward network, a final LayerNorm.
//!
//! Canonical tensor names are DINOv2's (which extend DINO's): `cls_token`, `pos_embed`,
//! `register_tokens`, `patch_embed.proj.*`, `blocks.N.{norm1, attn.qkv, attn.proj, ls1.gamma,
//! norm2, mlp.fc1, mlp.fc2 | mlp.w12, mlp.w3, ls2.gamma}`, `norm.*`.

use candle_core::{DType, Device, Module, Tensor, D};

use super::config::{DinoConfig, Ffn, PosInterpolation};
use crate::nn::conv::Conv2d;
use crate::nn::interpolate::{bicubic, Resample};
use crate::nn::{Activation, FusedQkvAttention, LayerNorm, Linear};
use crate::weights::Vb;
use crate::{Error, Result};

enum FeedForward {
    Mlp { fc1: Linear, fc2: Linear },
    SwiGlu { w12: Linear, w3: Linear, hidden: usize },
}

impl FeedForward {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Mlp { fc1, fc2 } => fc2.forward_act(&fc1.forward_act(x, Some(Activation::Gelu))?, None),
            Self::SwiGlu { w12, w3, hidden } => {
                let x12 = w12.forward_act(x, None)?;
                let x1 = x12.narrow(D::Minus1, 0, *hidden)?;
                let x2 = x12.narrow(D::Minus1, *hidden, *hidden)?;
                w3.forward_act(&(candle_nn::ops::silu(&x1)? * x2)?, None)
            }
        }
    }
}

struct Block {
    norm1: LayerNorm,
    attn: FusedQkvAttention,
    ls1: Option<Tensor>,
    norm2: LayerNorm,
    ffn: FeedForward,
    ls2: Option<Tensor>,
}

impl Block {
    fn load(vb: &Vb, cfg: &DinoConfig) -> Result<Self> {
        let c = cfg.embed_dim;
        let eps = cfg.layer_norm_eps;
        let attn = vb.pp("attn");
        let mlp = vb.pp("mlp");
        // Layer scale multiplies the output of `attn.proj` and of the last FFN layer per channel:
        // folded into their weights and biases at load (γ·(Wx + b) = (γW)x + γb), it costs
        // nothing at run time.
        let ls = |name: &str| -> Result<Option<Tensor>> {
            Ok(if cfg.layer_scale { Some(vb.pp(name).get(&[c], "gamma")?) } else { None })
        };
        let (g1, g2) = (ls("ls1")?, ls("ls2")?);
        let scaled = |vb: &Vb, din: usize, dout: usize, gamma: &Option<Tensor>| -> Result<Linear> {
            let w = vb.get(&[dout, din], "weight")?;
            let b = vb.get(&[dout], "bias")?;
            match gamma {
                Some(g) => Linear::new(w.broadcast_mul(&g.unsqueeze(1)?)?, Some((b * g)?)),
                None => Linear::new(w, Some(b)),
            }
        };
        let ffn = match cfg.ffn {
            Ffn::Mlp => FeedForward::Mlp {
                fc1: Linear::load(&mlp.pp("fc1"), c, cfg.ffn_hidden, true)?,
                fc2: scaled(&mlp.pp("fc2"), cfg.ffn_hidden, c, &g2)?,
            },
            Ffn::SwiGlu => FeedForward::SwiGlu {
                w12: Linear::load(&mlp.pp("w12"), c, 2 * cfg.ffn_hidden, true)?,
                w3: scaled(&mlp.pp("w3"), cfg.ffn_hidden, c, &g2)?,
                hidden: cfg.ffn_hidden,
            },
        };
        Ok(Self {
            norm1: LayerNorm::load(&vb.pp("norm1"), c, eps)?,
            attn: FusedQkvAttention::new(
                Linear::load(&attn.pp("qkv"), c, 3 * c, cfg.qkv_bias)?,
                scaled(&attn.pp("proj"), c, c, &g1)?,
                cfg.num_heads,
                c,
            ),
            ls1: None,
            norm2: LayerNorm::load(&vb.pp("norm2"), c, eps)?,
            ffn,
            ls2: None,
        })
    }

    fn scaled(ls: &Option<Tensor>, x: Tensor) -> Result<Tensor> {
        Ok(match ls {
            Some(g) => x.broadcast_mul(g)?,
            None => x,
        })
    }

    /// `x + ls1·attn(norm1(x))`, then `x + ls2·ffn(norm2(x))`; optionally the attention
    /// probabilities `[B, H, N, N]`.
    fn forward(&self, x: &Tensor, want_attention: bool) -> Result<(Tensor, Option<Tensor>)> {
        let h = self.norm1.forward(x)?;
        let (a, probs) = if want_attention {
            let (a, p) = self.attn.forward_with_probs(&h)?;
            (a, Some(p))
        } else {
            (self.attn.forward(&h, None)?, None)
        };
        let x = add(x, &Self::scaled(&self.ls1, a)?)?;
        let f = self.ffn.forward(&self.norm2.forward(&x)?)?;
        Ok((add(&x, &Self::scaled(&self.ls2, f)?)?, probs))
    }
}

fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    crate::nn::add(a, b)
}

/// What one forward pass gives back.
pub struct DinoOutput {
    /// Every token after the final norm: `[B, 1 + R + h·w, C]`.
    pub tokens: Tensor,
    /// Register tokens count `R`.
    pub registers: usize,
    /// Patch grid `(h, w)`.
    pub grid: (usize, usize),
    /// The last block's attention probabilities `[B, heads, N, N]`, when asked for.
    pub attention: Option<Tensor>,
    /// Per-block outputs (before the final norm), when asked for.
    pub blocks: Vec<Tensor>,
    /// The position embedding added to the patch tokens, `[h·w, C]`.
    pub pos_embed: Tensor,
}

impl DinoOutput {
    /// The CLS embedding `[B, C]`.
    pub fn cls(&self) -> Result<Tensor> {
        Ok(self.tokens.narrow(1, 0, 1)?.squeeze(1)?)
    }

    /// Patch tokens `[B, h·w, C]` (dense features, row-major over the grid).
    pub fn patches(&self) -> Result<Tensor> {
        let n = self.tokens.dim(1)?;
        Ok(self.tokens.narrow(1, 1 + self.registers, n - 1 - self.registers)?)
    }

    /// Register tokens `[B, R, C]`.
    pub fn register_tokens(&self) -> Result<Tensor> {
        Ok(self.tokens.narrow(1, 1, self.registers)?)
    }
}

/// The backbone.
pub struct DinoVit {
    /// The architecture.
    pub config: DinoConfig,
    patch_embed: Conv2d,
    /// `cls_token + pos_embed[0]`, `[1, C]`, on the model's device and dtype.
    cls: Tensor,
    /// `[1 + M·M, C]`: the CLS position, then the trained grid (host copy, f32: position
    /// embeddings for other grids are resampled from it once per grid and cached on the device).
    pos_embed: Vec<f32>,
    register_tokens: Option<Tensor>,
    blocks: Vec<Block>,
    norm: LayerNorm,
    /// Resampled position embeddings by (grid h, grid w, square pixel input).
    pos_cache: std::sync::Mutex<std::collections::HashMap<(usize, usize, bool), Tensor>>,
}

impl DinoVit {
    /// Reads the backbone below `vb` (canonical names).
    pub fn load(vb: &Vb, config: DinoConfig) -> Result<Self> {
        let (c, p, m) = (config.embed_dim, config.patch_size, config.grid());
        let pe = vb.pp("patch_embed").pp("proj");
        let patch_embed = Conv2d::new(&pe.get(&[c, 3, p, p], "weight")?, Some(pe.get(&[c], "bias")?), p, 0)?;
        let register_tokens = if config.num_register_tokens > 0 {
            Some(vb.get(&[1, config.num_register_tokens, c], "register_tokens")?.squeeze(0)?)
        } else {
            None
        };
        let cls_token = vb.get(&[1, 1, c], "cls_token")?.reshape((1, c))?;
        let pos = vb.get(&[1, 1 + m * m, c], "pos_embed")?;
        let cls = (&cls_token + pos.squeeze(0)?.narrow(0, 0, 1)?)?;
        let pos_embed = pos.to_device(&Device::Cpu)?.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        Ok(Self {
            patch_embed,
            cls,
            pos_embed,
            register_tokens,
            blocks: (0..config.depth).map(|i| Block::load(&vb.pp("blocks").pp(i), &config)).collect::<Result<_>>()?,
            norm: LayerNorm::load(&vb.pp("norm"), c, config.layer_norm_eps)?,
            pos_cache: Default::default(),
            config,
        })
    }

    /// The device and dtype of the weights.
    pub fn device(&self) -> &Device {
        self.cls.device()
    }

    /// The dtype of the weights (and of the activations).
    pub fn dtype(&self) -> DType {
        self.cls.dtype()
    }

    /// The patch position embedding for an `h × w` patch grid of a `pixels = (H, W)` input,
    /// `[h·w, C]` on the model's device and dtype, resampled as the checkpoint's reference does
    /// (see [`PosInterpolation`]). Computed on the host from the host copy of the trained grid.
    pub fn interpolate_pos_embed(&self, h: usize, w: usize, pixels: (usize, usize)) -> Result<Tensor> {
        let host = self.interpolate_pos_embed_host(h, w, pixels)?;
        Ok(host.to_device(self.device())?.to_dtype(self.dtype())?)
    }

    fn interpolate_pos_embed_host(&self, h: usize, w: usize, pixels: (usize, usize)) -> Result<Tensor> {
        let c = self.config.embed_dim;
        let m = self.config.grid();
        let grid = &self.pos_embed[c..];
        // Every reference returns the trained embedding as is when the patch count matches and
        // the *pixel* input is square (a 224×230 input is still resampled, to the same grid).
        if h * w == m * m && pixels.0 == pixels.1 {
            return Ok(Tensor::from_slice(grid, (m * m, c), &Device::Cpu)?);
        }
        let (out, (oh, ow)) = match self.config.interpolation {
            PosInterpolation::ScaleFactorOffset { offset, antialias } => {
                // The references call the factors (w0, h0) but take them from `x.shape[2:]`,
                // i.e. (H, W): rows scale by the patch rows, columns by the patch columns.
                let sy = (h as f64 + offset) / m as f64;
                let sx = (w as f64 + offset) / m as f64;
                bicubic(grid, (m, m), c, Resample::ScaleFactor(sy, sx), antialias)
            }
            PosInterpolation::Size { antialias } => bicubic(grid, (m, m), c, Resample::Size(h, w), antialias),
        };
        if oh * ow != h * w {
            return Err(Error::arg(
                "image",
                format!("position embedding resampled to {oh}x{ow}, the image has a {h}x{w} patch grid"),
            ));
        }
        Ok(Tensor::from_vec(out, (h * w, c), &Device::Cpu)?)
    }

    /// Runs the backbone on normalised pixels.
    ///
    /// # Shapes
    /// `pixels: [B, H, W, 3]` channels-last (H, W: any size ≥ one patch; the remainder beyond a
    /// multiple of the patch size is dropped, as the strided convolution does)
    ///
    /// `pixels` (any device, any float dtype) moves to the model's device and dtype first; the
    /// outputs are in the model's dtype.
    pub fn forward(&self, pixels: &Tensor, want_attention: bool, want_blocks: bool) -> Result<DinoOutput> {
        let pixels = &pixels.to_device(self.device())?.to_dtype(self.dtype())?;
        let (b, ph, pw, _) = pixels.dims4()?;
        let p = self.config.patch_size;
        if ph < p || pw < p {
            return Err(Error::arg("image", format!("{pw}x{ph} pixels is smaller than one {p}x{p} patch")));
        }
        let c = self.config.embed_dim;
        let x = self.patch_embed.forward(pixels)?; // [B, h, w, C]
        let (_, h, w, _) = x.dims4()?;
        let key = (h, w, ph == pw);
        let cached = self.pos_cache.lock().ok().and_then(|c| c.get(&key).cloned());
        let pos = match cached {
            Some(p) => p,
            None => {
                let p = self.interpolate_pos_embed(h, w, (ph, pw))?;
                if let Ok(mut c) = self.pos_cache.lock() {
                    c.insert(key, p.clone());
                }
                p
            }
        };
        let patches = x.reshape((b, h * w, c))?.broadcast_add(&pos.unsqueeze(0)?)?;
        let cls = self.cls.unsqueeze(0)?.broadcast_as((b, 1, c))?;
        let mut parts = vec![cls];
        if let Some(r) = &self.register_tokens {
            parts.push(r.unsqueeze(0)?.broadcast_as((b, r.dim(0)?, c))?);
        }
        parts.push(patches);
        let mut x = Tensor::cat(&parts, 1)?.contiguous()?;
        let mut attention = None;
        let mut blocks = Vec::new();
        let last = self.blocks.len() - 1;
        for (i, block) in self.blocks.iter().enumerate() {
            let (y, probs) = block.forward(&x, want_attention && i == last)?;
            x = y;
            if want_blocks {
                blocks.push(x.clone());
            }
            if probs.is_some() {
                attention = probs;
            }
        }
        Ok(DinoOutput {
            tokens: self.norm.forward(&x)?,
            registers: self.config.num_register_tokens,
            grid: (h, w),
            attention,
            blocks,
            pos_embed: pos,
        })
    }
}
