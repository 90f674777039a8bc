//! `vista index`: build or update the photo index of folders.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use vista::index::{self, IndexDb, ScanOptions};

use crate::args::{update_index, ClipArgs};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Folders to index (walked recursively; hidden entries and `.vista` skipped).
    #[arg(required = true)]
    pub dirs: Vec<PathBuf>,
    /// The index database (default: DIR/.vista/index.sqlite of the first folder, or the user's
    /// data directory when the folder is read-only).
    #[arg(long)]
    pub db: Option<PathBuf>,
    /// Glob patterns of paths to leave out (repeatable), e.g. '**/thumbnails/**' or '*.gif'.
    #[arg(long)]
    pub exclude: Vec<String>,
    /// Print the run's report as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub model: ClipArgs,
}

/// Absolute, canonical folder paths, so the index means the same from any working directory.
fn canonical_dirs(dirs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    dirs.iter()
        .map(|d| {
            let c = std::fs::canonicalize(d).with_context(|| format!("{}", d.display()))?;
            if !c.is_dir() {
                bail!("{} is not a folder", d.display());
            }
            Ok(c)
        })
        .collect()
}

/// `vista index`.
pub fn run(args: Args) -> Result<ExitCode> {
    let roots = canonical_dirs(&args.dirs)?;
    let db_path = args.db.clone().unwrap_or_else(|| index::default_db_path(&roots[0]));
    let mut db = IndexDb::open(&db_path)?;
    let scan = ScanOptions::new(&args.exclude)?;
    let pipeline = args.model.load()?;
    let report = update_index(&pipeline, &args.model.indexed(), &mut db, &roots, &scan, args.model.batch)?;
    for (p, e) in &report.problems {
        eprintln!("skipped: {}: {e}", p.display());
    }
    if args.json {
        println!("{}", serde_json::json!({ "db": db_path, "report": report }));
    } else {
        eprintln!(
            "{}: {} images ({} unchanged, {} new, {} changed, {} renamed, {} deleted); embedded {}, failed {}",
            db_path.display(),
            report.files,
            report.unchanged,
            report.new,
            report.changed,
            report.renamed,
            report.deleted,
            report.embedded,
            report.failed
        );
    }
    if report.failed > 0 || !report.problems.is_empty() {
        for (p, e) in db.failures()? {
            eprintln!("not indexed: {}: {e}", p.display());
        }
        return Ok(ExitCode::from(crate::EXIT_SKIPPED));
    }
    Ok(ExitCode::SUCCESS)
}
