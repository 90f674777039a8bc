//! Bringing an index up to date: scan, record changes, embed what is missing in batches.
//!
//! Worker threads decode and crop images (the expensive, single-image part) into a bounded
//! channel while the calling thread runs the model on full batches, so decoding overlaps the
//! forward passes instead of alternating with them. Each batch is committed as one transaction.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;

use super::db::{Hash, IndexDb, IndexedModel};
use super::scan::{self, ScanOptions};
use crate::clip::ClipPipeline;
use crate::image::{self, RgbImage};
use crate::Result;

/// How [`update`] embeds.
#[derive(Debug, Clone)]
pub struct IndexOptions {
    /// Images per forward pass (and per committed transaction).
    pub batch: usize,
    /// Decoding threads.
    pub decode_threads: usize,
}

impl Default for IndexOptions {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        Self { batch: 32, decode_threads: cores.clamp(1, 8) }
    }
}

/// What an update did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct IndexReport {
    /// Image files found under the roots.
    pub files: usize,
    /// Files whose size and modification time are unchanged (not re-read).
    pub unchanged: usize,
    /// Files new to the index.
    pub new: usize,
    /// Known files whose size or modification time changed (re-hashed).
    pub changed: usize,
    /// New paths whose content the index already had under a path that is now gone.
    pub renamed: usize,
    /// Known files under the roots that are gone.
    pub deleted: usize,
    /// Images embedded in this run.
    pub embedded: usize,
    /// Images that failed to decode in this run (recorded; retried when they change).
    pub failed: usize,
    /// Files or folders that could not be read (path, error).
    pub problems: Vec<(PathBuf, String)>,
}

/// Progress events for a bar.
pub enum Progress {
    /// The scan is done: `to_embed` images will be embedded.
    Scanned {
        /// Image files found.
        files: usize,
        /// Images to embed.
        to_embed: usize,
    },
    /// `n` more images are done.
    Embedded {
        /// Images done in this step.
        n: usize,
    },
}

/// Scans `roots` and embeds every image the index lacks for `model` (recording the model).
pub fn update(
    pipeline: &ClipPipeline,
    model: &IndexedModel,
    db: &mut IndexDb,
    roots: &[PathBuf],
    scan_opts: &ScanOptions,
    opts: &IndexOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<IndexReport> {
    db.add_roots(roots)?;
    db.record_model(model)?;
    let model_id = model.id.as_str();
    let (found, mut problems) = scan::walk(roots, scan_opts);
    let known = db.files()?;
    let files = found.len();
    let d = scan::diff(roots, found, &known);
    db.apply_scan(&d.upserts, &d.deletes)?;
    problems.extend(d.problems);
    let mut report = IndexReport {
        files,
        unchanged: d.unchanged,
        new: d.new,
        changed: d.changed,
        renamed: d.renamed,
        deleted: d.deletes.len(),
        problems,
        ..Default::default()
    };
    let pending = db.pending(model_id)?;
    progress(Progress::Scanned { files, to_embed: pending.len() });
    if pending.is_empty() {
        return Ok(report);
    }
    embed_pending(pipeline, model_id, db, &pending, opts, &mut report, progress)?;
    Ok(report)
}

type Decoded = (Hash, std::result::Result<RgbImage, String>);
/// One image's outcome: its embedding, or why it could not be decoded.
type Embedded = (Hash, std::result::Result<Vec<f32>, String>);

fn embed_pending(
    pipeline: &ClipPipeline,
    model_id: &str,
    db: &mut IndexDb,
    pending: &[(Hash, PathBuf)],
    opts: &IndexOptions,
    report: &mut IndexReport,
    progress: &mut dyn FnMut(Progress),
) -> Result<()> {
    let batch = opts.batch.max(1);
    let next = AtomicUsize::new(0);
    let (tx, rx) = mpsc::sync_channel::<Decoded>(2 * batch);
    std::thread::scope(|s| -> Result<()> {
        for _ in 0..opts.decode_threads.max(1) {
            let tx = tx.clone();
            let next = &next;
            s.spawn(move || loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((hash, path)) = pending.get(i) else { break };
                let img = image::load_image(path, &pipeline.decode)
                    .map(|im| pipeline.preprocess.prepare(&im))
                    .map_err(|e| e.to_string());
                if tx.send((*hash, img)).is_err() {
                    break; // the consumer stopped (an error): stop decoding
                }
            });
        }
        drop(tx);
        let mut buf: Vec<Decoded> = Vec::with_capacity(batch);
        let mut remaining = pending.len();
        while remaining > 0 {
            let Ok(item) = rx.recv() else { break };
            buf.push(item);
            remaining -= 1;
            if buf.len() == batch || remaining == 0 {
                let n = buf.len();
                let results = embed_batch(pipeline, std::mem::take(&mut buf))?;
                report.embedded += results.iter().filter(|(_, r)| r.is_ok()).count();
                report.failed += results.iter().filter(|(_, r)| r.is_err()).count();
                db.store_batch(model_id, &results)?;
                progress(Progress::Embedded { n });
            }
        }
        Ok(())
    })
}

fn embed_batch(pipeline: &ClipPipeline, items: Vec<Decoded>) -> Result<Vec<Embedded>> {
    let ok: Vec<&RgbImage> = items.iter().filter_map(|(_, r)| r.as_ref().ok()).collect();
    let mut rows = if ok.is_empty() { Vec::new() } else { pipeline.embed_cropped(&ok)? }.into_iter();
    Ok(items.into_iter().map(|(h, r)| (h, r.map(|_| rows.next().expect("one embedding per decoded image")))).collect())
}
