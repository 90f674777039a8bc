//! [`ClipTrainer`]: the model, optimiser and schedule of a CLIP run, and one optimiser step of
//! open_clip's `train_one_epoch` ([`ClipTrainer::step`]), with its feature-cached gradient
//! accumulation.

use std::collections::HashMap;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use super::config::{ClipTrainConfig, LossKind, Start};
use super::loss::{clip_loss, siglip_loss};
use super::model::{LogitInit, TokenRows, TrainClip, MAX_LOGIT_SCALE, TOKEN_EMBEDDING};
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
        let (loss, mut grads, rows) = self.row_gradients(micro)?;
        let table = self.model.params().iter().find(|p| p.name() == TOKEN_EMBEDDING);
        if let (Some(rows), Some(g), Some(table)) = (rows, grads.get(TOKEN_EMBEDDING), table) {
            // The dense gradient: zero outside the rows.
            let index = Tensor::from_vec(rows, g.dim(0)?, g.device())?;
            let dense = table.var().as_detached_tensor().zeros_like()?.index_add(&index, g, 0)?;
            grads.insert(TOKEN_EMBEDDING, dense);
        }
        Ok((loss, grads))
    }

    /// [`gradients`](Self::gradients), the token embedding's (when trained) on the rows the
    /// batch used only: its entry holds those rows' gradients, `[rows, width]`, and the rows
    /// come third (ascending). Each row's gradient is summed as the dense one is (position by
    /// position from zero within a micro-batch, then micro-batch by micro-batch), so it has
    /// the same bits.
    fn row_gradients(&self, micro: &[MicroBatch]) -> Result<(f64, Grads, Option<Vec<u32>>)> {
        let device = self.model.device();
        let on = |p: &Tensor| p.to_device(&device);
        // The token embedding's rows are summed apart from the other gradients (their row sets
        // differ between micro-batches) and join them, in parameter order, at the end.
        let backward = |loss: &Tensor, rows: Option<TokenRows>| -> Result<(Grads, Option<RowGrad>)> {
            let store = loss.backward()?;
            let rows = match rows {
                Some(r) => store.get(r.leaf.as_tensor()).map(|g| RowGrad::gather(&r.ids, g)).transpose()?,
                None => None,
            };
            Ok((Grads::from_backward(self.model.params(), &store), rows))
        };
        let (value, grads, rows) = if micro.len() == 1 {
            let (img, txt, rows) = self.model.features_rows(&on(&micro[0].0)?, &micro[0].1)?;
            let loss = self.loss(&img, &txt)?;
            let value = scalar(&loss)?;
            let (grads, rows) = backward(&loss, rows)?;
            (value, grads, rows)
        } else {
            let mut cached = Vec::with_capacity(micro.len());
            for (pixels, ids) in micro {
                let (i, t) = self.model.features(&on(pixels)?, ids)?;
                cached.push((i.detach(), t.detach()));
            }
            let mut total: Option<(Grads, Option<RowGrad>)> = None;
            let mut value = 0.0;
            for (j, (pixels, ids)) in micro.iter().enumerate() {
                let (i, t, rows) = self.model.features_rows(&on(pixels)?, ids)?;
                let imgs: Vec<Tensor> =
                    cached.iter().enumerate().map(|(k, c)| if k == j { i.clone() } else { c.0.clone() }).collect();
                let txts: Vec<Tensor> =
                    cached.iter().enumerate().map(|(k, c)| if k == j { t.clone() } else { c.1.clone() }).collect();
                let loss = self.loss(&Tensor::cat(&imgs, 0)?, &Tensor::cat(&txts, 0)?)?;
                value = scalar(&loss)?;
                let (g, rows) = backward(&loss, rows)?;
                total = Some(match total {
                    None => (g, rows),
                    Some((mut acc, acc_rows)) => {
                        add_grads(&mut acc, &g)?;
                        let rows = match (acc_rows, rows) {
                            (Some(a), Some(b)) => Some(a.add(&b)),
                            (a, b) => a.or(b),
                        };
                        (acc, rows)
                    }
                });
            }
            let (grads, rows) = total.unwrap_or_default();
            (value, grads, rows)
        };
        Ok(match rows {
            Some(r) => {
                let grads = with_entry(grads, self.model.params(), TOKEN_EMBEDDING, r.tensor()?);
                (value, grads, Some(r.rows))
            }
            None => (value, grads, None),
        })
    }

    /// One optimiser step of `train_one_epoch` on the micro-batches of one logical batch:
    /// the step's learning rate for every group, the gradients ([`Self::gradients`]), clipping
    /// by total norm, AdamW, and `logit_scale` clamped to `[0, log 100]`. Fails, changing
    /// nothing, when the loss is not finite.
    pub fn step(&mut self, micro: &[MicroBatch]) -> Result<ClipStepMetrics> {
        let m = self.step_deferred(micro);
        self.sync()?;
        m
    }

    /// [`step`](Self::step) with the token embedding's zero-gradient row updates deferred (see
    /// [`AdamW::step_rows`]): the rows a batch reads are brought up to date before its forward
    /// pass, the rest wait for [`sync`](Self::sync), which must come before anything else
    /// reads the parameters or the optimiser state.
    pub(super) fn step_deferred(&mut self, micro: &[MicroBatch]) -> Result<ClipStepMetrics> {
        let start = Instant::now();
        let it = self.iteration;
        let epoch = it / self.steps_per_epoch;
        let lr = self.lr_at(it);
        for g in self.opt.groups_mut() {
            g.lr = lr;
        }
        let samples = micro.iter().map(|m| m.1.len()).sum();
        self.opt.catch_up_rows(TOKEN_EMBEDDING, micro.iter().flat_map(|m| m.1.iter().flatten().copied()))?;
        // A ResNet tower's training-mode forwards move its BatchNorm statistics: a failed step
        // puts them back.
        let stats = self.model.running_stats();
        let (loss, mut grads, rows) = match self.row_gradients(micro) {
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
        let token_rows = match rows {
            Some(rows) => grads.remove(TOKEN_EMBEDDING).map(|g| (rows, g)),
            None => None,
        };
        self.opt.step(&grads)?;
        if let Some((rows, g)) = token_rows {
            self.opt.step_rows(TOKEN_EMBEDDING, &rows, &g)?;
        }
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

    /// Takes every deferred row update of [`step_deferred`](Self::step_deferred).
    pub(super) fn sync(&mut self) -> Result<()> {
        self.opt.sync()
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

/// `grads` with `grad` as the entry of `name`, in parameter order.
fn with_entry(grads: Grads, params: &[Param], name: &str, grad: Tensor) -> Grads {
    let mut grad = Some(grad);
    let mut out = Grads::new();
    for p in params {
        if p.name() == name {
            if let Some(g) = grad.take() {
                out.insert(name, g);
            }
        } else if let Some(g) = grads.get(p.name()) {
            out.insert(p.name(), g.clone());
        }
    }
    out
}

/// The token embedding's gradient on the rows a batch used.
struct RowGrad {
    /// Distinct, ascending.
    rows: Vec<u32>,
    /// `[rows, width]`.
    values: Vec<f32>,
    width: usize,
}

impl RowGrad {
    /// The rows' gradient from the gathered rows' (`[ids, width]`), summed as candle's
    /// `index_select` backward sums it (`zeros.index_add`): position by position from zero.
    fn gather(ids: &[u32], grad: &Tensor) -> Result<Self> {
        let g = grad.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let width = g.len() / ids.len().max(1);
        let mut rows = ids.to_vec();
        rows.sort_unstable();
        rows.dedup();
        let mut values = vec![0f32; rows.len() * width];
        for (i, id) in ids.iter().enumerate() {
            let k = rows.binary_search(id).expect("every id is a row");
            for (d, s) in values[k * width..(k + 1) * width].iter_mut().zip(&g[i * width..(i + 1) * width]) {
                *d += s;
            }
        }
        Ok(Self { rows, values, width })
    }

    /// `self + other` as the dense sum has it: every value of the union `a + b`, a missing
    /// row's values zero.
    fn add(&self, other: &Self) -> Self {
        let mut rows: Vec<u32> = self.rows.iter().chain(&other.rows).copied().collect();
        rows.sort_unstable();
        rows.dedup();
        let w = self.width;
        fn row(g: &RowGrad, r: u32) -> Option<&[f32]> {
            g.rows.binary_search(&r).ok().map(|k| &g.values[k * g.width..(k + 1) * g.width])
        }
        let mut values = Vec::with_capacity(rows.len() * w);
        for &r in &rows {
            let (a, b) = (row(self, r), row(other, r));
            values.extend((0..w).map(|i| a.map_or(0.0, |a| a[i]) + b.map_or(0.0, |b| b[i])));
        }
        Self { rows, values, width: w }
    }

    /// The values as a `[rows, width]` tensor.
    fn tensor(&self) -> Result<Tensor> {
        Ok(Tensor::from_vec(self.values.clone(), (self.rows.len(), self.width), &Device::Cpu)?)
    }
}

/// The gradients' total L2 norm (what clipping would measure).
fn total_norm(grads: &Grads) -> Result<f64> {
    let mut sum = 0.0;
    for (_, g) in grads.iter() {
        sum += scalar(&g.sqr()?.sum_all()?)?;
    }
    Ok(sum.sqrt())
}
