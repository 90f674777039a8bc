//! [`DinoTrainConfig`]: everything that defines a DINO run — `main_dino.py`'s arguments that
//! change the result — with its defaults written once, in [`DinoTrainConfig::preset`].

use serde::{Deserialize, Serialize};

use super::resnet::ResNetDims;
use super::{DinoHeadConfig, DinoLossConfig};
use crate::dino::DinoConfig;
use crate::image::augment::DinoAugmentConfig;
use crate::{Error, Result};

/// Everything that defines a run (`main_dino.py`'s arguments that change the result).
/// [`DinoTrainConfig::preset`] gives `main_dino.py`'s defaults for an architecture.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DinoTrainConfig {
    /// DINO's architecture name (`vit_tiny`, `vit_small`, `vit_base`), as recorded.
    pub arch: String,
    /// Token width of the backbone.
    pub embed_dim: usize,
    /// Transformer blocks of the backbone.
    pub depth: usize,
    /// Attention heads of the backbone.
    pub num_heads: usize,
    /// `--patch_size` (16).
    pub patch_size: usize,
    /// Stochastic depth of the student (`--drop_path_rate`, 0.1).
    pub drop_path: f64,
    /// `--out_dim` (65536).
    pub out_dim: usize,
    /// Hidden width of the head's MLP (2048).
    pub head_hidden: usize,
    /// The head's bottleneck (256).
    pub bottleneck: usize,
    /// Linear layers of the head (3).
    pub head_layers: usize,
    /// `--norm_last_layer` (true).
    pub norm_last_layer: bool,
    /// `--use_bn_in_head` (false): a `BatchNorm1d` after each hidden layer of the head.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub use_bn_in_head: bool,
    /// Global crop side (224); also the side the position embedding is made for.
    pub global_size: u32,
    /// Local crop side (96).
    pub local_size: u32,
    /// `--global_crops_scale` (0.4, 1).
    pub global_scale: (f64, f64),
    /// `--local_crops_scale` (0.05, 0.4).
    pub local_scale: (f64, f64),
    /// `--local_crops_number` (8).
    pub local_crops: usize,
    /// `--epochs` (100).
    pub epochs: usize,
    /// Images per step (`--batch_size_per_gpu` × GPUs, 64).
    pub batch_size: usize,
    /// `--lr` for 256 images (0.0005), scaled by `batch_size / 256` ([`Self::scaled_lr`]).
    pub lr: f64,
    /// `--min_lr` (1e-6), the learning rate the cosine ends at.
    pub min_lr: f64,
    /// `--warmup_epochs` (10), the epochs of linear learning-rate warm-up from 0.
    pub warmup_epochs: usize,
    /// `--weight_decay` (0.04) → `--weight_decay_end` (0.4).
    pub weight_decay: f64,
    /// `--weight_decay_end` (0.4), the end of the weight-decay cosine.
    pub weight_decay_end: f64,
    /// `--momentum_teacher` (0.996), to 1 on a cosine.
    pub momentum_teacher: f64,
    /// `--warmup_teacher_temp` (0.04) → `--teacher_temp` (0.04) over
    /// `--warmup_teacher_temp_epochs` (0).
    pub warmup_teacher_temp: f64,
    /// `--teacher_temp` (0.04), the teacher temperature after the warm-up.
    pub teacher_temp: f64,
    /// `--warmup_teacher_temp_epochs` (0), the epochs of the linear temperature warm-up.
    pub warmup_teacher_temp_epochs: usize,
    /// `--clip_grad` (3.0; 0 disables).
    pub clip_grad: f64,
    /// `--freeze_last_layer` (1).
    pub freeze_last_layer: usize,
    /// Seed of the initialisation and of every random draw.
    pub seed: u64,
    /// Present for `--arch resnet50` (and thinner variants): the ResNet's stages. The ViT fields
    /// (`depth`, `num_heads`, `patch_size`, `drop_path`) are then unused; `embed_dim` is the
    /// pooled feature's width.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resnet: Option<ResNetDims>,
    /// `--optimizer` (adamw; sgd and lars "to use with convnet and large batches").
    #[serde(default, skip_serializing_if = "OptimizerKind::is_adamw")]
    pub optimizer: OptimizerKind,
}

