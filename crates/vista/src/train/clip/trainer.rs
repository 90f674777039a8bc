//! [`ClipTrainer`]: the model, optimiser and schedule of a CLIP run, and one optimiser step of
//! open_clip's `train_one_epoch` ([`ClipTrainer::step`]), with its feature-cached gradient
//! accumulation.

use std::collections::HashMap;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use super::config::{ClipTrainConfig, LossKind, Start};
use super::loss::{clip_loss, siglip_loss};
use super::model::{LogitInit, TrainClip, MAX_LOGIT_SCALE};
use super::optim::{clip_grad_norm, lock_image_tower, lock_text_tower, param_groups};
use crate::optim::AdamWConfig;
use crate::train::adamw::AdamW;
use crate::train::param::{Grads, Param};
use crate::{Error, Result};

/// One micro-batch: `[n, S, S, 3]` pixels (channels-last, normalised) and `n` token rows.
pub type MicroBatch = (Tensor, Vec<Vec<u32>>);

/// One optimiser step's numbers (a line of `metrics.jsonl`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClipStepMetrics {
    /// Epoch (from 0).
    pub epoch: usize,
    /// Optimiser step (from 0, over the whole run).
    pub iteration: usize,
    /// The contrastive loss of the logical batch.
    pub loss: f64,
    /// Learning rate of the step.
    pub lr: f64,
    /// `exp(logit_scale)` after the step.
    pub logit_scale: f64,
    /// The gradients' total norm before clipping.
    pub grad_norm: f64,
    /// Image–caption pairs in the step.
    pub samples: usize,
    /// Wall time of the step (forward, backward, update), seconds.
    pub seconds: f64,
}

/// The trainable state of a CLIP run.
pub struct ClipTrainer {
    /// The run's configuration.
    pub config: ClipTrainConfig,
    pub(super) model: TrainClip,
    pub(super) opt: AdamW,
    pub(super) steps_per_epoch: usize,
    /// Epochs completed.
    pub epoch: usize,
    /// Optimiser steps completed.
    pub iteration: usize,
}

impl ClipTrainer {
    /// A run starting from `initial` (canonical tensors; `None` for open_clip's seeded
    /// initialisation), with the towers locked as configured.
    pub fn new(
        config: ClipTrainConfig,
        steps_per_epoch: usize,
        initial: Option<&HashMap<String, Tensor>>,
        device: &Device,
    ) -> Result<Self> {
        config.validate()?;
        if steps_per_epoch == 0 {
            return Err(Error::arg(
                "batch",
                format!("fewer pairs than one batch of {}: nothing to train on", config.logical_batch()),
            ));
        }
        let logit = match config.loss {
            LossKind::Clip => LogitInit::CLIP,
            LossKind::Siglip => LogitInit::SIGLIP,
        };
        let mut model = match (initial, &config.start) {
            (Some(t), _) => {
                let mut t = t.clone();
                if config.loss == LossKind::Siglip && !t.contains_key("logit_bias") {
                    t.insert("logit_bias".into(), Tensor::new(logit.bias.unwrap_or(0.0) as f32, &Device::Cpu)?);
                }
                TrainClip::from_tensors(config.model.clone(), &t, device)?
            }
            (None, Start::Scratch) => TrainClip::init(config.model.clone(), config.seed, logit, device)?,
            (None, Start::Checkpoint { model }) => {
                return Err(Error::arg("model", format!("the weights of {model} were not given")))
            }
        };
        apply_locks(&config, model.params_mut());
        let opt = AdamW::new(
            model.params(),
            param_groups(model.params(), config.weight_decay),
            AdamWConfig { betas: config.betas, eps: config.eps },
        )?;
        Ok(Self { config, model, opt, steps_per_epoch, epoch: 0, iteration: 0 })
    }

    /// The model.
    pub fn model(&self) -> &TrainClip {
        &self.model
    }

    /// Optimiser steps per epoch.
    pub fn steps_per_epoch(&self) -> usize {
        self.steps_per_epoch
    }

    /// Optimiser steps over the run.
    pub fn total_steps(&self) -> usize {
        self.steps_per_epoch * self.config.epochs
    }

    /// The batch epoch `epoch` starts at (past those a checkpoint within it already holds).
    pub fn first_batch_of(&self, epoch: usize) -> usize {
        self.iteration.saturating_sub(epoch * self.steps_per_epoch).min(self.steps_per_epoch)
    }

    /// The learning rate of step `it`.
    pub fn lr_at(&self, it: usize) -> f64 {
        self.config.schedule.lr(self.config.lr, self.config.warmup, self.total_steps(), it)
    }

    fn loss(&self, image: &Tensor, text: &Tensor) -> Result<Tensor> {
        match self.config.loss {
            LossKind::Clip => clip_loss(image, text, &self.model.logit_scale()?),
            LossKind::Siglip => {
                let bias = self.model.logit_bias()?.ok_or_else(|| Error::arg("loss", "SigLIP needs a logit_bias"))?;
                siglip_loss(image, text, &self.model.logit_scale()?, &bias)
            }
        }
    }

