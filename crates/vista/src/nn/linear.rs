//! `torch.nn.Linear`: y = x Wᵀ + b, with W given `[out, in]` as PyTorch stores it.

use std::sync::Arc;

use candle_core::{DType, Device, Module, Tensor};

use super::packed::{self, PackedWeight};
use super::{cpu, Activation};
use crate::weights::Vb;
use crate::Result;

/// `torch.nn.Linear`. An f32 weight on the CPU is held only in the packed layout the CPU GEMM
/// reads ([`PackedWeight`], packed once here); any other (CUDA, bf16) as `Wᵀ`, `[in, out]`,
/// contiguous, for candle's matmul.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Weight,
    bias: Option<Tensor>,
}

#[derive(Debug, Clone)]
enum Weight {
    /// `Wᵀ` `[in, out]` on its device.
    Tensor(Tensor),
    /// The CPU GEMM's panels, and the bias as values.
    Packed { w: Arc<PackedWeight>, bias: Option<Arc<[f32]>> },
}

impl Linear {
    /// From a PyTorch-layout weight `[out, in]`.
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Result<Self> {
        let weight_t = weight.t()?.contiguous()?;
        if !(weight_t.device().is_cpu() && weight_t.dtype() == DType::F32) {
            return Ok(Self { weight: Weight::Tensor(weight_t), bias });
        }
        let (k, n) = weight_t.dims2()?;
        let w = cpu::with_slice(&weight_t, |v| PackedWeight::from_k_by_n(v, k, n))?;
        let host = match &bias {
            Some(b) => Some(Arc::from(b.to_dtype(DType::F32)?.to_vec1::<f32>()?)),
            None => None,
        };
        Ok(Self { weight: Weight::Packed { w: Arc::new(w), bias: host }, bias })
    }

    /// Loads `weight` `[out, in]` and `bias` `[out]` below `vb`.
    pub fn load(vb: &Vb, in_dim: usize, out_dim: usize, bias: bool) -> Result<Self> {
        let weight = vb.get(&[out_dim, in_dim], "weight")?;
        let bias = if bias { Some(vb.get(&[out_dim], "bias")?) } else { None };
        Self::new(weight, bias)
    }

    /// `Wᵀ`, `[in, out]`, contiguous (unpacked anew from a packed weight).
    pub fn weight_t(&self) -> Result<Tensor> {
        match &self.weight {
            Weight::Tensor(t) => Ok(t.clone()),
            Weight::Packed { w, .. } => Ok(Tensor::from_vec(w.to_k_by_n(), (w.k(), w.n()), &Device::Cpu)?),
        }
    }

    /// The bias `[out]`, if any.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// The weight in PyTorch layout `[out, in]`.
    pub fn weight(&self) -> Result<Tensor> {
        Ok(self.weight_t()?.t()?)
    }

    /// Output width.
    pub fn out_dim(&self) -> Result<usize> {
        match &self.weight {
            Weight::Tensor(t) => Ok(t.dim(1)?),
            Weight::Packed { w, .. } => Ok(w.n()),
        }
    }

    /// The packed weight and bias values when this layer runs on the CPU GEMM.
    pub(crate) fn packed(&self) -> Option<(&PackedWeight, Option<&[f32]>)> {
        match &self.weight {
            Weight::Packed { w, bias } => Some((w, bias.as_deref())),
            Weight::Tensor(_) => None,
        }
    }

    /// `act(x·Wᵀ + b)`; on the CPU one GEMM onto the bias rows with the activation applied as
    /// each tile is finished.
    ///
    /// # Shapes
    /// `[..., in] -> [..., out]`
    pub fn forward_act(&self, x: &Tensor, act: Option<Activation>) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let in_dim = dims[dims.len() - 1];
        let m: usize = dims[..dims.len() - 1].iter().product();
        let mut out_dims = dims;
        let n = self.out_dim()?;
        *out_dims.last_mut().expect("non-empty dims") = n;
        let x2 = x.reshape((m, in_dim))?;
        if let (Some((w, bias)), true) = (self.packed(), cpu::eligible(&x2)) {
            if in_dim != w.k() {
                return Err(candle_core::Error::Msg(format!(
                    "linear: input has {in_dim} features, weight expects {}",
                    w.k()
                ))
                .into());
            }
            let out = cpu::with_slice(&x2, |xs| {
                packed::gemm(packed::Lhs::Rows { data: xs, m }, w, bias, packed::Epilogue::act(act), cpu::threads())
            })??;
            return Ok(Tensor::from_vec(out, out_dims, &Device::Cpu)?);
        }
        let y = x2.matmul(&self.weight_t()?.to_dtype(x2.dtype())?)?;
        let y = match &self.bias {
            Some(b) => y.broadcast_add(&b.to_dtype(y.dtype())?)?,
            None => y,
        };
        let y = match act {
            Some(a) => a.forward(&y)?,
            None => y,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::testing::{max_diff, randn};

    #[test]
    fn packed_and_portable_paths_equal_the_separate_ops_for_every_activation() {
        let x = randn(1, 0f32, 1., (2, 7, 45));
        let w = randn(2, 0f32, 1., (37, 45));
        let b = randn(3, 0f32, 1., 37);
        let reference = x.broadcast_matmul(&w.t().unwrap()).unwrap().broadcast_add(&b).unwrap();
        let layer = Linear::new(w.clone(), Some(b)).unwrap();
        assert!(layer.packed().is_some());
        assert!(max_diff(&layer.weight().unwrap(), &w) == 0.0, "unpacking gives the weight back");
        for act in [None, Some(Activation::QuickGelu), Some(Activation::Gelu), Some(Activation::GeluTanh)] {
            let want = match act {
                Some(a) => a.forward(&reference).unwrap(),
                None => reference.clone(),
            };
            let fast = layer.forward_act(&x, act).unwrap();
            let portable = cpu::with_portable_paths(|| layer.forward_act(&x, act)).unwrap();
            assert!(max_diff(&fast, &want) < 1e-5, "{act:?}");
            assert!(max_diff(&portable, &want) < 1e-5, "{act:?}");
        }
        let no_bias = Linear::new(w.clone(), None).unwrap().forward(&x).unwrap();
        assert!(max_diff(&no_bias, &x.broadcast_matmul(&w.t().unwrap()).unwrap()) < 1e-5);
    }
}
