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
    /// The projections split by head, for the folded products (see [`Attention::forward`]);
    /// the cross-attentions only (self-attention has as many queries as keys, never folded).
    folded: Option<Folded>,
}

/// Per-head slices of the projection weights: `wq`, `wk`, `wo` as `[H, d, C]` (`W_q`, `W_k`
/// rows of head h; `W_oᵀ` rows of head h), `wv_t` as `[H, C, d]` (`W_vᵀ` columns of head h),
/// and the query and value biases.
struct Folded {
    wq: Tensor,
    wk: Tensor,
    wv_t: Tensor,
    wo: Tensor,
    bq: Tensor,
    bv: Tensor,
}

impl Folded {
    fn new(q: &Linear, k: &Linear, v: &Linear, out: &Linear, heads: usize) -> Result<Self> {
        let (inner, dim) = q.weight()?.dims2()?;
        let d = inner / heads;
        let heads_of = |w: Tensor| -> Result<Tensor> { Ok(w.contiguous()?.reshape((heads, d, dim))?) };
        let bias = |l: &Linear| -> Result<Tensor> {
            match l.bias() {
                Some(b) => Ok(b.clone()),
                None => Ok(Tensor::zeros(inner, q.weight()?.dtype(), q.weight()?.device())?),
            }
        };
        Ok(Self {
            wq: heads_of(q.weight()?)?,
            wk: heads_of(k.weight()?)?,
            wv_t: heads_of(v.weight()?)?.transpose(1, 2)?.contiguous()?,
            wo: heads_of(out.weight_t()?)?,
            bq: bias(q)?,
            bv: bias(v)?,
        })
    }
}

/// `[B, T, H·d]` -> `[H, B·T, d]`: the heads of a short token sequence as a matmul batch.
fn heads_first(x: &Tensor, heads: usize) -> Result<Tensor> {
    let (b, t, c) = x.dims3()?;
    Ok(x.reshape((b, t, heads, c / heads))?.permute((2, 0, 1, 3))?.contiguous()?.reshape((heads, b * t, c / heads))?)
}

/// `[H, B·T, C]` -> `[B, H·T, C]`: rows ordered by set, then head, then token.
fn sets_first(x: &Tensor, b: usize) -> Result<Tensor> {
    let (h, bt, c) = x.dims3()?;
    let t = bt / b;
    Ok(x.reshape((h, b, t, c))?.transpose(0, 1)?.contiguous()?.reshape((b, h * t, c))?)
}

/// `a · xᵀ` for `a: [B, R, C]` and `x: [B or 1, N, C]` -> `[B, R, N]`; a shared `x` (batch 1)
/// takes every set's rows in one product.
fn times_t(a: &Tensor, x: &Tensor) -> Result<Tensor> {
    let (b, r, c) = a.dims3()?;
    if x.dim(0)? == b {
        return Ok(a.matmul(&x.transpose(1, 2)?)?);
    }
    let n = x.dim(1)?;
    Ok(a.reshape((1, b * r, c))?.matmul(&x.transpose(1, 2)?)?.reshape((b, r, n))?)
}

/// `p · x` for `p: [B, R, N]` and `x: [B or 1, N, C]` -> `[B, R, C]`.
fn times(p: &Tensor, x: &Tensor) -> Result<Tensor> {
    let (b, r, n) = p.dims3()?;
    if x.dim(0)? == b {
        return Ok(p.matmul(x)?);
    }
    let c = x.dim(2)?;
    Ok(p.reshape((1, b * r, n))?.matmul(x)?.reshape((b, r, c))?)
}

impl Attention {
    fn load(vb: &Vb, dim: usize, heads: usize, downsample: usize) -> Result<Self> {
        let inner = dim / downsample;
        Self::new(
            [
                Linear::load(&vb.pp("q_proj"), dim, inner, true)?,
                Linear::load(&vb.pp("k_proj"), dim, inner, true)?,
                Linear::load(&vb.pp("v_proj"), dim, inner, true)?,
                Linear::load(&vb.pp("out_proj"), inner, dim, true)?,
            ],
            heads,
            downsample > 1,
        )
    }

