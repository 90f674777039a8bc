//! vista's side of the SAM benchmark (`tools/bench/bench_sam.py` drives it).
//!
//! ```sh
//! cargo build --release -p vista --example bench_sam
//! RAYON_NUM_THREADS=2 target/release/examples/bench_sam --model bench-out/sam_vit_b_random.pth \
//!     --inputs bench-out/sam-inputs.safetensors --image bench-out/sam-photo.png \
//!     --workload enc_vit_b --warmup 1 --iters 3
//! ```
//!
//! Loads the model with `vista::sam::loader::load_model`, reads the inputs and PyTorch's outputs
//! from the safetensors file the script's set-up wrote (so every engine gets identical inputs),
//! warms up, times the workload and prints one JSON line:
//! `{"engine":"vista","workload":..,"median_ms":..,"p10":..,"p90":..,"max_abs_diff_vs_torch":..,
//!   "iters":..,"warmup":..,"load_s":..,"peak_rss_mb":..,"times_ms":[..],"pre_times_ms":[..]}`
//! (the first call is the parity check and counts as the first warm-up call).
//!
//! Workloads:
//! * `enc_vit_b` / `enc_vit_t`: `Sam::encode` on PyTorch's preprocessed `[1,3,1024,1024]` tensor
//!   (permuted once to vista's channels-last layout, untimed); `Sam::preprocess` of the decoded
//!   photo (resize, normalise, pad) is timed apart (`pre_times_ms`). Pass the matching model.
//! * `dec_point`: `Session::predict` with one positive point, multimask (3 masks at the photo size);
//! * `dec_box64`: `Session::predict` with the 64 boxes in one call, single mask each.
//!
//! The decoder workloads start from the stored ViT-B embedding (`Predictor::session_from_embedding`).
//! `--stages` (encoder workloads) also prints the per-call time of `set_image` (preprocess +
//! encoder, the API a user calls).

mod common;

use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Result};
use candle_core::{DType, Tensor};
use common::{emit, max_abs_diff, ms_since, thread_env, Bench, Inputs, Timing};
use serde_json::json;
use vista::sam::loader::{self, LoadOptions};
use vista::sam::{Point, Predictor, Prompts};

struct Args {
    bench: Bench,
    image: String,
    workload: String,
    stages: bool,
}

fn main() -> Result<()> {
    let args = common::start(
        "bench_sam --model FILE --inputs FILE --image FILE --workload enc_vit_b|enc_vit_t|dec_point|dec_box64 \
         [--warmup N] [--iters N] [--stages]",
        &["--stages"],
        |f| {
            Ok(Args {
                bench: f.bench(1, 3)?,
                image: f.req("--image")?,
                workload: f.req("--workload")?,
                stages: f.switch("--stages"),
            })
        },
    )?;

    let options = LoadOptions::default();
    let (loaded, load_s) = args.bench.load(|m| loader::load_model(m, &options))?;
    let model = Arc::new(loaded.model);
    let predictor = Predictor::new(model.clone());

    let inputs = Inputs::load(&args.bench.inputs)?;
    let get = |k: &str| inputs.get(k);
    let img = vista::image::load_rgb(&args.image, &vista::image::DecodeOptions::default())?;
    let size = (img.height() as usize, img.width() as usize);

    let mut pre_ms: Vec<f64> = Vec::new();
    let mut set_image_ms: Vec<f64> = Vec::new();
    let mut pre_diff: Option<f32> = None;
    // Each closure runs one call and returns the output compared with PyTorch's.
    let (reference, run): (Tensor, Box<dyn Fn() -> Result<Tensor>>) = match args.workload.as_str() {
        "enc_vit_b" | "enc_vit_t" => {
            let key = if args.workload == "enc_vit_b" { "embeds_vit_b" } else { "embeds_vit_t" };
            // PyTorch's [1,3,S,S] input in vista's channels-last layout.
            let pixels_nchw = get("pixel_values")?.to_dtype(DType::F32)?;
            let pixels = pixels_nchw.permute((0, 2, 3, 1))?.contiguous()?;
            let (own, _) = model.preprocess(&img)?;
            pre_diff = Some(max_abs_diff(&own, &pixels)?);
            let m = model.clone();
            // vista's embedding is channels-last [1, h, w, C]; the reference is [1, C, h, w].
            (get(key)?, Box::new(move || Ok(m.encode(&pixels, None)?.permute((0, 3, 1, 2))?.contiguous()?)))
        }
        "dec_point" | "dec_box64" => {
            let emb = get("embeds_vit_b")?.to_dtype(DType::F32)?.squeeze(0)?;
            let session = predictor.session_from_embedding(&emb, size)?;
            let prompts = if args.workload == "dec_point" {
                let p = get("point")?.to_vec2::<f32>()?;
                Prompts {
                    points: vec![Point { x: p[0][0], y: p[0][1], positive: true }],
                    boxes: vec![],
                    mask_input: None,
                    multimask: true,
                    return_logits: false,
                }
            } else {
                let b = get("boxes")?.to_vec2::<f32>()?;
                Prompts {
                    points: vec![],
                    boxes: b.iter().map(|r| [r[0], r[1], r[2], r[3]]).collect(),
                    mask_input: None,
                    multimask: false,
                    return_logits: false,
                }
            };
            let key = if args.workload == "dec_point" { "point_low_res" } else { "box_low_res" };
            (
                get(key)?,
                Box::new(move || {
                    let pred = session.predict(&prompts)?;
                    std::hint::black_box(&pred.masks);
                    Ok(pred.low_res)
                }),
            )
        }
        other => bail!("unknown workload `{other}` (enc_vit_b, enc_vit_t, dec_point, dec_box64)"),
    };
    let encoder = pre_diff.is_some();

    let first = run()?;
    let diff = max_abs_diff(&first, &reference)?;
    for _ in 1..args.bench.warmup {
        run()?;
    }
    let mut ms = Vec::with_capacity(args.bench.iters);
    for _ in 0..args.bench.iters {
        let t = Instant::now();
        let out = run()?;
        std::hint::black_box(&out);
        ms.push(ms_since(t));
        if encoder {
            let t = Instant::now();
            let pre = model.preprocess(&img)?;
            std::hint::black_box(&pre);
            pre_ms.push(ms_since(t));
            if args.stages {
                let t = Instant::now();
                let session = predictor.set_image(&img)?;
                std::hint::black_box(&session);
                set_image_ms.push(ms_since(t));
            }
        }
    }
    let extra = json!({"pre_times_ms": pre_ms, "pre_max_abs_diff": pre_diff, "set_image_times_ms": set_image_ms});
    let base = args.bench.result(&args.workload, diff, load_s);
    emit(base, &[extra, Timing { times_ms: ms }.json(None), thread_env()]);
    Ok(())
}
