//! `torch.nn.LayerNorm` over the last dimension.

use candle_core::{Module, Tensor};

use super::cpu;
use crate::weights::Vb;
use crate::Result;

/// `torch.nn.LayerNorm` over the last dimension, with weight and bias.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    /// Loads `weight` and `bias` `[dim]` below `vb`.
    pub fn load(vb: &Vb, dim: usize, eps: f64) -> Result<Self> {
        Ok(Self { weight: vb.get(&[dim], "weight")?, bias: vb.get(&[dim], "bias")?, eps })
    }
}

impl LayerNorm {
    /// The weight, the bias and ε.
    pub fn parts(&self) -> (&Tensor, &Tensor, f64) {
        (&self.weight, &self.bias, self.eps)
    }

    /// `(x + y, LayerNorm(x + y))`: the residual add of a pre-norm block fused with the next norm.
    pub fn add_forward(&self, x: &Tensor, y: &Tensor) -> Result<(Tensor, Tensor)> {
        if cpu::eligible(x) && cpu::eligible(y) && cpu::eligible(&self.weight) {
            return cpu::add_layer_norm(x, y, &self.weight, &self.bias, self.eps as f32);
        }
        let s = (x + y)?;
        let n = self.forward(&s)?;
        Ok((s, n))
    }
}

impl Module for LayerNorm {
    /// # Shapes
    /// `[..., C] -> [..., C]`
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if cpu::eligible(x) && cpu::eligible(&self.weight) {
            return cpu::layer_norm(x, &self.weight, &self.bias, self.eps as f32).map_err(candle_core::Error::wrap);
        }
        // candle's fused kernel; inference only (it records no backward op).
        candle_nn::ops::layer_norm(&x.contiguous()?, &self.weight, &self.bias, self.eps as f32)
    }
}
