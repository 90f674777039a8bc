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

use anyhow::{anyhow, bail, Result};
use candle_core::DType;
use common::{emit, max_abs_diff, thread_env, time_calls, Bench, Inputs};
use serde_json::json;
use vista::dino::loader::{load_model, LoadOptions};

struct Args {
    bench: Bench,
    heads: Option<usize>,
    workload: String,
}

fn main() -> Result<()> {
    let args = common::start(
        "bench_dino --model FILE [--heads N] --inputs FILE --workload MODEL_bN [--warmup N] [--iters N]",
        &[],
        |f| Ok(Args { bench: f.bench(2, 10)?, heads: f.opt("--heads")?, workload: f.req("--workload")? }),
    )?;

    let (model_key, batch) = args
        .workload
        .rsplit_once("_b")
        .and_then(|(m, b)| b.parse::<usize>().ok().map(|b| (m.to_string(), b)))
        .ok_or_else(|| anyhow!("workload `{}` is not MODEL_bN (e.g. vits16_b32)", args.workload))?;

    let options = LoadOptions { num_heads: args.heads, ..Default::default() };
    let (loaded, load_s) = args.bench.load(|m| load_model(m, &options))?;
    let model = loaded.model;

    let inputs = Inputs::load(&args.bench.inputs)?;
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
    let timing = time_calls(args.bench.warmup.saturating_sub(1), args.bench.iters, || Ok(run()?.cls()?))?;
    let extra = json!({
        "batch": batch, "pos_max_abs_diff": pos_diff, "family": format!("{:?}", loaded.family),
        "config": &model.config,
    });
    let base = args.bench.result(&args.workload, diff, load_s);
    emit(base, &[extra, timing.json(Some(batch)), thread_env()]);
    Ok(())
}
