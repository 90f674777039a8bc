//! `vista train clip`: contrastive CLIP training with open_clip's recipe, from scratch or from a
//! checkpoint (fine-tuning, LiT, WiSE-FT), resumable, with zero-shot and retrieval evaluation
//! and an export every CLIP command loads.
//!
//! The recipe's defaults live once, in the library's [`ClipTrainConfig::new`]; every flag below
//! overrides one field of it.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use vista::clip::config::{TextPooling, VisionConfig};
use vista::clip::loader;
use vista::clip::pipeline::tokenizer_for;
use vista::clip::tokenizer::{ClipTokenizer, TextTokenizer};
use vista::clip::ClipConfig;
use vista::data::{is_idx_dir, CaptionSet, LabelledSet, Split};
use vista::image::DecodeOptions;
use vista::nn::Activation;
use vista::train::clip::run::{run, Event, RunOptions, ZeroShotSet, EXPORT_DIR};
use vista::train::clip::{ClipTrainConfig, LossKind, LrSchedule, Start};

use crate::args::{freeze, freeze_point};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Image–caption pairs: a captions file (.tsv / .csv with a `filepath` and a `title` column,
    /// or .jsonl), a folder holding captions.tsv / .csv / .jsonl, or a labelled set (ImageFolder,
    /// IDX such as /usr/share/datasets/fashion-mnist) captioned from its class names through
    /// --templates.
    #[arg(long)]
    pub data: PathBuf,
    /// Use only the first N images.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Output folder: checkpoint.safetensors (+ .json), metrics.jsonl, export/, report.json.
    /// A run already there is resumed.
    #[arg(long, short, default_value = "clip-run")]
    pub output: PathBuf,
    /// Start from this checkpoint (file, folder or hub id; fine-tuning) instead of open_clip's
    /// initialisation.
    #[arg(long)]
    pub model: Option<String>,
    /// A named architecture to train from scratch (ViT-B-32, ViT-B-16, ...); the size flags
    /// below override it. Without it (and without --model): a small ViT, 64 px, patch 8.
    #[arg(long)]
    pub arch: Option<String>,
    /// Input side in pixels (from scratch).
    #[arg(long)]
    pub image_size: Option<usize>,
    /// Patch side in pixels (from scratch).
    #[arg(long)]
    pub patch_size: Option<usize>,
    /// Width of the image tower (heads: width / 64); for a ResNet tower (--arch RN50, ...) the
    /// width of its stem (64 for RN50).
    #[arg(long)]
    pub width: Option<usize>,
    /// Blocks of the image tower.
    #[arg(long)]
    pub layers: Option<usize>,
    /// Width of the text tower.
    #[arg(long)]
    pub text_width: Option<usize>,
    /// Blocks of the text tower.
    #[arg(long)]
    pub text_layers: Option<usize>,
    /// Attention heads of the text tower.
    #[arg(long)]
    pub text_heads: Option<usize>,
    /// Width of the shared embedding.
    #[arg(long)]
    pub embed_dim: Option<usize>,
    /// Tokens per caption (longer captions are cut, as open_clip's tokenizer does).
    #[arg(long)]
    pub context_length: Option<usize>,
    /// QuickGELU in both towers (OpenAI's activation) instead of exact GELU.
    #[arg(long)]
    pub quick_gelu: bool,
    /// clip (symmetric InfoNCE) or siglip (sigmoid with a learned bias).
    #[arg(long, default_value = "clip")]
    pub loss: String,
    /// Epochs.
    #[arg(long, default_value_t = 32)]
    pub epochs: usize,
    /// Image–caption pairs per micro-batch.
    #[arg(long = "batch-size", alias = "batch", default_value_t = 64)]
    pub batch_size: usize,
    /// Micro-batches per optimiser step (feature-cached accumulation: the contrastive batch is
    /// --batch-size × --accum-freq, the memory one micro-batch's).
    #[arg(long, default_value_t = 1)]
    pub accum_freq: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 5e-4)]
    pub lr: f64,
    /// Weight decay (not on gains, biases, 1-D tensors or the temperature).
    #[arg(long, default_value_t = 0.2)]
    pub wd: f64,
    /// AdamW β₂ (open_clip: 0.98 for ViTs).
    #[arg(long, default_value_t = 0.98)]
    pub beta2: f64,
    /// AdamW ε (open_clip: 1e-6 for ViTs).
    #[arg(long, default_value_t = 1e-6)]
    pub eps: f64,
    /// Linear warm-up, in optimiser steps.
    #[arg(long, default_value_t = 10_000)]
    pub warmup: usize,
    /// The schedule after the warm-up: cosine or const.
    #[arg(long, default_value = "cosine")]
    pub lr_scheduler: String,
    /// Clip the gradients to this total norm.
    #[arg(long)]
    pub grad_clip_norm: Option<f64>,
    /// LiT: lock the image tower, leaving its last N groups trainable (0 when given alone).
    #[arg(long, num_args = 0..=1, default_missing_value = "0")]
    pub lock_image: Option<usize>,
    /// Lock the text tower, leaving its last N groups trainable (0 when given alone).
    #[arg(long, num_args = 0..=1, default_missing_value = "0")]
    pub lock_text: Option<usize>,
    /// WiSE-FT: after fine-tuning, interpolate the weights with the starting ones at this α
    /// (0 = start, 1 = fine-tuned). The result is exported only if its held-out evaluation is
    /// not below the starting model's.
    #[arg(long)]
    pub wise_ft: Option<f64>,
    /// Seed of the initialisation and of every random draw.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Caption templates for labelled data and zero-shot evaluation (`{}` = the class name);
    /// repeat for several.
    #[arg(long = "templates", default_values_t = ["a photo of a {}.".to_string()])]
    pub templates: Vec<String>,
    /// Held-out image–caption pairs for retrieval recall@1/5/10.
    #[arg(long)]
    pub held_out: Option<PathBuf>,
    /// Hold out every K-th image of --data for retrieval recall (e.g. 10: 10 %).
    #[arg(long)]
    pub hold_out_every: Option<usize>,
    /// Labelled set for zero-shot top-1. Default for an IDX --data folder: its t10k-* pair.
    #[arg(long)]
    pub zero_shot: Option<PathBuf>,
    /// Use at most N zero-shot images.
    #[arg(long)]
    pub zero_shot_limit: Option<usize>,
    /// Evaluate every N epochs and after the last (0: after the last only).
    #[arg(long, default_value_t = 1)]
    pub eval_every: usize,
    /// Threads that decode and augment images ahead of the step.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Also save the checkpoint every N steps within an epoch (0: at epoch ends only).
    #[arg(long, default_value_t = 0)]
    pub save_every_steps: usize,
    /// Stop after N epochs in this call (the schedule still spans --epochs; run again to go on).
    #[arg(long)]
    pub max_epochs: Option<usize>,
    /// Largest image accepted, in pixels.
    #[arg(long)]
    pub max_pixels: Option<u64>,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// The small from-scratch architecture when neither --arch nor --model is given.
