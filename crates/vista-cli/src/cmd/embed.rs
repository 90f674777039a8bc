//! `vista embed`: images or texts to CLIP embeddings.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use vista::data::{files, npy};

use crate::args::{read_lines, readable, ClipArgs};
use crate::progress;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Image files or folders (walked recursively).
    pub inputs: Vec<PathBuf>,
    /// Embed these texts instead of images (repeatable).
    #[arg(long = "text", short = 't')]
    pub texts: Vec<String>,
    /// Embed the texts of a file, one per line.
    #[arg(long)]
    pub texts_file: Option<PathBuf>,
    /// Output: a `.npy` file (rows in input order, with a `.txt` listing them), or JSON lines on
    /// stdout when omitted or ending in `.jsonl`.
    #[arg(long, short)]
    pub out: Option<PathBuf>,
    /// Keep the raw projections instead of L2-normalising them.
    #[arg(long)]
    pub no_normalize: bool,
    #[command(flatten)]
    pub model: ClipArgs,
}

/// `vista embed`.
pub fn run(args: Args) -> Result<ExitCode> {
    let mut texts = args.texts.clone();
    if let Some(f) = &args.texts_file {
        texts.extend(read_lines(f)?);
    }
    if texts.is_empty() && args.inputs.is_empty() {
        bail!("nothing to embed: give image files or folders, --text or --texts-file");
    }
    if !texts.is_empty() && !args.inputs.is_empty() {
        bail!("give either images or texts, not both (one embedding matrix per run)");
    }
    let pipeline = args.model.load()?;
    let (names, rows, skipped) = if !texts.is_empty() {
        let (mut names, mut rows): (Vec<String>, Vec<Vec<f32>>) = (Vec::new(), Vec::new());
        for chunk in texts.chunks(256) {
            let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
            let e = if args.no_normalize {
                let ids = pipeline.tokenizer.tokenize_batch(&refs, pipeline.model.config().text.context_length)?;
                pipeline.model.encode_text(&ids)?
            } else {
                pipeline.embed_texts(&refs)?
            };
            rows.extend(e.to_vec2::<f32>()?);
            names.extend(chunk.iter().cloned());
        }
        (names, rows, 0)
    } else {
        if args.no_normalize {
            bail!("--no-normalize applies to texts only for now");
        }
        let paths = files::collect_images(&args.inputs)?;
        let pb = progress::bar(paths.len(), "embedding");
        let results = pipeline.embed_files(&paths, args.model.batch, |n| pb.inc(n as u64));
        pb.finish_and_clear();
        readable(results.into_iter().map(|r| (r.path, r.embedding)))
    };
    let dim = pipeline.model.config().embed_dim;
    match &args.out {
        Some(p) if p.extension().map(|e| e == "npy").unwrap_or(false) => {
            let flat: Vec<f32> = rows.iter().flatten().copied().collect();
            npy::write_f32_matrix(p, &flat, rows.len(), dim)?;
            let list = p.with_extension("txt");
            std::fs::write(&list, names.join("\n") + "\n").with_context(|| format!("writing {}", list.display()))?;
            eprintln!(
                "wrote {} embeddings of dimension {dim} to {} (row names in {})",
                rows.len(),
                p.display(),
                list.display()
            );
        }
        out => {
            let mut w: Box<dyn Write> = match out {
                Some(p) => Box::new(std::io::BufWriter::new(
                    std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
                )),
                None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
            };
            let key = if texts.is_empty() { "path" } else { "text" };
            for (n, r) in names.iter().zip(&rows) {
                let line = serde_json::json!({ key: n, "embedding": r });
                writeln!(w, "{line}")?;
            }
            w.flush()?;
        }
    }
    if skipped > 0 {
        eprintln!("{skipped} input(s) skipped");
    }
    Ok(crate::exit_code(skipped))
}