    /// From the `[q, k, v, out]` projections; `fold`: keep the per-head weights the folded
    /// products need (the cross-attentions).
    fn new([q_proj, k_proj, v_proj, out_proj]: [Linear; 4], heads: usize, fold: bool) -> Result<Self> {
        let folded = if fold { Some(Folded::new(&q_proj, &k_proj, &v_proj, &out_proj, heads)?) } else { None };
        Ok(Self { q_proj, k_proj, v_proj, out_proj, heads, folded })
    }

    /// Projection width (`dim / downsample_rate`).
    fn inner(&self) -> Result<usize> {
        self.q_proj.out_dim()
    }

    /// Tokens attending to many image tokens without projecting the image: per head h,
    /// `softmax(q_h (x W_kh + b_kh)ᵀ) (v W_vh + b_vh)` is `softmax((q_h W_kh) xᵀ) v W_vhᵀ + b_vh`
    /// (the key bias adds one constant per score row, which the softmax removes; each
    /// probability row sums to one, which carries the value bias through). The products then
    /// run over `H·T` rows of width C instead of projecting N image tokens twice: fewer
    /// operations whenever `H·T` is below the projection width.
    ///
    /// # Shapes
    /// `q: [B, T, C]`, `k, v: [B or 1, N, C]` -> `[B, T, C]`
    fn forward_folded_keys(&self, f: &Folded, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        let (b, t, _) = q.dims3()?;
        let h = self.heads;
        let d = f.wq.dim(1)?;
        let qh = heads_first(&self.q_proj.forward_act(q, None)?, h)?; // [H, B·T, d]
        let a = sets_first(&(qh.matmul(&f.wk)? * (1.0 / (d as f64).sqrt()))?, b)?; // [B, H·T, C]
        let (n, c) = (k.dim(1)?, k.dim(2)?);
        let pv = if [&a, k, v].into_iter().all(crate::nn::cpu::eligible) {
            use crate::nn::cpu::{attend_to_many, with_slice};
            let attend = |a: &Tensor, k: &Tensor, v: &Tensor, rows: usize| -> Result<Vec<f32>> {
                with_slice(a, |a| with_slice(k, |k| with_slice(v, |v| attend_to_many(a, k, v, (rows, n, c)))))???
            };
            // Image tokens shared by every set: all the sets' rows in one call.
            let out = if k.dim(0)? == 1 && v.dim(0)? == 1 {
                attend(&a, &k.get(0)?, &v.get(0)?, b * h * t)?
            } else {
                let set = |x: &Tensor, i: usize| if x.dim(0)? == 1 { x.get(0) } else { x.get(i) };
                let sets =
                    (0..b).map(|i| attend(&a.get(i)?, &set(k, i)?, &set(v, i)?, h * t)).collect::<Result<Vec<_>>>()?;
                sets.concat()
            };
            Tensor::from_vec(out, (b, h * t, c), q.device())?
        } else {
            let probs = candle_nn::ops::softmax_last_dim(&times_t(&a, k)?)?; // [B, H·T, N]
            times(&probs, v)? // [B, H·T, C]
        };
        let pv = pv.reshape((b, h, t, c))?.transpose(0, 1)?.contiguous()?.reshape((h, b * t, c))?;
        let out = pv.matmul(&f.wv_t)?; // [H, B·T, d]
        let out = out.reshape((h, b, t, d))?.permute((1, 2, 0, 3))?.reshape((b, t, h * d))?;
        self.out_proj.forward_act(&out.broadcast_add(&f.bv)?, None)
    }

