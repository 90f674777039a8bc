//! What several subcommands share: the model, device, preprocessing and data-set arguments,
//! the index arguments, and the typed values (`--point`, `--box`) parsed at the boundary.
//! Subcommand modules import from here, never from each other.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use vista::clip::ClipPipeline;
use vista::data::{LabelledSet, Split};
use vista::dino::{DinoPipeline, DinoPreprocess};
use vista::eval::{dataset_features, pixel_features, DatasetFeatures, FeatureCache};
use vista::index::{self, IndexDb, IndexOptions, IndexReport, IndexedModel, Progress, ScanOptions};

use crate::progress;

/// The default CLIP model: OpenAI's ViT-B/32 in transformers format on the Hugging Face hub.
pub const DEFAULT_CLIP: &str = "openai/clip-vit-base-patch32";
/// The default DINO model: Meta's DINOv2 ViT-S/14 in transformers format on the Hugging Face hub.
pub const DEFAULT_DINO: &str = "facebook/dinov2-small";
/// The default SAM: Meta's ViT-B in transformers format on the Hugging Face hub.
pub const DEFAULT_SAM: &str = "facebook/sam-vit-base";

/// Where a model runs and in what precision (every model command takes these).
#[derive(clap::Args, Debug, Clone)]
pub struct TargetArgs {
    /// cpu, cuda or cuda:N (a build with `--features cuda`, see tools/gpu).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Precision of the weights and activations: f32, bf16 or f16. Results are f32 either way;
    /// on the CPU only f32 takes vista's fused kernels.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
}

impl TargetArgs {
    /// The device and dtype, checked.
    pub fn target(&self) -> Result<vista::device::Target> {
        Ok(vista::device::Target::parse(&self.device, &self.dtype)?)
    }
}

/// The CLIP model and how to run it.
#[derive(clap::Args, Debug, Clone)]
pub struct ClipArgs {
    /// A Hugging Face model id, a checkpoint folder, or a checkpoint file (.safetensors, .bin,
    /// .pth, .pt). Default: openai/clip-vit-base-patch32; for `search` and `dupes`, the model the
    /// index was built with.
    #[arg(long, short)]
    pub model: Option<String>,
    /// Architecture preset for a bare checkpoint file (ViT-B-32, ViT-B-16, ViT-L-14,
    /// ViT-L-14-336, ViT-B-32-laion, ViT-H-14, RN50, RN101, RN50x4, RN50x16, RN50x64); overrides
    /// any config file. OpenAI's releases (ViT or ResNet) need none: their shapes say it.
    #[arg(long)]
    pub arch: Option<String>,
    #[command(flatten)]
    pub target: TargetArgs,
    /// Images per forward pass.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Largest image accepted, in pixels (protects against decompression bombs).
    #[arg(long)]
    pub max_pixels: Option<u64>,
}

impl ClipArgs {
    /// The model argument, or the default.
    pub fn model(&self) -> &str {
        self.model.as_deref().unwrap_or(DEFAULT_CLIP)
    }

    /// Loads [`model`](Self::model).
    pub fn load(&self) -> Result<ClipPipeline> {
        self.load_model(self.model(), self.arch.as_deref())
    }

    /// Loads `model` with `arch` on this device, with these decode limits.
    pub fn load_model(&self, model: &str, arch: Option<&str>) -> Result<ClipPipeline> {
        let mut p = ClipPipeline::load(model, arch, self.target.target()?)
            .with_context(|| format!("loading CLIP model `{model}`"))?;
        warn_unused(&p.report);
        if let Some(m) = self.max_pixels {
            p.decode = vista::image::DecodeOptions::with_max_pixels(m);
        }
        Ok(p)
    }

    /// How the index records this model.
    pub fn indexed(&self) -> IndexedModel {
        IndexedModel { id: index::model_id(self.model()), arch: self.arch.clone() }
    }
}

/// The DINO / DINOv2 backbone and its preprocessing.
#[derive(clap::Args, Debug, Clone)]
pub struct DinoArgs {
    #[command(flatten)]
    pub preprocess: DinoPreprocessArgs,
    /// A Hugging Face model id (facebook/dinov2-small|base|large|giant[-with-registers],
    /// facebook/dino-vits16, ...), a folder, or a checkpoint file (dinov2_vits14_pretrain.pth,
    /// dino_deitsmall16_pretrain.pth, dino_resnet50_pretrain.pth or any torchvision ResNet state
    /// dict, a DINO training checkpoint, model.safetensors).
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
    #[command(flatten)]
    pub target: TargetArgs,
    /// Images per forward pass.
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Largest image accepted, in pixels (protects against decompression bombs).
    #[arg(long)]
    pub max_pixels: Option<u64>,
}

