//! The GPU check: parity of vista's device paths against its CPU path, and speed against
//! PyTorch, in one process. `tools/gpu/check.sh` runs it on the GPU machine; `tools/gpu/README.md`
//! says how.
//!
//! ```text
//! gpu_check [--device cuda|cuda:N|cpu] [--out report.json] [--models DIR] [--torch torch.json]
//!           [--parts parity,bench,gemm] [--dtypes f32,bf16] [--quick] [--tiny]
//! ```
//!
//! * `parity`: every family on the committed fixtures (`gpu_check/parity.rs`), once per dtype;
//!   with `--device cpu` the device paths run on the CPU (the CPU rehearsal).
//! * `bench`: real-size models with random weights that `tools/gpu/torch_bench.py` wrote into
//!   `--models` (the same tensors PyTorch timed), each workload timed with the device synchronised
//!   (warm-ups, then the median of the timed calls), with the peak device memory; plus, when the
//!   models folder holds PyTorch's outputs for a few inputs, vista's outputs compared with them.
//!   `--tiny` shrinks the batches (CPU rehearsal).
//! * `gemm`: the matrix rate candle gets from cuBLAS, 8192³, f32 and bf16.
//!
//! The report is one JSON document; the last lines printed are a summary table.

#[path = "gpu_check/parity.rs"]
mod parity;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};

struct Args {
    device: String,
    out: PathBuf,
    models: Option<PathBuf>,
    torch: Option<PathBuf>,
    parts: Vec<String>,
    dtypes: Vec<DType>,
    quick: bool,
    tiny: bool,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        device: "cuda".into(),
        out: "gpu_report.json".into(),
        models: None,
        torch: None,
        parts: vec!["parity".into(), "bench".into(), "gemm".into()],
        dtypes: vec![DType::F32, DType::BF16],
        quick: false,
        tiny: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = || it.next().ok_or_else(|| anyhow!("{arg} needs a value"));
        match arg.as_str() {
            "--device" => a.device = val()?,
            "--out" => a.out = val()?.into(),
            "--models" => a.models = Some(val()?.into()),
            "--torch" => a.torch = Some(val()?.into()),
            "--parts" => a.parts = val()?.split(',').map(str::to_string).collect(),
            "--dtypes" => {
                a.dtypes = val()?
                    .split(',')
                    .map(|d| match d {
                        "f32" => Ok(DType::F32),
                        "bf16" => Ok(DType::BF16),
                        "f16" => Ok(DType::F16),
                        other => Err(anyhow!("unknown dtype {other}")),
                    })
                    .collect::<Result<_>>()?
            }
            "--quick" => a.quick = true,
            "--tiny" => a.tiny = true,
            "-h" | "--help" => {
                println!("see the top of crates/vista/examples/gpu_check.rs");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(a)
}

fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::F32 => "f32",
        DType::BF16 => "bf16",
        DType::F16 => "f16",
        _ => "?",
    }
}

// ---------------------------------------------------------------------------------------------
// Device memory and timing
// ---------------------------------------------------------------------------------------------

fn reset_peak(_dev: &Device) {
    #[cfg(feature = "cuda")]
    if _dev.is_cuda() {
        let _ = vista::device::cuda::reset_peak(_dev);
    }
}

/// Peak bytes held by tensors since the last reset (CUDA), else None.
fn peak_mib(_dev: &Device) -> Option<f64> {
    #[cfg(feature = "cuda")]
    if _dev.is_cuda() {
        return vista::device::cuda::peak_bytes(_dev).ok().map(|b| b as f64 / (1 << 20) as f64);
    }
    None
}

fn used_mib(_dev: &Device) -> Option<f64> {
    #[cfg(feature = "cuda")]
    if _dev.is_cuda() {
        return vista::device::cuda::mem_info(_dev).ok().map(|(f, t)| (t - f) as f64 / (1 << 20) as f64);
    }
    None
}

struct Timing {
    median_ms: f64,
    min_ms: f64,
    iters: usize,
    peak_mib: Option<f64>,
}

