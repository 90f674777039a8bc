//! CLIP's image tower: OpenAI `clip/model.py::VisionTransformer` (open_clip
//! `transformer.py::VisionTransformer` with `pool_type="tok"`): patch embedding, class token,
//! absolute position embedding, `ln_pre`, pre-norm blocks, `ln_post` on the class token, `proj`.

use candle_core::{Module, Tensor};

use super::config::VisionConfig;
use super::transformer::{record, Trace, Transformer};
use crate::nn::{LayerNorm, Linear};
use crate::weights::Vb;
use crate::{Error, Result};

/// CLIP's image tower (open_clip's `VisionTransformer`, `visual.*`).
#[derive(Debug, Clone)]
pub struct VisionTransformer {
    cfg: VisionConfig,
    /// `conv1.weight` `[W, 3, P, P]` flattened to `[W, 3·P·P]`: a stride-P convolution is one GEMM
    /// over flattened patches.
    patch_embed: Linear,
    class_embedding: Tensor,
    positional_embedding: Tensor,
    ln_pre: LayerNorm,
    transformer: Transformer,
    ln_post: LayerNorm,
    proj: Tensor,
}

impl VisionTransformer {
    /// Loads below `visual`.
    pub fn load(vb: &Vb, cfg: &VisionConfig, embed_dim: usize) -> Result<Self> {
        let (w, p) = (cfg.tower.width, cfg.patch_size);
        let conv = vb.get(&[w, 3, p, p], "conv1.weight")?;
        Ok(Self {
            cfg: cfg.clone(),
            patch_embed: Linear::new(conv.reshape((w, 3 * p * p))?, None)?,
            class_embedding: vb.get(&[w], "class_embedding")?,
            positional_embedding: vb.get(&[cfg.num_tokens(), w], "positional_embedding")?,
            ln_pre: LayerNorm::load(&vb.pp("ln_pre"), w, cfg.tower.eps)?,
            transformer: Transformer::load(&vb.pp("transformer"), &cfg.tower)?,
            ln_post: LayerNorm::load(&vb.pp("ln_post"), w, cfg.tower.eps)?,
            proj: vb.get(&[w, embed_dim], "proj")?,
        })
    }

    /// The tower's dimensions.
    pub fn config(&self) -> &VisionConfig {
        &self.cfg
    }

    /// The dtype of the weights (and of the activations).
    pub fn dtype(&self) -> candle_core::DType {
        self.class_embedding.dtype()
    }

    /// Image embeddings (not normalised).
    ///
    /// # Shapes
    /// `pixels: [B, 3, S, S] -> [B, D]`
    pub fn forward(&self, pixels: &Tensor, mut trace: Option<&mut Trace>) -> Result<Tensor> {
        let (b, c, h, w) = pixels.dims4()?;
        let s = self.cfg.image_size;
        if c != 3 || h != s || w != s {
            return Err(Error::arg("pixels", format!("expected a [B, 3, {s}, {s}] batch, got {:?}", pixels.dims())));
        }
        let (p, g, width) = (self.cfg.patch_size, self.cfg.grid(), self.cfg.tower.width);
        // A stride-P convolution ignores a remainder that does not fill a patch.
        let x = pixels.narrow(2, 0, g * p)?.narrow(3, 0, g * p)?;
        // [B, 3, g, P, g, P] -> [B, g, g, 3, P, P] -> [B·g·g, 3·P·P]
        let x = x
            .reshape((b, 3, g, p, g, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((b * g * g, 3 * p * p))?;
        // [B·g·g, 3PP] x [3PP, W] -> [B, g·g, W]
        let x = self.patch_embed.forward_act(&x, None)?.reshape((b, g * g, width))?;
        let cls = self.class_embedding.reshape((1, 1, width))?.broadcast_as((b, 1, width))?;
        let x = Tensor::cat(&[&cls, &x], 1)?;
        let x = x.broadcast_add(&self.positional_embedding)?;
        record(&mut trace, "vision.embeddings", &x);
        let x = self.ln_pre.forward(&x)?;
        record(&mut trace, "vision.ln_pre", &x);
        let x = self.transformer.forward(&x, None, "vision", trace.as_deref_mut())?;
        // [B, N, W] -> class token [B, W]
        let pooled = self.ln_post.forward(&x.narrow(1, 0, 1)?.squeeze(1)?)?;
        record(&mut trace, "vision.pooled", &pooled);
        let out = pooled.matmul(&self.proj)?;
        record(&mut trace, "image_embeds", &out);
        Ok(out)
    }
}
