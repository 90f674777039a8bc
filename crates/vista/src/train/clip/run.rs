//! A CLIP training run end to end, as named phases: resume or start, data, evaluate the start,
//! per epoch train (open_clip's `train_one_epoch`) and close (checkpoint, export, evaluation),
//! then — when fine-tuning with WiSE-FT — interpolate and gate.
//!
//! The run folder holds `checkpoint.safetensors` (+ `.json`; every tensor, AdamW's moments and
//! the JSON state, written atomically every `save_every_steps` and at each epoch's end),
//! `metrics.jsonl`, `export/` (`open_clip_config.json` + `open_clip_model.safetensors`, loadable
//! by `vista embed/classify/index --model RUN/export`) and `report.json` (the evaluations, and
//! the gate's decision). Everything random is a function of `(seed, epoch, sample)`, so a run
//! killed at any point resumes from its last checkpoint to the same bits.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::config::{ClipTrainConfig, Start};
use super::data::{ClipBatch, ClipBatches};
use super::eval::{class_embeddings, embed_pairs, recall, zero_shot_top1, Recall};
use super::model::TrainClip;
use super::optim::wise_ft;
use super::trainer::{ClipStepMetrics, ClipTrainer, MicroBatch};
use crate::clip::tokenizer::TextTokenizer;
use crate::clip::ClipConfig;
use crate::data::CaptionSet;
use crate::image::{ClipPreprocess, DecodeOptions};
use crate::train::dino::MetricsLog;
use crate::train::loader::{Batches, LoaderOptions};
use crate::weights::formats::{read_safetensors, write_atomic, write_safetensors};
use crate::{Error, Result};

/// The training checkpoint in the run folder.
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";
/// One JSON object per line: steps, epoch times, evaluations.
pub const METRICS_FILE: &str = "metrics.jsonl";
/// The exported model's folder.
pub const EXPORT_DIR: &str = "export";
/// The final evaluations and the WiSE-FT gate.
pub const REPORT_FILE: &str = "report.json";
/// The `format` metadata of a checkpoint.
pub const CHECKPOINT_FORMAT: &str = "vista-clip-train/1";

