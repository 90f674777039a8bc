//! DINO / DINOv2: `vista features` (CLS and patch features), `vista attention` (attention-map
//! pictures), `vista knn` and `vista linear-probe` (frozen-feature evaluation on labelled sets).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use serde_json::json;
use vista::apps::dataset::{LabelledSet, Split};
use vista::apps::dino_pipeline::{
    common_grid, default_feature_cache_dir, panel_grid, render_attention, save_features_safetensors, DatasetFeatures,
    DinoFeatures, DinoPipeline, DinoPreprocess, RenderOptions, Upsample, DEFAULT_MAX_SIDE,
};
use vista::apps::knn::{self, KnnOptions, DEFAULT_TEMPERATURE};
use vista::apps::linear_probe::{LinearProbe, LinearProbeConfig};
use vista::apps::{files, npy};
use vista::dino::LoadOptions;

use crate::progress;

/// The default DINO model: Meta's DINOv2 ViT-S/14 in transformers format on the Hugging Face hub.
pub const DEFAULT_DINO: &str = "facebook/dinov2-small";

#[derive(clap::Args, Debug, Clone)]
pub struct DinoModelArgs {
    /// A Hugging Face model id (facebook/dinov2-small|base|large|giant[-with-registers],
    /// facebook/dino-vits16, ...), a folder, or a checkpoint file (dinov2_vits14_pretrain.pth,
    /// dino_deitsmall16_pretrain.pth, a DINO training checkpoint, model.safetensors).
    #[arg(long, short, default_value = DEFAULT_DINO)]
    pub model: String,
    /// Architecture preset (dino_vits16, dino_vitb8, dinov2_vits14, dinov2_vitl14_reg, ...)
    /// instead of reading the checkpoint's shapes.
    #[arg(long)]
    pub arch: Option<String>,
    /// Attention heads (official checkpoints do not store it; default: width / 64).
    #[arg(long)]
    pub num_heads: Option<usize>,
    /// Which network of a DINO training checkpoint: teacher (default) or student.
    #[arg(long)]
    pub checkpoint_key: Option<String>,
    /// Images per forward pass.
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Largest image accepted, in pixels (protects against decompression bombs).
    #[arg(long)]
    pub max_pixels: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ModeArg {
    /// DINO's evaluation transform: shortest side to --resize, centre crop --crop.
    Eval,
    /// The whole image, longest side at --max-side, each side rounded down to a multiple of
    /// the patch size.
    Whole,
}

#[derive(clap::Args, Debug, Clone)]
pub struct PreprocessArgs {
    /// Preprocessing (default: eval; whole for `vista attention`).
    #[arg(long, value_enum)]
    pub mode: Option<ModeArg>,
    /// --mode eval: the shortest side is resized to this first.
    #[arg(long, default_value_t = 256)]
    pub resize: u32,
    /// --mode eval: side of the centre crop.
    #[arg(long, default_value_t = 224)]
    pub crop: u32,
    /// --mode whole: the longest side is resized to this (0: keep the image's size).
    #[arg(long, default_value_t = DEFAULT_MAX_SIDE)]
    pub max_side: u32,
}

impl PreprocessArgs {
    fn resolve(&self, default: ModeArg) -> DinoPreprocess {
        match self.mode.unwrap_or(default) {
            ModeArg::Eval => DinoPreprocess::eval_sized(self.resize, self.crop),
            ModeArg::Whole => DinoPreprocess::whole((self.max_side > 0).then_some(self.max_side)),
        }
    }
}

impl DinoModelArgs {
    pub fn load(&self, preprocess: DinoPreprocess) -> Result<DinoPipeline> {
        preprocess.validate()?;
        let options = LoadOptions {
            arch: self.arch.clone(),
            num_heads: self.num_heads,
            checkpoint_key: self.checkpoint_key.clone(),
        };
        let mut p = DinoPipeline::load(&self.model, &options)
            .with_context(|| format!("loading DINO model `{}`", self.model))?;
        super::common::warn_unused(&p.report);
        p.preprocess = preprocess;
        if let Some(m) = self.max_pixels {
            p.decode = vista::image::DecodeOptions::with_max_pixels(m);
        }
        Ok(p)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum What {
    /// The CLS token `[C]` per image.
    Cls,
    /// The patch tokens `[h·w, C]` (and register tokens) per image.
    Patch,
    /// Both.
    Both,
}

#[derive(clap::Args, Debug)]
pub struct FeaturesArgs {
    /// Image files or folders (walked recursively).
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// Which features.
    #[arg(long, value_enum, default_value_t = What::Cls)]
    pub what: What,
    /// Output: `.npy` (CLS rows `[N, C]` in this file, patch tokens `[N, h·w, C]` in
    /// `<stem>.patch.npy`, which needs one patch grid for all images), `.safetensors` (tensors
    /// `cls`, `patch` or `patch.<i>`, `registers`; names and grids in the metadata), or JSON lines
    /// (`-`, omitted, or any other name). `.npy` and `.safetensors` get the row names in
    /// `<stem>.txt`.
    #[arg(long, short)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub preprocess: PreprocessArgs,
    #[command(flatten)]
    pub model: DinoModelArgs,
}

enum Output {
    Npy(PathBuf),
    Safetensors(PathBuf),
    JsonLines(Option<PathBuf>),
}

fn output_kind(out: &Option<PathBuf>) -> Output {
    let ext = |p: &Path| p.extension().map(|e| e.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
    match out {
        Some(p) if p.as_os_str() == "-" => Output::JsonLines(None),
        Some(p) if ext(p) == "npy" => Output::Npy(p.clone()),
        Some(p) if ext(p) == "safetensors" => Output::Safetensors(p.clone()),
        Some(p) => Output::JsonLines(Some(p.clone())),
        None => Output::JsonLines(None),
    }
}

fn write_names(out: &Path, names: &[String]) -> Result<PathBuf> {
    let list = out.with_extension("txt");
    let mut text = names.join("\n");
    if !names.is_empty() {
        text.push('\n');
    }
    std::fs::write(&list, text).with_context(|| format!("writing {}", list.display()))?;
    Ok(list)
}

fn patch_npy_path(out: &Path) -> PathBuf {
    let stem = out.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
    out.with_file_name(format!("{stem}.patch.npy"))
}

/// `vista features`.
pub fn features(args: FeaturesArgs) -> Result<ExitCode> {
    let output = output_kind(&args.out);
    let paths = files::collect_images(&args.inputs)?;
    if paths.is_empty() {
        bail!("no images found in {:?}", args.inputs);
    }
    let pipeline = args.model.load(args.preprocess.resolve(ModeArg::Eval))?;
    let (want_cls, want_patches) = match args.what {
        What::Cls => (true, false),
        What::Patch => (false, true),
        What::Both => (true, true),
    };
    let pb = progress::bar(paths.len(), "extracting");
    let results = pipeline.extract_files(&paths, args.model.batch, want_patches, |n| pb.inc(n as u64));
    pb.finish_and_clear();
    let mut names = Vec::new();
    let mut feats: Vec<DinoFeatures> = Vec::new();
    let mut skipped = 0usize;
    for r in results {
        match r.features {
            Ok(f) => {
                names.push(r.path.display().to_string());
                feats.push(f);
            }
            Err(e) => {
                skipped += 1;
                eprintln!("skipped: {e}");
            }
        }
    }
    let dim = pipeline.model.config.embed_dim;
    match output {
        Output::Npy(p) => {
            let mut wrote = Vec::new();
            if want_cls {
                let flat: Vec<f32> = feats.iter().flat_map(|f| f.cls.iter().copied()).collect();
                npy::write_f32_matrix(&p, &flat, feats.len(), dim)?;
                wrote.push(format!("CLS [{}, {dim}] to {}", feats.len(), p.display()));
            }
            let list = write_names(&p, &names)?;
            if want_patches {
                let Some((h, w)) = common_grid(&feats).or(feats.is_empty().then_some((0, 0))) else {
                    bail!(
                        "the images have different patch grids ({}), which one .npy array cannot hold: use \
                         --out FILE.safetensors or JSON lines, or --mode eval (one crop size for all){}",
                        grid_summary(&feats),
                        if want_cls { format!(" ({} was written)", p.display()) } else { String::new() }
                    );
                };
                let pp = patch_npy_path(&p);
                let flat: Vec<f32> = feats.iter().flat_map(|f| f.patches.iter().copied()).collect();
                npy::write_f32(&pp, &flat, &[feats.len(), h * w, dim])?;
                wrote.push(format!("patch tokens [{}, {h}x{w}, {dim}] to {}", feats.len(), pp.display()));
            }
            eprintln!("wrote {} (row names in {})", wrote.join(" and "), list.display());
        }
        Output::Safetensors(p) => {
            let extra = [
                ("model", args.model.model.clone()),
                ("preprocess", pipeline.preprocess.describe()),
                ("what", format!("{:?}", args.what).to_lowercase()),
            ];
            save_features_safetensors(&p, &names, &feats, want_cls, want_patches, &extra)?;
            let list = write_names(&p, &names)?;
            eprintln!("wrote features of {} images to {} (row names in {})", feats.len(), p.display(), list.display());
        }
        Output::JsonLines(target) => {
            let mut w: Box<dyn Write> = match &target {
                Some(p) => Box::new(std::io::BufWriter::new(
                    std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
                )),
                None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
            };
            for (name, f) in names.iter().zip(&feats) {
                let mut line = json!({ "path": name });
                if want_cls {
                    line["cls"] = json!(f.cls);
                }
                if want_patches {
                    line["grid"] = json!([f.grid.0, f.grid.1]);
                    line["patch"] = json!(f.patches.chunks(dim.max(1)).collect::<Vec<_>>());
                    if !f.registers.is_empty() {
                        line["registers"] = json!(f.registers.chunks(dim.max(1)).collect::<Vec<_>>());
                    }
                }
                writeln!(w, "{line}")?;
            }
            w.flush()?;
        }
    }
    if skipped > 0 {
        eprintln!("{skipped} input(s) skipped");
        return Ok(ExitCode::from(crate::EXIT_SKIPPED));
    }
    Ok(ExitCode::SUCCESS)
}

fn grid_summary(feats: &[DinoFeatures]) -> String {
    let mut grids: Vec<(usize, usize)> = feats.iter().map(|f| f.grid).collect();
    grids.sort();
    grids.dedup();
    let shown: Vec<String> = grids.iter().take(4).map(|(h, w)| format!("{h}x{w}")).collect();
    let more = if grids.len() > 4 { format!(", ... {} in all", grids.len()) } else { String::new() };
    format!("{}{more}", shown.join(", "))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum UpsampleArg {
    /// Each patch a flat square (as DINO's visualize_attention.py).
    Nearest,
    /// Smooth, between patch centres.
    Bilinear,
}

#[derive(clap::Args, Debug)]
pub struct AttentionArgs {
    /// The image.
    pub image: PathBuf,
    /// The PNG to write (default: `<image stem>.attention.png` in the current folder).
    #[arg(long, short)]
    pub out: Option<PathBuf>,
    /// Draw, per head, the patches holding this fraction of its attention (DINO's
    /// `--threshold`, e.g. 0.6) instead of heat maps.
    #[arg(long)]
    pub threshold: Option<f32>,
    /// How the patch maps are scaled to the image.
    #[arg(long, value_enum, default_value_t = UpsampleArg::Nearest)]
    pub upsample: UpsampleArg,
    /// Panels per row (default: about square).
    #[arg(long)]
    pub columns: Option<usize>,
    /// Also save the raw maps `[heads, h, w]` to this `.npy`.
    #[arg(long)]
    pub save_maps: Option<PathBuf>,
    #[command(flatten)]
    pub preprocess: PreprocessArgs,
    #[command(flatten)]
    pub model: DinoModelArgs,
}

/// `vista attention`.
pub fn attention(args: AttentionArgs) -> Result<ExitCode> {
    if let Some(t) = args.threshold {
        if !(t > 0.0 && t <= 1.0) {
            bail!("--threshold {t}: expected a fraction in (0, 1], e.g. 0.6");
        }
    }
    if args.columns == Some(0) {
        bail!("--columns must be positive");
    }
    let pipeline = args.model.load(args.preprocess.resolve(ModeArg::Whole))?;
    let maps =
        pipeline.attention_maps_file(&args.image).with_context(|| format!("attention of {}", args.image.display()))?;
    let options = RenderOptions {
        threshold: args.threshold,
        upsample: match args.upsample {
            UpsampleArg::Nearest => Upsample::Nearest,
            UpsampleArg::Bilinear => Upsample::Bilinear,
        },
        columns: args.columns,
        ..RenderOptions::default()
    };
    let picture = render_attention(&maps, &options)?;
    let out = args.out.clone().unwrap_or_else(|| {
        let stem = args.image.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_else(|| "image".into());
        PathBuf::from(format!("{stem}.attention.png"))
    });
    picture.save(&out).with_context(|| format!("writing {}", out.display()))?;
    let (h, w) = maps.grid;
    if let Some(p) = &args.save_maps {
        npy::write_f32(p, &maps.maps, &[maps.heads, h, w])?;
        eprintln!("maps [{}, {h}, {w}] -> {}", maps.heads, p.display());
    }
    let (cols, rows) = panel_grid(maps.heads + 1, args.columns);
    let (pw, ph) = maps.image.dimensions();
    println!(
        "{}: {} heads over {h}x{w} patches of {} px; {cols}x{rows} panels of {pw}x{ph} (image, then heads 0-{})",
        out.display(),
        maps.heads,
        maps.patch_size,
        maps.heads - 1
    );
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args, Debug, Clone)]
pub struct DatasetArgs {
    /// Training set: a folder with one sub-folder per class (ImageFolder), a folder of
    /// MNIST-style IDX files (the train-* pair is used; e.g. /usr/share/datasets/fashion-mnist),
    /// or an IDX images file (its labels file found by name).
    #[arg(long)]
    pub train: PathBuf,
    /// Test set, as --train (an IDX folder gives its t10k-* pair). Default: the t10k-* pair of
    /// an IDX --train folder.
    #[arg(long)]
    pub test: Option<PathBuf>,
    /// Use at most N images of each set: the first N of an IDX file, evenly spaced through a
    /// class folder's sorted images (so every class keeps its share).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Root of the feature cache: features are stored per model and data set in
    /// `<dir>/<model key>/<data set key>.safetensors` (default: the user's cache folder,
    /// vista/features).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Neither read nor write cached features.
    #[arg(long)]
    pub no_cache: bool,
}

pub(crate) fn is_idx_dir(dir: &Path, split: Split) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else { return false };
    entries.filter_map(|e| e.ok()).any(|e| {
        let n = e.file_name().to_string_lossy().to_string();
        n.starts_with(split.prefix()) && n.contains("idx3")
    })
}

pub(crate) fn load_set(path: &Path, split: Split, limit: Option<usize>) -> Result<LabelledSet> {
    let what = || format!("reading data set {}", path.display());
    if path.is_file() {
        let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        let labels_name = name.replace("images-idx3", "labels-idx1").replace("images.idx3", "labels.idx1");
        if labels_name == name {
            bail!("{}: an IDX images file is named *-images-idx3-ubyte[.gz]; give a folder otherwise", path.display());
        }
        let labels = path.with_file_name(labels_name);
        return LabelledSet::from_idx(path, &labels, limit).with_context(what);
    }
    if is_idx_dir(path, split) {
        return LabelledSet::from_idx_dir(path, split, limit).with_context(what);
    }
    let mut set = LabelledSet::from_dir(path).with_context(what)?;
    if let Some(n) = limit {
        let len = set.items.len();
        if n < len {
            set.items = (0..n).map(|i| set.items[i * len / n].clone()).collect();
        }
    }
    Ok(set)
}

struct Prepared {
    train: DatasetFeatures,
    test: DatasetFeatures,
    classes: Vec<String>,
    skipped: usize,
}

fn dataset_features(pipeline: &DinoPipeline, args: &DatasetArgs, batch: usize) -> Result<Prepared> {
    let test_path = match &args.test {
        Some(t) => t.clone(),
        None if args.train.is_dir() && is_idx_dir(&args.train, Split::Test) => args.train.clone(),
        None => bail!("give --test (only an IDX folder holding both splits can go without it)"),
    };
    let train_set = load_set(&args.train, Split::Train, args.limit)?;
    let test_set = load_set(&test_path, Split::Test, args.limit)?;
    if train_set.classes != test_set.classes {
        eprintln!(
            "warning: train classes {:?} and test classes {:?} differ; labels are matched by position",
            train_set.classes, test_set.classes
        );
    }
    let cache =
        if args.no_cache { None } else { Some(args.cache_dir.clone().unwrap_or_else(default_feature_cache_dir)) };
    let mut skipped = 0;
    let mut extract = |set: &LabelledSet, name: &str, path: &Path| -> Result<DatasetFeatures> {
        let cached = cache.as_deref().and_then(|root| pipeline.load_cached(root, set));
        let f = match cached {
            Some(f) => f,
            None => {
                let pb = progress::bar(set.len(), &format!("{name} features"));
                let f = pipeline
                    .dataset_features(set, batch, cache.as_deref(), |n| pb.inc(n as u64))
                    .with_context(|| format!("extracting features of {}", path.display()))?;
                pb.finish_and_clear();
                f
            }
        };
        for s in &f.skipped {
            eprintln!("skipped: {s}");
        }
        if let Some(e) = &f.cache_error {
            eprintln!("warning: the {name} features were not cached: {e}");
        }
        skipped += f.skipped.len();
        if f.is_empty() {
            bail!("{}: no image of the {name} set could be read", path.display());
        }
        let source = match (&f.cache, f.from_cache) {
            (Some(c), true) => format!(", from the cache {}", c.display()),
            (Some(c), false) => format!(", cached in {}", c.display()),
            _ => String::new(),
        };
        eprintln!("{name}: {} images of {} classes from {}{source}", f.len(), set.classes.len(), path.display());
        Ok(f)
    };
    let train = extract(&train_set, "train", &args.train)?;
    let test = extract(&test_set, "test", &test_path)?;
    let classes = if train_set.classes.len() >= test_set.classes.len() { train_set.classes } else { test_set.classes };
    Ok(Prepared { train, test, classes, skipped })
}

#[derive(clap::Args, Debug)]
pub struct KnnArgs {
    #[command(flatten)]
    pub data: DatasetArgs,
    /// Neighbour counts to score (comma-separated); those above the train set's size are left out.
    #[arg(long, value_delimiter = ',', default_values_t = [10, 20, 100, 200])]
    pub k: Vec<usize>,
    /// Vote temperature: a neighbour at cosine similarity s votes exp(s / T).
    #[arg(long, default_value_t = DEFAULT_TEMPERATURE)]
    pub temperature: f32,
    /// Print the results as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub preprocess: PreprocessArgs,
    #[command(flatten)]
    pub model: DinoModelArgs,
}

/// `vista knn`: DINO's weighted k-NN on L2-normalised CLS features.
pub fn knn(args: KnnArgs) -> Result<ExitCode> {
    if args.k.is_empty() || args.k.contains(&0) {
        bail!("--k: give positive neighbour counts, e.g. 10,20,100,200");
    }
    let pipeline = args.model.load(args.preprocess.resolve(ModeArg::Eval))?;
    let Prepared { mut train, mut test, classes, skipped } = dataset_features(&pipeline, &args.data, args.model.batch)?;
    let n_train = train.len();
    let (ks, dropped): (Vec<usize>, Vec<usize>) = args.k.iter().partition(|&&k| k <= n_train);
    if !dropped.is_empty() {
        eprintln!("note: k = {dropped:?} left out: more than the {n_train} train images");
    }
    if ks.is_empty() {
        bail!("every --k is above the number of train images ({n_train})");
    }
    let dim = train.dim;
    knn::normalize_rows(&mut train.features, dim);
    knn::normalize_rows(&mut test.features, dim);
    let options = KnnOptions { ks, temperature: args.temperature, ..KnnOptions::default() };
    let results = knn::knn_classifier(
        &train.features,
        &train.labels,
        &test.features,
        &test.labels,
        dim,
        classes.len(),
        &options,
    )?;
    if args.json {
        let rows: Vec<_> = results.iter().map(|r| json!({"k": r.k, "top1": r.top1, "top5": r.top5})).collect();
        let doc = json!({
            "model": args.model.model, "preprocess": pipeline.preprocess.describe(), "dim": dim,
            "temperature": args.temperature, "train": train.len(), "test": test.len(),
            "classes": classes.len(), "skipped": skipped, "results": rows,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        println!(
            "weighted k-NN, T = {}, on {} train / {} test CLS features of dimension {dim}, {} classes",
            args.temperature,
            train.len(),
            test.len(),
            classes.len()
        );
        println!("{:>6}  {:>8}  {:>8}", "k", "top-1 %", "top-5 %");
        for r in &results {
            println!("{:>6}  {:>8.2}  {:>8.2}", r.k, r.top1, r.top5);
        }
    }
    Ok(if skipped > 0 { ExitCode::from(crate::EXIT_SKIPPED) } else { ExitCode::SUCCESS })
}

#[derive(clap::Args, Debug)]
pub struct LinearProbeArgs {
    #[command(flatten)]
    pub data: DatasetArgs,
    /// Passes over the training features.
    #[arg(long, default_value_t = 100)]
    pub epochs: usize,
    /// Peak learning rate (AdamW, cosine schedule).
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// Training mini-batch size (--batch is the feature extractor's).
    #[arg(long, alias = "batch-size", default_value_t = 256)]
    pub probe_batch: usize,
    /// AdamW weight decay.
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,
    /// Seeds the initialisation and the shuffles.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print the results as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub preprocess: PreprocessArgs,
    #[command(flatten)]
    pub model: DinoModelArgs,
}

/// `vista linear-probe`: a linear classifier trained on frozen CLS features.
pub fn linear_probe(args: LinearProbeArgs) -> Result<ExitCode> {
    if args.epochs == 0 || args.probe_batch == 0 {
        bail!("--epochs and --probe-batch must be positive");
    }
    let pipeline = args.model.load(args.preprocess.resolve(ModeArg::Eval))?;
    let Prepared { train, test, classes, skipped } = dataset_features(&pipeline, &args.data, args.model.batch)?;
    let config = LinearProbeConfig {
        epochs: args.epochs,
        batch_size: args.probe_batch,
        lr: args.lr,
        weight_decay: args.weight_decay,
        seed: args.seed,
        ..LinearProbeConfig::default()
    };
    let (probe, report) = LinearProbe::train(&train.features, &train.labels, train.dim, classes.len(), &config)?;
    let (train_top1, _) = probe.evaluate(&train.features, &train.labels)?;
    let (top1, top5) = probe.evaluate(&test.features, &test.labels)?;
    let loss = report.epoch_losses.last().copied().unwrap_or(f64::NAN);
    if args.json {
        let doc = json!({
            "model": args.model.model, "preprocess": pipeline.preprocess.describe(), "dim": train.dim,
            "train": train.len(), "test": test.len(), "classes": classes.len(), "skipped": skipped,
            "epochs": args.epochs, "steps": report.steps, "final_train_loss": loss,
            "train_top1": train_top1, "top1": top1, "top5": top5,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        println!(
            "linear probe on {} train / {} test CLS features of dimension {}, {} classes, {} epochs ({} steps)",
            train.len(),
            test.len(),
            train.dim,
            classes.len(),
            args.epochs,
            report.steps
        );
        println!("final train loss {loss:.4}, train top-1 {train_top1:.2} %");
        println!("test top-1 {top1:.2} %  top-5 {top5:.2} %");
    }
    Ok(if skipped > 0 { ExitCode::from(crate::EXIT_SKIPPED) } else { ExitCode::SUCCESS })
}
