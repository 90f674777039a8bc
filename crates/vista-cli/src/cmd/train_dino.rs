//! `vista train dino`: self-supervised DINO training (`main_dino.py`) on a folder of images or
//! an IDX file, resumable, with per-step metrics and an exported backbone.
//!
//! The recipe's defaults live once, in the library's [`DinoTrainConfig::preset`] for `--arch`;
//! every flag below overrides one field of it.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use vista::data::{is_idx_dir, unlabelled_items, LabelledSet, Split};
use vista::image::DecodeOptions;
use vista::train::dino::{run, DinoTrainConfig, Event, KnnEval, RunOptions};

use crate::args::{freeze, freeze_point, parse_pair};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Training images: a folder (walked recursively; no labels needed), a folder of MNIST-style
    /// IDX files (its train-* images; e.g. /usr/share/datasets/fashion-mnist) or an IDX images file.
    #[arg(long)]
    pub data: PathBuf,
    /// Use only the first N images.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Output folder: checkpoint.safetensors (+ .json), metrics.jsonl, backbone.safetensors.
    /// A run already there is resumed.
    #[arg(long, short, default_value = "dino-run")]
    pub output: PathBuf,
    /// DINO's architecture, whose preset (main_dino.py's defaults) the flags below override:
    /// vit_tiny (192 wide, 12 deep, 3 heads), vit_small (384, 12, 6), vit_base (768, 12, 12), or
    /// resnet50 (torchvision's; BatchNorm in training mode for student and teacher as in
    /// main_dino.py; DINO trains it with `--optimizer sgd --lr 0.03 --weight-decay 1e-4
    /// --weight-decay-end 1e-4`).
    #[arg(long, default_value = "vit_small")]
    pub arch: String,
    /// Width of the ViT.
    #[arg(long)]
    pub embed_dim: Option<usize>,
    /// Depth (blocks) of the ViT.
    #[arg(long)]
    pub depth: Option<usize>,
    /// Attention heads of the ViT.
    #[arg(long)]
    pub num_heads: Option<usize>,
    /// Patch side in pixels (preset: 16).
    #[arg(long = "patch")]
    pub patch_size: Option<usize>,
    /// Stochastic depth rate of the student (preset: 0.1).
    #[arg(long)]
    pub drop_path: Option<f64>,
    /// Output dimension K of the head (preset: 65536).
    #[arg(long)]
    pub out_dim: Option<usize>,
    /// Hidden width of the head's MLP (preset: 2048).
    #[arg(long)]
    pub head_hidden: Option<usize>,
    /// Bottleneck width of the head (preset: 256).
    #[arg(long)]
    pub bottleneck: Option<usize>,
    /// Linear layers of the head (preset: 3).
    #[arg(long)]
    pub head_layers: Option<usize>,
    /// Weight-normalise the head's last layer with its norm frozen at 1 (preset: true).
    #[arg(long)]
    pub norm_last_layer: Option<bool>,
    /// A BatchNorm after each hidden layer of the head, as main_dino.py's --use_bn_in_head
    /// (preset: false)
    #[arg(long)]
    pub use_bn_in_head: Option<bool>,
    /// Side of the global crops, and of the position embedding (preset: 224).
    #[arg(long)]
    pub global_size: Option<u32>,
    /// Side of the local crops (preset: 96).
    #[arg(long)]
    pub local_size: Option<u32>,
    /// Number of local crops (preset: 8).
    #[arg(long)]
    pub local_crops: Option<usize>,
    /// Area range of the global crops, e.g. 0.4,1.0 (the preset's).
    #[arg(long, value_parser = parse_pair)]
    pub global_scale: Option<(f64, f64)>,
    /// Area range of the local crops, e.g. 0.05,0.4 (the preset's).
    #[arg(long, value_parser = parse_pair)]
    pub local_scale: Option<(f64, f64)>,
    /// Epochs the schedules span (preset: 100).
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Images per step (preset: 64).
    #[arg(long = "batch")]
    pub batch_size: Option<usize>,
    /// Peak learning rate for 256 images, scaled by batch / 256 (preset: 0.0005).
    #[arg(long)]
    pub lr: Option<f64>,
    /// Learning rate at the end of the cosine (preset: 1e-6).
    #[arg(long)]
    pub min_lr: Option<f64>,
    /// Epochs of linear learning-rate warm-up (preset: 10).
    #[arg(long)]
    pub warmup_epochs: Option<usize>,
    /// Weight decay at the start of its cosine (preset: 0.04).
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// Weight decay at the end of its cosine (preset: 0.4).
    #[arg(long)]
    pub weight_decay_end: Option<f64>,
    /// Teacher EMA momentum at the start of its cosine to 1 (preset: 0.996).
    #[arg(long)]
    pub momentum_teacher: Option<f64>,
    /// Teacher temperature at the start of its warm-up (preset: 0.04).
    #[arg(long)]
    pub warmup_teacher_temp: Option<f64>,
    /// Teacher temperature after the warm-up (preset: 0.04).
    #[arg(long)]
    pub teacher_temp: Option<f64>,
    /// Epochs of teacher-temperature warm-up (preset: 0).
    #[arg(long)]
    pub warmup_teacher_temp_epochs: Option<usize>,
    /// Per-parameter gradient norm clip, 0 for none (preset: 3.0).
    #[arg(long)]
    pub clip_grad: Option<f64>,
    /// Epochs during which the head's last layer is frozen (preset: 1).
    #[arg(long)]
    pub freeze_last_layer: Option<usize>,
    /// Seed of the initialisation and of every random draw (preset: 0).
    #[arg(long)]
    pub seed: Option<u64>,
    /// The optimiser, as main_dino.py's --optimizer: adamw (preset; recommended with ViTs), sgd
    /// (momentum 0.9) or lars (DINO's LARS, for convnets and large batches).
    #[arg(long, value_parser = ["adamw", "sgd", "lars"])]
    pub optimizer: Option<String>,
    /// Threads that decode and augment images ahead of the step.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Keep a numbered checkpoint every N epochs (0: only the latest).
    #[arg(long, default_value_t = 0)]
    pub save_every: usize,
    /// Also save the checkpoint every N steps within an epoch (0: at epoch ends only).
    #[arg(long, default_value_t = 0)]
    pub save_every_steps: usize,
    /// Stop after N epochs in this call (the schedule still spans --epochs; run again to go on).
    #[arg(long)]
    pub max_epochs: Option<usize>,
    /// k-NN evaluation of the teacher every N epochs and after the last (0: only with
    /// --knn-train; then after the last).
    #[arg(long, default_value_t = 0)]
    pub knn_every: usize,
    /// Labelled memory bank for the k-NN evaluation (ImageFolder or IDX). Default for IDX
    /// --data: the training images with their labels.
    #[arg(long)]
    pub knn_train: Option<PathBuf>,
    /// Labelled test set for the k-NN evaluation. Default for an IDX --data folder: its t10k-* pair.
    #[arg(long)]
    pub knn_test: Option<PathBuf>,
    /// Use at most N test images.
    #[arg(long)]
    pub knn_test_limit: Option<usize>,
    /// Neighbours of the k-NN evaluation.
    #[arg(long, default_value_t = 20)]
    pub knn_k: usize,
    /// Largest image accepted, in pixels.
    #[arg(long)]
    pub max_pixels: Option<u64>,
    /// cpu, cuda or cuda:N: where the networks train (images are decoded and augmented on CPU
    /// threads either way). A run resumes on any device.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// Sets each config field whose flag was given.