/// What a run reports as it goes.
pub enum Event<'a> {
    /// An epoch starts at batch `first` of `batches`.
    EpochStart {
        /// The epoch (0-based).
        epoch: usize,
        /// The first batch to run.
        first: usize,
        /// Optimiser steps in the epoch.
        batches: usize,
    },
    /// A step is done.
    Step(&'a ClipStepMetrics),
    /// Samples that could not be loaded.
    Skipped(&'a [String]),
    /// An evaluation (after epoch `epoch`; `None` for the starting weights).
    Evaluated(Option<usize>, &'a Evaluation),
    /// An epoch is done and saved.
    EpochEnd {
        /// The epoch (0-based).
        epoch: usize,
        /// Wall time of its steps with data loading (not the checkpoint or evaluation).
        seconds: f64,
        /// Mean loss.
        mean_loss: f64,
        /// Pairs per second over the epoch.
        samples_per_second: f64,
    },
    /// A checkpoint was written.
    Saved(&'a Path),
}

/// The evaluations of one model.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// Zero-shot top-1 (a fraction) on the labelled set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zero_shot_top1: Option<f64>,
    /// Retrieval recall on the held-out captions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recall: Option<Recall>,
}

impl Evaluation {
    /// The number the WiSE-FT gate compares: zero-shot top-1 when measured, else the mean
    /// recall@10.
    pub fn score(&self) -> Option<f64> {
        self.zero_shot_top1.or(self.recall.map(|r| r.mean_r10()))
    }
}

/// A labelled set for zero-shot evaluation.
pub struct ZeroShotSet {
    /// The images (labels index `classes`).
    pub set: CaptionSet,
    /// Prompt templates (`{}` = the class name).
    pub templates: Vec<String>,
}

/// A run's inputs besides the configuration.
pub struct RunOptions {
    /// The run folder.
    pub output: PathBuf,
    /// The family's tokenizer.
    pub tokenizer: Arc<TextTokenizer>,
    /// Threads decoding and augmenting ahead of the step (0: in the training thread).
    pub workers: usize,
    /// Batches prepared ahead at most.
    pub prefetch: usize,
    /// Image decoding.
    pub decode: DecodeOptions,
    /// Also checkpoint every this many steps within an epoch (0: only at epoch ends).
    pub save_every_steps: usize,
    /// Evaluate after every this many epochs (0: only after the last), and after the last.
    pub eval_every: usize,
    /// Held-out captions for retrieval recall.
    pub held_out: Option<CaptionSet>,
    /// A labelled set for zero-shot top-1.
    pub zero_shot: Option<ZeroShotSet>,
    /// WiSE-FT: after fine-tuning, interpolate with the starting weights at this α.
    pub wise_ft: Option<f64>,
    /// The starting weights of a fine-tuning run (canonical names), for a fresh start and for
    /// WiSE-FT.
    pub initial: Option<HashMap<String, Tensor>>,
    /// Stop after this many epochs in this call (the schedule still spans the configuration's).
    pub max_epochs: Option<usize>,
    /// Where the model lives and the steps run.
    pub device: Device,
}

/// The JSON state stored with a checkpoint's tensors.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CheckpointState {
    format: String,
    config: ClipTrainConfig,
    steps_per_epoch: usize,
    epoch: usize,
    iteration: usize,
    optimizer_steps: BTreeMap<String, u64>,
    /// The evaluation of the starting weights.
    start_evaluation: Option<Evaluation>,
    vista_version: String,
}

/// What the run ends with.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// The starting weights' evaluation (a fine-tuning run, or from scratch).
    pub start: Option<Evaluation>,
    /// The trained weights' evaluation.
    pub trained: Option<Evaluation>,
    /// WiSE-FT's α and the interpolated weights' evaluation.
    pub wise_ft: Option<(f64, Evaluation)>,
    /// Which weights were exported: `trained`, `wise-ft` or `start` (the gate refused the
    /// fine-tuned ones).
    pub exported: String,
    /// Why, in words.
    pub decision: String,
    /// Epochs completed.
    pub epochs: usize,
    /// Samples left out because they could not be loaded.
    pub skipped_samples: usize,
}

impl ClipTrainer {
    fn tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let mut v: Vec<(String, Tensor)> =
            self.model.state_dict()?.into_iter().map(|(n, t)| (format!("model.{n}"), t)).collect();
        for (name, _, m, s) in self.opt.state_entries() {
            v.push((format!("optimizer.{name}.exp_avg"), m.clone()));
            v.push((format!("optimizer.{name}.exp_avg_sq"), s.clone()));
        }
        Ok(v)
    }

    /// Writes the checkpoint (after taking every deferred update).
    fn save(&mut self, path: &Path, start: Option<&Evaluation>) -> Result<()> {
        self.sync()?;
        let state = CheckpointState {
            format: CHECKPOINT_FORMAT.into(),
            config: self.config.clone(),
            steps_per_epoch: self.steps_per_epoch,
            epoch: self.epoch,
            iteration: self.iteration,
            optimizer_steps: self.opt.state_entries().into_iter().map(|(n, s, _, _)| (n.to_string(), s)).collect(),
            start_evaluation: start.cloned(),
            vista_version: env!("CARGO_PKG_VERSION").into(),
        };
        let json = serde_json::to_string_pretty(&state).map_err(|e| Error::arg("checkpoint", e.to_string()))?;
        let meta =
            HashMap::from([("format".to_string(), CHECKPOINT_FORMAT.to_string()), ("state".to_string(), json.clone())]);
        let tensors = self.tensors()?;
        write_safetensors(path, tensors.iter().map(|(n, t)| (n.as_str(), t)), &meta)?;
        write_atomic(&path.with_extension("json"), json.as_bytes())
    }

    fn load(path: &Path, device: &Device) -> Result<(Self, Option<Evaluation>)> {
        let bad = |m: String| Error::Checkpoint { path: path.to_path_buf(), message: m };
        let (tensors, meta) = read_safetensors(path, &Device::Cpu)?;
        if meta.get("format").map(String::as_str) != Some(CHECKPOINT_FORMAT) {
            return Err(bad(format!("not a vista CLIP training checkpoint (format {:?})", meta.get("format"))));
        }
        let state: CheckpointState = serde_json::from_str(meta.get("state").map(String::as_str).unwrap_or(""))
            .map_err(|e| bad(format!("bad state: {e}")))?;
        let model: HashMap<String, Tensor> =
            tensors.iter().filter_map(|(n, t)| n.strip_prefix("model.").map(|r| (r.to_string(), t.clone()))).collect();
        let mut t = Self::new(state.config.clone(), state.steps_per_epoch, Some(&model), device)
            .map_err(|e| bad(e.to_string()))?;
        for (name, step) in &state.optimizer_steps {
            let get = |k: &str| {
                let key = format!("optimizer.{name}.{k}");
                tensors.get(&key).cloned().ok_or_else(|| bad(format!("missing tensor `{key}`")))
            };
            t.opt.set_state(name, *step, get("exp_avg")?, get("exp_avg_sq")?).map_err(|e| bad(e.to_string()))?;
        }
        t.epoch = state.epoch;
        t.iteration = state.iteration;
        Ok((t, state.start_evaluation))
    }
}

