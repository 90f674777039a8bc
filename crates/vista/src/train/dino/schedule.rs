//! DINO's training schedules, computed once, as `main_dino.py` computes them with numpy:
//! [`DinoSchedules`] builds the four arrays (learning rate with the linear scaling rule
//! `lr * batch_size / 256`, weight decay 0.04 → 0.4, teacher EMA momentum 0.996 → 1,
//! teacher temperature) from a [`DinoTrainConfig`]'s hyper-parameters (documented there, once)
//! and the number of iterations per epoch; [`teacher_temp_schedule`] is
//! `DINOLoss.teacher_temp_schedule`: a per-*epoch* linear warmup from `warmup_teacher_temp` to
//! `teacher_temp` over `warmup_teacher_temp_epochs` epochs, then constant.

use super::config::DinoTrainConfig;
use crate::optim::schedule::{cosine_scheduler, linspace};
use crate::{Error, Result};

/// `DINOLoss.teacher_temp_schedule`: one value per epoch,
/// `concat(linspace(warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs),
/// ones(nepochs - warmup_teacher_temp_epochs) * teacher_temp)`.
///
/// Errors when the warmup is longer than the training (numpy refuses a negative size).
pub fn teacher_temp_schedule(
    warmup_teacher_temp: f64,
    teacher_temp: f64,
    warmup_teacher_temp_epochs: usize,
    nepochs: usize,
) -> Result<Vec<f64>> {
    if warmup_teacher_temp_epochs > nepochs {
        return Err(Error::arg(
            "warmup_teacher_temp_epochs",
            format!("{warmup_teacher_temp_epochs} warmup epochs is more than the {nepochs} epochs of training"),
        ));
    }
    let mut s = linspace(warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs);
    s.extend(std::iter::repeat_n(teacher_temp, nepochs - warmup_teacher_temp_epochs));
    Ok(s)
}

/// The schedules of `main_dino.py`: `lr`, `wd` and `momentum` have one value per iteration
/// (`epochs * niter_per_ep`, indexed by the global iteration `epoch * niter_per_ep + it`),
/// `teacher_temp` one per epoch. `niter_per_ep` is the number of batches per epoch
/// (`len(data_loader)`, which drops the last incomplete batch).
#[derive(Debug, Clone, PartialEq)]
pub struct DinoSchedules {
    /// `cosine_scheduler(lr * batch_size / 256, min_lr, epochs, niter, warmup_epochs)`.
    pub lr: Vec<f64>,
    /// `cosine_scheduler(weight_decay, weight_decay_end, epochs, niter)` (first parameter
    /// group only: DINO does not decay biases and norms).
    pub wd: Vec<f64>,
    /// `cosine_scheduler(momentum_teacher, 1, epochs, niter)`: teacher EMA momentum.
    pub momentum: Vec<f64>,
    /// `DINOLoss.teacher_temp_schedule`, per epoch.
    pub teacher_temp: Vec<f64>,
}

impl DinoSchedules {
    /// The four schedules of `cfg` for `niter_per_ep` iterations per epoch.
    pub fn new(cfg: &DinoTrainConfig, niter_per_ep: usize) -> Result<Self> {
        let (e, n) = (cfg.epochs, niter_per_ep);
        Ok(Self {
            lr: cosine_scheduler(cfg.scaled_lr(), cfg.min_lr, e, n, cfg.warmup_epochs, 0.0)?,
            wd: cosine_scheduler(cfg.weight_decay, cfg.weight_decay_end, e, n, 0, 0.0)?,
            momentum: cosine_scheduler(cfg.momentum_teacher, 1.0, e, n, 0, 0.0)?,
            teacher_temp: teacher_temp_schedule(
                cfg.warmup_teacher_temp,
                cfg.teacher_temp,
                cfg.warmup_teacher_temp_epochs,
                cfg.epochs,
            )?,
        })
    }

    /// Number of training iterations (`epochs * niter_per_ep`).
    pub fn len(&self) -> usize {
        self.lr.len()
    }

    /// True for a run without iterations.
    pub fn is_empty(&self) -> bool {
        self.lr.is_empty()
    }
}
