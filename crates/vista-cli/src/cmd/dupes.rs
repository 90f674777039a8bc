//! `vista dupes`: groups of near-duplicate images in an index.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use vista::apps::dupes::{default_threshold, similarity_stats, write_histogram_png};
use vista::index::vectors;

use crate::args::IndexArgs;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Cosine similarity from which images are grouped. Default, per model: CLIP ViT-B/32 0.99,
    /// Immich's anchor on the same model (its duplicateDetection.maxDistance = 0.01 for
    /// ViT-B-32__openai); every other model 0.99 too, without an anchor of its own: see --stats.
    #[arg(long)]
    pub threshold: Option<f32>,
    /// JSON output: one array of paths per line.
    #[arg(long)]
    pub json: bool,
    /// Instead of the groups: the distribution of each image's nearest-neighbour similarity,
    /// quantiles on stdout and a histogram with the threshold drawn in red at PNG (default
    /// dupes-stats.png), to see where the collection's duplicates separate.
    #[arg(long, value_name = "PNG", num_args = 0..=1, default_missing_value = "dupes-stats.png")]
    pub stats: Option<PathBuf>,
    #[command(flatten)]
    pub index: IndexArgs,
}

/// `vista dupes`.
pub fn run(args: Args) -> Result<ExitCode> {
    if let Some(t) = args.threshold {
        if !(-1.0..=1.0).contains(&t) {
            bail!("--threshold {t} is not a cosine similarity (between -1 and 1)");
        }
    }
    let (db, model, pipeline) = args.index.open_updated()?;
    let default = default_threshold(pipeline.model.config());
    let threshold = args.threshold.unwrap_or(default.value);
    if args.threshold.is_none() {
        eprintln!("threshold {threshold} ({})", default.source);
    }
    let (paths, set) = db.load_vectors(&model.id, None)?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if let Some(png) = &args.stats {
        let nearest = vectors::nearest_neighbour_similarities(&set);
        let stats = similarity_stats(&nearest, threshold);
        if args.json {
            let q: serde_json::Map<String, serde_json::Value> =
                stats.quantiles.iter().map(|(q, v)| (format!("{q}"), serde_json::json!(v))).collect();
            let doc = serde_json::json!({"images": stats.count, "threshold": threshold,
                "at_or_above": stats.at_or_above, "quantiles": q, "histogram": png});
            writeln!(out, "{doc}")?;
        } else {
            writeln!(out, "nearest-neighbour cosine similarity of {} images:", stats.count)?;
            for (q, v) in &stats.quantiles {
                writeln!(out, "  {:>5.1} %  {v:.4}", q * 100.0)?;
            }
            writeln!(out, "{} images have a neighbour at or above the threshold {threshold}", stats.at_or_above)?;
        }
        write_histogram_png(&nearest, threshold, png)?;
        out.flush()?;
        eprintln!("histogram: {}", png.display());
        return Ok(ExitCode::SUCCESS);
    }
    let groups = vectors::near_duplicate_groups(&set, threshold);
    for g in &groups {
        let names: Vec<String> = g.iter().map(|&i| paths[i].display().to_string()).collect();
        if args.json {
            writeln!(out, "{}", serde_json::json!(names))?;
        } else {
            writeln!(out, "{}\n", names.join("\n"))?;
        }
    }
    out.flush()?;
    if !args.json {
        eprintln!("{} group(s) of near-duplicates among {} images", groups.len(), paths.len());
    }
    Ok(ExitCode::SUCCESS)
}