impl DinoArgs {
    /// Loads the backbone with the preprocessing of the flags, `default` when no --mode is given.
    pub fn load(&self, default: DinoMode) -> Result<DinoPipeline> {
        let options = vista::dino::LoadOptions {
            arch: self.arch.clone(),
            num_heads: self.num_heads,
            checkpoint_key: self.checkpoint_key.clone(),
            target: self.target.target()?,
        };
        let mut p = DinoPipeline::load(&self.model, &options)
            .with_context(|| format!("loading DINO model `{}`", self.model))?;
        warn_unused(&p.report);
        p.preprocess = self.preprocess.resolve(default, p.preprocess);
        p.preprocess.validate()?;
        if let Some(m) = self.max_pixels {
            p.decode = vista::image::DecodeOptions::with_max_pixels(m);
        }
        Ok(p)
    }
}

/// How DINO sees an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DinoMode {
    /// The checkpoint's evaluation transform (official releases: DINO's, shortest side to 256,
    /// centre crop 224; transformers checkpoints: their preprocessor_config.json), sizes
    /// overridden by --resize / --crop.
    Eval,
    /// The whole image, longest side at --max-side, each side rounded down to a multiple of
    /// the patch size.
    Whole,
}

/// DINO preprocessing.
#[derive(clap::Args, Debug, Clone)]
pub struct DinoPreprocessArgs {
    /// Preprocessing (default: eval; whole for `vista attention`).
    #[arg(long, value_enum)]
    pub mode: Option<DinoMode>,
    /// --mode eval: the shortest side is resized to this first (default: the checkpoint's
    /// preprocessing; 256 for official releases).
    #[arg(long)]
    pub resize: Option<u32>,
    /// --mode eval: side of the centre crop (default: the checkpoint's; 224 for official
    /// releases).
    #[arg(long)]
    pub crop: Option<u32>,
    /// --mode whole: the longest side is resized to this (0: keep the image's size).
    #[arg(long, default_value_t = vista::dino::preprocess::DEFAULT_MAX_SIDE)]
    pub max_side: u32,
}

impl DinoPreprocessArgs {
    /// The preprocessing, `default` when no --mode is given: the checkpoint's own (`loaded`,
    /// its statistics, filter, crop rounding and transparency rule always kept) with the sizes
    /// of the flags.
    pub fn resolve(&self, default: DinoMode, loaded: DinoPreprocess) -> DinoPreprocess {
        use vista::dino::preprocess::Mode;
        let mode = match self.mode.unwrap_or(default) {
            DinoMode::Eval if self.resize.is_none() && self.crop.is_none() => loaded.mode,
            DinoMode::Eval => {
                let (resize, crop) = match loaded.mode {
                    Mode::Eval { resize_shortest, crop } => (resize_shortest, crop),
                    _ => (256, 224),
                };
                Mode::Eval { resize_shortest: self.resize.unwrap_or(resize), crop: self.crop.unwrap_or(crop) }
            }
            DinoMode::Whole => Mode::Whole { max_side: (self.max_side > 0).then_some(self.max_side) },
        };
        DinoPreprocess { mode, ..loaded }
    }
}

/// The SAM model and its embedding cache.
#[derive(clap::Args, Debug, Clone)]
pub struct SamArgs {
    /// A Hugging Face model id (facebook/sam-vit-base|large|huge), a folder, or a checkpoint
    /// file (sam_vit_b_01ec64.pth, mobile_sam.pt, model.safetensors).
    #[arg(long, short, default_value = DEFAULT_SAM)]
    pub model: String,
    /// Architecture preset (vit_b, vit_l, vit_h, vit_t) instead of reading the checkpoint's shapes.
    #[arg(long)]
    pub arch: Option<String>,
    /// Encoder input size of a TinyViT (MobileSAM) checkpoint (default 1024, as released).
    #[arg(long)]
    pub image_size: Option<usize>,
    /// Where image embeddings are cached (default: the user's cache folder, vista/sam).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Neither read nor write cached image embeddings.
    #[arg(long)]
    pub no_cache: bool,
    #[command(flatten)]
    pub target: TargetArgs,
    /// Largest image accepted, in pixels (protects against decompression bombs).
    #[arg(long)]
    pub max_pixels: Option<u64>,
}

