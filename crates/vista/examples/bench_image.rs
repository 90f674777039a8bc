//! Image preprocessing and DINO augmentation speed, one process, the current thread count:
//!
//! ```sh
//! cargo build --release -p vista --example bench_image
//! RAYON_NUM_THREADS=1 target/release/examples/bench_image --iters 50
//! ```
//!
//! Prints one JSON line per workload (`median_ms`, `p10`, `p90`, `times_ms`):
//! * `clip_512_to_224`: CLIP preprocessing (bicubic shortest side to 224, centre crop,
//!   normalise) of the 512×512 astronaut photo of the fixtures;
//! * `clip_600x400_to_224`, `clip_4032x3024_to_224`: the resize and crop alone, of the coffee
//!   photo and of a synthetic 12 MP phone-sized image;
//! * `dino_multicrop_512`: `DataAugmentationDINO` (2 × 224 + 8 × 96 views) of the astronaut.

mod common;

use std::path::Path;

use anyhow::Result;
use common::{emit, thread_env, time_calls};
use serde_json::json;
use vista::image::augment::{DataAugmentationDino, DinoAugmentConfig};
use vista::image::{load_rgb, ClipPreprocess, DecodeOptions, Rgb, RgbImage};

fn main() -> Result<()> {
    let (iters, warmup): (usize, usize) = common::start("bench_image [--iters N] [--warmup N]", &[], |f| {
        Ok((f.or("--iters", 50)?, f.or("--warmup", 5)?))
    })?;
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/preprocess");
    let astronaut = load_rgb(fixtures.join("astronaut.png"), &DecodeOptions::default())?;
    let coffee = load_rgb(fixtures.join("coffee.png"), &DecodeOptions::default())?;
    let big = RgbImage::from_fn(4032, 3024, |x, y| Rgb([(x % 251) as u8, (y % 241) as u8, ((x ^ y) % 239) as u8]));
    let p = ClipPreprocess::openai(224);
    let mut buf = vec![0f32; 3 * 224 * 224];
    let report = |name: &str, t: common::Timing| {
        emit(json!({"engine": "vista", "workload": name}), &[t.json(Some(1)), thread_env()])
    };

    report(
        "clip_512_to_224",
        time_calls(warmup, iters, || Ok(p.normalize_into(&p.resize_crop(&astronaut), &mut buf)?))?,
    );
    report("clip_600x400_to_224", time_calls(warmup, iters, || Ok(p.resize_crop(&coffee)))?);
    report("clip_4032x3024_to_224", time_calls(1, iters.div_ceil(10).max(3), || Ok(p.resize_crop(&big)))?);
    let aug = DataAugmentationDino::new(DinoAugmentConfig::default())?;
    let mut i = 0u64;
    report(
        "dino_multicrop_512",
        time_calls(warmup.min(2), iters.div_ceil(2).max(3), || {
            i += 1;
            Ok(aug.augment_sample(&astronaut, 0, i, 0)?)
        })?,
    );
    Ok(())
}
