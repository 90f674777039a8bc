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
    /// Classify with a classifier saved by `vista fit --save-head` (its own backbone, classes
    /// and method) instead of zero-shot labels.
    #[arg(long, conflicts_with_all = ["labels", "labels_file"])]
    pub head: Option<PathBuf>,
    /// Flag an image as unsure when its top probability is below this.
    #[arg(long)]
    pub unsure: Option<f32>,
    #[command(flatten)]
    pub model: ClipArgs,
}

/// `vista classify`.
pub fn run(args: Args) -> Result<ExitCode> {
    if let Some(head) = &args.head {
        return run_head(&args, head);
    }
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
        write_predictions(&mut out, &r.path, &preds, &args, is_unsure(&preds, &args))?;
    }
    out.flush()?;
    if skipped > 0 {
        eprintln!("{skipped} image(s) skipped");
    }
    Ok(crate::exit_code(skipped))
}

fn is_unsure(preds: &[Prediction], args: &Args) -> bool {
    args.unsure.is_some_and(|u| preds.first().is_none_or(|p| p.prob < u))
}

fn write_predictions(
    out: &mut impl Write,
    path: &std::path::Path,
    preds: &[Prediction],
    args: &Args,
    unsure: bool,
) -> Result<()> {
    let p = path.display().to_string();
    if args.json {
        writeln!(out, "{}", serde_json::json!({ "path": p, "predictions": preds, "unsure": unsure }))?;
    } else if args.csv {
        for (i, pr) in preds.iter().enumerate() {
            writeln!(out, "{},{},{},{:.6}", csv_field(&p), i + 1, csv_field(&pr.label), pr.prob)?;
        }
    } else {
        let tops: Vec<String> = preds.iter().map(|pr| format!("{} {:.1}%", pr.label, 100.0 * pr.prob)).collect();
        let flag = if unsure { "\tUNSURE" } else { "" };
        writeln!(out, "{p}\t{}{flag}", tops.join(", "))?;
    }
    Ok(())
}

/// `vista classify --head`: features from the head's own backbone, then its classifier.
fn run_head(args: &Args, path: &std::path::Path) -> Result<ExitCode> {
    use vista::eval::fit::Head;
    let (head, info) = Head::load(path).with_context(|| format!("--head {}", path.display()))?;
    let paths = files::collect_images(&args.inputs)?;
    if paths.is_empty() {
        bail!("no images found in {:?}", args.inputs);
    }
    let target = args.model.target.target()?;
    let pb = progress::bar(paths.len(), "classifying");
    let rows: Vec<vista::Result<Vec<f32>>> = match info.backbone.as_str() {
        "clip" => {
            let pipeline = args.model.load_model(&info.model, None)?;
            pipeline
                .embed_files(&paths, args.model.batch, |n| pb.inc(n as u64))
                .into_iter()
                .map(|r| r.embedding)
                .collect()
        }
        "dino" => {
            let options = vista::dino::LoadOptions { target, ..Default::default() };
            let mut pipeline = vista::dino::DinoPipeline::load(&info.model, &options)
                .with_context(|| format!("loading the head's DINO backbone `{}`", info.model))?;
            if info.resize.is_some() || info.crop.is_some() {
                use vista::dino::preprocess::Mode;
                let (r, c) = match pipeline.preprocess.mode {
                    Mode::Eval { resize_shortest, crop } => (resize_shortest, crop),
                    _ => (256, 224),
                };
                pipeline.preprocess.mode =
                    Mode::Eval { resize_shortest: info.resize.unwrap_or(r), crop: info.crop.unwrap_or(c) };
            }
            let out = pipeline.extract(&paths, args.model.batch, false, |n| pb.inc(n as u64));
            out.into_iter().map(|r| r.map(|f| f.cls)).collect()
        }
        "pixels" => paths
            .iter()
            .map(|p| {
                use vista::data::{Item, ItemImage, LabelledSet};
                use vista::image::{DecodeOptions, IMAGENET_MEAN, IMAGENET_STD};
                let set = LabelledSet {
                    items: vec![Item { image: ItemImage::File(p.clone()), label: 0 }],
                    classes: vec![String::new()],
                };
                pb.inc(1);
                let f = vista::eval::pixel_features(&set, &DecodeOptions::default(), IMAGENET_MEAN, IMAGENET_STD)?;
                match f.skipped.first() {
                    Some(e) => Err(vista::Error::InvalidArgument { name: "image".into(), message: e.clone() }),
                    None => Ok(f.features),
                }
            })
            .collect(),
        other => bail!("{}: unknown backbone kind `{other}`", path.display()),
    };
    pb.finish_and_clear();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if args.csv {
        writeln!(out, "path,rank,label,probability")?;
    }
    let mut skipped = 0;
    for (p, row) in paths.iter().zip(rows) {
        let mut row = match row {
            Ok(r) if r.len() == info.dim => r,
            Ok(r) => {
                skipped += 1;
                eprintln!("skipped {}: {} features, the head expects {}", p.display(), r.len(), info.dim);
                continue;
            }
            Err(e) => {
                skipped += 1;
                eprintln!("skipped: {e}");
                continue;
            }
        };
        vista::eval::knn::normalize_rows(&mut row, info.dim);
        let probs = head.probabilities(&row);
        let mut order: Vec<usize> = (0..probs.len()).collect();
        order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
        let preds: Vec<Prediction> = order
            .iter()
            .take(args.top_k.max(1))
            .map(|&c| Prediction { label: info.classes[c].clone(), prob: probs[c] })
            .collect();
        write_predictions(&mut out, p, &preds, args, is_unsure(&preds, args))?;
    }
    out.flush()?;
    if skipped > 0 {
        eprintln!("{skipped} image(s) skipped");
    }
    Ok(crate::exit_code(skipped))
}

/// Quotes a CSV field when it holds a comma, quote or newline (RFC 4180).
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}