    /// Many image tokens attending to a few tokens without projecting the image: per head h,
    /// the scores `(x W_qhᵀ + b_qh) k_hᵀ` are `x (k_h W_qh)ᵀ + b_qh·k_h`, and the output
    /// `Σ_h P_h v_h W_ohᵀ + b_o` is `P (v_h W_ohᵀ)_h + b_o`: products over `H·T` columns of
    /// width C instead of the N-row query and output projections.
    ///
    /// # Shapes
    /// `q: [B or 1, N, C]`, `k, v: [B, T, C]` -> `[B, N, C]`
    fn forward_folded_queries(&self, f: &Folded, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        let (b, t, _) = k.dims3()?;
        let h = self.heads;
        let d = f.wq.dim(1)?;
        let scale = 1.0 / (d as f64).sqrt();
        let kp = self.k_proj.forward_act(k, None)?; // [B, T, H·d]

        // [B, H·T, C], and b_qh·k_h for every (set, head, token): [B, H·T].
        let g = sets_first(&(heads_first(&kp, h)?.matmul(&f.wq)? * scale)?, b)?;
        let bias = (kp.reshape((b, t, h, d))?.broadcast_mul(&f.bq.reshape((1, 1, h, d))?)?.sum(3)? * scale)?;
        let bias = bias.transpose(1, 2)?.contiguous()?.reshape((b, h * t))?;
        let u = sets_first(&heads_first(&self.v_proj.forward_act(v, None)?, h)?.matmul(&f.wo)?, b)?; // [B, H·T, C]
        let (n, c) = (q.dim(1)?, q.dim(2)?);
        if [q, &g, &u, &bias].into_iter().all(crate::nn::cpu::eligible) {
            let bo = self.out_proj.bias().map(|b| b.to_vec1::<f32>()).transpose()?;
            let mut out = Vec::with_capacity(b * n * c);
            for i in 0..b {
                let qi = if q.dim(0)? == 1 { q.get(0)? } else { q.get(i)? };
                let (gi, ui, bi) = (g.get(i)?, u.get(i)?, bias.get(i)?.to_vec1::<f32>()?);
                let set = crate::nn::cpu::with_slice(&qi, |xv| {
                    crate::nn::cpu::with_slice(&gi, |gv| {
                        crate::nn::cpu::with_slice(&ui, |uv| {
                            crate::nn::cpu::attend_to_few(xv, gv, &bi, uv, bo.as_deref(), h, (n, c))
                        })
                    })
                })????;
                out.extend(set);
            }
            return Ok(Tensor::from_vec(out, (b, n, c), q.device())?);
        }
        let scores = times_t(&g, q)?.transpose(1, 2)?.contiguous()?; // [B, N, H·T]
        let scores = scores.broadcast_add(&bias.unsqueeze(1)?)?.reshape((b, n, h, t))?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?.reshape((b, n, h * t))?;
        let out = probs.matmul(&u)?;
        match self.out_proj.bias() {
            Some(bo) => Ok(out.broadcast_add(bo)?),
            None => Ok(out),
        }
    }

    /// The image attending to a few tokens with its query projection made beforehand
    /// (`q_img = x W_qᵀ + b_q`, `[1, N, I]`, see [`FirstLayerKeys`]): per head the scores against
    /// the projected keys, and the output folded as in [`Self::forward_folded_queries`].
    ///
    /// # Shapes
    /// `q_img: [1, N, I]`, `k, v: [B, T, C]` -> `[B, N, C]`
    fn forward_projected_queries(&self, q_img: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        let kp = self.k_proj.forward_act(k, None)?;
        let (Some(f), true) = (&self.folded, [q_img, &kp].into_iter().all(crate::nn::cpu::eligible)) else {
            return self.attend(q_img, &kp, &self.v_proj.forward_act(v, None)?);
        };
        let (b, t, inner) = kp.dims3()?;
        let (h, n) = (self.heads, q_img.dim(1)?);
        let d = inner / h;
        let scale = 1.0 / (d as f32).sqrt();
        let u = sets_first(&heads_first(&self.v_proj.forward_act(v, None)?, h)?.matmul(&f.wo)?, b)?; // [B, H·T, C]
        let c = u.dim(2)?;
        let bo = self.out_proj.bias().map(|b| b.to_vec1::<f32>()).transpose()?;
        let keys = kp.flatten_all()?.to_vec1::<f32>()?;
        let q_img = q_img.get(0)?;
        let mut out = Vec::with_capacity(b * n * c);
        for i in 0..b {
            // Head h's keys as rows h·T.. of a block-diagonal [H·T, I]: one product scores
            // every head against its own query channels.
            let mut g = vec![0f32; h * t * inner];
            for (ti, key) in keys[i * t * inner..][..t * inner].chunks_exact(inner).enumerate() {
                for hi in 0..h {
                    let row = &mut g[(hi * t + ti) * inner..][..inner];
                    for (gv, kv) in row[hi * d..(hi + 1) * d].iter_mut().zip(&key[hi * d..(hi + 1) * d]) {
                        *gv = kv * scale;
                    }
                }
            }
            let zeros = vec![0f32; h * t];
            let ui = u.get(i)?;
            let set = crate::nn::cpu::with_slice(&q_img, |x| {
                crate::nn::cpu::with_slice(&ui, |uv| {
                    crate::nn::cpu::attend_to_few(x, &g, &zeros, uv, bo.as_deref(), h, (n, inner))
                })
            })???;
            out.extend(set);
        }
        Ok(Tensor::from_vec(out, (b, n, c), k.device())?)
    }