/// Writes `tensors` (canonical names) as an open_clip model folder: `open_clip_config.json`
/// (the architecture and the normalisation statistics) and `open_clip_model.safetensors`.
pub fn export_open_clip(dir: &Path, config: &ClipConfig, tensors: &[(String, Tensor)]) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let (v, t) = (&config.vision, &config.text);
    // open_clip pools at the largest token id; a first-end-of-text rule is the same rule when the
    // end-of-text token is the last of the vocabulary (CLIP's tokenizers put it there).
    match t.pooling {
        crate::clip::config::TextPooling::Argmax => {}
        crate::clip::config::TextPooling::FirstEos(id) if id as usize + 1 == t.vocab_size => {}
        crate::clip::config::TextPooling::FirstEos(id) => {
            return Err(Error::arg(
                "export",
                format!("the text pools at token {id}, not the vocabulary's last: open_clip's layout cannot say so"),
            ))
        }
    }
    let quick = matches!(v.tower.act, crate::nn::Activation::QuickGelu);
    let vision_cfg = match &v.resnet {
        // open_clip's ResNet config: `layers` a list, `width` the stem's, heads from `head_width`.
        Some(r) => json!({
            "image_size": v.image_size, "layers": r.layers, "width": r.width,
            "head_width": v.tower.width / v.tower.heads,
        }),
        None => json!({
            "image_size": v.image_size, "patch_size": v.patch_size, "width": v.tower.width,
            "layers": v.tower.layers, "head_width": v.tower.width / v.tower.heads,
            "mlp_ratio": v.tower.mlp_dim as f64 / v.tower.width as f64,
        }),
    };
    let cfg = json!({
        "model_cfg": {
            "embed_dim": config.embed_dim,
            "quick_gelu": quick,
            "vision_cfg": vision_cfg,
            "text_cfg": {
                "context_length": t.context_length, "vocab_size": t.vocab_size, "width": t.tower.width,
                "heads": t.tower.heads, "layers": t.tower.layers,
                "mlp_ratio": t.tower.mlp_dim as f64 / t.tower.width as f64,
            },
        },
        "preprocess_cfg": {"mean": config.preprocess.mean, "std": config.preprocess.std},
    });
    let weights: Vec<(String, Tensor)> = tensors.iter().filter(|(n, _)| n != "logit_bias").cloned().collect();
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    write_safetensors(&dir.join("open_clip_model.safetensors"), weights.iter().map(|(n, t)| (n.as_str(), t)), &meta)?;
    let text = serde_json::to_string_pretty(&cfg).map_err(|e| Error::arg("export", e.to_string()))?;
    write_atomic(&dir.join("open_clip_config.json"), text.as_bytes())
}