macro_rules! overrides {
    ($config:ident, $args:ident, [$($field:ident),* $(,)?]) => {
        $(if let Some(v) = $args.$field { $config.$field = v; })*
    };
}

impl Args {
    /// The `--arch` preset with the given flags applied, checked.
    pub fn config(&self) -> Result<DinoTrainConfig> {
        let mut c = DinoTrainConfig::preset(&self.arch).with_context(|| {
            format!("--arch: unknown architecture `{}`; known: {}", self.arch, DinoTrainConfig::ARCHS.join(", "))
        })?;
        overrides!(
            c,
            self,
            [
                embed_dim,
                depth,
                num_heads,
                patch_size,
                drop_path,
                out_dim,
                head_hidden,
                bottleneck,
                head_layers,
                norm_last_layer,
                use_bn_in_head,
                global_size,
                local_size,
                local_crops,
                global_scale,
                local_scale,
                epochs,
                batch_size,
                lr,
                min_lr,
                warmup_epochs,
                weight_decay,
                weight_decay_end,
                momentum_teacher,
                warmup_teacher_temp,
                teacher_temp,
                warmup_teacher_temp_epochs,
                clip_grad,
                freeze_last_layer,
                seed,
            ]
        );
        if let Some(o) = &self.optimizer {
            c.optimizer = match o.as_str() {
                "sgd" => vista::train::dino::OptimizerKind::Sgd,
                "lars" => vista::train::dino::OptimizerKind::Lars,
                _ => vista::train::dino::OptimizerKind::Adamw,
            };
        }
        c.validate()?;
        Ok(c)
    }

    fn knn(&self) -> Result<Option<KnnEval>> {
        let idx_dir = self.data.is_dir() && is_idx_dir(&self.data, Split::Train);
        let (train, test) = match (&self.knn_train, &self.knn_test) {
            (Some(tr), Some(te)) => (tr.clone(), te.clone()),
            (None, None) if idx_dir && self.knn_every > 0 => (self.data.clone(), self.data.clone()),
            (None, None) => return Ok(None),
            _ => bail!("--knn-train and --knn-test go together"),
        };
        let open = |p: &PathBuf, split, limit| {
            LabelledSet::open(p, split, limit).with_context(|| format!("reading data set {}", p.display()))
        };
        Ok(Some(KnnEval {
            train: open(&train, Split::Train, self.limit)?,
            test: open(&test, Split::Test, self.knn_test_limit)?,
            k: self.knn_k,
            every: self.knn_every,
        }))
    }
}

