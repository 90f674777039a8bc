//! `vista features`: DINO / DINOv2 CLS and patch features of images, as `.npy`, `.safetensors`
//! or JSON lines.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use vista::apps::features::{write_features, FeatureOutput, Wanted};
use vista::data::files;

use crate::args::{readable, DinoArgs, DinoMode};
use crate::progress;

/// Which features to write.
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
pub struct Args {
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
    pub model: DinoArgs,
}

/// `vista features`.
pub fn run(args: Args) -> Result<ExitCode> {
    let output = FeatureOutput::for_path(args.out.as_deref());
    let paths = files::collect_images(&args.inputs)?;
    if paths.is_empty() {
        bail!("no images found in {:?}", args.inputs);
    }
    let pipeline = args.model.load(DinoMode::Eval)?;
    let wanted = Wanted { cls: args.what != What::Patch, patches: args.what != What::Cls };
    let pb = progress::bar(paths.len(), "extracting");
    let results = pipeline.extract_files(&paths, args.model.batch, wanted.patches, |n| pb.inc(n as u64));
    pb.finish_and_clear();
    let (names, feats, skipped) = readable(results.into_iter().map(|r| (r.path, r.features)));
    let extra = [
        ("model", args.model.model.clone()),
        ("preprocess", pipeline.preprocess.describe()),
        ("what", format!("{:?}", args.what).to_lowercase()),
    ];
    let wrote = write_features(&output, &names, &feats, wanted, &extra)?;
    if !wrote.is_empty() {
        eprintln!("wrote {}", wrote.join(", "));
    }
    if skipped > 0 {
        eprintln!("{skipped} input(s) skipped");
    }
    Ok(crate::exit_code(skipped))
}
