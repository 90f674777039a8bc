//! The backbones DINO trains and evaluates: its vision transformers and torchvision's ResNet-50
//! ("DINO initially used ResNet"), behind one type so features, k-NN, linear probes and `vista fit`
//! take either.

use candle_core::{DType, Device, Tensor};

use super::resnet::ResNet;
use super::vit::{DinoOutput, DinoVit};
use crate::Result;

/// A DINO backbone.
pub enum Backbone {
    /// DINO / DINOv2 vision transformer.
    Vit(DinoVit),
    /// torchvision ResNet (DINO's `resnet50`), `fc` removed.
    ResNet(ResNet),
}

impl Backbone {
    /// Runs the backbone on normalised channels-last pixels `[B, H, W, 3]`
    /// ([`DinoVit::forward`], [`ResNet::forward`]; a ResNet has no attention or blocks to give).
    pub fn forward(&self, pixels: &Tensor, want_attention: bool, want_blocks: bool) -> Result<DinoOutput> {
        match self {
            Self::Vit(v) => v.forward(pixels, want_attention, want_blocks),
            Self::ResNet(r) => r.forward(pixels),
        }
    }

    /// The vision transformer, if this is one.
    pub fn vit(&self) -> Option<&DinoVit> {
        match self {
            Self::Vit(v) => Some(v),
            Self::ResNet(_) => None,
        }
    }

    /// Width of the CLS / pooled feature.
    pub fn embed_dim(&self) -> usize {
        match self {
            Self::Vit(v) => v.config.embed_dim,
            Self::ResNet(r) => r.embed_dim(),
        }
    }

    /// The input granularity: a ViT's patch, a ResNet's total stride (32).
    pub fn patch_size(&self) -> usize {
        match self {
            Self::Vit(v) => v.config.patch_size,
            Self::ResNet(_) => 32,
        }
    }

    /// The device the weights are on.
    pub fn device(&self) -> &Device {
        match self {
            Self::Vit(v) => v.device(),
            Self::ResNet(r) => r.device(),
        }
    }

    /// The dtype of the weights.
    pub fn dtype(&self) -> DType {
        match self {
            Self::Vit(v) => v.dtype(),
            Self::ResNet(r) => r.dtype(),
        }
    }

    /// The architecture as a string for cache keys (a ViT's config as JSON, so keys written
    /// before ResNets existed stay valid).
    pub fn arch_key(&self) -> String {
        match self {
            Self::Vit(v) => serde_json::to_string(&v.config).unwrap_or_default(),
            Self::ResNet(r) => format!("resnet {:?} {}", r.depths(), r.embed_dim()),
        }
    }
}
