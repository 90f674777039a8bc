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

mod common;

use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::DType;
use common::{emit, max_abs_diff, peak_rss_mb, thread_env, time_calls, Flags, Inputs};
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
    let mut f = Flags::from_env(
        "bench_dino --model FILE [--heads N] --inputs FILE --workload MODEL_bN [--warmup N] [--iters N]",
        &[],
    )?;
    let a = Args {
        model: f.req("--model")?,
        heads: f.opt("--heads")?,
        inputs: f.req("--inputs")?,
        workload: f.req("--workload")?,
        warmup: f.or("--warmup", 2)?,
        iters: f.or("--iters", 10)?,
    };
    f.finish()?;
    if a.iters == 0 {
        bail!("--iters must be at least 1");
    }
    Ok(a)
}

fn main() -> Result<()> {
    // vista's process set-up (allocator tuning), as the CLI does; before any thread starts.
    vista::device::init_process();
    let args = parse_args()?;

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

    let inputs = Inputs::load(&args.inputs)?;
    let get = |k: &str| inputs.get(k);
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
    let pos_reference = inputs.maybe(&format!("pos_{model_key}"));

    let run = || -> Result<vista::dino::DinoOutput> { Ok(model.forward(&pixels, false, false)?) };

    let first = run()?;
    let diff = max_abs_diff(&first.cls()?, &reference)?;
    let pos_diff = match &pos_reference {
        Some(r) => Some(max_abs_diff(&first.pos_embed, r)?),
        None => None,
    };
    drop(first);
    let timing = time_calls(args.warmup.saturating_sub(1), args.iters, || Ok(run()?.cls()?))?;
    let base = json!({
        "engine": "vista", "workload": args.workload, "batch": batch, "max_abs_diff_vs_torch": diff,
        "pos_max_abs_diff": pos_diff, "warmup": args.warmup.max(1), "load_s": load_s,
        "peak_rss_mb": peak_rss_mb(), "family": format!("{:?}", loaded.family), "config": &model.config,
    });
    emit(base, &[timing.json(Some(batch)), thread_env()]);
    Ok(())
}