impl SamArgs {
    /// Loads the model, with its embedding cache unless `--no-cache`.
    pub fn load(&self) -> Result<vista::apps::segment::SegmentPipeline> {
        use vista::apps::segment::{default_cache_dir, SegmentPipeline};
        let options = vista::sam::LoadOptions {
            arch: self.arch.clone(),
            image_size: self.image_size,
            target: self.target.target()?,
        };
        let cache = if self.no_cache { None } else { Some(self.cache_dir.clone().unwrap_or_else(default_cache_dir)) };
        let mut p = SegmentPipeline::load(&self.model, &options, cache.as_deref())
            .with_context(|| format!("loading SAM model `{}`", self.model))?;
        warn_unused(&p.report);
        if let Some(m) = self.max_pixels {
            p.decode = vista::image::DecodeOptions::with_max_pixels(m);
        }
        Ok(p)
    }
}

/// A labelled train / test pair for frozen-feature evaluation.
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
    /// Use at most N images of the test set (default: --limit).
    #[arg(long)]
    pub test_limit: Option<usize>,
    /// Root of the feature cache: features are stored per model and data set in
    /// `<dir>/<model key>/<data set key>.safetensors` (default: the user's cache folder,
    /// vista/features).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Neither read nor write cached features.
    #[arg(long)]
    pub no_cache: bool,
}

/// CLS features of both sets of a [`DatasetArgs`].
pub struct Prepared {
    /// The training set's features.
    pub train: DatasetFeatures,
    /// The test set's features.
    pub test: DatasetFeatures,
    /// Class names.
    pub classes: Vec<String>,
    /// Items that could not be read, over both sets.
    pub skipped: usize,
}

impl DatasetArgs {
    /// Loads `model` with DINO's evaluation preprocessing (unless --mode says otherwise) and
    /// extracts the CLS features of both sets with it ([`DatasetArgs::features`]).
    pub fn eval_features(&self, model: &DinoArgs) -> Result<(DinoPipeline, Prepared)> {
        let pipeline = model.load(DinoMode::Eval)?;
        let prepared = self.features(&pipeline, model.batch)?;
        Ok((pipeline, prepared))
    }

    /// The CLS features of both sets under `pipeline` (from the cache when there), with a
    /// progress bar and a line per set.
    pub fn features(&self, pipeline: &DinoPipeline, batch: usize) -> Result<Prepared> {
        let cache = (!self.no_cache)
            .then(|| FeatureCache::new(self.cache_dir.clone().unwrap_or_else(FeatureCache::default_root)));
        self.prepare(|set, name, path| match cache.as_ref().and_then(|c| c.load(pipeline, set)) {
            Some(f) => Ok(f),
            None => {
                let pb = progress::bar(set.len(), &format!("{name} features"));
                let f = dataset_features(pipeline, set, batch, cache.as_ref(), |n| pb.inc(n as u64))
                    .with_context(|| format!("extracting features of {}", path.display()))?;
                pb.finish_and_clear();
                Ok(f)
            }
        })
    }

    /// Both sets' raw pixels as features (ImageNet-normalised, flattened): the baseline.
    pub fn pixel_features(&self) -> Result<Prepared> {
        use vista::image::{DecodeOptions, IMAGENET_MEAN, IMAGENET_STD};
        self.prepare(|set, _, path| {
            pixel_features(set, &DecodeOptions::default(), IMAGENET_MEAN, IMAGENET_STD)
                .with_context(|| format!("reading the pixels of {}", path.display()))
        })
    }