/// Warm-ups, then timed calls (each synchronised) until `iters` calls or `budget_s` seconds,
/// at least 3; the median.
fn time_it<T>(
    dev: &Device,
    warmup: usize,
    iters: usize,
    budget_s: f64,
    mut f: impl FnMut() -> Result<T>,
) -> Result<Timing> {
    for _ in 0..warmup {
        let _ = f()?;
    }
    dev.synchronize()?;
    reset_peak(dev);
    let mut ms = Vec::new();
    let start = Instant::now();
    while ms.len() < iters && (ms.len() < 3 || start.elapsed().as_secs_f64() < budget_s) {
        let t = Instant::now();
        let out = f()?;
        dev.synchronize()?;
        drop(out);
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let peak = peak_mib(dev);
    ms.sort_by(|a, b| a.total_cmp(b));
    Ok(Timing { median_ms: ms[ms.len() / 2], min_ms: ms[0], iters: ms.len(), peak_mib: peak })
}

// ---------------------------------------------------------------------------------------------
// Benchmarks on the models torch_bench.py wrote
// ---------------------------------------------------------------------------------------------

fn randn(shape: &[usize], seed: u64, dev: &Device) -> Result<Tensor> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| (rng.next_u32() >> 8) as f32 / (1u32 << 24) as f32 * 4.0 - 2.0).collect();
    Ok(Tensor::from_vec(v, shape, &Device::Cpu)?.to_device(dev)?)
}

/// 77-token prompts whose end-of-text token is last: every position is computed (as PyTorch does
/// for 77-token inputs), so vista's trimming after the last end-of-text cannot shorten them.
fn full_length_ids(b: usize, seed: u64) -> Vec<Vec<u32>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..b)
        .map(|_| {
            let mut row = vec![49406u32];
            row.extend((0..75).map(|_| 1 + rng.next_u32() % 49404));
            row.push(49407);
            row
        })
        .collect()
}

struct Bench<'a> {
    dev: &'a Device,
    models: PathBuf,
    quick: bool,
    tiny: bool,
    rows: Vec<Value>,
    errors: Vec<String>,
}

