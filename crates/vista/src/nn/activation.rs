//! Activations as the references name them.

use candle_core::{Module, Tensor};

/// An activation function, named as the references name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// `x * sigmoid(1.702 x)`: OpenAI CLIP's `QuickGELU` (`clip/model.py`).
    QuickGelu,
    /// Exact GELU with erf, `torch.nn.GELU()` (open_clip's LAION models, DINO, SAM).
    Gelu,
    /// GELU with the tanh approximation, `nn.GELU(approximate="tanh")` / HF `gelu_new`.
    GeluTanh,
    /// `torch.nn.ReLU` (SAM's mask decoder).
    Relu,
}

impl Activation {
    /// Parses Hugging Face's `hidden_act` strings.
    pub fn from_hf(name: &str) -> Option<Self> {
        match name {
            "quick_gelu" => Some(Self::QuickGelu),
            "gelu" => Some(Self::Gelu),
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Some(Self::GeluTanh),
            "relu" => Some(Self::Relu),
            _ => None,
        }
    }
}

impl Module for Activation {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if super::cpu::eligible(x) {
            // The fused CPU kernel (parallel, the same formulas as below): one pass from the
            // input into the output.
            return super::cpu::activated(x, *self).map_err(candle_core::Error::wrap);
        }
        match self {
            Self::QuickGelu => x * candle_nn::ops::sigmoid(&(x * 1.702)?)?,
            Self::Gelu => x.gelu_erf(),
            Self::GeluTanh => x.gelu(),
            Self::Relu => x.relu(),
        }
    }
}
