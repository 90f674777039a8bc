//! What a run records as it goes: one [`StepMetrics`] line per step in `metrics.jsonl`
//! ([`MetricsLog`], which also drops the lines a resumed run will write again), and the collapse
//! diagnostics of the DINO paper ([`CollapseMonitor`]).

use std::collections::VecDeque;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::weights::formats::write_atomic;
use crate::{Error, Result};

/// One training step's numbers (one line of `metrics.jsonl`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    /// Epoch (from 0).
    pub epoch: usize,
    /// Global iteration (`epoch · niter_per_ep + it`).
    pub iteration: usize,
    /// The DINO loss.
    pub loss: f64,
    /// Learning rate of the step.
    pub lr: f64,
    /// Weight decay of the regularised group.
    pub wd: f64,
    /// Teacher EMA momentum.
    pub momentum: f64,
    /// Teacher temperature.
    pub teacher_temp: f64,
    /// Mean entropy of the sharpened, centred teacher distribution (nats; ln out_dim is uniform).
    pub teacher_entropy: f64,
    /// Mean KL(teacher ‖ student) over the loss pairs (nats).
    pub kl: f64,
    /// Images in the step.
    pub images: usize,
    /// Wall time of the step in seconds: forward, backward and update (the wait for the batch
    /// is not included; see the epoch lines of `metrics.jsonl` for wall time with data loading).
    pub seconds: f64,
}

/// Watches the collapse diagnostics of the DINO paper (teacher entropy and KL between teacher
/// and student): both collapse modes — one dimension dominating (entropy → 0) and the uniform
/// output (entropy → ln K) — make the student copy the teacher, KL → 0. A warning is raised when
/// the KL averaged over the last `window` steps falls below `min_kl`.
#[derive(Debug, Clone)]
pub struct CollapseMonitor {
    window: usize,
    min_kl: f64,
    max_entropy: f64,
    recent: VecDeque<(f64, f64)>,
}

impl CollapseMonitor {
    /// Over `window` steps, warning below `min_kl` nats, for `out_dim` output dimensions.
    pub fn new(window: usize, min_kl: f64, out_dim: usize) -> Self {
        Self { window: window.max(1), min_kl, max_entropy: (out_dim as f64).ln(), recent: VecDeque::new() }
    }

    /// Adds a step; a warning text when collapse has set in.
    pub fn observe(&mut self, m: &StepMetrics) -> Option<String> {
        self.recent.push_back((m.teacher_entropy, m.kl));
        if self.recent.len() > self.window {
            self.recent.pop_front();
        }
        if self.recent.len() < self.window {
            return None;
        }
        let n = self.recent.len() as f64;
        let entropy = self.recent.iter().map(|r| r.0).sum::<f64>() / n;
        let kl = self.recent.iter().map(|r| r.1).sum::<f64>() / n;
        if kl >= self.min_kl {
            return None;
        }
        let mode = if entropy > 0.5 * self.max_entropy { "uniform output" } else { "one dimension dominates" };
        Some(format!(
            "collapse: over the last {} steps KL(teacher ‖ student) is {kl:.2e} nats (< {:.0e}) with teacher \
             entropy {entropy:.3} of at most {:.3} ({mode}); try a lower teacher temperature, a higher \
             teacher momentum or a larger batch",
            self.window, self.min_kl, self.max_entropy
        ))
    }
}

/// `metrics.jsonl`: one JSON object per line — a [`StepMetrics`] per step, and evaluations and
/// warnings between them — appended as the run goes and flushed before each checkpoint.
pub struct MetricsLog {
    path: PathBuf,
    file: File,
}

impl MetricsLog {
    /// Opens `path` for appending, first dropping the lines of iterations at or after
    /// `iteration` and the evaluations of epochs at or after `epochs_done` (a resumed run writes
    /// them again), and any line torn by a kill.
    pub fn open(path: &Path, iteration: usize, epochs_done: usize) -> Result<Self> {
        truncate_metrics(path, iteration, epochs_done)?;
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(|e| Error::io(path, e))?;
        Ok(Self { path: path.to_path_buf(), file })
    }

    /// Appends one line.
    pub fn write(&mut self, line: &impl Serialize) -> Result<()> {
        let text = serde_json::to_string(line).map_err(|e| Error::arg("metrics", e.to_string()))?;
        writeln!(self.file, "{text}").map_err(|e| Error::io(&self.path, e))
    }

    /// Pushes what was written to the file.
    pub fn flush(&mut self) -> Result<()> {
        self.file.flush().map_err(|e| Error::io(&self.path, e))
    }
}

/// Drops the metric lines of iterations at or after `iteration` and the evaluations of epochs
/// at or after `epochs_done` (a resumed run writes them again), and lines torn by a kill.
fn truncate_metrics(path: &Path, iteration: usize, epochs_done: usize) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else { return Ok(()) };
    let mut kept = String::new();
    for line in text.lines() {
        let v: serde_json::Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(_) => continue, // a line torn by a kill
        };
        let keep = match (v["iteration"].as_u64(), v["epoch"].as_u64()) {
            (Some(i), _) => (i as usize) < iteration,
            (None, Some(e)) => (e as usize) < epochs_done,
            _ => true,
        };
        if keep {
            kept.push_str(line);
            kept.push('\n');
        }
    }
    write_atomic(path, kept.as_bytes())
}
