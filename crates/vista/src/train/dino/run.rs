//! `main_dino.py` end to end, as named phases: resume or start ([`DinoTrainer`]), open the
//! metrics log, build the data, evaluate at initialisation, then per epoch train
//! (`train_one_epoch`) and close the epoch (checkpoint, backbone export, k-NN evaluation).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use candle_core::Device;
use serde_json::json;

use super::checkpoint::config_diff;
use super::config::DinoTrainConfig;
use super::data::{EpochBatches, LoaderOptions};
use super::monitor::{CollapseMonitor, MetricsLog, StepMetrics};
use super::trainer::DinoTrainer;
use crate::data::{Item, LabelledSet};
use crate::eval::{knn, knn_accuracy};
use crate::image::augment::DataAugmentationDino;
use crate::image::DecodeOptions;
use crate::{Error, Result};

/// File names inside a run's output folder.
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";
/// The exported teacher backbone.
pub const BACKBONE_FILE: &str = "backbone.safetensors";
/// One JSON object per line: a [`StepMetrics`] per step, evaluations and warnings.
pub const METRICS_FILE: &str = "metrics.jsonl";

/// What a run reports as it goes.
pub enum Event<'a> {
    /// An epoch starts at batch `first` (0 unless resuming midway) of `batches`.
    EpochStart {
        /// The epoch (0-based).
        epoch: usize,
        /// The first batch to run.
        first: usize,
        /// Batches in the epoch.
        batches: usize,
    },
    /// A step is done.
    Step(&'a StepMetrics),
    /// Items that could not be loaded in a batch.
    Skipped(&'a [String]),
    /// The collapse monitor's warning.
    Collapse(&'a str),
    /// An epoch is done (and saved).
    EpochEnd {
        /// The epoch (0-based).
        epoch: usize,
        /// Its wall time, data loading included, checkpointing and evaluation not.
        seconds: f64,
        /// Mean loss over its steps.
        mean_loss: f64,
        /// The teacher's k-NN top-1 after it, when evaluated.
        knn_top1: Option<f64>,
    },
    /// The k-NN top-1 of the teacher at initialisation (a fresh run with k-NN evaluation).
    InitialKnn(f64),
    /// A checkpoint was written.
    Saved(&'a Path),
}

/// k-NN evaluation of the teacher during a run (DINO's `eval_knn.py` on a labelled set).
pub struct KnnEval {
    /// The labelled memory bank.
    pub train: LabelledSet,
    /// The labelled test set.
    pub test: LabelledSet,
    /// Neighbours.
    pub k: usize,
    /// Evaluate after every this many epochs (0: only after the last) and after the last.
    pub every: usize,
}

/// A run's inputs besides the configuration.
pub struct RunOptions {
    /// The output folder: `checkpoint.safetensors` (+ `.json`), `metrics.jsonl`,
    /// `backbone.safetensors`, `checkpoint<EEEE>.safetensors` every `save_every` epochs.
    pub output: PathBuf,
    /// Threads that decode and augment images ahead of the step (0: in the training thread).
    pub workers: usize,
    /// Batches prepared ahead at most.
    pub prefetch: usize,
    /// How images are decoded.
    pub decode: DecodeOptions,
    /// Keep a numbered copy of the checkpoint every this many epochs (0: never).
    pub save_every: usize,
    /// Also write the checkpoint every this many steps within an epoch (0: only at epoch ends),
    /// so a long epoch interrupted midway resumes from its last saved step.
    pub save_every_steps: usize,
    /// k-NN evaluation of the teacher.
    pub knn: Option<KnnEval>,
    /// Stop after this many epochs in this call (the schedule still spans `config.epochs`);
    /// for tests and for splitting a run.
    pub max_epochs: Option<usize>,
    /// Where the networks live and the steps run (data loading stays on CPU threads).
    pub device: Device,
}

/// Trains (or resumes, when the output folder holds a checkpoint of the same configuration)
/// on `items`. Each epoch ends with the checkpoint, the exported backbone and, when asked, the
/// k-NN evaluation. Returns the trainer after the last epoch run.
pub fn run(
    config: DinoTrainConfig,
    items: Vec<Item>,
    options: &RunOptions,
    mut on_event: impl FnMut(Event<'_>),
) -> Result<DinoTrainer> {
    // Models: a fresh run, or the checkpoint in the output folder.
    config.validate()?;
    let ckpt = options.output.join(CHECKPOINT_FILE);
    let mut trainer = resume_or_start(config, items.len(), &ckpt, &options.device)?;
    std::fs::create_dir_all(&options.output).map_err(|e| Error::io(&options.output, e))?;
    let mut metrics = MetricsLog::open(&options.output.join(METRICS_FILE), trainer.iteration, trainer.epoch)?;

    // Data: the multi-crop augmentation on worker threads.
    let items = Arc::new(items);
    let aug = Arc::new(DataAugmentationDino::new(trainer.config.augment())?);
    let loader = LoaderOptions {
        batch_size: trainer.config.batch_size,
        seed: trainer.config.seed,
        workers: options.workers,
        prefetch: options.prefetch,
        decode: options.decode,
    };
    let mut monitor = CollapseMonitor::new(20, 1e-3, trainer.config.out_dim);
    let last = match options.max_epochs {
        Some(m) => (trainer.epoch + m).min(trainer.config.epochs),
        None => trainer.config.epochs,
    };

    // The teacher at initialisation, as a baseline for the evaluations to come.
    if let (Some(eval), 0) = (&options.knn, trainer.iteration) {
        let acc = evaluate(&trainer, eval)?;
        metrics.write(&json!({"knn_k": eval.k, "knn_top1_init": acc}))?;
        on_event(Event::InitialKnn(acc));
    }

    while trainer.epoch < last {
        let epoch = trainer.epoch;
        let start = Instant::now();
        let batches = EpochBatches::new(items.clone(), aug.clone(), &loader, epoch, trainer.first_batch_of(epoch));
        let mean_loss = train_one_epoch(&mut trainer, batches, &mut metrics, &mut monitor, options, &mut on_event)
            .map_err(|e| match e {
                Error::NonFiniteLoss { loss, epoch, iteration, .. } => {
                    Error::NonFiniteLoss { loss, epoch, iteration, kept: Some(ckpt.clone()) }
                }
                e => e,
            })?;
        // The epoch's wall time: loader start, data waits and steps; not the checkpoint or the
        // evaluation (the span tools/bench/bench_dino_train.py compares with PyTorch's epoch).
        let seconds = start.elapsed().as_secs_f64();
        metrics.write(&json!({"epoch": epoch, "epoch_seconds": seconds}))?;
        let knn_top1 = end_epoch(&mut trainer, &mut metrics, options, last, &mut on_event)?;
        on_event(Event::EpochEnd { epoch, seconds, mean_loss, knn_top1 });
    }
    Ok(trainer)
}

/// The trainer of the checkpoint at `ckpt` when there is one (refused when its configuration
/// or its batches per epoch differ from this run's), else a fresh one.
fn resume_or_start(config: DinoTrainConfig, items: usize, ckpt: &Path, device: &Device) -> Result<DinoTrainer> {
    let niter = items / config.batch_size;
    if !ckpt.is_file() {
        return DinoTrainer::new(config, niter, device);
    }
    let t = DinoTrainer::load(ckpt, device)?;
    if t.config != config {
        return Err(Error::Config {
            path: ckpt.to_path_buf(),
            message: format!(
                "the run in this folder has another configuration ({}); use another --output or the same arguments",
                config_diff(&t.config, &config)
            ),
        });
    }
    if t.niter_per_ep() != niter {
        return Err(Error::Config {
            path: ckpt.to_path_buf(),
            message: format!(
                "the run in this folder has {} batches per epoch, this data set gives {niter}",
                t.niter_per_ep()
            ),
        });
    }
    Ok(t)
}

/// One epoch of steps (`train_one_epoch`); returns the mean loss. Writes a metrics line per step
/// and the checkpoint every `save_every_steps` within the epoch.
fn train_one_epoch(
    trainer: &mut DinoTrainer,
    batches: EpochBatches,
    metrics: &mut MetricsLog,
    monitor: &mut CollapseMonitor,
    options: &RunOptions,
    on_event: &mut impl FnMut(Event<'_>),
) -> Result<f64> {
    let epoch = trainer.epoch;
    let niter = trainer.niter_per_ep();
    let ckpt = options.output.join(CHECKPOINT_FILE);
    on_event(Event::EpochStart { epoch, first: batches.first(), batches: batches.len() });
    let (mut loss_sum, mut steps) = (0.0, 0usize);
    for batch in batches {
        let batch = batch?;
        let it = batch.index;
        if !batch.failed.is_empty() {
            on_event(Event::Skipped(&batch.failed));
        }
        let global = epoch * niter + it;
        if batch.crops.is_empty() {
            trainer.iteration = global + 1;
            continue;
        }
        let m = trainer.step(&batch.crops, epoch, global)?;
        trainer.iteration = global + 1;
        metrics.write(&m)?;
        loss_sum += m.loss;
        steps += 1;
        on_event(Event::Step(&m));
        if let Some(w) = monitor.observe(&m) {
            metrics.write(&json!({"warning": w, "iteration": m.iteration}))?;
            on_event(Event::Collapse(&w));
        }
        let every = options.save_every_steps;
        if every > 0 && (it + 1) % every == 0 && it + 1 < niter {
            metrics.flush()?;
            trainer.save(&ckpt)?;
            on_event(Event::Saved(&ckpt));
        }
    }
    Ok(if steps > 0 { loss_sum / steps as f64 } else { f64::NAN })
}

/// Closes an epoch: the checkpoint, the backbone export, a numbered copy every `save_every`
/// epochs, and the k-NN evaluation when due (its top-1 is returned).
fn end_epoch(
    trainer: &mut DinoTrainer,
    metrics: &mut MetricsLog,
    options: &RunOptions,
    last: usize,
    on_event: &mut impl FnMut(Event<'_>),
) -> Result<Option<f64>> {
    let epoch = trainer.epoch;
    trainer.epoch = epoch + 1;
    metrics.flush()?;
    let ckpt = options.output.join(CHECKPOINT_FILE);
    trainer.save(&ckpt)?;
    on_event(Event::Saved(&ckpt));
    trainer.export_backbone(&options.output.join(BACKBONE_FILE))?;
    if options.save_every > 0 && trainer.epoch.is_multiple_of(options.save_every) {
        trainer.save(&options.output.join(format!("checkpoint{:04}.safetensors", trainer.epoch)))?;
    }
    let Some(eval) = &options.knn else { return Ok(None) };
    if trainer.epoch != last && (eval.every == 0 || !trainer.epoch.is_multiple_of(eval.every)) {
        return Ok(None);
    }
    let acc = evaluate(trainer, eval)?;
    metrics.write(&json!({"epoch": epoch, "knn_k": eval.k, "knn_top1": acc}))?;
    Ok(Some(acc))
}

fn evaluate(trainer: &DinoTrainer, eval: &KnnEval) -> Result<f64> {
    knn_accuracy(&trainer.teacher_pipeline()?, &eval.train, &eval.test, eval.k, knn::DEFAULT_TEMPERATURE)
}
