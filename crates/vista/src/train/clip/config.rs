//! [`ClipTrainConfig`]: everything that defines a CLIP training run, open_clip's defaults written
//! once (`open_clip_train/params.py`, ViT: AdamW β = (0.9, 0.98), ε = 1e-6, weight decay 0.2,
//! cosine schedule with linear warm-up); the CLI's flags override them.

use serde::{Deserialize, Serialize};

use super::optim::LrSchedule;
use crate::clip::ClipConfig;
use crate::{Error, Result};

/// Which contrastive loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LossKind {
    /// `ClipLoss`: symmetric InfoNCE.
    Clip,
    /// `SigLipLoss`: pairwise sigmoid with a learned bias.
    Siglip,
}

/// Where the weights start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Start {
    /// open_clip's initialisation, seeded.
    Scratch,
    /// A checkpoint vista loads (`--model`), as the user named it.
    Checkpoint {
        /// File, folder or hub id.
        model: String,
    },
}

/// A CLIP training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClipTrainConfig {
    /// The architecture (towers, sizes, preprocessing statistics).
    pub model: ClipConfig,
    /// Where the weights start.
    pub start: Start,
    /// The loss.
    pub loss: LossKind,
    /// Epochs.
    pub epochs: usize,
    /// Images per micro-batch (`--batch-size`).
    pub batch_size: usize,
    /// Micro-batches per optimiser step (`--accum-freq`); the logical batch is their product.
    pub accum_freq: usize,
    /// Peak learning rate (`--lr`).
    pub lr: f64,
    /// Weight decay of the decayed group (`--wd`).
    pub weight_decay: f64,
    /// AdamW's β₁, β₂.
    pub betas: (f64, f64),
    /// AdamW's ε.
    pub eps: f64,
    /// Linear warm-up steps (`--warmup`).
    pub warmup: usize,
    /// The learning-rate schedule after the warm-up.
    pub schedule: LrSchedule,
    /// `--grad-clip-norm` (none: no clipping).
    pub grad_clip_norm: Option<f64>,
    /// `RandomResizedCrop`'s area range at training (`(0.9, 1.0)`).
    pub crop_scale: (f64, f64),
    /// LiT: lock the image tower, leaving this many of its last groups trainable.
    pub lock_image: Option<usize>,
    /// Lock the text tower, leaving this many of its last groups trainable.
    pub lock_text: Option<usize>,
    /// Seed of the initialisation, the order, the augmentations and the caption choices.
    pub seed: u64,
}

impl ClipTrainConfig {
    /// open_clip's recipe for `model`, from scratch.
    pub fn new(model: ClipConfig) -> Self {
        Self {
            model,
            start: Start::Scratch,
            loss: LossKind::Clip,
            epochs: 32,
            batch_size: 64,
            accum_freq: 1,
            lr: 5e-4,
            weight_decay: 0.2,
            betas: (0.9, 0.98),
            eps: 1e-6,
            warmup: 10_000,
            schedule: LrSchedule::Cosine,
            grad_clip_norm: None,
            crop_scale: (0.9, 1.0),
            lock_image: None,
            lock_text: None,
            seed: 0,
        }
    }

    /// Images per optimiser step.
    pub fn logical_batch(&self) -> usize {
        self.batch_size * self.accum_freq
    }

    /// Checks the numbers make sense.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::arg("train clip", m));
        self.model.validate().map_err(|m| Error::arg("model", m))?;
        if self.epochs == 0 {
            return bad("--epochs must be at least 1".into());
        }
        if self.batch_size < 2 && self.accum_freq * self.batch_size < 2 {
            return bad("a contrastive batch needs at least 2 pairs (--batch-size)".into());
        }
        if self.batch_size == 0 || self.accum_freq == 0 {
            return bad("--batch-size and --accum-freq must be at least 1".into());
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return bad(format!("--lr {} is not a positive number", self.lr));
        }
        if self.weight_decay.is_nan() || self.weight_decay < 0.0 {
            return bad(format!("--wd {} is negative", self.weight_decay));
        }
        let (lo, hi) = self.crop_scale;
        if !(0.0 < lo && lo <= hi && hi <= 1.0) {
            return bad(format!("crop scale ({lo}, {hi}) is not within (0, 1]"));
        }
        if let Some(c) = self.grad_clip_norm {
            if c.is_nan() || c <= 0.0 {
                return bad(format!("--grad-clip-norm {c} is not positive"));
            }
        }
        // open_clip's ModifiedResNet.lock: "partial locking not currently supported for this model".
        if self.model.vision.resnet.is_some() && self.lock_image.is_some_and(|n| n > 0) {
            return bad("a ResNet image tower locks whole (--lock-image-unlocked-groups 0), as open_clip's".into());
        }
        Ok(())
    }
}
