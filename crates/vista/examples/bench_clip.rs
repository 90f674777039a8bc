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

mod common;

use anyhow::{anyhow, bail, Result};
use candle_core::{DType, Device, Tensor};
use common::{emit, max_abs_diff, thread_env, time_calls, Bench, Inputs};
use serde_json::json;

struct Args {
    bench: Bench,
    workloads: Vec<String>,
}

fn parse_args() -> Result<Args> {
    let mut a = common::start(
        "bench_clip --model DIR --inputs FILE [--workload image_b1|image_b32|text_b32|text_b32_trim|all]... \
         [--warmup N] [--iters N]",
        &[],
        |f| Ok(Args { bench: f.bench(2, 10)?, workloads: f.many("--workload") }),
    )?;
    if a.workloads.is_empty() || a.workloads.iter().any(|w| w == "all") {
        a.workloads = vec!["image_b1".into(), "image_b32".into(), "text_b32".into(), "text_b32_trim".into()];
    }
    Ok(a)
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

fn main() -> Result<()> {
    let args = parse_args()?;
    let device = Device::Cpu;

    let (loaded, load_s) = args.bench.load(|m| vista::clip::load_model(m, None, &device))?;
    let model = loaded.model;

    let inputs = Inputs::load(&args.bench.inputs)?;
    let get = |k: &str| inputs.get(k);
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
        let timing = time_calls(args.bench.warmup.saturating_sub(1), args.bench.iters, || Ok(run()?))?;
        let base = args.bench.result(workload, diff, load_s);
        emit(base, &[json!({ "batch": batch }), timing.json(Some(batch)), thread_env()]);
    }
    Ok(())
}
