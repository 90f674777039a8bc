//! `torch.nn.LayerNorm` over the last dimension.

use candle_core::{Module, Tensor};

use crate::weights::Vb;
use crate::Result;

#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    pub fn load(vb: &Vb, dim: usize, eps: f64) -> Result<Self> {
        Ok(Self { weight: vb.get(&[dim], "weight")?, bias: vb.get(&[dim], "bias")?, eps })
    }
}

impl Module for LayerNorm {
    /// # Shapes
    /// `[..., C] -> [..., C]`
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        // candle's fused kernel; inference only (it records no backward op).
        candle_nn::ops::layer_norm(&x.contiguous()?, &self.weight, &self.bias, self.eps as f32)
    }
}
