//! `vista classify`: zero-shot classification of images against labels.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use vista::apps::{Prediction, Templates, ZeroShotClassifier};
use vista::data::files;

use crate::args::{read_lines, ClipArgs};
use crate::progress;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Image files or folders (walked recursively).
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// Comma-separated labels, e.g. "saree,kurta,lehenga".
    #[arg(long, short, conflicts_with = "labels_file")]
    pub labels: Option<String>,
    /// A file with one label per line.
    #[arg(long)]
    pub labels_file: Option<PathBuf>,
    /// Prompt templates: default ("a photo of a {}."), imagenet80 (the CLIP paper's 80), none,
    /// or a file with one template per line, `{}` marking the label.
    #[arg(long, default_value = "default")]
    pub templates: String,
    /// How many labels to show per image.
    #[arg(long, short = 'k', default_value_t = 3)]
    pub top_k: usize,
    /// JSON lines output.
    #[arg(long, conflicts_with = "csv")]
    pub json: bool,
    /// CSV output (path,rank,label,probability).
    #[arg(long)]
    pub csv: bool,
    #[command(flatten)]
    pub model: ClipArgs,
}

/// `vista classify`.
pub fn run(args: Args) -> Result<ExitCode> {
    let labels: Vec<String> = match (&args.labels, &args.labels_file) {
        (Some(l), _) => l.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect(),
        (None, Some(f)) => read_lines(f)?,
        (None, None) => bail!("give the labels with --labels \"a,b,c\" or --labels-file FILE"),
    };
    if labels.len() < 2 {
        bail!("zero-shot classification needs at least two labels, got {}", labels.len());
    }
    let templates = Templates::parse(&args.templates).context("--templates")?;
    let paths = files::collect_images(&args.inputs)?;
    if paths.is_empty() {
        bail!("no images found in {:?}", args.inputs);
    }
    let pipeline = args.model.load()?;
    let classifier = ZeroShotClassifier::new(&pipeline, &labels, &templates)?;

    let pb = progress::bar(paths.len(), "classifying");
    let results = pipeline.embed_files(&paths, args.model.batch, |n| pb.inc(n as u64));
    pb.finish_and_clear();

    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if args.csv {
        writeln!(out, "path,rank,label,probability")?;
    }
    let mut skipped = 0;
    for r in results {
        let emb = match r.embedding {
            Ok(e) => e,
            Err(e) => {
                skipped += 1;
                eprintln!("skipped: {e}");
                continue;
            }
        };
        let preds = classifier.classify_one(&emb, args.top_k)?;
        write_predictions(&mut out, &r.path, &preds, &args)?;
    }
    out.flush()?;
    if skipped > 0 {
        eprintln!("{skipped} image(s) skipped");
    }
    Ok(crate::exit_code(skipped))
}

fn write_predictions(out: &mut impl Write, path: &std::path::Path, preds: &[Prediction], args: &Args) -> Result<()> {
    let p = path.display().to_string();
    if args.json {
        writeln!(out, "{}", serde_json::json!({ "path": p, "predictions": preds }))?;
    } else if args.csv {
        for (i, pr) in preds.iter().enumerate() {
            writeln!(out, "{},{},{},{:.6}", csv_field(&p), i + 1, csv_field(&pr.label), pr.prob)?;
        }
    } else {
        let tops: Vec<String> = preds.iter().map(|pr| format!("{} {:.1}%", pr.label, 100.0 * pr.prob)).collect();
        writeln!(out, "{p}\t{}", tops.join(", "))?;
    }
    Ok(())
}

/// Quotes a CSV field when it holds a comma, quote or newline (RFC 4180).
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}
