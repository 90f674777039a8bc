//! vista's side of the DINO / DINOv2 benchmark (`tools/bench/bench_dino.py` drives it).
//!
//! ```sh
//! cargo build --release -p vista --example bench_dino
//! RAYON_NUM_THREADS=2 target/release/examples/bench_dino --model bench-out/dino_vits16_random.pth \
//!     --heads 6 --inputs bench-out/dino-inputs.safetensors --workload vits16_b1 --warmup 3 --iters 30
//! ```
//!
//! Loads an official-naming `.pth` state dict with `vista::dino::loader::load_model` (the head
//! count given, as for the official files), reads the inputs and PyTorch's outputs from the
//! safetensors file the script's set-up wrote (so every engine embeds identical inputs), warms
//! up, times the workload and prints one JSON line:
//! `{"engine":"vista","workload":..,"batch":..,"median_ms":..,"p10":..,"p90":..,"items_per_s":..,
//!   "max_abs_diff_vs_torch":..,"pos_max_abs_diff":..,"iters":..,"warmup":..,"load_s":..,
//!   "peak_rss_mb":..,"times_ms":[..]}`
//! (the first call is the parity check and counts as the first warm-up call).
//!
//! Workloads `{model}_b{batch}`, e.g. `vits16_b1`, `vitb16_b32`, `v2s14_b32`: the CLS feature
//! (`DinoVit::forward(..).cls()`, after the final norm) of the first `batch` images of
//! `pixel_values` (`[32,3,224,224]`, permuted once, untimed, to vista's channels-last layout),
//! compared with `cls_{model}` (`cls_{model}_b1` for batch 1). When the inputs hold
//! `pos_{model}` (PyTorch's resampled patch position embedding, DINOv2 at a grid other than the
//! trained one) the first call's `DinoOutput::pos_embed` is compared with it too.

use std::collections::HashMap;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use serde_json::json;
use vista::dino::loader::{load_model, LoadOptions};

struct Args {
    model: String,
    heads: Option<usize>,
    inputs: String,
    workload: String,
    warmup: usize,
    iters: usize,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        model: String::new(),
        heads: None,
        inputs: String::new(),
        workload: String::new(),
        warmup: 2,
        iters: 10,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().ok_or_else(|| anyhow!("{flag} needs a value"));
        match flag.as_str() {
            "--model" => a.model = val()?,
            "--heads" => a.heads = Some(val()?.parse()?),
            "--inputs" => a.inputs = val()?,
            "--workload" => a.workload = val()?,
            "--warmup" => a.warmup = val()?.parse()?,
            "--iters" => a.iters = val()?.parse()?,
            "-h" | "--help" => {
                println!(
                    "bench_dino --model FILE [--heads N] --inputs FILE --workload MODEL_bN [--warmup N] [--iters N]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument `{other}`"),
        }
    }
    if a.model.is_empty() || a.inputs.is_empty() || a.workload.is_empty() {
        bail!("--model, --inputs and --workload are required");
    }
    if a.iters == 0 {
        bail!("--iters must be at least 1");
    }
    Ok(a)
}

/// Linear interpolation between closest ranks (numpy's default), `q` in [0, 1].
fn percentile(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
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

    let (model_key, batch) = args
        .workload
        .rsplit_once("_b")
        .and_then(|(m, b)| b.parse::<usize>().ok().map(|b| (m.to_string(), b)))
        .ok_or_else(|| anyhow!("workload `{}` is not MODEL_bN (e.g. vits16_b32)", args.workload))?;

    let t0 = Instant::now();
    let options = LoadOptions { arch: None, num_heads: args.heads, checkpoint_key: None };
    let loaded = load_model(&args.model, &options).with_context(|| format!("loading {}", args.model))?;
    let load_s = t0.elapsed().as_secs_f64();
    let model = loaded.model;

    let inputs: HashMap<String, Tensor> =
        candle_core::safetensors::load(&args.inputs, &device).with_context(|| format!("reading {}", args.inputs))?;
    let get = |k: &str| inputs.get(k).cloned().ok_or_else(|| anyhow!("{} has no `{k}`", args.inputs));
    let pixels_nchw = get("pixel_values")?.to_dtype(DType::F32)?;
    if batch == 0 || batch > pixels_nchw.dim(0)? {
        bail!("batch {batch}: the inputs hold {} images", pixels_nchw.dim(0)?);
    }
    // PyTorch's [B,3,H,W] input in vista's channels-last layout (untimed).
    let pixels = pixels_nchw.narrow(0, 0, batch)?.permute((0, 2, 3, 1))?.contiguous()?;
    let reference = if batch == 1 {
        get(&format!("cls_{model_key}_b1"))?
    } else {
        get(&format!("cls_{model_key}"))?.narrow(0, 0, batch)?
    };
    let pos_reference = inputs.get(&format!("pos_{model_key}")).cloned();

    let run = || -> Result<vista::dino::DinoOutput> { Ok(model.forward(&pixels, false, false)?) };

    let first = run()?;
    let diff = max_abs_diff(&first.cls()?, &reference)?;
    let pos_diff = match &pos_reference {
        Some(r) => Some(max_abs_diff(&first.pos_embed, r)?),
        None => None,
    };
    drop(first);
    for _ in 1..args.warmup {
        run()?;
    }
    let mut ms = Vec::with_capacity(args.iters);
    for _ in 0..args.iters {
        let t = Instant::now();
        let out = run()?.cls()?;
        // The CPU backend is synchronous; touching the result keeps the work honest anyway.
        std::hint::black_box(&out);
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let times_ms = ms.clone();
    ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let median = percentile(&ms, 0.5);
    let line = json!({
        "engine": "vista",
        "workload": args.workload,
        "batch": batch,
        "median_ms": median,
        "p10": percentile(&ms, 0.1),
        "p90": percentile(&ms, 0.9),
        "items_per_s": batch as f64 * 1e3 / median,
        "max_abs_diff_vs_torch": diff,
        "pos_max_abs_diff": pos_diff,
        "iters": args.iters,
        "warmup": args.warmup.max(1),
        "load_s": load_s,
        "peak_rss_mb": peak_rss_mb(),
        "threads": std::env::var("RAYON_NUM_THREADS").ok(),
        "candle_barrier_pool_spin_limit": std::env::var("CANDLE_BARRIER_POOL_SPIN_LIMIT").ok(),
        "family": format!("{:?}", loaded.family),
        "config": &model.config,
        "times_ms": times_ms,
    });
    println!("{line}");
    Ok(())
}
