//! `vista linear-probe`: a linear classifier trained on frozen DINO CLS features, scored on a
//! labelled test set.

use std::process::ExitCode;

use anyhow::{bail, Result};
use serde_json::json;
use vista::eval::linear_probe::{LinearProbe, LinearProbeConfig};

use crate::args::{DatasetArgs, DinoArgs, Prepared};

#[derive(clap::Args, Debug)]
pub struct Args {
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
    pub model: DinoArgs,
}

/// `vista linear-probe`: a linear classifier trained on frozen CLS features.
pub fn run(args: Args) -> Result<ExitCode> {
    if args.epochs == 0 || args.probe_batch == 0 {
        bail!("--epochs and --probe-batch must be positive");
    }
    let (pipeline, Prepared { train, test, classes, skipped }) = args.data.eval_features(&args.model)?;
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
    Ok(crate::exit_code(skipped))
}
