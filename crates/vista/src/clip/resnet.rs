//! CLIP's ResNet image tower: OpenAI `clip/model.py::ModifiedResNet` (open_clip
//! `modified_resnet.py`): a three-convolution stem with an average pool, anti-aliased bottleneck
//! stages ([`crate::nn::resnet`]), and `AttentionPool2d` — one query (the mean of the final map)
//! attending over every position, with a learned position embedding.
//!
//! The tower takes any input of at least 32 × 32 pixels. At another size than the checkpoint's,
//! the attention pool's position grid is resampled as open_clip resamples a ViT's position
//! embedding when it loads one at another size (`resize_pos_embed`: bicubic, antialiased,
//! `align_corners=False`, the pooled token's row kept); open_clip has no rule of its own for the
//! ResNet pool, which refuses other sizes.

use std::sync::Mutex;

use candle_core::{DType, Tensor};

use super::config::VisionConfig;
use super::transformer::{record, Trace};
use crate::nn::conv::Conv2d;
use crate::nn::interpolate::{bicubic, Resample};
use crate::nn::resnet::{conv_bn, Downsampling, Stages};
use crate::nn::{pool, Activation, Linear};
use crate::weights::Vb;
use crate::{Error, Result};

/// `AttentionPool2d`: `[B, h, w, C] -> [B, D]`.
#[derive(Debug)]
struct AttentionPool {
    /// `[g·g + 1, C]`, row 0 for the mean token.
    positional_embedding: Tensor,
    /// The same on the host, the source of resampled grids.
    positions_host: Vec<f32>,
    grid: usize,
    /// The last resampled grid `(h, w)` and its embedding.
    resampled: Mutex<Option<((usize, usize), Tensor)>>,
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    c_proj: Linear,
    heads: usize,
}

impl Clone for AttentionPool {
    fn clone(&self) -> Self {
        Self {
            positional_embedding: self.positional_embedding.clone(),
            positions_host: self.positions_host.clone(),
            grid: self.grid,
            resampled: Mutex::new(None),
            q_proj: self.q_proj.clone(),
            k_proj: self.k_proj.clone(),
            v_proj: self.v_proj.clone(),
            c_proj: self.c_proj.clone(),
            heads: self.heads,
        }
    }
}

impl AttentionPool {
    fn load(vb: &Vb, width: usize, heads: usize, embed_dim: usize) -> Result<Self> {
        let name = "positional_embedding";
        let n = vb.shape_of(name).map(|s| s[0]).unwrap_or(0);
        let grid = ((n.max(1) - 1) as f64).sqrt().round() as usize;
        if grid == 0 || grid * grid + 1 != n {
            // The shape check names the tensor (and says it is missing when it is).
            vb.get(&[grid * grid + 1, width], name)?;
            return Err(Error::arg("weights", format!("attnpool.{name}: {n} rows is not a square grid plus one")));
        }
        let positional_embedding = vb.get(&[n, width], name)?;
        let positions_host = positional_embedding.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        Ok(Self {
            positional_embedding,
            positions_host,
            grid,
            resampled: Mutex::new(None),
            q_proj: Linear::load(&vb.pp("q_proj"), width, width, true)?,
            k_proj: Linear::load(&vb.pp("k_proj"), width, width, true)?,
            v_proj: Linear::load(&vb.pp("v_proj"), width, width, true)?,
            c_proj: Linear::load(&vb.pp("c_proj"), width, embed_dim, true)?,
            heads,
        })
    }