impl Bench<'_> {
    fn batch(&self, full: usize) -> usize {
        if self.tiny {
            full.clamp(1, 2)
        } else {
            full
        }
    }

    fn iters(&self) -> (usize, usize, f64) {
        if self.quick || self.tiny {
            (1, 3, 2.0)
        } else {
            (3, 20, 4.0)
        }
    }

    fn record(&mut self, workload: &str, dtype: DType, per: usize, unit: &str, r: Result<Timing>, extra: Value) {
        match r {
            Ok(t) => {
                println!(
                    "  {workload:<22} {:<5} {:>9.3} ms/call {:>9.4} ms/{unit} (n={}, peak {})",
                    dtype_name(dtype),
                    t.median_ms,
                    t.median_ms / per as f64,
                    t.iters,
                    t.peak_mib.map(|m| format!("{m:.0} MiB")).unwrap_or("-".into())
                );
                self.rows.push(json!({
                    "workload": workload, "dtype": dtype_name(dtype), "median_ms": t.median_ms, "min_ms": t.min_ms,
                    "per_item_ms": t.median_ms / per as f64, "items": per, "unit": unit, "iters": t.iters,
                    "peak_mib": t.peak_mib, "extra": extra,
                }));
            }
            Err(e) => {
                println!("  {workload:<22} {:<5} FAILED: {e:#}", dtype_name(dtype));
                self.errors.push(format!("{workload} {}: {e:#}", dtype_name(dtype)));
            }
        }
    }

    fn target(&self, dtype: DType) -> parity::Target {
        parity::Target { device: self.dev.clone(), dtype }
    }

    fn clip(&mut self, dtype: DType, refs: &Refs) -> Result<()> {
        let dir = self.models.join("clip_b32");
        let cfg = vista::clip::loader::load_model(dir.to_str().unwrap(), None, &Device::Cpu)?.model.config().clone();
        let model = parity::clip_on(&dir, &cfg, &self.target(dtype))?;
        refs.compare(self, "clip_image", dtype, |px| model.encode_image(&px.permute((0, 3, 1, 2))?.contiguous()?));
        let b = self.batch(256);
        let (w, n, budget) = self.iters();
        let px = randn(&[b, 3, 224, 224], 1, self.dev)?.to_dtype(dtype)?;
        let r = time_it(self.dev, w, n, budget, || Ok(model.encode_image(&px)?));
        self.record(&format!("clip_b32_image_b{b}"), dtype, b, "image", r, json!({}));
        let ids = full_length_ids(b, 2);
        let r = time_it(self.dev, w, n, budget, || Ok(model.encode_text(&ids)?));
        self.record(&format!("clip_b32_text_b{b}"), dtype, b, "text", r, json!({"tokens": 77}));
        Ok(())
    }

    fn dino(&mut self, key: &str, dtype: DType, refs: &Refs) -> Result<()> {
        let path = self.models.join(format!("{key}.safetensors"));
        let options = vista::dino::LoadOptions::default();
        let cfg = vista::dino::loader::load_model(path.to_str().unwrap(), &options)?.model.config;
        let model = parity::dino_on(&path, &cfg, &self.target(dtype))?;
        refs.compare(self, key, dtype, |px| model.forward(px, false, false)?.cls());
        let b = self.batch(256);
        let (w, n, budget) = self.iters();
        let px = randn(&[b, 224, 224, 3], 3, self.dev)?.to_dtype(dtype)?;
        let r = time_it(self.dev, w, n, budget, || Ok(model.forward(&px, false, false)?.cls()?));
        self.record(&format!("{key}_b{b}"), dtype, b, "image", r, json!({}));
        Ok(())
    }

    fn sam(&mut self, dtype: DType, refs: &Refs) -> Result<()> {
        use std::sync::Arc;
        use vista::sam::{Point, Predictor, Prompts};
        let path = self.models.join("sam_vit_b.safetensors");
        let options = vista::sam::LoadOptions::default();
        let cfg = vista::sam::loader::load_model(path.to_str().unwrap(), &options)?.model.config;
        let model = Arc::new(parity::sam_on(&path, &cfg, &self.target(dtype))?);
        refs.compare(self, "sam_vit_b", dtype, |px| {
            let e = model.encode(px, None)?;
            let (b, h, w, c) = e.dims4()?;
            Ok(e.reshape((b, h * w * c))?)
        });
        let (w, n, budget) = self.iters();
        let s = model.image_size();
        for full in [1, 8] {
            let b = self.batch(full);
            let px = randn(&[b, s, s, 3], 4, self.dev)?.to_dtype(dtype)?;
            let r = time_it(self.dev, w, n, budget, || Ok(model.encode(&px, None)?));
            self.record(&format!("sam_vit_b_encoder_b{b}"), dtype, b, "image", r, json!({}));
        }
        // The decoder on one 1536x1024 photo's embedding: the prompt encoder, the mask decoder and
        // the masks at the original size (as SamPredictor.predict / predict_torch return them).
        let (ih, iw) = (1024usize, 1536usize);
        let image = vista::image::RgbImage::from_fn(iw as u32, ih as u32, |x, y| {
            vista::image::Rgb([(x % 251) as u8, (y % 241) as u8, ((x + y) % 239) as u8])
        });
        let session = Predictor::new(model.clone()).set_image(&image)?;
        let point = Prompts {
            points: vec![Point { x: 600.0, y: 400.0, positive: true }],
            multimask: true,
            ..Default::default()
        };
        let r = time_it(self.dev, w, n, budget, || Ok(session.predict(&point)?));
        self.record("sam_vit_b_decoder_point1", dtype, 1, "prompt", r, json!({"image": [iw, ih], "masks": 3}));
        let nb = if self.tiny { 4 } else { 64 };
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let mut u = || (rng.next_u32() >> 8) as f32 / (1u32 << 24) as f32;
        let boxes: Vec<[f32; 4]> = (0..nb)
            .map(|_| {
                let (bw, bh) = ((0.1 + 0.4 * u()) * iw as f32, (0.1 + 0.4 * u()) * ih as f32);
                let (x0, y0) = (u() * (iw as f32 - bw), u() * (ih as f32 - bh));
                [x0, y0, x0 + bw, y0 + bh]
            })
            .collect();
        let boxes = Prompts { boxes, multimask: false, ..Default::default() };
        let r = time_it(self.dev, w, n, budget, || Ok(session.predict(&boxes)?));
        self.record(
            &format!("sam_vit_b_decoder_box{nb}"),
            dtype,
            nb,
            "prompt",
            r,
            json!({"image": [iw, ih], "masks": nb}),
        );
        Ok(())
    }

    fn train(&mut self) -> Result<()> {
        let config = if self.tiny { parity::tiny_train_config() } else { parity::vit_small_train_config(64) };
        let mut state = parity::TrainState::new(&config, 0, self.dev)?;
        let crops: Vec<Tensor> = parity::crops(&config, 1)?
            .into_iter()
            .map(|c| c.to_device(self.dev))
            .collect::<candle_core::Result<_>>()?;
        let (w, n, budget) = self.iters();
        let mut step = 0u64;
        let r = time_it(self.dev, w, n.min(10), budget, || {
            step += 1;
            let (loss, _) = state.step(&crops, step)?;
            anyhow::ensure!(loss.to_dtype(DType::F32)?.to_scalar::<f32>()?.is_finite(), "loss not finite");
            Ok(())
        });
        let extra = json!({
            "arch": format!("ViT {}/{}, depth {}", config.embed_dim, config.patch_size, config.depth),
            "crops": format!("2x{} + {}x{}", config.global_size, config.local_crops, config.local_size),
            "head_out_dim": config.out_dim,
            "step": "teacher fwd (globals) + student fwd/bwd (all crops) + DINO loss + clip 3.0 + AdamW + EMA",
        });
        let batch = config.batch_size;
        self.record(&format!("dino_train_vits16_b{batch}"), DType::F32, batch, "image", r, extra);
        Ok(())
    }
}

