//! `vista dupes`: groups of near-duplicate images in an index.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{bail, Result};
use vista::index::vectors;

use crate::args::IndexArgs;

/// Cosine similarity from which two images count as near-duplicates. Provisional: re-encodes,
/// resizes and small crops of one photo score well above it with CLIP ViT-B/32, distinct shots of
/// one scene mostly below (to be pinned by a measurement on real weights).
pub const DEFAULT_THRESHOLD: f32 = 0.95;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Cosine similarity from which images are grouped.
    #[arg(long, default_value_t = DEFAULT_THRESHOLD)]
    pub threshold: f32,
    /// JSON output: one array of paths per line.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub index: IndexArgs,
}

/// `vista dupes`.
pub fn run(args: Args) -> Result<ExitCode> {
    if !(-1.0..=1.0).contains(&args.threshold) {
        bail!("--threshold {} is not a cosine similarity (between -1 and 1)", args.threshold);
    }
    let (db, model, _pipeline) = args.index.open_updated()?;
    let (paths, set) = db.load_vectors(&model.id, None)?;
    let groups = vectors::near_duplicate_groups(&set, args.threshold);
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
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
