//! `vista sam auto`: segment everything in every image of folders, one SA-1B-style JSON per
//! image; and the generator's options, shared with `vista segment --everything`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use vista::apps::segment::everything::{sa1b_document, AmgOptions, AutomaticMaskGenerator, OutputMode};
use vista::data::files;

use crate::args::SamArgs;
use crate::progress;

/// The automatic mask generator's parameters (segment-anything's names and defaults).
#[derive(clap::Args, Debug, Clone)]
pub struct AmgArgs {
    /// Points sampled along one side of the image (points_per_side²  prompts).
    #[arg(long, default_value_t = 32)]
    pub points_per_side: usize,
    /// Points decoded together (memory vs. speed).
    #[arg(long, default_value_t = 64)]
    pub points_per_batch: usize,
    /// Keep masks whose predicted IoU is above this (0 keeps all).
    #[arg(long, default_value_t = 0.88)]
    pub pred_iou_thresh: f32,
    /// Keep masks whose stability score is at least this (0 keeps all).
    #[arg(long, default_value_t = 0.95)]
    pub stability_score_thresh: f32,
    /// Logit shift of the stability score.
    #[arg(long, default_value_t = 1.0)]
    pub stability_score_offset: f32,
    /// Box IoU above which duplicate masks are dropped within a crop.
    #[arg(long, default_value_t = 0.7)]
    pub box_nms_thresh: f64,
    /// Also run on 2^i x 2^i crops for i = 1..=N (finer objects, N+1 times the encoder work).
    #[arg(long, default_value_t = 0)]
    pub crop_n_layers: usize,
    /// Box IoU above which duplicate masks are dropped between crops.
    #[arg(long, default_value_t = 0.7)]
    pub crop_nms_thresh: f64,
    /// Overlap of the first crop layer, as a share of the shorter side.
    #[arg(long, default_value_t = 512.0 / 1500.0)]
    pub crop_overlap_ratio: f64,
    /// Crop layer i samples points_per_side / FACTOR^i points a side.
    #[arg(long, default_value_t = 1)]
    pub crop_n_points_downscale_factor: usize,
    /// Remove holes and islands smaller than this many pixels (0 = off).
    #[arg(long, default_value_t = 0)]
    pub min_mask_region_area: usize,
    /// SAM 2's mask-to-mask refinement: decode each mask again with its own logits as the mask
    /// prompt before filtering.
    #[arg(long)]
    pub use_m2m: bool,
    /// One mask per point (the single-mask output) instead of three.
    #[arg(long)]
    pub single_mask: bool,
}

impl AmgArgs {
    /// The generator's options.
    pub fn options(&self, output_mode: OutputMode) -> AmgOptions {
        AmgOptions {
            points_per_side: Some(self.points_per_side),
            point_grids: None,
            points_per_batch: self.points_per_batch,
            pred_iou_thresh: self.pred_iou_thresh,
            stability_score_thresh: self.stability_score_thresh,
            stability_score_offset: self.stability_score_offset,
            box_nms_thresh: self.box_nms_thresh,
            crop_n_layers: self.crop_n_layers,
            crop_nms_thresh: self.crop_nms_thresh,
            crop_overlap_ratio: self.crop_overlap_ratio,
            crop_n_points_downscale_factor: self.crop_n_points_downscale_factor,
            min_mask_region_area: self.min_mask_region_area,
            output_mode,
            use_m2m: self.use_m2m,
            multimask_output: !self.single_mask,
        }
    }
}

/// How `vista sam auto` writes each mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ModeArg {
    /// pycocotools' compressed RLE string (SA-1B's format).
    CocoRle,
    /// Run lengths as a list of numbers.
    UncompressedRle,
    /// The mask as rows of 0/1 (large).
    BinaryMask,
}

impl From<ModeArg> for OutputMode {
    fn from(m: ModeArg) -> Self {
        match m {
            ModeArg::CocoRle => OutputMode::CocoRle,
            ModeArg::UncompressedRle => OutputMode::UncompressedRle,
            ModeArg::BinaryMask => OutputMode::BinaryMask,
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Image files or folders (walked recursively).
    pub inputs: Vec<PathBuf>,
    /// Output folder: one `<image path>.json` per image, mirroring the folders given.
    #[arg(long, short)]
    pub out: PathBuf,
    /// How each mask's `segmentation` is written.
    #[arg(long, value_enum, default_value_t = ModeArg::CocoRle)]
    pub output_mode: ModeArg,
    /// Redo images whose JSON already exists (by default they are skipped, so an interrupted
    /// run resumes).
    #[arg(long)]
    pub overwrite: bool,
    #[command(flatten)]
    pub amg: AmgArgs,
    #[command(flatten)]
    pub model: SamArgs,
}

/// The output file of `image`, found under `root` (an input argument), below `out`.
fn output_path(out: &Path, root: &Path, image: &Path) -> PathBuf {
    let rel = if root.is_dir() {
        image.strip_prefix(root).unwrap_or(image)
    } else {
        Path::new(image.file_name().unwrap_or_default())
    };
    let mut name = rel.as_os_str().to_owned();
    name.push(".json");
    out.join(name)
}

/// `vista sam auto`.
pub fn run(args: Args) -> Result<ExitCode> {
    if args.inputs.is_empty() {
        bail!("give image files or folders");
    }
    let mode: OutputMode = args.output_mode.into();
    let options = args.amg.options(mode);
    options.grids().context("generator options")?;
    let mut jobs = Vec::new();
    for root in &args.inputs {
        for image in files::collect_images(std::slice::from_ref(root))? {
            let out = output_path(&args.out, root, &image);
            jobs.push((image, out));
        }
    }
    let pipeline = args.model.load()?;
    let generator = AutomaticMaskGenerator::new(pipeline.predictor.clone(), options)?;
    let bar = progress::bar(jobs.len(), "segmenting");
    let (mut done, mut existing, mut failed, mut masks) = (0usize, 0usize, 0usize, 0usize);
    for (image, out) in &jobs {
        if out.exists() && !args.overwrite {
            existing += 1;
            bar.inc(1);
            continue;
        }
        let result = pipeline.segment_everything_file(&generator, image).map_err(anyhow::Error::from).and_then(
            |(img, found)| {
                let doc = sa1b_document(image, (img.width(), img.height()), &found, mode);
                if let Some(dir) = out.parent() {
                    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
                }
                let text = serde_json::to_string(&doc)? + "\n";
                vista::weights::formats::write_atomic(out, text.as_bytes())?;
                Ok(found.len())
            },
        );
        match result {
            Ok(n) => {
                done += 1;
                masks += n;
            }
            Err(e) => {
                bar.suspend(|| eprintln!("skipped {}: {e:#}", image.display()));
                failed += 1;
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    eprintln!("{done} segmented ({masks} masks), {existing} already done, {failed} skipped -> {}", args.out.display());
    Ok(crate::exit_code(failed))
}