/// PyTorch's outputs for a few inputs, when torch_bench.py saved them (`refs.safetensors`):
/// the end-to-end check of the real-size models (naming, shapes, GPU kernels).
struct Refs(Option<std::collections::HashMap<String, Tensor>>);

impl Refs {
    fn load(models: &Path) -> Self {
        Refs(candle_core::safetensors::load(models.join("refs.safetensors"), &Device::Cpu).ok())
    }

    /// `f(input)` against PyTorch's output for `key` (inputs are channels-last pixels).
    fn compare(&self, bench: &mut Bench, key: &str, dtype: DType, f: impl FnOnce(&Tensor) -> vista::Result<Tensor>) {
        let Some(refs) = &self.0 else { return };
        let (Some(x), Some(want)) = (refs.get(&format!("{key}.input")), refs.get(&format!("{key}.output"))) else {
            return;
        };
        let r = (|| -> Result<(f64, f64)> {
            let got = f(&x.to_device(bench.dev)?)?;
            Ok((parity::min_row_cosine(&got, want)?, parity::max_abs_diff(&got, want)?))
        })();
        match r {
            Ok((cos, diff)) => {
                println!(
                    "  {key:<22} {:<5} vs PyTorch: min cosine {cos:.6}, max abs diff {diff:.2e}",
                    dtype_name(dtype)
                );
                bench.rows.push(json!({"workload": format!("{key} vs PyTorch"), "dtype": dtype_name(dtype),
                    "min_cosine": cos, "max_abs_diff": diff}));
            }
            Err(e) => bench.errors.push(format!("{key} vs PyTorch {}: {e:#}", dtype_name(dtype))),
        }
    }
}