    /// Opens both sets and gets each one's features from `extract(set, "train" | "test", path)`,
    /// reporting skipped items and a line per set.
    fn prepare(
        &self,
        mut extract: impl FnMut(&LabelledSet, &str, &Path) -> Result<DatasetFeatures>,
    ) -> Result<Prepared> {
        let test_path = match &self.test {
            Some(t) => t.clone(),
            None => LabelledSet::default_test_path(&self.train)
                .context("give --test (only an IDX folder holding both splits can go without it)")?,
        };
        let open = |p: &Path, split, limit| {
            LabelledSet::open(p, split, limit).with_context(|| format!("reading data set {}", p.display()))
        };
        let train_set = open(&self.train, Split::Train, self.limit)?;
        let test_set = open(&test_path, Split::Test, self.test_limit.or(self.limit))?;
        if train_set.classes != test_set.classes {
            eprintln!(
                "warning: train classes {:?} and test classes {:?} differ; labels are matched by position",
                train_set.classes, test_set.classes
            );
        }
        let mut skipped = 0;
        let mut extract = |set: &LabelledSet, name: &str, path: &Path| -> Result<DatasetFeatures> {
            let f = extract(set, name, path)?;
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
        let train = extract(&train_set, "train", &self.train)?;
        let test = extract(&test_set, "test", &test_path)?;
        let classes =
            if train_set.classes.len() >= test_set.classes.len() { train_set.classes } else { test_set.classes };
        Ok(Prepared { train, test, classes, skipped })
    }
}

/// Which index to use, and the model that searches it.
#[derive(clap::Args, Debug)]
pub struct IndexArgs {
    /// The index database (default: the `.vista/index.sqlite` of the current folder or the
    /// nearest parent that has one).
    #[arg(long)]
    pub db: Option<PathBuf>,
    /// Search the index as it is, without first picking up new, changed and deleted files.
    #[arg(long)]
    pub no_update: bool,
    #[command(flatten)]
    pub model: ClipArgs,
}

impl IndexArgs {
    /// Opens the index.
    pub fn open(&self) -> Result<IndexDb> {
        let path = match &self.db {
            Some(p) => p.clone(),
            None => {
                let cwd = std::env::current_dir()?;
                index::find_db(&cwd).with_context(|| {
                    format!(
                        "no index found for {} or its parents: run `vista index DIR` first, or pass --db",
                        cwd.display()
                    )
                })?
            }
        };
        if !path.is_file() {
            bail!("{}: no such index (run `vista index DIR` first)", path.display());
        }
        Ok(IndexDb::open(&path)?)
    }

    /// Opens the index and the model it was built with (`--model` must be one of them), and
    /// brings the index up to date unless `--no-update`.
    pub fn open_updated(&self) -> Result<(IndexDb, IndexedModel, ClipPipeline)> {
        let clip = &self.model;
        let mut db = self.open()?;
        let model = db.search_model(clip.model.as_deref(), clip.arch.as_deref())?;
        let pipeline = clip.load_model(&model.id, model.arch.as_deref())?;
        if !self.no_update {
            let roots = db.roots()?;
            update_index(&pipeline, &model, &mut db, &roots, &ScanOptions::default(), clip.batch)?;
        }
        Ok((db, model, pipeline))
    }
}

/// Brings `db` up to date for `roots` with a progress bar (`index`, `search` and `dupes`).
pub fn update_index(
    pipeline: &ClipPipeline,
    model: &IndexedModel,
    db: &mut IndexDb,
    roots: &[PathBuf],
    scan: &ScanOptions,
    batch: usize,
) -> Result<IndexReport> {
    let opts = IndexOptions { batch, ..Default::default() };
    let mut bar: Option<indicatif::ProgressBar> = None;
    let freeze_after = freeze_point("index-batches");
    let mut batches = 0usize;
    let report = index::update(pipeline, model, db, roots, scan, &opts, &mut |p| match p {
        Progress::Scanned { to_embed, .. } if to_embed > 0 => bar = Some(progress::bar(to_embed, "indexing")),
        Progress::Scanned { .. } => {}
        Progress::Embedded { n } => {
            if let Some(b) = &bar {
                b.inc(n as u64)
            }
            batches += 1;
            if freeze_after == Some(batches) {
                freeze();
            }
        }
    })
    .with_context(|| format!("updating the index {}", db.path().display()))?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    Ok(report)
}

/// A crash-test point: `VISTA_FREEZE_AT=<name>:<n>` makes the process stop in its tracks
/// ([`freeze`]) at the `n`-th event `name`, so a test can `kill -9` it at a known moment instead
/// of racing it. Points: `index-batches` (after the n-th committed batch of `vista index`),
/// `train-saves` (after the n-th checkpoint `vista train` writes).
pub fn freeze_point(name: &str) -> Option<usize> {
    let spec = std::env::var("VISTA_FREEZE_AT").ok()?;
    let (point, n) = spec.split_once(':')?;
    if point != name {
        return None;
    }
    n.parse().ok()
}

/// Stops making progress forever (the process waits to be killed); see [`freeze_point`].
pub fn freeze() -> ! {
    eprintln!("frozen (VISTA_FREEZE_AT)");
    loop {
        std::thread::park();
    }
}

/// Says which checkpoint tensors a model did not use (loading is loud, never silent).
pub fn warn_unused(report: &vista::weights::LoadReport) {
    if !report.unused.is_empty() {
        eprintln!(
            "warning: {} tensors of {} were not used: {}",
            report.unused.len(),
            report.checkpoint.display(),
            report.unused.join(", ")
        );
    }
}

/// Splits per-file results into the readable ones (their paths as names, their values) and the
/// number of the others, each named on stderr (`skipped: ...`).
pub fn readable<T>(results: impl IntoIterator<Item = (PathBuf, vista::Result<T>)>) -> (Vec<String>, Vec<T>, usize) {
    let (mut names, mut values, mut skipped) = (Vec::new(), Vec::new(), 0usize);
    for (path, r) in results {
        match r {
            Ok(v) => {
                names.push(path.display().to_string());
                values.push(v);
            }
            Err(e) => {
                skipped += 1;
                eprintln!("skipped: {e}");
            }
        }
    }
    (names, values, skipped)
}

/// Reads a list file: one entry per non-empty line.
pub fn read_lines(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect())
}

