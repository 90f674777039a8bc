//! `vista train dino`: self-supervised DINO training (`main_dino.py`) on a folder of images or
//! an IDX file, resumable, with per-step metrics and an exported backbone.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use vista::apps::dataset::{Item, ItemImage, Split};
use vista::apps::files;
use vista::image::DecodeOptions;
use vista::train::dino::{run, DinoTrainConfig, Event, RunOptions};

use super::dino::{is_idx_dir, load_set};

fn pair(v: &[f64], name: &str) -> Result<(f64, f64)> {
    match v {
        [a, b] => Ok((*a, *b)),
        _ => bail!("--{name}: give two numbers, e.g. 0.4,1.0"),
    }
}

#[derive(clap::Args, Debug)]
pub struct DinoArgs {
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
    /// DINO's architecture: vit_tiny (192 wide, 12 deep, 3 heads), vit_small, vit_base.
    #[arg(long, default_value = "vit_small")]
    pub arch: String,
    /// Override the architecture's width.
    #[arg(long)]
    pub embed_dim: Option<usize>,
    /// Override the architecture's depth.
    #[arg(long)]
    pub depth: Option<usize>,
    /// Override the architecture's attention heads.
    #[arg(long)]
    pub num_heads: Option<usize>,
    /// Patch side in pixels.
    #[arg(long, default_value_t = 16)]
    pub patch: usize,
    /// Stochastic depth of the student.
    #[arg(long, default_value_t = 0.1)]
    pub drop_path: f64,
    /// Output dimension of the head.
    #[arg(long, default_value_t = 65536)]
    pub out_dim: usize,
    /// Hidden width of the head's MLP.
    #[arg(long, default_value_t = 2048)]
    pub head_hidden: usize,
    /// Bottleneck of the head.
    #[arg(long, default_value_t = 256)]
    pub bottleneck: usize,
    /// Linear layers of the head.
    #[arg(long, default_value_t = 3)]
    pub head_layers: usize,
    /// Weight-normalise the last layer with its norm frozen at 1.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub norm_last_layer: bool,
    /// Side of the global crops (and of the position embedding).
    #[arg(long, default_value_t = 224)]
    pub global_size: u32,
    /// Side of the local crops.
    #[arg(long, default_value_t = 96)]
    pub local_size: u32,
    /// Number of local crops.
    #[arg(long, default_value_t = 8)]
    pub local_crops: usize,
    /// Area range of the global crops.
    #[arg(long, value_delimiter = ',', default_values_t = [0.4, 1.0])]
    pub global_scale: Vec<f64>,
    /// Area range of the local crops.
    #[arg(long, value_delimiter = ',', default_values_t = [0.05, 0.4])]
    pub local_scale: Vec<f64>,
    #[arg(long, default_value_t = 100)]
    pub epochs: usize,
    /// Images per step.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Peak learning rate for 256 images (scaled by batch / 256).
    #[arg(long, default_value_t = 0.0005)]
    pub lr: f64,
    #[arg(long, default_value_t = 1e-6)]
    pub min_lr: f64,
    #[arg(long, default_value_t = 10)]
    pub warmup_epochs: usize,
    #[arg(long, default_value_t = 0.04)]
    pub weight_decay: f64,
    #[arg(long, default_value_t = 0.4)]
    pub weight_decay_end: f64,
    #[arg(long, default_value_t = 0.996)]
    pub momentum_teacher: f64,
    #[arg(long, default_value_t = 0.04)]
    pub warmup_teacher_temp: f64,
    #[arg(long, default_value_t = 0.04)]
    pub teacher_temp: f64,
    #[arg(long, default_value_t = 0)]
    pub warmup_teacher_temp_epochs: usize,
    /// Per-parameter gradient norm clip (0: off).
    #[arg(long, default_value_t = 3.0)]
    pub clip_grad: f64,
    /// Epochs during which the head's last layer is frozen.
    #[arg(long, default_value_t = 1)]
    pub freeze_last_layer: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
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
    #[arg(long, default_value_t = 20)]
    pub knn_k: usize,
    /// Largest image accepted, in pixels.
    #[arg(long)]
    pub max_pixels: Option<u64>,
}