    /// # Shapes
    /// `q: [B, Nq, C]`, `k, v: [B, Nk, C]` -> `[B, Nq, C]`
    pub fn forward(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        // A few tokens against many image tokens: fold the image-side projections into the
        // token side when that is fewer operations (`H·T` below the projection width).
        let (nq, nk, inner) = (q.dim(1)?, k.dim(1)?, self.inner()?);
        if let Some(f) = &self.folded {
            if nk > nq && self.heads * nq < inner {
                return self.forward_folded_keys(f, q, k, v);
            }
            if nq > nk && self.heads * nk < inner {
                return self.forward_folded_queries(f, q, k, v);
            }
        }
        let (q, k, v) =
            (self.q_proj.forward_act(q, None)?, self.k_proj.forward_act(k, None)?, self.v_proj.forward_act(v, None)?);
        self.attend(&q, &k, &v)
    }

    /// The attention and output projection on projected `q`, `k`, `v` (`[B or 1, n, I]`).
    fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        let split = |x: Tensor| -> Result<Tensor> {
            let (b, n, c) = x.dims3()?;
            Ok(x.reshape((b, n, self.heads, c / self.heads))?.transpose(1, 2)?.contiguous()?)
        };
        let (q, k, v) = (q.clone(), k.clone(), v.clone());
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

/// The first layer's projections of the image tokens, which no prompt changes when there is
/// no mask prompt (the image tokens are then the embedding plus one learned vector): made once
/// per image ([`TwoWayTransformer::first_layer_keys`]) and reused by every prompt, they leave
/// that layer's cross-attentions only the prompt tokens' side. `[1, N, I]` each.
pub struct FirstLayerKeys {
    /// Token-to-image keys, `(x + pe) W_kᵀ + b_k`.
    k: Tensor,
    /// Token-to-image values, `x W_vᵀ + b_v`.
    v: Tensor,
    /// Image-to-token queries, `(x + pe) W_qᵀ + b_q`.
    q: Tensor,
}

impl Block {
    /// `first`: this block's image-side projections made beforehand (the first block, shared
    /// image tokens only).
    fn forward(
        &self,
        queries: &Tensor,
        keys: &Tensor,
        query_pe: &Tensor,
        key_pe: &Tensor,
        first: Option<&FirstLayerKeys>,
    ) -> Result<(Tensor, Tensor)> {
        let queries = if self.skip_first_layer_pe {
            self.self_attn.forward(queries, queries, queries)?
        } else {
            let q = add(queries, query_pe)?;
            add(queries, &self.self_attn.forward(&q, &q, queries)?)?
        };
        let queries = self.norm1.forward(&queries)?;

        let q = add(&queries, query_pe)?;
        // The image side of both cross-attentions: projected beforehand, or keyed here.
        enum Image<'a> {
            Prepared(&'a FirstLayerKeys),
            Keyed(Tensor),
        }
        let image = match first {
            Some(f) => Image::Prepared(f),
            None => Image::Keyed(add(keys, key_pe)?),
        };
        let attended = match &image {
            Image::Keyed(k) => self.cross_token_to_image.forward(&q, k, keys)?,
            Image::Prepared(f) => {
                let a = &self.cross_token_to_image;
                a.attend(&a.q_proj.forward_act(&q, None)?, &f.k, &f.v)?
            }
        };
        let queries = self.norm2.forward(&add(&queries, &attended)?)?;

        let mlp = self.lin2.forward_act(&self.lin1.forward_act(&queries, Some(Activation::Relu))?, None)?;
        let queries = self.norm3.forward(&add(&queries, &mlp)?)?;

        let q = add(&queries, query_pe)?;
        let to_tokens = match &image {
            Image::Keyed(k) => self.cross_image_to_token.forward(k, &q, &queries)?,
            Image::Prepared(f) => self.cross_image_to_token.forward_projected_queries(&f.q, &q, &queries)?,
        };
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

    /// The first layer's image-side projections of shared image tokens (see [`FirstLayerKeys`]).
    ///
    /// # Shapes
    /// `image: [1, HW, C]`, `image_pe: [HW, C]`
    pub fn first_layer_keys(&self, image: &Tensor, image_pe: &Tensor) -> Result<FirstLayerKeys> {
        let Some(layer) = self.layers.first() else {
            return Err(candle_core::Error::Msg("two-way transformer without layers".into()).into());
        };
        let keyed = add(image, image_pe)?;
        Ok(FirstLayerKeys {
            k: layer.cross_token_to_image.k_proj.forward_act(&keyed, None)?,
            v: layer.cross_token_to_image.v_proj.forward_act(image, None)?,
            q: layer.cross_image_to_token.q_proj.forward_act(&keyed, None)?,
        })
    }

    /// `image` may have batch 1 when every prompt set sees the same image tokens (no mask
    /// prompt); the tokens become each set's own at the first image update. `first`, made from
    /// that same `image` by [`Self::first_layer_keys`], spares the first layer its image-side
    /// projections.
    ///
    /// # Shapes
    /// `image: [B or 1, HW, C]`, `image_pe: [HW, C]`, `tokens: [B, T, C]` -> (`[B, T, C]`, `[B, HW, C]`)
    pub fn forward(
        &self,
        image: &Tensor,
        image_pe: &Tensor,
        tokens: &Tensor,
        first: Option<&FirstLayerKeys>,
    ) -> Result<(Tensor, Tensor)> {
        let (mut queries, mut keys) = (tokens.clone(), image.clone());
        for (i, layer) in self.layers.iter().enumerate() {
            (queries, keys) = layer.forward(&queries, &keys, tokens, image_pe, first.filter(|_| i == 0))?;
        }
        let q = add(&queries, tokens)?;
        let k = add(&keys, image_pe)?;
        let queries = add(&queries, &self.final_attn.forward(&q, &k, &keys)?)?;
        let queries = self.norm_final.forward(&queries)?;
        let (b, (_, hw, c)) = (tokens.dim(0)?, keys.dims3()?);
        Ok((queries, keys.broadcast_as((b, hw, c))?.contiguous()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::testing::{max_diff, randn};

    /// SAM's cross-attention shapes (width 256, 8 heads, projections to 128): the folded
    /// products (CPU kernels and the device path's candle ops) against the plain projections,
    /// tokens to a shared image and to each set's own, and the image back to the tokens.
    #[test]
    fn folded_cross_attention_equals_the_projected_one() {
        let (c, inner, heads, n, t) = (256, 128, 8, 200, 7);
        let lin = |seed: u64, i: usize, o: usize| {
            Linear::new(randn(seed, 0f32, 0.1, (o, i)), Some(randn(seed + 100, 0f32, 0.1, o))).unwrap()
        };
        let parts = || [lin(1, c, inner), lin(2, c, inner), lin(3, c, inner), lin(4, inner, c)];
        let folded = Attention::new(parts(), heads, true).unwrap();
        let plain = Attention::new(parts(), heads, false).unwrap();
        let tokens = randn(5, 0f32, 1., (2, t, c));
        let image = randn(6, 0f32, 1., (2, n, c));
        let shared = image.narrow(0, 0, 1).unwrap();
        for (name, q, k) in [
            ("tokens to a shared image", &tokens, &shared),
            ("tokens to each set's image", &tokens, &image),
            ("a shared image to the tokens", &shared, &tokens),
            ("each image to its tokens", &image, &tokens),
        ] {
            let want = plain.forward(q, k, k).unwrap();
            let got = folded.forward(q, k, k).unwrap();
            assert_eq!(got.dims(), want.dims(), "{name}");
            assert!(max_diff(&got, &want) < 1e-4, "{name}: {}", max_diff(&got, &want));
            let device_path = crate::nn::cpu::with_portable_paths(|| folded.forward(q, k, k)).unwrap();
            assert!(max_diff(&device_path, &want) < 1e-4, "{name}, device path: {}", max_diff(&device_path, &want));
        }
    }
}
