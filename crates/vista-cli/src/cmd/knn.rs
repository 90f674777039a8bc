//! `vista knn`: DINO's weighted k-NN accuracy of frozen CLS features on a labelled image set
//! (`eval_knn.py`).

use std::process::ExitCode;

use anyhow::{bail, Result};
use serde_json::json;
use vista::eval::knn::{self, KnnOptions, DEFAULT_TEMPERATURE};

use crate::args::{DatasetArgs, DinoArgs, Prepared};

#[derive(clap::Args, Debug)]
pub struct Args {
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
    /// Score the images' raw pixels instead of a model's features (ToTensor + ImageNet
    /// Normalize, flattened; all images of one size): the baseline a representation has to beat.
    /// No model is loaded.
    #[arg(long)]
    pub pixels: bool,
    #[command(flatten)]
    pub model: DinoArgs,
}

/// `vista knn`: DINO's weighted k-NN on L2-normalised CLS features.
pub fn run(args: Args) -> Result<ExitCode> {
    if args.k.is_empty() || args.k.contains(&0) {
        bail!("--k: give positive neighbour counts, e.g. 10,20,100,200");
    }
    let (features, Prepared { mut train, mut test, classes, skipped }) = if args.pixels {
        ("raw pixels, ImageNet-normalised".to_string(), args.data.pixel_features()?)
    } else {
        let (pipeline, prepared) = args.data.eval_features(&args.model)?;
        (format!("CLS features, {}", pipeline.preprocess.describe()), prepared)
    };
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
            "model": if args.pixels { "pixels" } else { args.model.model.as_str() }, "features": features, "dim": dim,
            "temperature": args.temperature, "train": train.len(), "test": test.len(),
            "classes": classes.len(), "skipped": skipped, "results": rows,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        println!(
            "weighted k-NN, T = {}, on {} train / {} test {features} of dimension {dim}, {} classes",
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
    Ok(crate::exit_code(skipped))
}
