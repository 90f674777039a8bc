//! ResNet's bottleneck stages (He et al., 2016), as both CNN families here build them:
//! torchvision's `resnet.Bottleneck` (DINO's ResNet-50; the stride on the 3×3 convolution and on
//! the 1×1 shortcut convolution, "ResNet v1.5") and CLIP's anti-aliased `Bottleneck` (OpenAI
//! `clip/model.py`, open_clip `modified_resnet.py`: every convolution at stride 1, an average pool
//! after the 3×3 convolution and before the shortcut convolution).
//!
//! Both use the same names (`layerN.M.{conv1,bn1,conv2,bn2,conv3,bn3}`, shortcut
//! `downsample.0` conv + `downsample.1` BatchNorm), so one loader reads both; the channel counts
//! and block counts are read off the checkpoint. Eval-mode BatchNorm is folded into each
//! convolution at load ([`super::conv::fold_batch_norm`]), ReLU runs in the GEMM's output pass, and
//! the residual add and its ReLU are one fused pass.

use candle_core::Tensor;

use super::conv::{fold_batch_norm, BatchNorm, Conv2d};
use super::Activation;
use crate::weights::Vb;
use crate::{Error, Result};

/// Where a bottleneck's stride goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Downsampling {
    /// torchvision: the 3×3 convolution and the shortcut's 1×1 convolution are strided.
    Strided,
    /// CLIP's ModifiedResNet: `AvgPool2d(stride)` after the 3×3 convolution and before the
    /// shortcut convolution, every convolution at stride 1.
    AntiAliased,
}

/// A convolution `conv` `[Cout, Cin, k, k]` (no bias) with the eval-mode BatchNorm `bn` after it
/// folded in: one [`Conv2d`].
pub fn conv_bn(vb: &Vb, conv: &str, bn: &str, stride: usize, pad: usize) -> Result<Conv2d> {
    let name = format!("{conv}.weight");
    let shape = vb.shape_of(&name).ok_or_else(|| missing(vb, &name))?;
    let w = vb.get(&shape, &name)?;
    let (fw, fb) = fold_batch_norm(&w, &BatchNorm::load(&vb.pp(bn), shape[0])?)?;
    Conv2d::new(&fw, Some(fb), stride, pad)
}

fn missing(vb: &Vb, name: &str) -> Error {
    // `get` with an empty shape names the tensor the way the checkpoint spells it.
    vb.get(&[0], name).err().unwrap_or_else(|| Error::arg("weights", format!("`{name}` is missing")))
}

/// One bottleneck block: 1×1 → 3×3 → 1×1 convolutions, each with its BatchNorm, plus the
/// shortcut.
#[derive(Debug, Clone)]
pub struct Bottleneck {
    conv1: Conv2d,
    conv2: Conv2d,
    conv3: Conv2d,
    downsample: Option<Conv2d>,
    stride: usize,
    style: Downsampling,
}

impl Bottleneck {
    /// Loads the block below `vb` (`layerN.M`).
    pub fn load(vb: &Vb, stride: usize, style: Downsampling) -> Result<Self> {
        let conv_stride = match style {
            Downsampling::Strided => stride,
            Downsampling::AntiAliased => 1,
        };
        let downsample = if vb.contains("downsample.0.weight") {
            Some(conv_bn(vb, "downsample.0", "downsample.1", conv_stride, 0)?)
        } else {
            None
        };
        Ok(Self {
            conv1: conv_bn(vb, "conv1", "bn1", 1, 0)?,
            conv2: conv_bn(vb, "conv2", "bn2", conv_stride, 1)?,
            conv3: conv_bn(vb, "conv3", "bn3", 1, 0)?,
            downsample,
            stride,
            style,
        })
    }

    /// # Shapes
    /// `[B, H, W, Cin] -> [B, H/s, W/s, Cout]`
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let relu = Some(Activation::Relu);
        let out = self.conv1.forward_act(x, relu)?;
        let mut out = self.conv2.forward_act(&out, relu)?;
        let pooled = self.style == Downsampling::AntiAliased && self.stride > 1;
        if pooled {
            out = super::pool::avg_pool(&out, self.stride)?;
        }
        let identity = match &self.downsample {
            Some(conv) if pooled => conv.forward(&super::pool::avg_pool(x, self.stride)?)?,
            Some(conv) => conv.forward(x)?,
            None => x.clone(),
        };
        let (b, h, w, _) = out.dims4()?;
        let width = self.conv3.out_channels()?;
        if identity.dims() != [b, h, w, width] {
            return Err(Error::arg(
                "weights",
                format!("bottleneck shortcut {:?} does not match its output {:?}", identity.dims(), [b, h, w, width]),
            ));
        }
        // conv3, the shortcut add and the ReLU in the GEMM's one output pass.
        self.conv3.forward_residual(&out, Some(&identity), relu)
    }
}

/// The four stages `layer1..layer4` (stride 1, 2, 2, 2), their block counts read off the
/// checkpoint (`[3, 4, 6, 3]` for ResNet-50 and RN50, `[4, 6, 10, 6]` for RN50x4, ...).
#[derive(Debug, Clone)]
pub struct Stages {
    stages: Vec<Vec<Bottleneck>>,
}

impl Stages {
    /// Loads `layer1..layer4` below `vb`.
    pub fn load(vb: &Vb, style: Downsampling) -> Result<Self> {
        let stages = (1..=4)
            .map(|i| {
                let layer = vb.pp(format!("layer{i}"));
                let n = (0..).take_while(|j| layer.contains(&format!("{j}.conv1.weight"))).count();
                if n == 0 {
                    return Err(missing(&layer, "0.conv1.weight"));
                }
                (0..n)
                    .map(|j| Bottleneck::load(&layer.pp(j), if i > 1 && j == 0 { 2 } else { 1 }, style))
                    .collect::<Result<Vec<_>>>()
            })
            .collect::<Result<_>>()?;
        Ok(Self { stages })
    }

    /// Blocks per stage.
    pub fn depths(&self) -> [usize; 4] {
        let d = |i: usize| self.stages[i].len();
        [d(0), d(1), d(2), d(3)]
    }

    /// Runs every stage, calling `each(i, x)` after stage `i` (1-based), e.g. to record it.
    pub fn forward(&self, x: &Tensor, mut each: impl FnMut(usize, &Tensor)) -> Result<Tensor> {
        let mut x = x.clone();
        for (i, stage) in self.stages.iter().enumerate() {
            for block in stage {
                x = block.forward(&x)?;
            }
            each(i + 1, &x);
        }
        Ok(x)
    }
}
