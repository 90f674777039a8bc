//! vista's side of the CLIP benchmark (`tools/bench/bench_clip.py` drives it).
//!
//! ```sh
//! cargo build --release -p vista --example bench_clip
//! RAYON_NUM_THREADS=2 target/release/examples/bench_clip \
//!     --model bench-out/clip-vit-b32-random --inputs bench-out/clip-inputs.safetensors \
//!     --workload image_b1 --warmup 3 --iters 30
//! ```
//!
//! Loads the model with `vista::clip::load_model`, reads the inputs and PyTorch's outputs from
//! the safetensors file `tools/bench/make_model.py` wrote (so every engine embeds identical
//! inputs), warms up, times each workload and prints one JSON line per workload:
//! `{"engine":"vista","workload":..,"batch":..,"median_ms":..,"p10":..,"p90":..,"items_per_s":..,
//!   "max_abs_diff_vs_torch":..,"iters":..,"warmup":..,"load_s":..,"peak_rss_mb":..,"times_ms":[..]}`
//! (the first call is the parity check and counts as the first warm-up call).
//! Workloads: `image_b1`, `image_b32`, `text_b32` (77 ids per prompt; vista itself trims after the
//! last end-of-text token) and `text_b32_trim` (the ids already cut to the longest prompt, as
//! every engine gets them in that workload). Repeat `--workload`, or `all`.

use std::collections::HashMap;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use serde_json::json;

struct Args {
    model: String,
    inputs: String,
    workloads: Vec<String>,
    warmup: usize,
    iters: usize,
}

fn parse_args() -> Result<Args> {
    let mut a = Args { model: String::new(), inputs: String::new(), workloads: vec![], warmup: 2, iters: 10 };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().ok_or_else(|| anyhow!("{flag} needs a value"));
        match flag.as_str() {
            "--model" => a.model = val()?,
            "--inputs" => a.inputs = val()?,
            "--workload" => a.workloads.push(val()?),
            "--warmup" => a.warmup = val()?.parse()?,
            "--iters" => a.iters = val()?.parse()?,
            "-h" | "--help" => {
                println!("bench_clip --model DIR --inputs FILE [--workload image_b1|image_b32|text_b32|text_b32_trim|all]... [--warmup N] [--iters N]");
                std::process::exit(0);
            }
            other => bail!("unknown argument `{other}`"),
        }
    }
    if a.model.is_empty() || a.inputs.is_empty() {
        bail!("--model and --inputs are required");
    }
    if a.iters == 0 {
        bail!("--iters must be at least 1");
    }
    if a.workloads.is_empty() || a.workloads.iter().any(|w| w == "all") {
        a.workloads = vec!["image_b1".into(), "image_b32".into(), "text_b32".into(), "text_b32_trim".into()];
    }
    Ok(a)
}

/// Linear interpolation between closest ranks (numpy's default), `q` in [0, 1].
fn percentile(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// One past the last pooled position over the batch: the pooled token is the largest id (the
/// end-of-text token; argmax pooling of the `eos_token_id: 2` config), first occurrence.
fn trimmed_len(ids: &[Vec<u32>]) -> usize {
    ids.iter()
        .map(|s| {
            let max = s.iter().copied().max().unwrap_or(0);
            s.iter().position(|&t| t == max).unwrap_or(0) + 1
        })
        .max()
        .unwrap_or(1)
}

/// This process's peak resident set (VmHWM), in MB.
fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    if a.dims() != b.dims() {
        bail!("shape {:?} vs reference {:?}", a.dims(), b.dims());
    }
    Ok(a.sub(b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?)
}

fn main() -> Result<()> {
    // vista's process set-up (allocator tuning), as the CLI does; before any thread starts.
    vista::device::init_process();
    let args = parse_args()?;
    let device = Device::Cpu;

    let t0 = Instant::now();
    let loaded =
        vista::clip::load_model(&args.model, None, &device).with_context(|| format!("loading {}", args.model))?;
    let load_s = t0.elapsed().as_secs_f64();
    let model = loaded.model;

    let inputs: HashMap<String, Tensor> =
        candle_core::safetensors::load(&args.inputs, &device).with_context(|| format!("reading {}", args.inputs))?;
    let get = |k: &str| inputs.get(k).cloned().ok_or_else(|| anyhow!("{} has no `{k}`", args.inputs));
    let pixels = get("pixel_values")?.to_dtype(DType::F32)?;
    let ids_i64 = get("input_ids")?.to_dtype(DType::I64)?.to_vec2::<i64>()?;
    let ids: Vec<Vec<u32>> = ids_i64
        .iter()
        .map(|row| row.iter().map(|&t| u32::try_from(t).map_err(|_| anyhow!("token id {t} out of range"))).collect())
        .collect::<Result<_>>()?;
    let ref_image = get("image_embeds")?;
    let ref_image_b1 = get("image_embeds_b1")?;
    let ref_text = get("text_embeds")?;

    for workload in &args.workloads {
        // Each closure runs one forward pass and returns the embeddings.
        let (batch, reference, run): (usize, Tensor, Box<dyn Fn() -> vista::Result<Tensor>>) = match workload.as_str() {
            "image_b1" => {
                let x = pixels.narrow(0, 0, 1)?.contiguous()?;
                let m = &model;
                (1, ref_image_b1.clone(), Box::new(move || m.encode_image(&x)))
            }
            "image_b32" => {
                let x = pixels.narrow(0, 0, 32)?.contiguous()?;
                let m = &model;
                (32, ref_image.narrow(0, 0, 32)?, Box::new(move || m.encode_image(&x)))
            }
            "text_b32" | "text_b32_trim" => {
                let mut t: Vec<Vec<u32>> = ids.iter().take(32).cloned().collect();
                if t.len() != 32 {
                    bail!("need 32 token sequences, the inputs have {}", ids.len());
                }
                if workload == "text_b32_trim" {
                    let len = trimmed_len(&t);
                    t.iter_mut().for_each(|s| s.truncate(len));
                }
                let m = &model;
                (32, ref_text.narrow(0, 0, 32)?, Box::new(move || m.encode_text(&t)))
            }
            other => bail!("unknown workload `{other}` (image_b1, image_b32, text_b32, text_b32_trim)"),
        };

        let first = run()?;
        let diff = max_abs_diff(&first, &reference)?;
        for _ in 1..args.warmup {
            run()?;
        }
        let mut ms = Vec::with_capacity(args.iters);
        for _ in 0..args.iters {
            let t = Instant::now();
            let out = run()?;
            // The CPU backend is synchronous; touching the result keeps the work honest anyway.
            std::hint::black_box(&out);
            ms.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let times_ms = ms.clone();
        ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let median = percentile(&ms, 0.5);
        let line = json!({
            "engine": "vista",
            "workload": workload,
            "batch": batch,
            "median_ms": median,
            "p10": percentile(&ms, 0.1),
            "p90": percentile(&ms, 0.9),
            "items_per_s": batch as f64 * 1e3 / median,
            "max_abs_diff_vs_torch": diff,
            "iters": args.iters,
            "warmup": args.warmup.max(1),
            "load_s": load_s,
            "peak_rss_mb": peak_rss_mb(),
            "threads": std::env::var("RAYON_NUM_THREADS").ok(),
            "candle_barrier_pool_spin_limit": std::env::var("CANDLE_BARRIER_POOL_SPIN_LIMIT").ok(),
            "times_ms": times_ms,
        });
        println!("{line}");
    }
    Ok(())
}
