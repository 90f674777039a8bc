//! SAM's two-way transformer (`segment_anything/modeling/transformer.py`): prompt tokens and
//! image tokens attend to each other in turn — tokens to themselves, tokens to the image,
//! an MLP on the tokens, the image to the tokens — then a last token-to-image attention.

use candle_core::{Module, Tensor};

use super::config::DecoderConfig;
use crate::nn::{Activation, LayerNorm, Linear};
use crate::weights::Vb;
use crate::Result;

/// `Attention` with separate q/k/v projections to `dim / downsample_rate` channels.
pub struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    heads: usize,
}

impl Attention {
    fn load(vb: &Vb, dim: usize, heads: usize, downsample: usize) -> Result<Self> {
        let inner = dim / downsample;
        Ok(Self {
            q_proj: Linear::load(&vb.pp("q_proj"), dim, inner, true)?,
            k_proj: Linear::load(&vb.pp("k_proj"), dim, inner, true)?,
            v_proj: Linear::load(&vb.pp("v_proj"), dim, inner, true)?,
            out_proj: Linear::load(&vb.pp("out_proj"), inner, dim, true)?,
            heads,
        })
    }

    /// # Shapes
    /// `q: [B, Nq, C]`, `k, v: [B, Nk, C]` -> `[B, Nq, C]`
    pub fn forward(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        let split = |x: Tensor| -> Result<Tensor> {
            let (b, n, c) = x.dims3()?;
            Ok(x.reshape((b, n, self.heads, c / self.heads))?.transpose(1, 2)?.contiguous()?)
        };
        let (q, k, v) =
            (self.q_proj.forward_act(q, None)?, self.k_proj.forward_act(k, None)?, self.v_proj.forward_act(v, None)?);
        // On the CPU: every head at once on the projections as they are, no transposes.
        if [&q, &k, &v].into_iter().all(crate::nn::cpu::eligible) {
            let d = q.dim(2)? / self.heads;
            let out = crate::nn::cpu::cross_attention(&q, &k, &v, self.heads, 1.0 / (d as f32).sqrt())?;
            return self.out_proj.forward_act(&out, None);
        }
        // A batch of 1 on one side is shared by every item of the other (see `TwoWayTransformer`).
        let b = q.dim(0)?.max(k.dim(0)?);
        let spread = |x: Tensor| -> Result<Tensor> {
            let (_, n, c) = x.dims3()?;
            Ok(x.broadcast_as((b, n, c))?)
        };
        let (q, k, v) = (split(spread(q)?)?, split(spread(k)?)?, split(spread(v)?)?);
        let (b, h, nq, d) = q.dims4()?;
        let scores = (q.matmul(&k.transpose(2, 3)?)? / (d as f64).sqrt())?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let out = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, nq, h * d))?;
        self.out_proj.forward_act(&out, None)
    }
}

struct Block {
    self_attn: Attention,
    norm1: LayerNorm,
    cross_token_to_image: Attention,
    norm2: LayerNorm,
    lin1: Linear,
    lin2: Linear,
    norm3: LayerNorm,
    norm4: LayerNorm,
    cross_image_to_token: Attention,
    skip_first_layer_pe: bool,
}

/// `a + b`, `b` broadcast over `a`'s batch; one parallel pass on the CPU when nothing is
/// broadcast (one prompt set, or tensors of one shape).
fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.elem_count() == b.elem_count() && crate::nn::cpu::eligible(a) && crate::nn::cpu::eligible(b) {
        return crate::nn::cpu::add(a, &b.reshape(a.shape())?);
    }
    Ok(a.broadcast_add(b)?)
}