impl DinoArgs {
    fn config(&self) -> Result<DinoTrainConfig> {
        let mut c = DinoTrainConfig::preset(&self.arch).with_context(|| {
            format!("--arch: unknown architecture `{}`; known: {}", self.arch, DinoTrainConfig::ARCHS.join(", "))
        })?;
        c.embed_dim = self.embed_dim.unwrap_or(c.embed_dim);
        c.depth = self.depth.unwrap_or(c.depth);
        c.num_heads = self.num_heads.unwrap_or(c.num_heads);
        c.patch_size = self.patch;
        c.drop_path = self.drop_path;
        c.out_dim = self.out_dim;
        c.head_hidden = self.head_hidden;
        c.bottleneck = self.bottleneck;
        c.head_layers = self.head_layers;
        c.norm_last_layer = self.norm_last_layer;
        c.global_size = self.global_size;
        c.local_size = self.local_size;
        c.local_crops = self.local_crops;
        c.global_scale = pair(&self.global_scale, "global-scale")?;
        c.local_scale = pair(&self.local_scale, "local-scale")?;
        c.epochs = self.epochs;
        c.batch_size = self.batch;
        c.lr = self.lr;
        c.min_lr = self.min_lr;
        c.warmup_epochs = self.warmup_epochs;
        c.weight_decay = self.weight_decay;
        c.weight_decay_end = self.weight_decay_end;
        c.momentum_teacher = self.momentum_teacher;
        c.warmup_teacher_temp = self.warmup_teacher_temp;
        c.teacher_temp = self.teacher_temp;
        c.warmup_teacher_temp_epochs = self.warmup_teacher_temp_epochs;
        c.clip_grad = self.clip_grad;
        c.freeze_last_layer = self.freeze_last_layer;
        c.seed = self.seed;
        c.validate()?;
        Ok(c)
    }
}

/// The training items: IDX images, or every image file under a folder.
fn training_items(path: &Path, limit: Option<usize>) -> Result<Vec<Item>> {
    let idx = path.is_file() && !files::has_image_extension(path) || path.is_dir() && is_idx_dir(path, Split::Train);
    let mut items = if idx {
        load_set(path, Split::Train, limit)?.items
    } else {
        let paths = files::collect_images(&[path.to_path_buf()])
            .with_context(|| format!("listing images under {}", path.display()))?;
        paths.into_iter().map(|p| Item { image: ItemImage::File(p), label: 0 }).collect()
    };
    if let Some(n) = limit {
        items.truncate(n);
    }
    if items.is_empty() {
        bail!("{}: no images to train on", path.display());
    }
    Ok(items)
}

pub fn dino(args: DinoArgs) -> Result<ExitCode> {
    let config = args.config()?;
    let items = training_items(&args.data, args.limit)?;
    let idx_dir = args.data.is_dir() && is_idx_dir(&args.data, Split::Train);
    let knn = match (&args.knn_train, &args.knn_test) {
        (Some(tr), Some(te)) => {
            Some((load_set(tr, Split::Train, args.limit)?, load_set(te, Split::Test, args.knn_test_limit)?))
        }
        (None, None) if idx_dir && args.knn_every > 0 => Some((
            load_set(&args.data, Split::Train, args.limit)?,
            load_set(&args.data, Split::Test, args.knn_test_limit)?,
        )),
        (None, None) => None,
        _ => bail!("--knn-train and --knn-test go together"),
    };
    let mut decode = DecodeOptions::default();
    if let Some(m) = args.max_pixels {
        decode = DecodeOptions::with_max_pixels(m);
    }
    let options = RunOptions {
        output: args.output.clone(),
        workers: args.workers,
        prefetch: 2 * args.workers.max(1),
        decode,
        save_every: args.save_every,
        save_every_steps: args.save_every_steps,
        knn: knn.map(|(tr, te)| (tr, te, args.knn_k, args.knn_every)),
        max_epochs: args.max_epochs,
    };
    eprintln!(
        "DINO {} ({}x{}, {} heads, patch {}) on {} images, {} epochs of {} steps; output {}",
        config.arch,
        config.embed_dim,
        config.depth,
        config.num_heads,
        config.patch_size,
        items.len(),
        config.epochs,
        items.len() / config.batch_size,
        args.output.display()
    );
    let mut skipped = 0usize;
    let mut bar: Option<indicatif::ProgressBar> = None;
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
        Event::Saved(_) => {}
        Event::InitialKnn(a) => eprintln!("k-NN top-1 at initialisation: {a:.2} %"),
    });
    if let Some(b) = bar.take() {
        b.finish_and_clear();
    }
    let trainer = result?;
    eprintln!(
        "{} epochs done; backbone: {} (vista features/knn --model)",
        trainer.epoch,
        args.output.join("backbone.safetensors").display()
    );
    Ok(if skipped > 0 { ExitCode::from(crate::EXIT_SKIPPED) } else { ExitCode::SUCCESS })
}
