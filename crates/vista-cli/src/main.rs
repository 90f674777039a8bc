//! `vista`: CLIP, DINO and SAM on your own machine. Parse → resolve → call the library.

mod args;
mod cmd;
mod progress;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "vista", version, about = "CLIP, DINO and SAM, natively, on your own machine")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Embed images or texts with CLIP (JSON lines or .npy).
    Embed(cmd::embed::Args),
    /// Zero-shot classify images against labels with CLIP.
    Classify(cmd::classify::Args),
    /// Build or update the CLIP index of photo folders.
    Index(cmd::index::Args),
    /// Search an index by text, by example image, or both.
    Search(cmd::search::Args),
    /// Groups of near-duplicate images in an index.
    Dupes(cmd::dupes::Args),
    /// Segment an object with SAM from points, boxes or a previous mask, or everything in the
    /// image (--everything).
    Segment(cmd::segment::Args),
    /// SAM utilities.
    #[command(subcommand)]
    Sam(SamCommand),
    /// DINO / DINOv2 CLS and patch features of images (.npy, .safetensors or JSON lines).
    Features(cmd::features::Args),
    /// Draw a DINO model's last-layer CLS attention, one panel per head, as a PNG.
    Attention(cmd::attention::Args),
    /// Weighted k-NN accuracy of DINO features on a labelled image set (as DINO's eval_knn.py).
    Knn(cmd::knn::Args),
    /// Which backbone and few-shot classifier fit a labelled image set best (cross-validated
    /// k-NN, logistic regression, CLIP zero-shot, Tip-Adapter, and their blend).
    Fit(Box<cmd::fit::Args>),
    /// Linear-probe accuracy of DINO features on a labelled image set.
    LinearProbe(cmd::linear_probe::Args),
    /// Train a model.
    #[command(subcommand)]
    Train(TrainCommand),
    /// Serve the HTTP API and the web page: search the index, click to segment with SAM.
    Serve(Box<cmd::serve::Args>),
}

#[derive(Subcommand)]
enum TrainCommand {
    /// Self-supervised DINO training of a ViT on unlabelled images (main_dino.py's recipe).
    Dino(Box<cmd::train_dino::Args>),
    /// Contrastive CLIP training on image–caption pairs (open_clip's recipe): from scratch, or
    /// fine-tuning a checkpoint (LiT tower locks, WiSE-FT).
    Clip(Box<cmd::train_clip::Args>),
}

#[derive(Subcommand)]
enum SamCommand {
    /// Pre-encode images (fills the embedding cache, so later prompts are instant).
    Encode(cmd::sam_encode::Args),
    /// Segment everything in every image (SAM's automatic mask generator); one SA-1B-style
    /// JSON per image.
    Auto(Box<cmd::sam_auto::Args>),
}

/// Exit codes: 0 all done, 1 failed, 2 finished but some inputs were skipped.
pub const EXIT_SKIPPED: u8 = 2;

/// How a run that had to skip `skipped` inputs ends: [`EXIT_SKIPPED`] if any, success otherwise.
pub fn exit_code(skipped: usize) -> ExitCode {
    if skipped > 0 {
        ExitCode::from(EXIT_SKIPPED)
    } else {
        ExitCode::SUCCESS
    }
}

/// `vista search "red saree" -kurta`: a negative term looks like an option to any argument parser.
/// Before parsing, every `-word` argument of `search` that is not one of its short flags or a
/// number is turned into `--term=-word`.
fn rewrite_negative_terms(args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    if args.get(1).map(|a| a != "search").unwrap_or(true) {
        return args;
    }
    args.into_iter()
        .map(|a| match a.to_str() {
            Some(s) if s.len() > 2 && s.starts_with('-') && !s.starts_with("--") && s.parse::<f64>().is_err() => {
                format!("--term={s}").into()
            }
            _ => a,
        })
        .collect()
}

/// Freed activation-sized blocks are kept for the next forward instead of unmapped (see
/// [`vista::memory`]).
#[global_allocator]
static ALLOCATOR: vista::memory::TensorAllocator = vista::memory::TensorAllocator;

fn main() -> ExitCode {
    vista::device::init_process();
    let cli = Cli::parse_from(rewrite_negative_terms(std::env::args_os().collect()));
    let result = match cli.command {
        Command::Embed(a) => cmd::embed::run(a),
        Command::Classify(a) => cmd::classify::run(a),
        Command::Index(a) => cmd::index::run(a),
        Command::Search(a) => cmd::search::run(a),
        Command::Dupes(a) => cmd::dupes::run(a),
        Command::Segment(a) => cmd::segment::run(a),
        Command::Sam(SamCommand::Encode(a)) => cmd::sam_encode::run(a),
        Command::Sam(SamCommand::Auto(a)) => cmd::sam_auto::run(*a),
        Command::Features(a) => cmd::features::run(a),
        Command::Attention(a) => cmd::attention::run(a),
        Command::Knn(a) => cmd::knn::run(a),
        Command::LinearProbe(a) => cmd::linear_probe::run(a),
        Command::Fit(a) => cmd::fit::run(*a),
        Command::Train(TrainCommand::Dino(a)) => cmd::train_dino::run_dino(*a),
        Command::Train(TrainCommand::Clip(a)) => cmd::train_clip::run_clip(*a),
        Command::Serve(a) => cmd::serve::run(*a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
