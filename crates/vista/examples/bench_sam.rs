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

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use serde_json::json;
use vista::sam::loader::{self, LoadOptions};
use vista::sam::{Point, Predictor, Prompts};

struct Args {
    model: String,
    inputs: String,
    image: String,
    workload: String,
    warmup: usize,
    iters: usize,
    stages: bool,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        model: String::new(),
        inputs: String::new(),
        image: String::new(),
        workload: String::new(),
        warmup: 1,
        iters: 3,
        stages: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().ok_or_else(|| anyhow!("{flag} needs a value"));
        match flag.as_str() {
            "--model" => a.model = val()?,
            "--inputs" => a.inputs = val()?,
            "--image" => a.image = val()?,
            "--workload" => a.workload = val()?,
            "--warmup" => a.warmup = val()?.parse()?,
            "--iters" => a.iters = val()?.parse()?,
            "--stages" => a.stages = true,
            "-h" | "--help" => {
                println!(
                    "bench_sam --model FILE --inputs FILE --image FILE --workload enc_vit_b|enc_vit_t|dec_point|dec_box64 \
                     [--warmup N] [--iters N] [--stages]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument `{other}`"),
        }
    }
    if a.model.is_empty() || a.inputs.is_empty() || a.image.is_empty() || a.workload.is_empty() {
        bail!("--model, --inputs, --image and --workload are required");
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

fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

fn main() -> Result<()> {
    // vista's process set-up (allocator tuning), as the CLI does; before any thread starts.
    vista::device::init_process();
    let args = parse_args()?;
    let device = Device::Cpu;

    let t0 = Instant::now();
    let loaded = loader::load_model(&args.model, &LoadOptions { arch: None, image_size: None })
        .with_context(|| format!("loading {}", args.model))?;
    let model = Arc::new(loaded.model);
    let predictor = Predictor::new(model.clone());
    let load_s = t0.elapsed().as_secs_f64();

    let inputs: HashMap<String, Tensor> =
        candle_core::safetensors::load(&args.inputs, &device).with_context(|| format!("reading {}", args.inputs))?;
    let get = |k: &str| inputs.get(k).cloned().ok_or_else(|| anyhow!("{} has no `{k}`", args.inputs));
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
    for _ in 1..args.warmup {
        run()?;
    }
    let mut ms = Vec::with_capacity(args.iters);
    for _ in 0..args.iters {
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
    let times_ms = ms.clone();
    ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let median = percentile(&ms, 0.5);
    let line = json!({
        "engine": "vista",
        "workload": args.workload,
        "median_ms": median,
        "p10": percentile(&ms, 0.1),
        "p90": percentile(&ms, 0.9),
        "max_abs_diff_vs_torch": diff,
        "iters": args.iters,
        "warmup": args.warmup.max(1),
        "load_s": load_s,
        "peak_rss_mb": peak_rss_mb(),
        "threads": std::env::var("RAYON_NUM_THREADS").ok(),
        "candle_barrier_pool_spin_limit": std::env::var("CANDLE_BARRIER_POOL_SPIN_LIMIT").ok(),
        "times_ms": times_ms,
        "pre_times_ms": pre_ms,
        "pre_max_abs_diff": pre_diff,
        "set_image_times_ms": set_image_ms,
    });
    println!("{line}");
    Ok(())
}
