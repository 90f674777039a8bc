//! `vista search`: text → image, image → image and mixed weighted queries over an index.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use vista::apps::query::{self, Term};
use vista::apps::Templates;

use crate::args::IndexArgs;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Text terms: "red saree" (weight 1), "+gold border" (1), "-kurta" (-1), "2:wedding" (2).
    pub query: Vec<String>,
    /// A text term given as an option (what a bare `-kurta` becomes, see `main`).
    #[arg(long = "term", hide = true, allow_hyphen_values = true)]
    pub terms: Vec<String>,
    /// An example image (repeatable), optionally weighted: --image 0.5:ref.jpg.
    #[arg(long)]
    pub image: Vec<String>,
    /// How many results.
    #[arg(long, default_value_t = 20)]
    pub top: usize,
    /// Only results with cosine similarity at least this.
    #[arg(long)]
    pub threshold: Option<f32>,
    /// Only files below this folder.
    #[arg(long)]
    pub under: Option<PathBuf>,
    /// Prompt templates for text terms: default, imagenet80, none, or a file.
    #[arg(long, default_value = "default")]
    pub templates: String,
    /// Use text terms as written (same as --templates none).
    #[arg(long)]
    pub no_templates: bool,
    /// JSON lines output: {"path", "score"}.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub index: IndexArgs,
}

/// `vista search`.
pub fn run(args: Args) -> Result<ExitCode> {
    let mut terms: Vec<Term> =
        args.query.iter().chain(&args.terms).map(|q| query::parse_text(q)).collect::<vista::Result<_>>()?;
    terms.extend(args.image.iter().map(|i| query::parse_image(i)));
    if terms.is_empty() {
        bail!("give a text query, --image PATH, or both");
    }
    let templates = if args.no_templates { Templates::None } else { Templates::parse(&args.templates)? };
    let (db, model, pipeline) = args.index.open_updated()?;
    let q = query::embed(&pipeline, &terms, &templates)?;
    let under = match &args.under {
        Some(u) => Some(std::fs::canonicalize(u).with_context(|| format!("--under {}", u.display()))?),
        None => None,
    };
    let (paths, vectors) = db.load_vectors(&model.id, under.as_deref())?;
    if vectors.is_empty() {
        bail!("the index {} holds no images embedded with `{}`", db.path().display(), model.id);
    }
    if q.len() != vectors.dim() {
        bail!(
            "the index {} stores {}-d vectors for `{}` but the model gives {}-d: re-index (the checkpoint changed?)",
            db.path().display(),
            vectors.dim(),
            model.id,
            q.len()
        );
    }
    let hits = vectors.top_k(&q, args.top, args.threshold, None);
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for h in hits {
        let p = paths[h.index].display().to_string();
        if args.json {
            writeln!(out, "{}", serde_json::json!({ "path": p, "score": h.score }))?;
        } else {
            writeln!(out, "{:.4}\t{p}", h.score)?;
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