    /// The position embedding for an `h × w` map: the stored one, or its grid resampled.
    fn positions(&self, (h, w): (usize, usize)) -> Result<Tensor> {
        if (h, w) == (self.grid, self.grid) {
            return Ok(self.positional_embedding.clone());
        }
        let mut cache = self.resampled.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((size, t)) = cache.as_ref() {
            if *size == (h, w) {
                return Ok(t.clone());
            }
        }
        let c = self.positional_embedding.dim(1)?;
        let (grid, _) = bicubic(&self.positions_host[c..], (self.grid, self.grid), c, Resample::Size(h, w), true);
        let mut rows = self.positions_host[..c].to_vec();
        rows.extend(grid);
        let like = &self.positional_embedding;
        let t = crate::nn::portable::upload(&rows, &[h * w + 1, c], (like.device(), like.dtype()))?;
        *cache = Some(((h, w), t.clone()));
        Ok(t)
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, h, w, c) = x.dims4()?;
        let tokens = x.reshape((b, h * w, c))?;
        let x = Tensor::cat(&[&pool::token_mean(&tokens)?, &tokens], 1)?;
        let x = x.broadcast_add(&self.positions((h, w))?)?;
        let (n, heads) = (h * w + 1, self.heads);
        let d = c / heads;
        // The one query: the mean token. [B, C] -> [B, heads, 1, d]
        let q = self.q_proj.forward_act(&x.narrow(1, 0, 1)?.squeeze(1)?, None)?;
        let q = (q.reshape((b, heads, 1, d))? * (1.0 / (d as f64).sqrt()))?;
        let split = |t: Tensor| -> Result<Tensor> { Ok(t.reshape((b, n, heads, d))?.transpose(1, 2)?.contiguous()?) };
        let k = split(self.k_proj.forward_act(&x, None)?)?;
        let v = split(self.v_proj.forward_act(&x, None)?)?;
        let scores = q.matmul(&k.transpose(2, 3)?.contiguous()?)?; // [B, heads, 1, N]
        let p = candle_nn::ops::softmax_last_dim(&scores)?;
        let out = p.matmul(&v)?.reshape((b, c))?; // [B, heads, 1, d] -> [B, C]
        self.c_proj.forward_act(&out, None)
    }
}

/// CLIP's `ModifiedResNet` (`visual.*`).
#[derive(Debug, Clone)]
pub struct ModifiedResNet {
    cfg: VisionConfig,
    stem: [Conv2d; 3],
    stages: Stages,
    attnpool: AttentionPool,
}

impl ModifiedResNet {
    /// Loads below `visual`.
    pub fn load(vb: &Vb, cfg: &VisionConfig, embed_dim: usize) -> Result<Self> {
        let dims = cfg.resnet.ok_or_else(|| Error::arg("arch", "not a ResNet image tower"))?;
        let stem = [
            conv_bn(vb, "conv1", "bn1", 2, 1)?,
            conv_bn(vb, "conv2", "bn2", 1, 1)?,
            conv_bn(vb, "conv3", "bn3", 1, 1)?,
        ];
        let stages = Stages::load(vb, Downsampling::AntiAliased)?;
        if stages.depths() != dims.layers {
            let (found, said) = (stages.depths(), dims.layers);
            return Err(Error::arg(
                "arch",
                format!("the checkpoint's stages have {found:?} blocks, the config {said:?}"),
            ));
        }
        let attnpool = AttentionPool::load(&vb.pp("attnpool"), cfg.tower.width, cfg.tower.heads, embed_dim)?;
        Ok(Self { cfg: cfg.clone(), stem, stages, attnpool })
    }

    /// The tower's dimensions.
    pub fn config(&self) -> &VisionConfig {
        &self.cfg
    }

    /// The dtype of the weights.
    pub fn dtype(&self) -> DType {
        self.attnpool.positional_embedding.dtype()
    }

    /// Image embeddings (not normalised); any input of at least 32 × 32 pixels.
    ///
    /// # Shapes
    /// `pixels: [B, 3, H, W] -> [B, D]`
    pub fn forward(&self, pixels: &Tensor, mut trace: Option<&mut Trace>) -> Result<Tensor> {
        let (_, c, h, w) = pixels.dims4()?;
        if c != 3 || h < 32 || w < 32 {
            return Err(Error::arg(
                "pixels",
                format!("expected a [B, 3, H, W] batch of at least 32x32, got {:?}", pixels.dims()),
            ));
        }
        let mut keep = |name: &str, x: &Tensor| {
            if trace.is_some() {
                // Recorded as the reference computes it, NCHW.
                if let Ok(t) = x.permute((0, 3, 1, 2)) {
                    record(&mut trace, name, &t);
                }
            }
        };
        let relu = Some(Activation::Relu);
        let mut x = pixels.permute((0, 2, 3, 1))?.contiguous()?;
        for conv in &self.stem {
            x = conv.forward_act(&x, relu)?;
        }
        let x = pool::avg_pool(&x, 2)?;
        keep("vision.stem", &x);
        let x = self.stages.forward(&x, |i, x| keep(&format!("vision.layer{i}"), x))?;
        let out = self.attnpool.forward(&x)?;
        record(&mut trace, "image_embeds", &out);
        Ok(out)
    }
}