/// `main_dino.py --optimizer`: the optimiser built over `get_params_groups`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// `torch.optim.AdamW(params_groups)` (DINO's default, recommended with ViTs).
    #[default]
    Adamw,
    /// `torch.optim.SGD(params_groups, lr=0, momentum=0.9)`.
    Sgd,
    /// `utils.LARS(params_groups)`.
    Lars,
}

impl OptimizerKind {
    /// Whether this is the default (kept out of the recorded configuration, so configurations
    /// written before the option existed read back equal).
    pub fn is_adamw(&self) -> bool {
        *self == OptimizerKind::Adamw
    }
}

impl DinoTrainConfig {
    /// `main_dino.py`'s defaults with DINO's `vit_tiny` (192 wide, 12 deep, 3 heads),
    /// `vit_small` (384, 12, 6) or `vit_base` (768, 12, 12); patch 16.
    pub fn preset(arch: &str) -> Option<Self> {
        let (embed_dim, depth, num_heads) = match arch {
            "vit_tiny" => (192, 12, 3),
            "vit_small" => (384, 12, 6),
            "vit_base" => (768, 12, 12),
            "resnet50" => {
                // main_dino.py's defaults are the same for every architecture; torchvision's
                // resnet50, its 2048-d pooled feature into the head, no stochastic depth.
                let mut c = Self::preset("vit_small")?;
                c.arch = arch.to_string();
                c.resnet = Some(ResNetDims::RESNET50);
                c.embed_dim = ResNetDims::RESNET50.embed_dim();
                c.drop_path = 0.0;
                return Some(c);
            }
            _ => return None,
        };
        Some(Self {
            arch: arch.to_string(),
            embed_dim,
            depth,
            num_heads,
            patch_size: 16,
            drop_path: 0.1,
            out_dim: 65536,
            head_hidden: 2048,
            bottleneck: 256,
            head_layers: 3,
            norm_last_layer: true,
            use_bn_in_head: false,
            global_size: 224,
            local_size: 96,
            global_scale: (0.4, 1.0),
            local_scale: (0.05, 0.4),
            local_crops: 8,
            epochs: 100,
            batch_size: 64,
            lr: 0.0005,
            min_lr: 1e-6,
            warmup_epochs: 10,
            weight_decay: 0.04,
            weight_decay_end: 0.4,
            momentum_teacher: 0.996,
            warmup_teacher_temp: 0.04,
            teacher_temp: 0.04,
            warmup_teacher_temp_epochs: 0,
            clip_grad: 3.0,
            freeze_last_layer: 1,
            seed: 0,
            resnet: None,
            optimizer: OptimizerKind::Adamw,
        })
    }