fn gemm(dev: &Device, tiny: bool) -> Vec<Value> {
    let n = if tiny { 512 } else { 8192 };
    let mut out = Vec::new();
    for dtype in [DType::F32, DType::BF16] {
        let r = (|| -> Result<Timing> {
            let a = randn(&[n, n], 8, dev)?.to_dtype(dtype)?;
            let b = randn(&[n, n], 9, dev)?.to_dtype(dtype)?;
            time_it(dev, 2, 10, 3.0, || Ok(a.matmul(&b)?))
        })();
        match r {
            Ok(t) => {
                let tflops = 2.0 * (n as f64).powi(3) / (t.median_ms * 1e-3) / 1e12;
                println!(
                    "  candle matmul {n}^3 {:<5} {:>8.3} ms = {tflops:.1} TFLOP/s",
                    dtype_name(dtype),
                    t.median_ms
                );
                out.push(json!({"n": n, "dtype": dtype_name(dtype), "median_ms": t.median_ms, "tflops": tflops}));
            }
            Err(e) => out.push(json!({"n": n, "dtype": dtype_name(dtype), "error": format!("{e:#}")})),
        }
    }
    out
}

/// vista's time over PyTorch's for every workload both ran.
fn compare(vista_rows: &[Value], torch: &Value) -> Vec<Value> {
    let mut by: BTreeMap<(String, String), f64> = BTreeMap::new();
    if let Some(rows) = torch["bench"].as_array() {
        for r in rows {
            if let (Some(w), Some(d), Some(ms)) = (r["workload"].as_str(), r["dtype"].as_str(), r["median_ms"].as_f64())
            {
                by.insert((w.to_string(), d.to_string()), ms);
            }
        }
    }
    let mut out = Vec::new();
    for r in vista_rows {
        let (Some(w), Some(d), Some(ms)) = (r["workload"].as_str(), r["dtype"].as_str(), r["median_ms"].as_f64())
        else {
            continue;
        };
        if let Some(t) = by.get(&(w.to_string(), d.to_string())) {
            out.push(json!({"workload": w, "dtype": d, "vista_ms": ms, "torch_ms": t, "vista_over_torch": ms / t,
                "vista_per_item_ms": r["per_item_ms"], "vista_peak_mib": r["peak_mib"]}));
        }
    }
    out
}

/// Writes the report as it stands, so that a run stopped by a timeout still leaves its results.
fn save(out: &Path, report: &Value) -> Result<()> {
    let tmp = out.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_string_pretty(report)?)?;
    std::fs::rename(&tmp, out)?;
    Ok(())
}

