//! `vista`: CLIP, DINO and SAM on your own machine. Parse → resolve → call the library.

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
    /// Segment an object with SAM from points, boxes or a previous mask.
    Segment(cmd::segment::Args),
    /// SAM utilities.
    #[command(subcommand)]
    Sam(SamCommand),
    /// DINO / DINOv2 CLS and patch features of images (.npy, .safetensors or JSON lines).
    Features(cmd::dino::FeaturesArgs),
    /// Draw a DINO model's last-layer CLS attention, one panel per head, as a PNG.
    Attention(cmd::dino::AttentionArgs),
    /// Weighted k-NN accuracy of DINO features on a labelled image set (as DINO's eval_knn.py).
    Knn(cmd::dino::KnnArgs),
    /// Linear-probe accuracy of DINO features on a labelled image set.
    LinearProbe(cmd::dino::LinearProbeArgs),
    /// Train a model.
    #[command(subcommand)]
    Train(TrainCommand),
}

#[derive(Subcommand)]
enum TrainCommand {
    /// Self-supervised DINO training of a ViT on unlabelled images (main_dino.py's recipe).
    Dino(Box<cmd::train::DinoArgs>),
}

#[derive(Subcommand)]
enum SamCommand {
    /// Pre-encode images (fills the embedding cache, so later prompts are instant).
    Encode(cmd::segment::EncodeArgs),
}

/// Exit codes: 0 all done, 1 failed, 2 finished but some inputs were skipped.
pub const EXIT_SKIPPED: u8 = 2;

fn main() -> ExitCode {
    vista::device::init_process();
    let cli = Cli::parse_from(cmd::search::rewrite_negative_terms(std::env::args_os().collect()));
    let result = match cli.command {
        Command::Embed(a) => cmd::embed::run(a),
        Command::Classify(a) => cmd::classify::run(a),
        Command::Index(a) => cmd::index::run(a),
        Command::Search(a) => cmd::search::run(a),
        Command::Dupes(a) => cmd::dupes::run(a),
        Command::Segment(a) => cmd::segment::run(a),
        Command::Sam(SamCommand::Encode(a)) => cmd::segment::encode(a),
        Command::Features(a) => cmd::dino::features(a),
        Command::Attention(a) => cmd::dino::attention(a),
        Command::Knn(a) => cmd::dino::knn(a),
        Command::LinearProbe(a) => cmd::dino::linear_probe(a),
        Command::Train(TrainCommand::Dino(a)) => cmd::train::dino(*a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