    /// The loss and gradients of one logical batch, before clipping: with one micro-batch a
    /// plain backward; with several, open_clip's feature-cached accumulation — every
    /// micro-batch embedded without gradient first, then each recomputed with gradient and its
    /// features put in place of its cached ones, the whole batch's loss taken and
    /// back-propagated, the gradients summed. The sum equals the plain large batch's gradient
    /// for every tower weight; `logit_scale` (and `logit_bias`), live in every pass, receive it
    /// once per micro-batch, as in open_clip.
    pub fn gradients(&self, micro: &[MicroBatch]) -> Result<(f64, Grads)> {
        let device = self.model.device();
        let on = |p: &Tensor| p.to_device(&device);
        if micro.len() == 1 {
            let (img, txt) = self.model.features(&on(&micro[0].0)?, &micro[0].1)?;
            let loss = self.loss(&img, &txt)?;
            let value = scalar(&loss)?;
            return Ok((value, Grads::from_backward(self.model.params(), &loss.backward()?)));
        }
        let mut cached = Vec::with_capacity(micro.len());
        for (pixels, ids) in micro {
            let (i, t) = self.model.features(&on(pixels)?, ids)?;
            cached.push((i.detach(), t.detach()));
        }
        let mut total: Option<Grads> = None;
        let mut value = 0.0;
        for (j, (pixels, ids)) in micro.iter().enumerate() {
            let (i, t) = self.model.features(&on(pixels)?, ids)?;
            let imgs: Vec<Tensor> =
                cached.iter().enumerate().map(|(k, c)| if k == j { i.clone() } else { c.0.clone() }).collect();
            let txts: Vec<Tensor> =
                cached.iter().enumerate().map(|(k, c)| if k == j { t.clone() } else { c.1.clone() }).collect();
            let loss = self.loss(&Tensor::cat(&imgs, 0)?, &Tensor::cat(&txts, 0)?)?;
            value = scalar(&loss)?;
            let g = Grads::from_backward(self.model.params(), &loss.backward()?);
            total = Some(match total {
                None => g,
                Some(mut acc) => {
                    add_grads(&mut acc, &g)?;
                    acc
                }
            });
        }
        Ok((value, total.unwrap_or_default()))
    }

    /// One optimiser step of `train_one_epoch` on the micro-batches of one logical batch:
    /// the step's learning rate for every group, the gradients ([`Self::gradients`]), clipping
    /// by total norm, AdamW, and `logit_scale` clamped to `[0, log 100]`. Fails, changing
    /// nothing, when the loss is not finite.
    pub fn step(&mut self, micro: &[MicroBatch]) -> Result<ClipStepMetrics> {
        let start = Instant::now();
        let it = self.iteration;
        let epoch = it / self.steps_per_epoch;
        let lr = self.lr_at(it);
        for g in self.opt.groups_mut() {
            g.lr = lr;
        }
        let samples = micro.iter().map(|m| m.1.len()).sum();
        // A ResNet tower's training-mode forwards move its BatchNorm statistics: a failed step
        // puts them back.
        let stats = self.model.running_stats();
        let (loss, mut grads) = match self.gradients(micro) {
            Ok(g) => g,
            Err(e) => {
                self.model.set_running_stats(stats);
                return Err(e);
            }
        };
        if !loss.is_finite() {
            self.model.set_running_stats(stats);
            return Err(Error::NonFiniteLoss { loss, epoch, iteration: it, kept: None });
        }
        let grad_norm = match self.config.grad_clip_norm {
            Some(max) => clip_grad_norm(&mut grads, max)?,
            None => total_norm(&grads)?,
        };
        self.opt.step(&grads)?;
        self.clamp_logit_scale()?;
        self.iteration += 1;
        Ok(ClipStepMetrics {
            epoch,
            iteration: it,
            loss,
            lr,
            logit_scale: scalar(&self.model.logit_scale()?)?.exp(),
            grad_norm,
            samples,
            seconds: start.elapsed().as_secs_f64(),
        })
    }

    /// `logit_scale.clamp_(0, math.log(100))`.
    fn clamp_logit_scale(&self) -> Result<()> {
        if let Some(p) = self.model.params().iter().find(|p| p.name() == "logit_scale") {
            let v = p.var().as_detached_tensor().clamp(0f32, MAX_LOGIT_SCALE as f32)?;
            p.var().set(&v)?;
        }
        Ok(())
    }

    /// The optimiser (its groups and moments).
    pub fn optimizer(&self) -> &AdamW {
        &self.opt
    }

    /// The parameters (in state-dict order).
    pub fn params(&self) -> &[Param] {
        self.model.params()
    }
}

/// Locks the towers as the configuration asks.
pub fn apply_locks(config: &ClipTrainConfig, params: &mut [Param]) {
    if let Some(n) = config.lock_image {
        lock_image_tower(params, config.model.vision.tower.layers, n);
    }
    if let Some(n) = config.lock_text {
        lock_text_tower(params, config.model.text.tower.layers, n);
    }
}

fn scalar(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()?)
}

/// `acc += g`, entry by entry (an entry only in `g` is added).
fn add_grads(acc: &mut Grads, g: &Grads) -> Result<()> {
    for (name, t) in g.iter() {
        let sum = match acc.get(name) {
            Some(a) => (a + t)?,
            None => t.clone(),
        };
        acc.insert(name, sum);
    }
    Ok(())
}

/// The gradients' total L2 norm (what clipping would measure).
fn total_norm(grads: &Grads) -> Result<f64> {
    let mut sum = 0.0;
    for (_, g) in grads.iter() {
        sum += scalar(&g.sqr()?.sum_all()?)?;
    }
    Ok(sum.sqrt())
}