fn main() -> Result<()> {
    vista::device::init_process();
    let args = parse_args()?;
    let started = Instant::now();
    let dev = vista::device::select(&args.device).with_context(|| format!("device {}", args.device))?;
    println!("gpu_check: device {:?}, cuda feature {}, parts {:?}", dev.location(), cfg!(feature = "cuda"), args.parts);
    let mut report = json!({
        "device": format!("{:?}", dev.location()),
        "cuda_feature": cfg!(feature = "cuda"),
        "build": std::fs::read_to_string(Path::new(".gpu/BUILD")).ok().map(|s| s.trim().to_string()),
        "args": std::env::args().skip(1).collect::<Vec<_>>(),
    });
    let mut ok = true;

    if args.parts.iter().any(|p| p == "parity") {
        let mut parity_out = serde_json::Map::new();
        for &dtype in &args.dtypes {
            let target = parity::Target { device: dev.clone(), dtype };
            let t = Instant::now();
            println!("parity {} ...", target.name());
            let r = parity::all(&target);
            let fails = r.failures();
            println!(
                "parity {}: {} checks, {} failed, {} errors ({:.1} s)",
                target.name(),
                r.checks.len(),
                r.checks.iter().filter(|c| !c.pass).count(),
                r.errors.len(),
                t.elapsed().as_secs_f64()
            );
            for f in &fails {
                println!("  FAIL {f}");
            }
            ok &= r.passed();
            parity_out.insert(
                dtype_name(dtype).into(),
                json!({"passed": r.passed(), "checks": r.checks, "errors": r.errors, "seconds": t.elapsed().as_secs_f64()}),
            );
        }
        report["parity"] = Value::Object(parity_out);
        report["passed_parity"] = json!(ok);
        save(&args.out, &report)?;
    }

    if args.parts.iter().any(|p| p == "gemm") {
        println!("gemm:");
        report["gemm"] = json!(gemm(&dev, args.tiny));
        save(&args.out, &report)?;
    }

    if args.parts.iter().any(|p| p == "bench") {
        match &args.models {
            None => println!("bench: skipped (no --models)"),
            Some(models) => {
                let refs = Refs::load(models);
                let mut bench = Bench {
                    dev: &dev,
                    models: models.clone(),
                    quick: args.quick,
                    tiny: args.tiny,
                    rows: vec![],
                    errors: vec![],
                };
                println!("bench (models in {}):", models.display());
                for &dtype in &args.dtypes {
                    let t = Instant::now();
                    if let Err(e) = bench.clip(dtype, &refs) {
                        bench.errors.push(format!("clip {}: {e:#}", dtype_name(dtype)));
                    }
                    for key in ["dino_vits16", "dino_vitb16", "dinov2_vits14"] {
                        if let Err(e) = bench.dino(key, dtype, &refs) {
                            bench.errors.push(format!("{key} {}: {e:#}", dtype_name(dtype)));
                        }
                    }
                    if let Err(e) = bench.sam(dtype, &refs) {
                        bench.errors.push(format!("sam {}: {e:#}", dtype_name(dtype)));
                    }
                    println!(
                        "  ({} done in {:.1} s, device memory in use {:?} MiB)",
                        dtype_name(dtype),
                        t.elapsed().as_secs_f64(),
                        used_mib(&dev)
                    );
                    report["bench"] = json!(bench.rows);
                    report["bench_errors"] = json!(bench.errors);
                    save(&args.out, &report)?;
                }
                if let Err(e) = bench.train() {
                    bench.errors.push(format!("dino train: {e:#}"));
                }
                for e in &bench.errors {
                    println!("  ERROR {e}");
                }
                report["bench"] = json!(bench.rows);
                report["bench_errors"] = json!(bench.errors);
                if let Some(tp) = &args.torch {
                    match std::fs::read_to_string(tp)
                        .map_err(anyhow::Error::from)
                        .and_then(|s| Ok(serde_json::from_str::<Value>(&s)?))
                    {
                        Ok(torch) => {
                            let cmp = compare(&bench.rows, &torch);
                            println!("vista vs PyTorch (median ms per call):");
                            for c in &cmp {
                                println!(
                                    "  {:<26} {:<5} vista {:>9.3}  torch {:>9.3}  ratio {:>5.2}",
                                    c["workload"].as_str().unwrap_or(""),
                                    c["dtype"].as_str().unwrap_or(""),
                                    c["vista_ms"].as_f64().unwrap_or(f64::NAN),
                                    c["torch_ms"].as_f64().unwrap_or(f64::NAN),
                                    c["vista_over_torch"].as_f64().unwrap_or(f64::NAN)
                                );
                            }
                            report["torch"] = torch;
                            report["comparison"] = json!(cmp);
                        }
                        Err(e) => report["torch_error"] = json!(format!("{}: {e:#}", tp.display())),
                    }
                }
            }
        }
    }

    report["passed_parity"] = json!(ok);
    report["seconds"] = json!(started.elapsed().as_secs_f64());
    report["complete"] = json!(true);
    save(&args.out, &report)?;
    println!(
        "report: {} ({:.1} s); parity {}",
        args.out.display(),
        started.elapsed().as_secs_f64(),
        if ok { "PASSED" } else { "FAILED" }
    );
    if !ok {
        std::process::exit(1);
    }
    Ok(())
}