/// `N` comma-separated finite numbers.
fn numbers<T, const N: usize>(arg: &str) -> Result<[T; N], String>
where
    T: std::str::FromStr + Copy + Default + Into<f64>,
{
    let parts: Vec<&str> = arg.split(',').map(str::trim).collect();
    if parts.len() != N {
        return Err(format!("expected {N} comma-separated numbers"));
    }
    let mut out = [T::default(); N];
    for (o, p) in out.iter_mut().zip(&parts) {
        *o = p.parse::<T>().map_err(|_| format!("`{p}` is not a number"))?;
        if !(*o).into().is_finite() {
            return Err(format!("`{p}` is not a finite number"));
        }
    }
    Ok(out)
}

/// `--point X,Y[,neg]`: a SAM point prompt, foreground unless labelled `neg` (also
/// `negative`, `bg`, `background`, `-`; `pos`, `positive`, `fg`, `foreground`, `+` mark
/// foreground).
pub fn parse_point(arg: &str) -> Result<vista::sam::Point, String> {
    let (coords, positive) = match arg.rsplit_once(',') {
        Some((rest, label)) if label.trim().parse::<f32>().is_err() => {
            let positive = match label.trim().to_ascii_lowercase().as_str() {
                "neg" | "negative" | "bg" | "background" | "-" => false,
                "pos" | "positive" | "fg" | "foreground" | "+" => true,
                other => return Err(format!("label `{other}` is neither pos nor neg")),
            };
            (rest, positive)
        }
        _ => (arg, true),
    };
    let [x, y] = numbers::<f32, 2>(coords)?;
    Ok(vista::sam::Point { x, y, positive })
}

/// `--box X0,Y0,X1,Y1`: a SAM box prompt in image pixels.
pub fn parse_box(arg: &str) -> Result<[f32; 4], String> {
    numbers::<f32, 4>(arg)
}

/// `--global-scale 0.4,1.0`: a `(low, high)` pair.
pub fn parse_pair(arg: &str) -> Result<(f64, f64), String> {
    let [a, b] = numbers::<f64, 2>(arg)?;
    Ok((a, b))
}

/// One subcommand's arguments parsed on their own, for the subcommands' unit tests
/// (`type Cli = TestCli<Args>;`, then `Cli::try_parse_from([...])`).
#[cfg(test)]
#[derive(clap::Parser)]
pub struct TestCli<A: clap::Args> {
    #[command(flatten)]
    pub args: A,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_parse_with_and_without_labels() {
        let p = parse_point("120,80").unwrap();
        assert_eq!((p.x, p.y, p.positive), (120.0, 80.0, true));
        let p = parse_point(" 3.5 , 4 ,neg").unwrap();
        assert_eq!((p.x, p.y, p.positive), (3.5, 4.0, false));
        assert!(parse_point("1,2,pos").unwrap().positive);
        assert!(parse_point("1,2,maybe").unwrap_err().contains("maybe"));
        assert!(parse_point("1").unwrap_err().contains("2 comma-separated"));
        assert!(parse_point("1,x").unwrap_err().contains("`x`"));
        assert!(parse_point("nan,1").is_err());
    }

    #[test]
    fn boxes_need_four_numbers() {
        assert_eq!(parse_box("10,10,200,220").unwrap(), [10.0, 10.0, 200.0, 220.0]);
        assert!(parse_box("10,10,200").is_err());
        assert!(parse_box("10,10,200,inf").is_err());
    }
}
