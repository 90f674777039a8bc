//! CLIP's text tower: OpenAI `clip/model.py::CLIP.encode_text` — token and position embeddings, a
//! causally masked transformer, `ln_final`, the end-of-text token's features, `text_projection`.

use candle_core::{DType, Device, Module, Tensor};

use super::config::{TextConfig, TextPooling};
use super::transformer::{record, Trace, Transformer};
use crate::nn::LayerNorm;
use crate::weights::Vb;
use crate::{Error, Result};

/// CLIP's text tower: token and position embeddings, transformer, final norm and projection.
#[derive(Debug, Clone)]
pub struct TextTransformer {
    cfg: TextConfig,
    token_embedding: Tensor,
    positional_embedding: Tensor,
    transformer: Transformer,
    ln_final: LayerNorm,
    text_projection: Tensor,
}

impl TextTransformer {
    /// Loads from the root of the canonical names (the text tower has no prefix there).
    pub fn load(vb: &Vb, cfg: &TextConfig, embed_dim: usize) -> Result<Self> {
        let w = cfg.tower.width;
        Ok(Self {
            cfg: cfg.clone(),
            token_embedding: vb.get(&[cfg.vocab_size, w], "token_embedding.weight")?,
            positional_embedding: vb.get(&[cfg.context_length, w], "positional_embedding")?,
            transformer: Transformer::load(&vb.pp("transformer"), &cfg.tower)?,
            ln_final: LayerNorm::load(&vb.pp("ln_final"), w, cfg.tower.eps)?,
            text_projection: vb.get(&[w, embed_dim], "text_projection")?,
        })
    }

    /// The tower's dimensions.
    pub fn config(&self) -> &TextConfig {
        &self.cfg
    }

    /// The pooled position of each sequence.
    pub fn pool_positions(&self, ids: &[Vec<u32>]) -> Vec<usize> {
        ids.iter()
            .map(|seq| match self.cfg.pooling {
                // torch.argmax returns the first maximal index.
                TextPooling::Argmax => {
                    seq.iter()
                        .enumerate()
                        .fold((0usize, 0u32), |(bi, bv), (i, &v)| if v > bv { (i, v) } else { (bi, bv) })
                        .0
                }
                // (ids == eos).int().argmax(): the first eos, or 0 when there is none.
                TextPooling::FirstEos(eos) => seq.iter().position(|&t| t == eos).unwrap_or(0),
            })
            .collect()
    }

    /// Text embeddings (not normalised).
    ///
    /// With `trim`, the batch runs only up to the last pooled position: under the causal mask no
    /// token sees a later one, so the pooled features are unchanged and short prompts cost a
    /// fraction of 77 positions. Tracing runs the full length so every position can be compared.
    ///
    /// # Shapes
    /// `ids: B sequences of length L <= context_length -> [B, D]`
    pub fn forward(
        &self,
        ids: &[Vec<u32>],
        trim: bool,
        mut trace: Option<&mut Trace>,
        device: &Device,
    ) -> Result<Tensor> {
        let b = ids.len();
        if b == 0 {
            return Err(Error::arg("texts", "no text to encode"));
        }
        let full_len = ids[0].len();
        if ids.iter().any(|s| s.len() != full_len) || full_len == 0 || full_len > self.cfg.context_length {
            return Err(Error::arg(
                "token ids",
                format!("every sequence must have the same length, at most {}", self.cfg.context_length),
            ));
        }
        if let Some(bad) = ids.iter().flatten().find(|&&t| t as usize >= self.cfg.vocab_size) {
            return Err(Error::arg(
                "token ids",
                format!("id {bad} is outside the vocabulary of {}", self.cfg.vocab_size),
            ));
        }
        let pos = self.pool_positions(ids);
        let len = if trim && trace.is_none() { pos.iter().max().copied().unwrap_or(0) + 1 } else { full_len };
        let flat: Vec<u32> = ids.iter().flat_map(|s| s[..len].iter().copied()).collect();
        let flat = Tensor::from_vec(flat, b * len, device)?;
        let w = self.cfg.tower.width;
        // [B·L] -> [B, L, W]
        let x = self.token_embedding.index_select(&flat, 0)?.reshape((b, len, w))?;
        let x = x.broadcast_add(&self.positional_embedding.narrow(0, 0, len)?)?;
        record(&mut trace, "text.embeddings", &x);
        let mask = causal_mask(len, device, x.dtype())?;
        let x = self.transformer.forward(&x, Some(&mask), "text", trace.as_deref_mut())?;
        let x = self.ln_final.forward(&x)?;
        record(&mut trace, "text.ln_final", &x);
        // Gather [B, L, W] at the pooled positions -> [B, W], one index_select on [B·L, W].
        let rows: Vec<u32> = pos.iter().enumerate().map(|(i, &p)| (i * len + p) as u32).collect();
        let rows = Tensor::from_vec(rows, b, device)?;
        let pooled = x.reshape((b * len, w))?.index_select(&rows, 0)?;
        record(&mut trace, "text.pooled", &pooled);
        let out = pooled.matmul(&self.text_projection)?;
        record(&mut trace, "text_embeds", &out);
        Ok(out)
    }
}

/// `[L, L]` additive mask, `-inf` above the diagonal (`clip/model.py::build_attention_mask`), in
/// the activations' dtype.
fn causal_mask(len: usize, device: &Device, dtype: DType) -> Result<Tensor> {
    let m: Vec<f32> =
        (0..len).flat_map(|i| (0..len).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 })).collect();
    Ok(Tensor::from_vec(m, (len, len), device)?.to_dtype(dtype)?)
}
