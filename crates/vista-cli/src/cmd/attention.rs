//! `vista attention`: a DINO model's last-layer CLS attention, one panel per head, as a PNG.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use vista::apps::attention::{panel_grid, render_attention, RenderOptions, Upsample};
use vista::data::npy;

use crate::args::{DinoArgs, DinoMode};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum UpsampleArg {
    /// Each patch a flat square (as DINO's visualize_attention.py).
    Nearest,
    /// Smooth, between patch centres.
    Bilinear,
}

#[derive(clap::Args, Debug)]
pub struct Args {
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
    pub model: DinoArgs,
}

/// `vista attention`.
pub fn run(args: Args) -> Result<ExitCode> {
    if let Some(t) = args.threshold {
        if !(t > 0.0 && t <= 1.0) {
            bail!("--threshold {t}: expected a fraction in (0, 1], e.g. 0.6");
        }
    }
    if args.columns == Some(0) {
        bail!("--columns must be positive");
    }
    let pipeline = args.model.load(DinoMode::Whole)?;
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
