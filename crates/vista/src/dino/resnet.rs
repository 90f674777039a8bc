//! DINO's ResNet-50: torchvision's `resnet50` (`torchvision/models/resnet.py`, Bottleneck blocks
//! `[3, 4, 6, 3]`, the stride on the 3×3 convolutions) with `fc` replaced by the identity, as
//! `main_dino.py` trains it and `hubconf.resnet50` loads `dino_resnet50_pretrain.pth`.
//!
//! 7×7 stride-2 stem, BatchNorm, ReLU, 3×3 stride-2 max pool, four bottleneck stages
//! ([`crate::nn::resnet`], eval BatchNorm folded at load), global average pool: the 2048-d
//! feature DINO evaluates with k-NN and linear probes. The stage depths and widths are read off
//! the checkpoint, so ResNet-101/152 and wide variants in torchvision naming load too.

use candle_core::{DType, Device, Tensor};

use super::vit::DinoOutput;
use crate::nn::conv::Conv2d;
use crate::nn::resnet::{conv_bn, Downsampling, Stages};
use crate::nn::{pool, Activation};
use crate::weights::Vb;
use crate::{Error, Result};

/// torchvision's ResNet without its classifier.
#[derive(Debug, Clone)]
pub struct ResNet {
    stem: Conv2d,
    stages: Stages,
    /// Output channels of the last stage.
    width: usize,
    device: Device,
    dtype: DType,
}

impl ResNet {
    /// Reads `conv1`, `bn1`, `layer1..4` below `vb` (torchvision naming).
    pub fn load(vb: &Vb) -> Result<Self> {
        let stem = conv_bn(vb, "conv1", "bn1", 2, 3)?;
        let stages = Stages::load(vb, Downsampling::Strided)?;
        let last = stages.depths()[3] - 1;
        let width = vb
            .shape_of(&format!("layer4.{last}.conv3.weight"))
            .map(|s| s[0])
            .ok_or_else(|| Error::arg("weights", "layer4 has no conv3"))?;
        Ok(Self { stem, stages, width, device: vb.device().clone(), dtype: vb.dtype() })
    }

    /// Blocks per stage (`[3, 4, 6, 3]` for ResNet-50).
    pub fn depths(&self) -> [usize; 4] {
        self.stages.depths()
    }

    /// Width of the pooled feature (2048 for ResNet-50).
    pub fn embed_dim(&self) -> usize {
        self.width
    }

    /// The device the weights are on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The dtype of the weights.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Every stage's output (`stem` after the max pool, `layer1..4`), NCHW as torchvision computes
    /// them, and the pooled features `[B, C]`.
    pub fn forward_stages(&self, pixels: &Tensor) -> Result<(Vec<(String, Tensor)>, Tensor)> {
        let mut stages = Vec::new();
        let out = self.run(pixels, |name, x| {
            if let Ok(t) = x.permute((0, 3, 1, 2)) {
                stages.push((name.to_string(), t));
            }
        })?;
        Ok((stages, pool::global_avg(&out)?))
    }

    fn run(&self, pixels: &Tensor, mut each: impl FnMut(&str, &Tensor)) -> Result<Tensor> {
        let pixels = pixels.to_device(&self.device)?.to_dtype(self.dtype)?;
        let (_, h, w, c) = pixels.dims4()?;
        if c != 3 || h == 0 || w == 0 {
            return Err(Error::arg("image", format!("{w}x{h} pixels with {c} channels: expected an RGB image")));
        }
        let x = self.stem.forward_act(&pixels, Some(Activation::Relu))?;
        let x = pool::max_pool(&x, 3, 2, 1)?;
        each("stem", &x);
        self.stages.forward(&x, |i, x| each(&format!("layer{i}"), x))
    }

    /// Runs the backbone on normalised channels-last pixels `[B, H, W, 3]`: the pooled feature as
    /// the first token (what DINO evaluates), then the final map's `h·w` positions as patch
    /// tokens (dense features at stride 32). No attention, no registers.
    pub fn forward(&self, pixels: &Tensor) -> Result<DinoOutput> {
        let x = self.run(pixels, |_, _| {})?;
        let (b, h, w, c) = x.dims4()?;
        let map = x.reshape((b, h * w, c))?;
        let pooled = pool::token_mean(&map)?;
        Ok(DinoOutput {
            tokens: Tensor::cat(&[&pooled, &map], 1)?,
            registers: 0,
            grid: (h, w),
            attention: None,
            blocks: Vec::new(),
            pos_embed: Tensor::zeros((0, c), self.dtype, &self.device)?,
        })
    }
}
