//! vista's side of the CNN-encoder benchmark (`tools/bench/bench_resnet.py` drives it).
//!
//! ```sh
//! cargo build --release -p vista --example bench_resnet
//! RAYON_NUM_THREADS=2 target/release/examples/bench_resnet --model bench-out/clip_rn50_random/open_clip_model.safetensors \
//!     --inputs bench-out/resnet-inputs.safetensors --workload cliprn50_b1 --warmup 3 --iters 30
//! ```
//!
//! Workloads `{model}_b{batch}`: `cliprn50` (CLIP RN50's image embedding,
//! `ClipModel::encode_image` on `[B,3,224,224]`, loaded as `vista::clip::loader::load_model` loads
//! an open_clip checkpoint) and `dinorn50` (DINO's ResNet-50 pooled feature,
//! `Backbone::forward(..).cls()` on the same pixels channels-last, loaded as `load_backbone` loads
//! `dino_resnet50_pretrain.pth`). Compared with `{model}` / `{model}_b1` in the inputs file
//! (PyTorch's outputs); prints one JSON line as the other bench examples do.

mod common;

use anyhow::{anyhow, bail, Result};
use candle_core::{DType, Device, Tensor};
use common::{emit, max_abs_diff, thread_env, time_calls, Bench, Inputs};
use serde_json::json;

struct Args {
    bench: Bench,
    workload: String,
}

fn main() -> Result<()> {
    let args = common::start(
        "bench_resnet --model FILE --inputs FILE --workload {cliprn50|dinorn50}_bN [--warmup N] [--iters N]",
        &[],
        |f| Ok(Args { bench: f.bench(2, 10)?, workload: f.req("--workload")? }),
    )?;
    let (model_key, batch) = args
        .workload
        .rsplit_once("_b")
        .and_then(|(m, b)| b.parse::<usize>().ok().map(|b| (m.to_string(), b)))
        .ok_or_else(|| anyhow!("workload `{}` is not MODEL_bN (e.g. cliprn50_b32)", args.workload))?;
    let inputs = Inputs::load(&args.bench.inputs)?;
    let pixels_nchw = inputs.get("pixel_values")?.to_dtype(DType::F32)?;
    if batch == 0 || batch > pixels_nchw.dim(0)? {
        bail!("batch {batch}: the inputs hold {} images", pixels_nchw.dim(0)?);
    }
    let pixels_nchw = pixels_nchw.narrow(0, 0, batch)?.contiguous()?;
    let reference = if batch == 1 {
        inputs.get(&format!("{model_key}_b1"))?
    } else {
        inputs.get(&model_key)?.narrow(0, 0, batch)?
    };
    let (run, load_s): (Box<dyn Fn() -> Result<Tensor>>, f64) = match model_key.as_str() {
        "cliprn50" => {
            let (loaded, load_s) = args.bench.load(|m| vista::clip::loader::load_model(m, None, &Device::Cpu))?;
            let model = loaded.model;
            let px = pixels_nchw.clone();
            (Box::new(move || Ok(model.encode_image(&px)?)), load_s)
        }
        "dinorn50" => {
            let options = vista::dino::LoadOptions::default();
            let (loaded, load_s) = args.bench.load(|m| {
                let files = vista::dino::loader::resolve(m)?;
                vista::dino::loader::load_backbone(&files, &options)
            })?;
            let model = loaded.model;
            // PyTorch's [B,3,H,W] input in vista's channels-last layout (untimed).
            let px = pixels_nchw.permute((0, 2, 3, 1))?.contiguous()?;
            (Box::new(move || Ok(model.forward(&px, false, false)?.cls()?)), load_s)
        }
        other => bail!("unknown model `{other}` (cliprn50, dinorn50)"),
    };
    let first = run()?;
    let diff = max_abs_diff(&first, &reference)?;
    drop(first);
    let timing = time_calls(args.bench.warmup.saturating_sub(1), args.bench.iters, &run)?;
    let base = args.bench.result(&args.workload, diff, load_s);
    emit(base, &[json!({ "batch": batch }), timing.json(Some(batch)), thread_env()]);
    Ok(())
}