fn small() -> ClipConfig {
    let mut c = ClipConfig::preset("ViT-B-32").expect("a preset");
    c.embed_dim = 256;
    c.vision.image_size = 64;
    c.vision.patch_size = 8;
    c.vision.tower.width = 256;
    c.vision.tower.layers = 4;
    c.text.context_length = 32;
    c.text.tower.width = 256;
    c.text.tower.layers = 4;
    c.text.tower.heads = 4;
    c.preprocess.resize = 64;
    c
}

impl Args {
    /// The architecture from scratch: --arch or the small default, with the size flags applied.
    fn scratch_model(&self) -> Result<ClipConfig> {
        let mut c = match &self.arch {
            Some(a) => ClipConfig::preset(a)
                .with_context(|| format!("--arch: unknown `{a}`; known: {}", ClipConfig::PRESETS.join(", ")))?,
            None => small(),
        };
        if let Some(s) = self.image_size {
            c.vision.image_size = s;
            c.preprocess.resize = s;
        }
        if let Some(r) = c.vision.resnet {
            // A ModifiedResNet (RN50, ...): its stages stay the preset's; --width is its stem's
            // width (64 for RN50; the attention pool is 32x that, in heads of 64).
            if self.patch_size.is_some() || self.layers.is_some() {
                bail!(
                    "--patch-size and --layers size a ViT image tower; a ResNet tower takes --width (its \
                     stem's width, 64 for RN50) and --image-size (a multiple of 32)"
                );
            }
            let act = c.vision.tower.act;
            c.vision = VisionConfig::resnet(c.vision.image_size, r.layers, self.width.unwrap_or(r.width), 64, act);
        } else {
            if let Some(p) = self.patch_size {
                c.vision.patch_size = p;
            }
            if let Some(w) = self.width {
                c.vision.tower.width = w;
            }
            // open_clip's image tower: heads = width / head_width (64); MLP 4x.
            c.vision.tower.heads = (c.vision.tower.width / 64).max(1);
            c.vision.tower.mlp_dim = 4 * c.vision.tower.width;
            if let Some(l) = self.layers {
                c.vision.tower.layers = l;
            }
        }
        if let Some(w) = self.text_width {
            c.text.tower.width = w;
            c.text.tower.mlp_dim = 4 * w;
        }
        if let Some(l) = self.text_layers {
            c.text.tower.layers = l;
        }
        if let Some(h) = self.text_heads {
            c.text.tower.heads = h;
        }
        if let Some(e) = self.embed_dim {
            c.embed_dim = e;
        }
        if let Some(n) = self.context_length {
            c.text.context_length = n;
        }
        let act = if self.quick_gelu {
            Activation::QuickGelu
        } else if self.arch.is_some() {
            c.vision.tower.act
        } else {
            Activation::Gelu
        };
        c.vision.tower.act = act;
        c.text.tower.act = act;
        c.text.pooling = TextPooling::Argmax;
        c.validate().map_err(|m| anyhow::anyhow!("the architecture: {m}"))?;
        Ok(c)
    }