/// Trains (or resumes, when the run folder holds a checkpoint of the same configuration) on
/// `data`. Returns the trainer after the last epoch run and the run's report.
pub fn run(
    config: ClipTrainConfig,
    data: CaptionSet,
    options: &RunOptions,
    mut on_event: impl FnMut(Event<'_>),
) -> Result<(ClipTrainer, Report)> {
    config.validate()?;
    if matches!(config.start, Start::Checkpoint { .. }) && options.initial.is_none() {
        return Err(Error::arg("model", "a fine-tuning run needs its starting weights"));
    }
    std::fs::create_dir_all(&options.output).map_err(|e| Error::io(&options.output, e))?;
    let ckpt = options.output.join(CHECKPOINT_FILE);
    let steps_per_epoch = data.len() / config.logical_batch();
    let (mut trainer, mut start_eval) = resume_or_start(config, steps_per_epoch, &ckpt, options)?;
    let mut metrics = MetricsLog::open(&options.output.join(METRICS_FILE), trainer.iteration, trainer.epoch)?;

    // Data: augmented pairs on worker threads; evaluation sets through the eval transform.
    let model_cfg = trainer.config.model.clone();
    let size = model_cfg.vision.image_size as u32;
    let eval_transform = ClipPreprocess {
        mean: model_cfg.preprocess.mean,
        std: model_cfg.preprocess.std,
        resize_shortest: model_cfg.preprocess.resize as u32,
        ..ClipPreprocess::openai(size)
    };
    let batches_of = |set: CaptionSet, train_scale: Option<(f64, f64)>| ClipBatches {
        set: Arc::new(set),
        tokenizer: options.tokenizer.clone(),
        context_length: model_cfg.text.context_length,
        size,
        train_scale,
        eval: eval_transform,
        decode: options.decode,
        seed: trainer.config.seed,
    };
    let train = Arc::new(batches_of(data, Some(trainer.config.crop_scale)));
    let held_out = options.held_out.clone().map(|s| batches_of(s, None));
    let zero_shot = options.zero_shot.as_ref().map(|z| (batches_of(z.set.clone(), None), z));
    let evaluate = |model: &TrainClip| -> Result<Evaluation> {
        evaluate_model(model, &options.tokenizer, held_out.as_ref(), zero_shot.as_ref().map(|(b, z)| (b, *z)))
    };
    let loader = LoaderOptions {
        batch_size: trainer.config.logical_batch(),
        seed: trainer.config.seed,
        workers: options.workers,
        prefetch: options.prefetch,
        decode: options.decode,
    };
    let has_eval = held_out.is_some() || zero_shot.is_some();
    if has_eval && trainer.iteration == 0 && start_eval.is_none() {
        let e = evaluate(trainer.model())?;
        metrics.write(&json!({"start": true, "evaluation": e}))?;
        on_event(Event::Evaluated(None, &e));
        start_eval = Some(e);
    }
    let last = match options.max_epochs {
        Some(m) => (trainer.epoch + m).min(trainer.config.epochs),
        None => trainer.config.epochs,
    };
    let mut skipped = 0usize;
    let mut trained_eval = None;
    while trainer.epoch < last {
        let epoch = trainer.epoch;
        let timer = Instant::now();
        let batches = Batches::start(train.clone(), train.set.len(), &loader, epoch, trainer.first_batch_of(epoch));
        on_event(Event::EpochStart { epoch, first: batches.first(), batches: batches.len() });
        let (mut loss_sum, mut steps, mut samples) = (0.0, 0usize, 0usize);
        for batch in batches {
            let batch = batch?;
            if !batch.failed.is_empty() {
                skipped += batch.failed.len();
                metrics.write(&json!({"iteration": trainer.iteration, "skipped": batch.failed}))?;
                on_event(Event::Skipped(&batch.failed));
            }
            let it = batch.index;
            if batch.samples.len() < 2 {
                trainer.iteration = epoch * trainer.steps_per_epoch() + it + 1;
                continue;
            }
            let micro = split(&batch, trainer.config.accum_freq)?;
            // The token embedding's rows without a gradient take their updates at the next sync
            // (before the checkpoint, the export and the evaluation).
            let m = trainer.step_deferred(&micro).map_err(|e| match e {
                Error::NonFiniteLoss { loss, epoch, iteration, .. } => {
                    Error::NonFiniteLoss { loss, epoch, iteration, kept: Some(ckpt.clone()) }
                }
                e => e,
            })?;
            metrics.write(&m)?;
            loss_sum += m.loss;
            steps += 1;
            samples += m.samples;
            on_event(Event::Step(&m));
            let every = options.save_every_steps;
            if every > 0 && (it + 1) % every == 0 && it + 1 < trainer.steps_per_epoch() {
                metrics.flush()?;
                trainer.save(&ckpt, start_eval.as_ref())?;
                on_event(Event::Saved(&ckpt));
            }
        }
        trainer.sync()?;
        let seconds = timer.elapsed().as_secs_f64();
        metrics.write(&json!({"epoch": epoch, "epoch_seconds": seconds}))?;
        trainer.epoch = epoch + 1;
        metrics.flush()?;
        trainer.save(&ckpt, start_eval.as_ref())?;
        on_event(Event::Saved(&ckpt));
        export_open_clip(&options.output.join(EXPORT_DIR), &trainer.config.model, &trainer.model().state_dict()?)?;
        let due = trainer.epoch == last || (options.eval_every > 0 && trainer.epoch.is_multiple_of(options.eval_every));
        if has_eval && due {
            let e = evaluate(trainer.model())?;
            metrics.write(&json!({"epoch": epoch, "evaluation": e}))?;
            on_event(Event::Evaluated(Some(epoch), &e));
            trained_eval = Some(e);
        }
        let mean_loss = if steps > 0 { loss_sum / steps as f64 } else { f64::NAN };
        on_event(Event::EpochEnd { epoch, seconds, mean_loss, samples_per_second: samples as f64 / seconds.max(1e-9) });
    }
    metrics.flush()?;
    if has_eval && trained_eval.is_none() {
        trained_eval = Some(evaluate(trainer.model())?);
    }
    let report = finish(&trainer, start_eval, trained_eval, skipped, options, &evaluate)?;
    let text = serde_json::to_string_pretty(&report).map_err(|e| Error::arg("report", e.to_string()))?;
    write_atomic(&options.output.join(REPORT_FILE), text.as_bytes())?;
    Ok((trainer, report))
}

/// The trainer of the checkpoint in the folder (refused when its configuration or its steps
/// per epoch differ), else a fresh one.
fn resume_or_start(
    config: ClipTrainConfig,
    steps_per_epoch: usize,
    ckpt: &Path,
    options: &RunOptions,
) -> Result<(ClipTrainer, Option<Evaluation>)> {
    if !ckpt.is_file() {
        let t = ClipTrainer::new(config, steps_per_epoch, options.initial.as_ref(), &options.device)?;
        return Ok((t, None));
    }
    let (t, start) = ClipTrainer::load(ckpt, &options.device)?;
    if t.config != config {
        return Err(Error::Config {
            path: ckpt.to_path_buf(),
            message: "the run in this folder has another configuration; use another --output or the same arguments"
                .into(),
        });
    }
    if t.steps_per_epoch() != steps_per_epoch {
        return Err(Error::Config {
            path: ckpt.to_path_buf(),
            message: format!(
                "the run in this folder has {} steps per epoch, this data set gives {steps_per_epoch}",
                t.steps_per_epoch()
            ),
        });
    }
    Ok((t, start))
}

/// The logical batch as `accum_freq` micro-batches (the last takes the remainder).
fn split(batch: &ClipBatch, accum_freq: usize) -> Result<Vec<MicroBatch>> {
    let n = batch.samples.len();
    let k = accum_freq.clamp(1, n / 2).max(1);
    let per = n / k;
    (0..k)
        .map(|j| {
            let start = j * per;
            let len = if j + 1 == k { n - start } else { per };
            Ok((batch.pixels.narrow(0, start, len)?, batch.ids[start..start + len].to_vec()))
        })
        .collect()
}

/// Zero-shot top-1 and retrieval recall of `model`.
fn evaluate_model(
    model: &TrainClip,
    tokenizer: &TextTokenizer,
    held_out: Option<&ClipBatches>,
    zero_shot: Option<(&ClipBatches, &ZeroShotSet)>,
) -> Result<Evaluation> {
    let mut e = Evaluation::default();
    if let Some(h) = held_out {
        let (img, txt, _, _) = embed_pairs(model, h, true)?;
        e.recall = Some(recall(&img, &txt.expect("text embeddings asked for"))?);
    }
    if let Some((b, z)) = zero_shot {
        let classes =
            z.set.classes.as_ref().ok_or_else(|| Error::arg("zero-shot", "the zero-shot set has no classes"))?;
        let (img, _, kept, _) = embed_pairs(model, b, false)?;
        let labels: Vec<usize> = kept.iter().map(|&i| b.set.items[i].label).collect();
        let emb = class_embeddings(model, tokenizer, classes, &z.templates)?;
        e.zero_shot_top1 = Some(zero_shot_top1(&img, &emb, &labels)?);
    }
    Ok(e)
}

/// Closes the run: WiSE-FT and the gate for fine-tuning runs, the report.
fn finish(
    trainer: &ClipTrainer,
    start: Option<Evaluation>,
    trained: Option<Evaluation>,
    skipped_samples: usize,
    options: &RunOptions,
    evaluate: &dyn Fn(&TrainClip) -> Result<Evaluation>,
) -> Result<Report> {
    let export = options.output.join(EXPORT_DIR);
    let mut report = Report {
        start: start.clone(),
        trained: trained.clone(),
        wise_ft: None,
        exported: "trained".into(),
        decision: "trained from scratch: the trained weights are exported".into(),
        epochs: trainer.epoch,
        skipped_samples,
    };
    let Some(initial) = &options.initial else { return Ok(report) };
    if trainer.epoch < trainer.config.epochs {
        report.decision = "the run is not finished: the latest weights are exported".into();
        return Ok(report);
    }
    let mut theta0: Vec<(String, Tensor)> = Vec::new();
    let trained_sd = trainer.model().state_dict()?;
    for (n, t) in &trained_sd {
        let t0 = initial.get(n).cloned().unwrap_or_else(|| t.clone());
        theta0.push((n.clone(), t0.to_dtype(candle_core::DType::F32)?.to_device(t.device())?));
    }
    let (mut best_weights, mut best_eval, mut best_name) = (trained_sd.clone(), trained.clone(), "trained".to_string());
    if let Some(alpha) = options.wise_ft {
        let merged = wise_ft(&theta0, &trained_sd, alpha)?;
        let tensors: HashMap<String, Tensor> = merged.iter().cloned().collect();
        let e = evaluate(&TrainClip::from_tensors(trainer.config.model.clone(), &tensors, &options.device)?)?;
        report.wise_ft = Some((alpha, e.clone()));
        best_weights = merged;
        best_eval = Some(e);
        best_name = "wise-ft".into();
    }
    match (start.as_ref().and_then(Evaluation::score), best_eval.as_ref().and_then(Evaluation::score)) {
        (Some(s0), Some(s1)) if s1 < s0 => {
            export_open_clip(&export, &trainer.config.model, &theta0)?;
            report.exported = "start".into();
            report.decision = format!(
                "the {best_name} weights score {s1:.4} on the held-out evaluation, below the starting model's {s0:.4}: \
                 the starting weights are exported unchanged (the fine-tuned ones stay in {CHECKPOINT_FILE})"
            );
        }
        (Some(s0), Some(s1)) => {
            export_open_clip(&export, &trainer.config.model, &best_weights)?;
            report.exported = best_name.clone();
            report.decision =
                format!("the {best_name} weights score {s1:.4}, the starting model {s0:.4}: {best_name} exported");
        }
        _ => {
            export_open_clip(&export, &trainer.config.model, &best_weights)?;
            report.exported = best_name.clone();
            report.decision = format!("no held-out evaluation to gate on: the {best_name} weights are exported");
        }
    }
    Ok(report)
}