    /// The architectures [`preset`](Self::preset) knows.
    pub const ARCHS: [&'static str; 4] = ["vit_tiny", "vit_small", "vit_base", "resnet50"];

    /// The backbone: DINO's `VisionTransformer` ([`DinoConfig::dino_v1`]), its position
    /// embedding made for the global crop, resampled for the locals with DINO's
    /// `interpolate_pos_encoding`.
    pub fn backbone(&self) -> DinoConfig {
        DinoConfig::dino_v1(self.global_size as usize, self.patch_size, self.embed_dim, self.depth, self.num_heads)
    }

    /// The projection head (`DINOHead`).
    pub fn head(&self) -> DinoHeadConfig {
        DinoHeadConfig {
            in_dim: self.embed_dim,
            out_dim: self.out_dim,
            norm_last_layer: self.norm_last_layer,
            nlayers: self.head_layers,
            hidden_dim: self.head_hidden,
            bottleneck_dim: self.bottleneck,
            use_bn: self.use_bn_in_head,
        }
    }

    /// The multi-crop augmentation.
    pub fn augment(&self) -> DinoAugmentConfig {
        DinoAugmentConfig::dino(
            self.global_size,
            self.local_size,
            self.global_scale,
            self.local_scale,
            self.local_crops,
        )
    }

    /// The peak learning rate after the linear scaling rule, `lr * batch_size / 256` (in
    /// `main_dino.py`'s order of operations, `batch_size` being `batch_size_per_gpu *
    /// world_size`).
    pub fn scaled_lr(&self) -> f64 {
        self.lr * self.batch_size as f64 / 256.0
    }

    /// The loss (`DINOLoss`), over `local_crops + 2` crops.
    pub fn loss(&self) -> DinoLossConfig {
        DinoLossConfig::new(
            self.out_dim,
            self.local_crops + 2,
            self.warmup_teacher_temp,
            self.teacher_temp,
            self.warmup_teacher_temp_epochs,
            self.epochs,
        )
    }

    /// Checks every value, naming the argument at fault.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("embed_dim", self.embed_dim),
            ("depth", self.depth),
            ("num_heads", self.num_heads),
            ("patch", self.patch_size),
            ("out_dim", self.out_dim),
            ("head_hidden", self.head_hidden),
            ("bottleneck", self.bottleneck),
            ("head_layers", self.head_layers),
            ("epochs", self.epochs),
            ("batch", self.batch_size),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(Error::arg(name, "must be positive"));
            }
        }
        if let Some(dims) = &self.resnet {
            if self.embed_dim != dims.embed_dim() {
                return Err(Error::arg(
                    "embed_dim",
                    format!("{} for a ResNet of {} features", self.embed_dim, dims.embed_dim()),
                ));
            }
            if dims.layers.contains(&0) || dims.planes.contains(&0) || dims.stem == 0 {
                return Err(Error::arg("arch", format!("ResNet stages {dims:?} must all be positive")));
            }
            if self.drop_path != 0.0 {
                return Err(Error::arg("drop_path", "stochastic depth is for the ViT; a ResNet has none"));
            }
            if self.warmup_epochs > self.epochs {
                return Err(Error::arg("warmup_epochs", format!("{} > {} epochs", self.warmup_epochs, self.epochs)));
            }
            return self.augment().validate();
        }
        if !self.embed_dim.is_multiple_of(self.num_heads) {
            return Err(Error::arg(
                "num_heads",
                format!("width {} is not divisible by {} heads", self.embed_dim, self.num_heads),
            ));
        }
        for (name, size) in [("global_size", self.global_size), ("local_size", self.local_size)] {
            if !(size as usize).is_multiple_of(self.patch_size) || size == 0 {
                return Err(Error::arg(
                    name,
                    format!("crop side {size} is not a positive multiple of the {}-pixel patch", self.patch_size),
                ));
            }
        }
        if self.warmup_epochs > self.epochs {
            return Err(Error::arg("warmup_epochs", format!("{} > {} epochs", self.warmup_epochs, self.epochs)));
        }
        if !(0.0..1.0).contains(&self.drop_path) {
            return Err(Error::arg("drop_path", format!("{} is not in [0, 1)", self.drop_path)));
        }
        for (name, v) in
            [("lr", self.lr), ("teacher_temp", self.teacher_temp), ("warmup_teacher_temp", self.warmup_teacher_temp)]
        {
            if !(v.is_finite() && v > 0.0) {
                return Err(Error::arg(name, format!("{v} must be positive")));
            }
        }
        if !(0.0..=1.0).contains(&self.momentum_teacher) {
            return Err(Error::arg("momentum_teacher", format!("{} is not in [0, 1]", self.momentum_teacher)));
        }
        self.augment().validate()?;
        self.backbone().validate().map_err(|m| Error::arg("arch", m))
    }
}