/// `vista train dino`.
pub fn run_dino(args: Args) -> Result<ExitCode> {
    let config = args.config()?;
    let items = unlabelled_items(&args.data, args.limit)
        .with_context(|| format!("listing the training images of {}", args.data.display()))?;
    let decode = args.max_pixels.map(DecodeOptions::with_max_pixels).unwrap_or_default();
    let options = RunOptions {
        output: args.output.clone(),
        workers: args.workers,
        prefetch: 2 * args.workers.max(1),
        decode,
        save_every: args.save_every,
        save_every_steps: args.save_every_steps,
        knn: args.knn()?,
        max_epochs: args.max_epochs,
        device: vista::device::select(&args.device)?,
    };
    let shape = match &config.resnet {
        Some(r) => format!("stages {:?}, {} features, optimizer {:?}", r.layers, config.embed_dim, config.optimizer),
        None => format!(
            "{}x{}, {} heads, patch {}, optimizer {:?}",
            config.embed_dim, config.depth, config.num_heads, config.patch_size, config.optimizer
        ),
    };
    eprintln!(
        "DINO {} ({shape}) on {} images, {} epochs of {} steps; output {}",
        config.arch,
        items.len(),
        config.epochs,
        items.len() / config.batch_size,
        args.output.display()
    );
    let mut skipped = 0usize;
    let mut bar: Option<indicatif::ProgressBar> = None;
    let (freeze_after, mut saves) = (freeze_point("train-saves"), 0usize);
    let result = run(config, items, &options, |event| match event {
        Event::EpochStart { epoch, first, batches } => {
            let b = crate::progress::bar(batches, &format!("epoch {epoch}"));
            b.set_position(first as u64);
            bar = Some(b);
        }
        Event::Step(m) => {
            if let Some(b) = &bar {
                b.set_message(format!("epoch {} loss {:.4} lr {:.2e}", m.epoch, m.loss, m.lr));
                b.inc(1);
            }
        }
        Event::Skipped(errors) => {
            skipped += errors.len();
            for e in errors {
                eprintln!("skipped: {e}");
            }
        }
        Event::Collapse(w) => eprintln!("warning: {w}"),
        Event::EpochEnd { epoch, seconds, mean_loss, knn_top1 } => {
            if let Some(b) = bar.take() {
                b.finish_and_clear();
            }
            let knn = knn_top1.map(|a| format!(", k-NN top-1 {a:.2} %")).unwrap_or_default();
            eprintln!("epoch {epoch}: {seconds:.1} s, mean loss {mean_loss:.4}{knn}");
        }
        Event::Saved(_) => {
            saves += 1;
            if freeze_after == Some(saves) {
                freeze();
            }
        }
        Event::InitialKnn(a) => eprintln!("k-NN top-1 at initialisation: {a:.2} %"),
    });
    if let Some(b) = bar.take() {
        b.finish_and_clear();
    }
    let trainer = result?;
    eprintln!(
        "{} epochs done; backbone: {} (vista features/knn --model)",
        trainer.epoch,
        args.output.join(vista::train::dino::run::BACKBONE_FILE).display()
    );
    Ok(crate::exit_code(skipped))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    type Cli = crate::args::TestCli<Args>;

    #[test]
    fn flags_override_the_preset_and_nothing_else() {
        let preset = DinoTrainConfig::preset("vit_tiny").unwrap();
        let cli = Cli::try_parse_from(["x", "--data", "d", "--arch", "vit_tiny"]).unwrap();
        assert_eq!(cli.args.config().unwrap(), preset);
        let cli = Cli::try_parse_from([
            "x",
            "--data",
            "d",
            "--arch",
            "vit_tiny",
            "--depth",
            "4",
            "--patch",
            "8",
            "--batch",
            "16",
            "--global-scale",
            "0.3,1.0",
            "--norm-last-layer",
            "false",
            "--use-bn-in-head",
            "true",
        ])
        .unwrap();
        let c = cli.args.config().unwrap();
        assert_eq!((c.depth, c.patch_size, c.batch_size, c.global_scale), (4, 8, 16, (0.3, 1.0)));
        assert!(!c.norm_last_layer);
        assert!(c.use_bn_in_head);
        assert_eq!(
            DinoTrainConfig {
                depth: 12,
                patch_size: 16,
                batch_size: 64,
                global_scale: (0.4, 1.0),
                norm_last_layer: true,
                use_bn_in_head: false,
                ..c
            },
            preset
        );
    }

    #[test]
    fn bad_values_name_their_flag() {
        let err = Cli::try_parse_from(["x", "--data", "d", "--local-scale", "0.05"]).err().unwrap().to_string();
        assert!(err.contains("--local-scale"), "{err}");
        let cli = Cli::try_parse_from(["x", "--data", "d", "--arch", "vit_huge"]).unwrap();
        assert!(cli.args.config().unwrap_err().to_string().contains("vit_huge"));
    }
}
