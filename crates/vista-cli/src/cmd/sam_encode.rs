//! `vista sam encode`: fills SAM's embedding cache for every image, so later prompts skip the
//! encoder.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use vista::data::files;

use crate::args::SamArgs;
use crate::progress;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Image files or folders (walked recursively).
    pub inputs: Vec<PathBuf>,
    #[command(flatten)]
    pub model: SamArgs,
}

/// `vista sam encode`: images already cached are skipped.
pub fn run(args: Args) -> Result<ExitCode> {
    if args.model.no_cache {
        bail!("`vista sam encode` fills the embedding cache; --no-cache makes it pointless");
    }
    if args.inputs.is_empty() {
        bail!("give image files or folders to encode");
    }
    let paths = files::collect_images(&args.inputs)?;
    let pipeline = args.model.load()?;
    let bar = progress::bar(paths.len(), "encoding");
    let (mut done, mut cached, mut failed) = (0usize, 0usize, 0usize);
    for path in &paths {
        match pipeline.is_cached(path) {
            Ok(true) => cached += 1,
            _ => match pipeline.encode_file(path) {
                Ok(_) => done += 1,
                Err(e) => {
                    bar.suspend(|| eprintln!("skipped {}: {e}", path.display()));
                    failed += 1;
                }
            },
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let dir = pipeline.cache.as_ref().map(|c| c.dir().display().to_string()).unwrap_or_default();
    eprintln!("{done} encoded, {cached} already cached, {failed} skipped -> {dir}");
    Ok(crate::exit_code(failed))
}