    /// The run's configuration for `model`.
    pub fn config(&self, model: ClipConfig) -> Result<ClipTrainConfig> {
        let mut c = ClipTrainConfig::new(model);
        c.start = match &self.model {
            Some(m) => Start::Checkpoint { model: m.clone() },
            None => Start::Scratch,
        };
        c.loss = match self.loss.as_str() {
            "clip" => LossKind::Clip,
            "siglip" => LossKind::Siglip,
            other => bail!("--loss: `{other}` is not clip or siglip"),
        };
        c.schedule = match self.lr_scheduler.as_str() {
            "cosine" => LrSchedule::Cosine,
            "const" => LrSchedule::Const,
            other => bail!("--lr-scheduler: `{other}` is not cosine or const"),
        };
        c.epochs = self.epochs;
        c.batch_size = self.batch_size;
        c.accum_freq = self.accum_freq;
        c.lr = self.lr;
        c.weight_decay = self.wd;
        c.betas = (0.9, self.beta2);
        c.eps = self.eps;
        c.warmup = self.warmup;
        c.grad_clip_norm = self.grad_clip_norm;
        c.lock_image = self.lock_image;
        c.lock_text = self.lock_text;
        c.seed = self.seed;
        c.validate()?;
        Ok(c)
    }
}

/// `vista train clip`.
pub fn run_clip(args: Args) -> Result<ExitCode> {
    let (model_cfg, initial, tokenizer) = match &args.model {
        Some(m) => {
            let files = loader::resolve(m, None)?;
            let (cfg, tensors, family) =
                loader::load_tensors(&files).with_context(|| format!("reading the starting model {m}"))?;
            (cfg, Some(tensors), tokenizer_for(family, files.tokenizer.as_deref())?)
        }
        None => (args.scratch_model()?, None, TextTokenizer::OpenClip(Arc::new(ClipTokenizer::new()?))),
    };
    if model_cfg.text.vocab_size != tokenizer.vocab_size() {
        bail!("the text tower has {} tokens but the tokenizer {}", model_cfg.text.vocab_size, tokenizer.vocab_size());
    }
    let config = args.config(model_cfg)?;
    let open = |p: &PathBuf, split, limit| {
        CaptionSet::open(p, split, limit, &args.templates).with_context(|| format!("reading {}", p.display()))
    };
    let mut data = open(&args.data, Split::Train, args.limit)?;
    for s in &data.skipped {
        eprintln!("skipped: {s}");
    }
    let mut held_out = match (&args.held_out, args.hold_out_every) {
        (Some(_), Some(_)) => bail!("--held-out and --hold-out-every: give one"),
        (Some(p), None) => Some(open(p, Split::Test, None)?),
        (None, Some(k)) if k >= 2 => {
            let (train, held) = data.hold_out(k);
            data = train;
            Some(held)
        }
        (None, Some(k)) => bail!("--hold-out-every {k}: hold out every K-th image, K at least 2"),
        (None, None) => None,
    };
    if held_out.as_ref().is_some_and(|h| h.is_empty()) {
        held_out = None;
    }
    let idx_dir = args.data.is_dir() && is_idx_dir(&args.data, Split::Test);
    let zero_shot_path = args.zero_shot.clone().or_else(|| idx_dir.then(|| args.data.clone()));
    let zero_shot = match zero_shot_path {
        Some(p) => {
            let set = LabelledSet::open(&p, Split::Test, args.zero_shot_limit)
                .with_context(|| format!("reading the zero-shot set {}", p.display()))?;
            Some(ZeroShotSet {
                set: CaptionSet::from_labelled(set, &args.templates)?,
                templates: args.templates.clone(),
            })
        }
        None => None,
    };
    let decode = args.max_pixels.map(DecodeOptions::with_max_pixels).unwrap_or_default();
    let steps = data.len() / config.logical_batch();
    eprintln!(
        "CLIP {}px/{} (image {}x{}, text {}x{}, embed {}) {} on {} images ({} pairs), {} epochs of {} steps of {}; output {}",
        config.model.vision.image_size,
        config.model.vision.patch_size,
        config.model.vision.tower.width,
        config.model.vision.tower.layers,
        config.model.text.tower.width,
        config.model.text.tower.layers,
        config.model.embed_dim,
        if args.model.is_some() { "fine-tuned" } else { "from scratch" },
        data.len(),
        data.pairs(),
        config.epochs,
        steps,
        config.logical_batch(),
        args.output.display()
    );
    let options = RunOptions {
        output: args.output.clone(),
        tokenizer: Arc::new(tokenizer),
        workers: args.workers,
        prefetch: 2 * args.workers.max(1),
        decode,
        save_every_steps: args.save_every_steps,
        eval_every: args.eval_every,
        held_out,
        zero_shot,
        wise_ft: args.wise_ft,
        initial,
        max_epochs: args.max_epochs,
        device: vista::device::select(&args.device)?,
    };
    let mut skipped = data.skipped.len();
    let mut bar: Option<indicatif::ProgressBar> = None;
    let (freeze_after, mut saves) = (freeze_point("train-saves"), 0usize);
    let result = run(config, data, &options, |event| match event {
        Event::EpochStart { epoch, first, batches } => {
            let b = crate::progress::bar(batches, &format!("epoch {epoch}"));
            b.set_position(first as u64);
            bar = Some(b);
        }
        Event::Step(m) => {
            if let Some(b) = &bar {
                b.set_message(format!(
                    "loss {:.4} lr {:.2e} scale {:.1} {:.0}/s",
                    m.loss,
                    m.lr,
                    m.logit_scale,
                    m.samples as f64 / m.seconds.max(1e-9)
                ));
                b.inc(1);
            }
        }
        Event::Skipped(errors) => {
            skipped += errors.len();
            for e in errors {
                eprintln!("skipped: {e}");
            }
        }
        Event::Evaluated(epoch, e) => {
            let when = epoch.map(|x| format!("after epoch {x}")).unwrap_or_else(|| "at the start".into());
            let zs = e.zero_shot_top1.map(|a| format!(" zero-shot top-1 {:.2} %", 100.0 * a)).unwrap_or_default();
            let r = e
                .recall
                .map(|r| {
                    format!(
                        " recall@1/5/10 image→text {:.3}/{:.3}/{:.3}, text→image {:.3}/{:.3}/{:.3}",
                        r.image_to_text[0],
                        r.image_to_text[1],
                        r.image_to_text[2],
                        r.text_to_image[0],
                        r.text_to_image[1],
                        r.text_to_image[2]
                    )
                })
                .unwrap_or_default();
            if let Some(b) = &bar {
                b.suspend(|| eprintln!("{when}:{zs}{r}"));
            } else {
                eprintln!("{when}:{zs}{r}");
            }
        }
        Event::EpochEnd { epoch, seconds, mean_loss, samples_per_second } => {
            if let Some(b) = bar.take() {
                b.finish_and_clear();
            }
            eprintln!("epoch {epoch}: {seconds:.1} s, {samples_per_second:.1} pairs/s, mean loss {mean_loss:.4}");
        }
        Event::Saved(_) => {
            saves += 1;
            if freeze_after == Some(saves) {
                freeze();
            }
        }
    });
    if let Some(b) = bar.take() {
        b.finish_and_clear();
    }
    let (trainer, report) = result?;
    eprintln!("{}", report.decision);
    eprintln!(
        "{} epochs done; model: {} (vista embed/classify/index --model)",
        trainer.epoch,
        args.output.join(EXPORT_DIR).display()
    );
    Ok(crate::exit_code(skipped))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    type Cli = crate::args::TestCli<Args>;

    #[test]
    fn flags_set_the_recipe_and_the_architecture() {
        let cli = Cli::try_parse_from([
            "x",
            "--data",
            "d",
            "--image-size",
            "32",
            "--patch-size",
            "4",
            "--width",
            "128",
            "--layers",
            "2",
            "--text-layers",
            "2",
            "--accum-freq",
            "4",
            "--lock-image",
            "--wise-ft",
            "0.5",
            "--loss",
            "siglip",
        ])
        .unwrap();
        let m = cli.args.scratch_model().unwrap();
        assert_eq!(
            (m.vision.image_size, m.vision.patch_size, m.vision.tower.width, m.vision.tower.heads),
            (32, 4, 128, 2)
        );
        assert_eq!((m.vision.tower.layers, m.text.tower.layers, m.text.context_length), (2, 2, 32));
        let c = cli.args.config(m).unwrap();
        assert_eq!((c.accum_freq, c.lock_image, c.loss), (4, Some(0), LossKind::Siglip));
        assert_eq!((c.lr, c.weight_decay, c.betas, c.eps, c.warmup), (5e-4, 0.2, (0.9, 0.98), 1e-6, 10_000));
    }

    #[test]
    fn bad_values_name_their_flag() {
        let cli = Cli::try_parse_from(["x", "--data", "d", "--loss", "triplet"]).unwrap();
        let m = cli.args.scratch_model().unwrap();
        assert!(cli.args.config(m).unwrap_err().to_string().contains("--loss"));
        let cli = Cli::try_parse_from(["x", "--data", "d", "--arch", "ViT-Q-99"]).unwrap();
        assert!(cli.args.scratch_model().unwrap_err().to_string().contains("ViT-Q-99"));
    }
}
