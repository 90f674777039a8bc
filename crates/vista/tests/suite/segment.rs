//! SAM predictor properties, errors and the embedding cache, on the tiny official fixture.

use crate::common;

use std::sync::Arc;

use candle_core::Tensor;
use common::fixtures;
use proptest::prelude::*;
use vista::apps::segment::{EmbeddingCache, SegmentPipeline};
use vista::image::{Rgb, RgbImage};
use vista::sam::loader::{self, LoadOptions};
use vista::sam::{transforms, Point, Predictor, Prompts, Sam};
use vista::Error;

fn checkpoint() -> std::path::PathBuf {
    fixtures().join("sam/vit_official/sam_vit_tiny.pth")
}

fn model() -> Arc<Sam> {
    static MODEL: std::sync::OnceLock<Arc<Sam>> = std::sync::OnceLock::new();
    MODEL
        .get_or_init(|| {
            Arc::new(loader::load_model(checkpoint().to_str().unwrap(), &LoadOptions::default()).unwrap().model)
        })
        .clone()
}

fn image(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| Rgb([(x * 5 % 256) as u8, (y * 7 % 256) as u8, ((x + y) * 3 % 256) as u8]))
}

fn scratch(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("vista-segment-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    /// Many boxes in one call (one decoder batch, split in chunks) equal one call per box.
    #[test]
    fn many_boxes_at_once_equal_one_call_per_box(
        boxes in prop::collection::vec((0f32..60.0, 0f32..40.0, 0f32..60.0, 0f32..40.0), 1..20),
        with_point in any::<bool>(),
        multimask in any::<bool>(),
    ) {
        let session = Predictor::new(model()).set_image(&image(60, 40)).unwrap();
        let boxes: Vec<[f32; 4]> =
            boxes.iter().map(|&(a, b, c, d)| [a.min(c), b.min(d), a.max(c), b.max(d)]).collect();
        let points = if with_point { vec![Point { x: 20.0, y: 10.0, positive: true }] } else { vec![] };
        let prompts = |boxes: Vec<[f32; 4]>| Prompts { points: points.clone(), boxes, multimask, return_logits: true, ..Default::default() };
        let all = session.predict(&prompts(boxes.clone())).unwrap();
        prop_assert_eq!(all.sets, boxes.len());
        for (i, b) in boxes.iter().enumerate() {
            let one = session.predict(&prompts(vec![*b])).unwrap();
            let d = max_diff(&all.low_res.get(i).unwrap(), &one.low_res.get(0).unwrap());
            prop_assert!(d <= 1e-5, "box {i}: low-res logits differ by {d}");
            for m in 0..one.per_set {
                prop_assert!((all.score(i, m) - one.score(0, m)).abs() <= 1e-5);
                // Masks agree wherever the logit is not within rounding of the threshold.
                let n = one.mask(0, m).len();
                let logits = &one.logits.as_ref().unwrap()[m * n..(m + 1) * n];
                for (p, ((a, b), l)) in all.mask(i, m).iter().zip(one.mask(0, m)).zip(logits).enumerate() {
                    prop_assert!(a == b || l.abs() < 1e-4, "box {i} mask {m} pixel {p}: logit {l}");
                }
            }
        }
    }

    /// Original → encoder frame → original, for any image size and point inside it.
    #[test]
    fn coordinate_transform_round_trips(h in 1usize..5000, w in 1usize..5000, fx in 0f64..=1.0, fy in 0f64..=1.0) {
        let (x, y) = (fx * w as f64, fy * h as f64);
        let (tx, ty) = transforms::apply_coords(x, y, (h, w), 1024);
        let (nh, nw) = transforms::preprocess_shape(h, w, 1024);
        prop_assert!(tx >= 0.0 && tx <= nw as f32 + 1e-3 && ty >= 0.0 && ty <= nh as f32 + 1e-3);
        prop_assert!(nh.max(nw) == 1024 || nh.max(nw) == 1023 || nh.max(nw) == 1025);
        let (bx, by) = transforms::unapply_coords(tx, ty, (h, w), 1024);
        // f32 in the encoder frame: relative error ~6e-8 of 1024, scaled back.
        let tol = 1e-3 * (w.max(h) as f64 / 1024.0).max(1.0);
        prop_assert!((bx - x).abs() <= tol && (by - y).abs() <= tol, "{x},{y} -> {bx},{by}");
    }
}

#[test]
fn bad_prompts_are_clear_errors() {
    let session = Predictor::new(model()).set_image(&image(60, 40)).unwrap();
    let err = |p: Prompts| session.predict(&p).unwrap_err().to_string();
    let pt = |x, y| Prompts { points: vec![Point { x, y, positive: true }], ..Default::default() };
    assert!(err(Prompts::default()).contains("no point, box or mask"));
    let e = err(pt(61.0, 5.0));
    assert!(e.contains("point") && e.contains("outside the 60x40 image"), "{e}");
    assert!(err(pt(-1.0, 5.0)).contains("outside"));
    assert!(err(pt(f32::NAN, 5.0)).contains("outside"));
    let e = err(Prompts { boxes: vec![[10.0, 10.0, 5.0, 20.0]], ..Default::default() });
    assert!(e.contains("x1 < x0"), "{e}");
    let e = err(Prompts { boxes: vec![[0.0, 0.0, 10.0, 41.0]], ..Default::default() });
    assert!(e.contains("box") && e.contains("outside"), "{e}");
    let e = err(Prompts { mask_input: Some(vec![0.0; 10]), ..Default::default() });
    assert!(e.contains("mask input") && e.contains("32x32"), "{e}");
    // The edges themselves are inside.
    session.predict(&pt(60.0, 40.0)).unwrap();
    session.predict(&Prompts { boxes: vec![[0.0, 0.0, 60.0, 40.0]], ..Default::default() }).unwrap();
    // A mask input alone is a valid prompt.
    session.predict(&Prompts { mask_input: Some(vec![1.0; 32 * 32]), ..Default::default() }).unwrap();
    let empty = RgbImage::new(0, 0);
    assert!(matches!(Predictor::new(model()).set_image(&empty), Err(Error::InvalidArgument { .. })));
}

#[test]
fn cached_embeddings_give_the_same_masks_and_survive_corruption() {
    let dir = scratch("cache");
    let img_path = dir.join("photo.png");
    image(60, 40).save(&img_path).unwrap();
    let cache_root = dir.join("cache");
    let p = SegmentPipeline::load(checkpoint().to_str().unwrap(), &LoadOptions::default(), Some(&cache_root)).unwrap();
    let prompts = Prompts {
        points: vec![Point { x: 20.0, y: 10.0, positive: true }, Point { x: 50.0, y: 30.0, positive: false }],
        multimask: true,
        ..Default::default()
    };
    let fresh = p.encode_file(&img_path).unwrap();
    assert!(!fresh.cached);
    assert!(p.is_cached(&img_path).unwrap());
    let cached = p.encode_file(&img_path).unwrap();
    assert!(cached.cached);
    let (a, b) = (fresh.session.predict(&prompts).unwrap(), cached.session.predict(&prompts).unwrap());
    // f16 storage: the logits move by rounding only (3.9e-3 measured on logits of O(1-10)); the
    // masks stay.
    assert!(max_diff(&a.low_res, &b.low_res) < 1e-2);
    let same = a.masks.iter().zip(&b.masks).filter(|(x, y)| x == y).count();
    assert!(same as f64 >= 0.999 * a.masks.len() as f64);
    // A copy under another name hits the same entry; no temporary files are left behind.
    std::fs::copy(&img_path, dir.join("copy.png")).unwrap();
    assert!(p.encode_file(&dir.join("copy.png")).unwrap().cached);
    let cache = p.cache.clone().unwrap();
    let entries: Vec<_> = std::fs::read_dir(cache.dir()).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    // A truncated entry is a miss and is rewritten.
    std::fs::write(&entries[0], b"garbage").unwrap();
    let again = p.encode_file(&img_path).unwrap();
    assert!(!again.cached);
    assert!(p.encode_file(&img_path).unwrap().cached);
    // Another model never reads this model's entries.
    let other = EmbeddingCache::new(&cache_root, "another-model");
    assert!(std::fs::read_dir(cache.dir()).unwrap().count() == 1 && !other.dir().exists());
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn checkpoint_errors_name_the_tensor_and_both_shapes() {
    let dir = scratch("ckpt");
    // Official naming: drop one tensor, misshape another.
    let tensors = candle_core::pickle::read_all(checkpoint()).unwrap();
    let mut map: std::collections::HashMap<String, Tensor> = tensors.into_iter().collect();
    map.remove("mask_decoder.iou_token.weight");
    let path = dir.join("missing.safetensors");
    candle_core::safetensors::save(&map, &path).unwrap();
    let e = loader::load_model(path.to_str().unwrap(), &LoadOptions::default()).err().unwrap().to_string();
    assert!(e.contains("mask_decoder.iou_token.weight") && e.contains("missing.safetensors"), "{e}");

    let mut map: std::collections::HashMap<String, Tensor> =
        candle_core::pickle::read_all(checkpoint()).unwrap().into_iter().collect();
    map.insert(
        "image_encoder.blocks.1.mlp.lin2.bias".into(),
        Tensor::zeros(7, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap(),
    );
    let path = dir.join("shape.safetensors");
    candle_core::safetensors::save(&map, &path).unwrap();
    let e = loader::load_model(path.to_str().unwrap(), &LoadOptions::default()).err().unwrap().to_string();
    assert!(e.contains("image_encoder.blocks.1.mlp.lin2.bias") && e.contains("[7]") && e.contains("[32]"), "{e}");

    // Hugging Face naming: the error speaks transformers' names.
    let hf = fixtures().join("sam/vit_hf/model.safetensors");
    let mut map = candle_core::safetensors::load(&hf, &candle_core::Device::Cpu).unwrap();
    map.remove("mask_decoder.upscale_conv1.weight");
    let sub = dir.join("hf");
    std::fs::create_dir_all(&sub).unwrap();
    std::fs::copy(fixtures().join("sam/vit_hf/config.json"), sub.join("config.json")).unwrap();
    candle_core::safetensors::save(&map, sub.join("model.safetensors")).unwrap();
    let e = loader::load_model(sub.to_str().unwrap(), &LoadOptions::default()).err().unwrap().to_string();
    assert!(e.contains("mask_decoder.upscale_conv1.weight"), "{e}");

    // Not a SAM at all.
    let clip = fixtures().join("clip/hf_gelu/model.safetensors");
    let e = loader::load_model(clip.to_str().unwrap(), &LoadOptions::default()).err().unwrap().to_string();
    assert!(e.contains("not a Segment Anything checkpoint"), "{e}");
    std::fs::remove_dir_all(dir).unwrap();
}
