//! `torch.nn.Linear`: y = x Wᵀ + b, W stored `[out, in]` as PyTorch does.

use candle_core::{Module, Tensor, D};

use crate::weights::Vb;
use crate::Result;

#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { weight, bias }
    }

    /// Loads `weight` `[out, in]` and `bias` `[out]` below `vb`.
    pub fn load(vb: &Vb, in_dim: usize, out_dim: usize, bias: bool) -> Result<Self> {
        let weight = vb.get(&[out_dim, in_dim], "weight")?;
        let bias = if bias { Some(vb.get(&[out_dim], "bias")?) } else { None };
        Ok(Self { weight, bias })
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }
}

impl Module for Linear {
    /// # Shapes
    /// `[..., in] -> [..., out]`
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        // Flatten leading dims so the product is one [M, in] x [in, out] GEMM; Wᵀ is a stride
        // view, which gemm reads without a copy.
        let dims = x.dims().to_vec();
        let in_dim = dims[dims.len() - 1];
        let m: usize = dims[..dims.len() - 1].iter().product();
        let x2 = x.reshape((m, in_dim))?;
        let y = x2.matmul(&self.weight.t()?)?;
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        let mut out_dims = dims;
        *out_dims.last_mut().expect("non-empty dims") = y.dim(D::Minus1)?;
        y.reshape(out_dims)
    }
}
