//! `vista search`: text → image, image → image and mixed weighted queries over an index.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use vista::apps::query::{self, Term};
use vista::apps::{ClipPipeline, Templates};
use vista::index::{self, IndexDb, ScanOptions};

use super::common::ModelArgs;
use super::index::{model_id, run_update};

#[derive(clap::Args, Debug)]
pub struct IndexArgs {
    /// The index database (default: the `.vista/index.sqlite` of the current folder or the
    /// nearest parent that has one).
    #[arg(long)]
    pub db: Option<PathBuf>,
    /// Search the index as it is, without first picking up new, changed and deleted files.
    #[arg(long)]
    pub no_update: bool,
}

impl IndexArgs {
    pub fn open(&self) -> Result<IndexDb> {
        let path = match &self.db {
            Some(p) => p.clone(),
            None => {
                let cwd = std::env::current_dir()?;
                index::find_db(&cwd).with_context(|| {
                    format!(
                        "no index found for {} or its parents: run `vista index DIR` first, or pass --db",
                        cwd.display()
                    )
                })?
            }
        };
        if !path.is_file() {
            bail!("{}: no such index (run `vista index DIR` first)", path.display());
        }
        Ok(IndexDb::open(&path)?)
    }

    /// Opens the index and the model, and brings the index up to date unless `--no-update`.
    pub fn open_updated(&self, model: &ModelArgs) -> Result<(IndexDb, ClipPipeline)> {
        let mut db = self.open()?;
        let pipeline = model.load()?;
        if !self.no_update {
            let roots = db.roots()?;
            run_update(&pipeline, &model.model, &mut db, &roots, &ScanOptions::default(), model.batch)?;
        }
        Ok((db, pipeline))
    }
}

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
    #[command(flatten)]
    pub model: ModelArgs,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let mut terms: Vec<Term> =
        args.query.iter().chain(&args.terms).map(|q| query::parse_text(q)).collect::<vista::Result<_>>()?;
    terms.extend(args.image.iter().map(|i| query::parse_image(i)));
    if terms.is_empty() {
        bail!("give a text query, --image PATH, or both");
    }
    let templates = if args.no_templates { Templates::None } else { Templates::parse(&args.templates)? };
    let (db, pipeline) = args.index.open_updated(&args.model)?;
    let q = query::embed(&pipeline, &terms, &templates)?;
    let under = match &args.under {
        Some(u) => Some(std::fs::canonicalize(u).with_context(|| format!("--under {}", u.display()))?),
        None => None,
    };
    let (paths, vectors) = db.load_vectors(&model_id(&args.model.model), under.as_deref())?;
    if vectors.is_empty() {
        bail!("the index {} holds no images embedded with `{}`", db.path().display(), args.model.model);
    }
    if q.len() != vectors.dim() {
        bail!(
            "the index {} stores {}-d vectors for `{}` but the model gives {}-d: re-index (the checkpoint changed?)",
            db.path().display(),
            vectors.dim(),
            args.model.model,
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

/// `vista search "red saree" -kurta`: a negative term looks like an option to any argument parser.
/// Before parsing, every `-word` argument of `search` that is not one of its short flags or a
/// number is turned into `--term=-word`.
pub fn rewrite_negative_terms(args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
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
