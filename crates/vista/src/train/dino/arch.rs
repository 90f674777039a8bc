//! The backbones a DINO run trains ([`TrainBackbone`]): the ViT (`--arch vit_tiny|vit_small|
//! vit_base`) or torchvision's ResNet-50 (`--arch resnet50`), and what the multi-crop forward
//! needs of either ([`CropBackbone`]).

use candle_core::Tensor;
use rand_chacha::ChaCha8Rng;

use super::backbone::TrainVit;
use super::resnet::TrainResNet;
use super::Param;
use crate::Result;

/// What the multi-crop wrapper runs: one batch of crops in, one feature per crop out.
pub trait CropBackbone {
    /// The features `[B, C]` of crops `[B, H, W, 3]` (channels-last) in training mode — a ViT's
    /// CLS token after the final norm, with stochastic depth when `drop_path` is a stream; a
    /// ResNet's pooled feature, BatchNorm on the batch's statistics.
    fn crop_features(&self, crops: &Tensor, drop_path: Option<&mut ChaCha8Rng>) -> Result<Tensor>;
}

impl CropBackbone for TrainVit {
    fn crop_features(&self, crops: &Tensor, drop_path: Option<&mut ChaCha8Rng>) -> Result<Tensor> {
        Ok(self.forward_train(crops, drop_path)?.narrow(1, 0, 1)?.squeeze(1)?)
    }
}

impl CropBackbone for TrainResNet {
    fn crop_features(&self, crops: &Tensor, _drop_path: Option<&mut ChaCha8Rng>) -> Result<Tensor> {
        self.forward(&crops.permute((0, 3, 1, 2))?.contiguous()?, true)
    }
}

/// A DINO run's student or teacher backbone.
pub enum TrainBackbone {
    /// DINO's vision transformer.
    Vit(TrainVit),
    /// torchvision's ResNet, `fc` removed.
    ResNet(TrainResNet),
}

impl CropBackbone for TrainBackbone {
    fn crop_features(&self, crops: &Tensor, drop_path: Option<&mut ChaCha8Rng>) -> Result<Tensor> {
        match self {
            Self::Vit(v) => v.crop_features(crops, drop_path),
            Self::ResNet(r) => r.crop_features(crops, drop_path),
        }
    }
}

impl TrainBackbone {
    /// The trainable parameters, in the reference's order.
    pub fn params(&self) -> &[Param] {
        match self {
            Self::Vit(v) => v.params(),
            Self::ResNet(r) => r.params(),
        }
    }

    /// `requires_grad` of every parameter (false for the teacher).
    pub fn set_requires_grad(&mut self, requires_grad: bool) {
        match self {
            Self::Vit(v) => v.set_requires_grad(requires_grad),
            Self::ResNet(r) => r.set_requires_grad(requires_grad),
        }
    }

    /// Copies of every tensor of the state (a ResNet's running statistics included), the
    /// reference's names.
    pub fn state_dict(&self) -> Result<Vec<(String, Tensor)>> {
        match self {
            Self::Vit(v) => v.state_dict(),
            Self::ResNet(r) => r.state_dict(),
        }
    }

    /// Overwrites the state in place; names and shapes must match.
    pub fn load_state_dict<'a>(&self, tensors: impl IntoIterator<Item = (&'a str, &'a Tensor)>) -> Result<()> {
        match self {
            Self::Vit(v) => v.load_state_dict(tensors),
            Self::ResNet(r) => r.load_state_dict(tensors),
        }
    }

    /// The state a forward pass changes besides the parameters (a ResNet's running statistics),
    /// to put back when a step fails.
    pub fn forward_state(&self) -> Option<std::collections::HashMap<String, Tensor>> {
        match self {
            Self::Vit(_) => None,
            Self::ResNet(r) => Some(r.running_stats()),
        }
    }

    /// Puts back what [`forward_state`](Self::forward_state) took.
    pub fn restore_forward_state(&self, state: Option<std::collections::HashMap<String, Tensor>>) {
        if let (Self::ResNet(r), Some(stats)) = (self, state) {
            r.set_running_stats(stats);
        }
    }

    /// The vision transformer, if this is one.
    pub fn vit(&self) -> Option<&TrainVit> {
        match self {
            Self::Vit(v) => Some(v),
            Self::ResNet(_) => None,
        }
    }
}
