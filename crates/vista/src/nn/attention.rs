//! Multi-head self-attention with one fused q/k/v projection, as `torch.nn.MultiheadAttention`
//! (`in_proj_weight` `[3C, C]`, rows ordered q, k, v) and timm's `Attention` (`qkv`) store it.

use candle_core::Tensor;

use super::{cpu, portable, Linear};
use crate::Result;

/// Multi-head self-attention with one fused `qkv` projection (CLIP's `nn.MultiheadAttention`,
/// DINO's `Attention`).
#[derive(Debug, Clone)]
pub struct FusedQkvAttention {
    qkv: Linear,
    proj: Linear,
    num_heads: usize,
    scale: f64,
}

impl FusedQkvAttention {
    /// From the fused projection `qkv` (`[3C, C]`) and the output projection `proj`, for
    /// `num_heads` heads over width `dim`.
    pub fn new(qkv: Linear, proj: Linear, num_heads: usize, dim: usize) -> Self {
        let head_dim = dim / num_heads;
        Self { qkv, proj, num_heads, scale: 1.0 / (head_dim as f64).sqrt() }
    }

    /// Self-attention; `mask` (`[N, N]`, added to the logits, `-inf` to block) is optional.
    ///
    /// # Shapes
    /// `x: [B, N, C] -> [B, N, C]`
    pub fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let qkv = self.qkv.forward_act(x, None)?;
        let h = self.num_heads;
        let out = if cpu::eligible(&qkv) && mask.map(cpu::eligible).unwrap_or(true) {
            cpu::attention(&qkv, h, self.scale as f32, mask)?
        } else {
            let bias = match mask {
                Some(m) => portable::Bias::Shared(m),
                None => portable::Bias::None,
            };
            portable::attention(&qkv, h, self.scale, bias)?
        };
        self.proj.forward_act(&out, None)
    }

    /// Self-attention that also returns the attention probabilities `[B, H, N, N]` (for
    /// attention maps; the plain [`forward`](Self::forward) never materialises them all).
    pub fn forward_with_probs(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let (b, n, c) = x.dims3()?;
        let h = self.num_heads;
        let d = c / h;
        let qkv = self.qkv.forward_act(x, None)?.reshape((b, n, 3, h, d))?.permute((2, 0, 3, 1, 4))?;
        let q = qkv.get(0)?.contiguous()?;
        let k = qkv.get(1)?.contiguous()?;
        let v = qkv.get(2)?.contiguous()?;
        let attn = (q.matmul(&k.t()?)? * self.scale)?;
        let probs = candle_nn::ops::softmax_last_dim(&attn)?;
        let out = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, n, c))?;
        Ok((self.proj.forward_act(&out, None)?, probs))
    }
}
