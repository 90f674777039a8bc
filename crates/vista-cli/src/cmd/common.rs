//! Options shared by the CLIP subcommands.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use vista::apps::ClipPipeline;

/// The default CLIP model: OpenAI's ViT-B/32 in transformers format on the Hugging Face hub.
pub const DEFAULT_CLIP: &str = "openai/clip-vit-base-patch32";

#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// A Hugging Face model id, a checkpoint folder, or a checkpoint file
    /// (.safetensors, .bin, .pth, .pt).
    #[arg(long, short, default_value = DEFAULT_CLIP)]
    pub model: String,
    /// Architecture preset for a bare checkpoint file (ViT-B-32, ViT-B-16, ViT-L-14,
    /// ViT-L-14-336, ViT-B-32-laion, ViT-H-14); overrides any config file.
    #[arg(long)]
    pub arch: Option<String>,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Images per forward pass.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Largest image accepted, in pixels (protects against decompression bombs).
    #[arg(long)]
    pub max_pixels: Option<u64>,
}

impl ModelArgs {
    pub fn load(&self) -> Result<ClipPipeline> {
        let device = vista::device::select(&self.device)?;
        let mut p = ClipPipeline::load(&self.model, self.arch.as_deref(), &device)
            .with_context(|| format!("loading CLIP model `{}`", self.model))?;
        warn_unused(&p.report);
        if let Some(m) = self.max_pixels {
            p.decode = vista::image::DecodeOptions::with_max_pixels(m);
        }
        Ok(p)
    }
}

/// Says which checkpoint tensors a model did not use (loading is loud, never silent).
pub fn warn_unused(report: &vista::weights::LoadReport) {
    if !report.unused.is_empty() {
        eprintln!(
            "warning: {} tensors of {} were not used: {}",
            report.unused.len(),
            report.checkpoint.display(),
            report.unused.join(", ")
        );
    }
}

/// Reads a list file: one entry per non-empty line.
pub fn read_lines(path: &PathBuf) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect())
}