impl Block {
    fn forward(&self, queries: &Tensor, keys: &Tensor, query_pe: &Tensor, key_pe: &Tensor) -> Result<(Tensor, Tensor)> {
        let queries = if self.skip_first_layer_pe {
            self.self_attn.forward(queries, queries, queries)?
        } else {
            let q = add(queries, query_pe)?;
            add(queries, &self.self_attn.forward(&q, &q, queries)?)?
        };
        let queries = self.norm1.forward(&queries)?;

        let q = add(&queries, query_pe)?;
        let k = add(keys, key_pe)?;
        let queries = add(&queries, &self.cross_token_to_image.forward(&q, &k, keys)?)?;
        let queries = self.norm2.forward(&queries)?;

        let mlp = self.lin2.forward_act(&self.lin1.forward_act(&queries, Some(Activation::Relu))?, None)?;
        let queries = self.norm3.forward(&add(&queries, &mlp)?)?;

        let q = add(&queries, query_pe)?;
        let to_tokens = self.cross_image_to_token.forward(&k, &q, &queries)?;
        // Shared image tokens (batch 1) become each prompt set's own here.
        let keys = if keys.dims() == to_tokens.dims() {
            keys.clone()
        } else {
            keys.broadcast_as(to_tokens.shape())?.contiguous()?
        };
        let (_, keys) = self.norm4.add_forward(&keys, &to_tokens)?;
        Ok((queries, keys))
    }
}

/// `TwoWayTransformer`.
pub struct TwoWayTransformer {
    layers: Vec<Block>,
    final_attn: Attention,
    norm_final: LayerNorm,
}

impl TwoWayTransformer {
    /// Reads the transformer below `vb`.
    pub fn load(vb: &Vb, cfg: &DecoderConfig) -> Result<Self> {
        let (c, h, ds, eps) = (cfg.dim, cfg.num_heads, cfg.attention_downsample_rate, cfg.layer_norm_eps);
        let layers = (0..cfg.depth)
            .map(|i| {
                let l = vb.pp("layers").pp(i);
                Ok(Block {
                    self_attn: Attention::load(&l.pp("self_attn"), c, h, 1)?,
                    norm1: LayerNorm::load(&l.pp("norm1"), c, eps)?,
                    cross_token_to_image: Attention::load(&l.pp("cross_attn_token_to_image"), c, h, ds)?,
                    norm2: LayerNorm::load(&l.pp("norm2"), c, eps)?,
                    lin1: Linear::load(&l.pp("mlp").pp("lin1"), c, cfg.mlp_dim, true)?,
                    lin2: Linear::load(&l.pp("mlp").pp("lin2"), cfg.mlp_dim, c, true)?,
                    norm3: LayerNorm::load(&l.pp("norm3"), c, eps)?,
                    norm4: LayerNorm::load(&l.pp("norm4"), c, eps)?,
                    cross_image_to_token: Attention::load(&l.pp("cross_attn_image_to_token"), c, h, ds)?,
                    skip_first_layer_pe: i == 0,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            layers,
            final_attn: Attention::load(&vb.pp("final_attn_token_to_image"), c, h, ds)?,
            // PyTorch's default ε in both the reference and transformers.
            norm_final: LayerNorm::load(&vb.pp("norm_final_attn"), c, 1e-5)?,
        })
    }

    /// `image` may have batch 1 when every prompt set sees the same image tokens (no mask
    /// prompt): the first layer's projections of the image then run once for the whole batch
    /// (its token-to-image keys and values, and its image-to-token queries), and the tokens
    /// become each set's own at the first image update.
    ///
    /// # Shapes
    /// `image: [B or 1, HW, C]`, `image_pe: [HW, C]`, `tokens: [B, T, C]` -> (`[B, T, C]`, `[B, HW, C]`)
    pub fn forward(&self, image: &Tensor, image_pe: &Tensor, tokens: &Tensor) -> Result<(Tensor, Tensor)> {
        let (mut queries, mut keys) = (tokens.clone(), image.clone());
        for layer in &self.layers {
            (queries, keys) = layer.forward(&queries, &keys, tokens, image_pe)?;
        }
        let q = add(&queries, tokens)?;
        let k = add(&keys, image_pe)?;
        let queries = add(&queries, &self.final_attn.forward(&q, &k, &keys)?)?;
        let queries = self.norm_final.forward(&queries)?;
        let (b, (_, hw, c)) = (tokens.dim(0)?, keys.dims3()?);
        Ok((queries, keys.broadcast_as((b, hw, c))?.contiguous()?))
    }
}
