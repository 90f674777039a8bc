//! `torch.nn.Linear`: y = x Wᵀ + b, with W given `[out, in]` as PyTorch stores it.

use candle_core::{Module, Tensor};

use super::{cpu, Activation};
use crate::weights::Vb;
use crate::Result;

/// `torch.nn.Linear`, its weight held transposed.
#[derive(Debug, Clone)]
pub struct Linear {
    /// Wᵀ, `[in, out]`, contiguous: transposed once at load so every product reads the weight
    /// row by row (GEMM packing of a strided `W.t()` view cost more than the multiply itself at
    /// batch 1).
    weight_t: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    /// From a PyTorch-layout weight `[out, in]`.
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Result<Self> {
        Ok(Self { weight_t: weight.t()?.contiguous()?, bias })
    }

    /// Loads `weight` `[out, in]` and `bias` `[out]` below `vb`.
    pub fn load(vb: &Vb, in_dim: usize, out_dim: usize, bias: bool) -> Result<Self> {
        let weight = vb.get(&[out_dim, in_dim], "weight")?;
        let bias = if bias { Some(vb.get(&[out_dim], "bias")?) } else { None };
        Self::new(weight, bias)
    }

    /// `Wᵀ`, `[in, out]`, contiguous (as the GEMM reads it).
    pub fn weight_t(&self) -> &Tensor {
        &self.weight_t
    }

    /// The bias `[out]`, if any.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// The weight in PyTorch layout `[out, in]` (a transposed view).
    pub fn weight(&self) -> Result<Tensor> {
        Ok(self.weight_t.t()?)
    }

    /// `act(x·Wᵀ + b)`; on the CPU one GEMM onto the bias rows with the activation in place.
    ///
    /// # Shapes
    /// `[..., in] -> [..., out]`
    pub fn forward_act(&self, x: &Tensor, act: Option<Activation>) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let in_dim = dims[dims.len() - 1];
        let m: usize = dims[..dims.len() - 1].iter().product();
        let mut out_dims = dims;
        *out_dims.last_mut().expect("non-empty dims") = self.weight_t.dim(1)?;
        let x2 = x.reshape((m, in_dim))?;
        let y = if cpu::eligible(&x2) && cpu::eligible(&self.weight_t) {
            cpu::linear(&x2, &self.weight_t, self.bias.as_ref(), act)?
        } else {
            let y = x2.matmul(&self.weight_t)?;
            let y = match &self.bias {
                Some(b) => y.broadcast_add(b)?,
                None => y,
            };
            match act {
                Some(a) => a.forward(&y)?,
                None => y,
            }
        };
        Ok(y.reshape(out_dims)?)
    }
}

impl Module for Linear {
    /// # Shapes
    /// `[..., in] -> [..., out]`
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.forward_act(x, None).map_err(candle_core::Error::wrap)
    }
}
