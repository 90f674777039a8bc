//! Parity with the reference Segment Anything implementations on tiny random-weight models
//! (`tools/reference/gen_sam.py`): the official `segment_anything` ViT in its own `.pth`
//! naming, the same weights in transformers' `SamModel` naming, and MobileSAM's TinyViT.
//!
//! Tolerances (the fixture manifests state them too): encoder activations and the image
//! embedding ≤ 1e-4 (values O(1); only summation order differs), dense positional encoding
//! ≤ 1e-5, prompt tokens ≤ 1e-4, low-resolution mask logits ≤ 1e-3 (values O(1–10) after two
//! transformer layers and the hypernetwork product), predicted IoU ≤ 1e-4, and ≥ 99.9 % of
//! full-size mask pixels equal (a logit within rounding of 0 may flip).

use crate::common;

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use common::{assert_close, fixtures, load_golden, manifest};
use vista::image::RgbImage;
use vista::sam::loader::{self, LoadOptions};
use vista::sam::prompt_encoder::PointLabel;
use vista::sam::{transforms, Point, Predictor, Prompts, Sam};

fn load(case: &str) -> Sam {
    let dir = fixtures().join("sam").join(case);
    let cfg = manifest(&dir.join("config.json"));
    let weights = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            let n = p.file_name().unwrap().to_string_lossy().to_string();
            n.ends_with(".pth") || n.ends_with(".pt") || n == "model.safetensors"
        })
        .expect("a checkpoint in the fixture folder");
    let options = LoadOptions { image_size: cfg["image_size"].as_u64().map(|v| v as usize), ..Default::default() };
    let files = loader::resolve(weights.to_str().unwrap()).unwrap();
    let loaded = loader::load(&files, &options).unwrap_or_else(|e| panic!("{case}: {e}"));
    assert!(loaded.report.unused.is_empty(), "{case}: unused tensors {:?}", loaded.report.unused);
    loaded.model
}

fn goldens(case: &str) -> Vec<std::path::PathBuf> {
    let dir = fixtures().join("sam").join(case);
    let mut v: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("golden_"))
        .collect();
    v.sort();
    assert!(!v.is_empty());
    v
}

fn image_of(t: &Tensor) -> RgbImage {
    let (h, w, _) = t.dims3().unwrap();
    let raw: Vec<u8> = t.flatten_all().unwrap().to_vec1().unwrap();
    RgbImage::from_raw(w as u32, h as u32, raw).unwrap()
}

fn nhwc(t: &Tensor) -> Tensor {
    t.permute((0, 2, 3, 1)).unwrap().contiguous().unwrap()
}

fn equal_fraction(a: &[u8], b: &[u8]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).filter(|(x, y)| x == y).count() as f64 / a.len() as f64
}

/// Runs every golden of a fixture folder.
fn check_case(case: &str) {
    let model = std::sync::Arc::new(load(case));
    let predictor = Predictor::new(model.clone());
    for path in goldens(case) {
        check_golden(case, &model, &predictor, &path);
    }
}

fn check_golden(case: &str, model: &Sam, predictor: &Predictor, path: &Path) {
    let g = load_golden(path);
    let name = format!("{case}/{}", path.file_name().unwrap().to_string_lossy());
    let image = image_of(&g["image"]);
    let original = (image.height() as usize, image.width() as usize);

    // Preprocessing: Pillow-bilinear resize (±1 level on a few pixels), normalise, pad.
    let (pixels, _) = model.preprocess(&image).unwrap();
    let golden_pixels = nhwc(&g["pixel_input"]);
    let px: Vec<f32> = pixels.flatten_all().unwrap().to_vec1().unwrap();
    let gpx: Vec<f32> = golden_pixels.flatten_all().unwrap().to_vec1().unwrap();
    let same = px.iter().zip(&gpx).filter(|(a, b)| (*a - *b).abs() <= 1e-5).count() as f64 / px.len() as f64;
    let worst = px.iter().zip(&gpx).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(same >= 0.99 && worst <= 1.01 / 57.12, "{name}: pixel_input {same:.4} equal, max diff {worst}");

    // The encoder on the reference's own input, so resize rounding does not blur its parity.
    let mut taps = Vec::new();
    let emb = model.encode(&golden_pixels, Some(&mut taps)).unwrap();
    for (key, ours) in &taps {
        let Some(want) = g.get(key) else { panic!("{name}: golden lacks {key}") };
        let ours = if want.rank() == 4 && want.dims()[1] != ours.dims()[1] && ours.rank() == 4 {
            // NCHW golden (TinyViT's patch embedding).
            ours.permute((0, 3, 1, 2)).unwrap()
        } else {
            ours.reshape(want.dims()).unwrap()
        };
        assert_close(&format!("{name} {key}"), &ours, want, 1e-4);
    }
    let emb_chw = emb.permute((0, 3, 1, 2)).unwrap();
    assert_close(&format!("{name} image_embedding"), &emb_chw, &g["image_embedding"], 1e-4);
    let (gh, gw) = model.grid();
    let pe = model.dense_pe().reshape((1, gh, gw, ())).unwrap().permute((0, 3, 1, 2)).unwrap();
    assert_close(&format!("{name} dense_pe"), &pe, &g["dense_pe"], 1e-5);

    let session = predictor.session_from_embedding(&emb_chw.squeeze(0).unwrap(), original).unwrap();
    for k in 0.. {
        let key = |s: &str| format!("case{k}.{s}");
        let Some(low_res) = g.get(&key("low_res_logits")) else { break };
        let b = low_res.dims()[0];
        let mut prompts = Prompts::default();
        let coords = g.get(&key("point_coords"));
        if let Some(coords) = coords {
            // Shared by every box: the reference repeats them per box.
            let c: Vec<Vec<f32>> = coords.get(0).unwrap().to_vec2().unwrap();
            let l: Vec<f32> = g[&key("point_labels")].get(0).unwrap().to_vec1().unwrap();
            prompts.points = c.iter().zip(&l).map(|(p, l)| Point { x: p[0], y: p[1], positive: *l == 1.0 }).collect();
        }
        if let Some(boxes) = g.get(&key("boxes")) {
            let bx: Vec<Vec<f32>> = boxes.to_vec2().unwrap();
            prompts.boxes = bx.iter().map(|v| [v[0], v[1], v[2], v[3]]).collect();
        }
        if let Some(m) = g.get(&key("mask_input")) {
            prompts.mask_input = Some(m.get(0).unwrap().flatten_all().unwrap().to_vec1().unwrap());
        }
        prompts.multimask = low_res.dims()[1] > 1;
        prompts.return_logits = true;

        // Prompt tokens, from our coordinate transform.
        let pe = model.prompt_encoder();
        let size = model.image_size();
        let pts: Vec<([f32; 2], PointLabel)> = prompts
            .points
            .iter()
            .map(|p| {
                let (x, y) = transforms::apply_coords(p.x as f64, p.y as f64, original, size);
                ([x, y], if p.positive { PointLabel::Positive } else { PointLabel::Negative })
            })
            .collect();
        let sparse: Vec<f32> = (0..b)
            .flat_map(|i| {
                let bx = prompts.boxes.get(i).map(|v| {
                    let (x0, y0) = transforms::apply_coords(v[0] as f64, v[1] as f64, original, size);
                    let (x1, y1) = transforms::apply_coords(v[2] as f64, v[3] as f64, original, size);
                    [x0, y0, x1, y1]
                });
                pe.sparse(&pts, bx)
            })
            .collect();
        let want = &g[&key("sparse")];
        let sparse = Tensor::from_vec(sparse, want.dims(), &Device::Cpu).unwrap();
        assert_close(&format!("{name} {}", key("sparse")), &sparse, want, 1e-4);

        let pred = session.predict(&prompts).unwrap();
        assert_eq!((pred.sets, pred.per_set), (b, low_res.dims()[1]), "{name} case{k}");
        assert_close(&format!("{name} {}", key("low_res_logits")), &pred.low_res, low_res, 1e-3);
        let iou = Tensor::from_vec(pred.iou.clone(), (pred.sets, pred.per_set), &Device::Cpu).unwrap();
        assert_close(&format!("{name} {}", key("iou")), &iou, &g[&key("iou")], 1e-4);
        let want_masks: Vec<u8> =
            g[&key("masks")].to_dtype(DType::U8).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let frac = equal_fraction(&pred.masks, &want_masks);
        assert!(frac >= 0.999, "{name} case{k}: only {:.4}% of mask pixels equal", frac * 100.0);
        if let Some(want) = g.get(&key("mask_logits")) {
            let logits = Tensor::from_vec(pred.logits.clone().unwrap(), want.dims(), &Device::Cpu).unwrap();
            assert_close(&format!("{name} {}", key("mask_logits")), &logits, want, 1e-3);
        }
    }

    // The whole path from the image: our resize differs from Pillow's by a level on a few
    // pixels, so the masks are compared, not the logits.
    let session = predictor.set_image(&image).unwrap();
    let coords: Vec<Vec<f32>> = g["case0.point_coords"].get(0).unwrap().to_vec2().unwrap();
    let prompts = Prompts {
        points: coords.iter().map(|p| Point { x: p[0], y: p[1], positive: true }).collect(),
        multimask: true,
        ..Default::default()
    };
    let pred = session.predict(&prompts).unwrap();
    let want: Vec<u8> = g["case0.masks"].to_dtype(DType::U8).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    let frac = equal_fraction(&pred.masks, &want);
    assert!(frac >= 0.99, "{name}: end-to-end masks only {:.4}% equal", frac * 100.0);
}

#[test]
fn official_vit_matches_segment_anything() {
    check_case("vit_official");
}

#[test]
fn hugging_face_vit_matches_transformers() {
    check_case("vit_hf");
}

#[test]
fn mobile_sam_tiny_vit_matches_the_reference() {
    check_case("mobile_official");
}

/// A session decodes prompts without a mask from the image's prepared first-layer work
/// (`Sam::prepare`); it must give what the decoder gives from the embedding, one prompt set or
/// several.
#[test]
fn prepared_image_decodes_as_the_embedding_does() {
    let model = load("vit_official");
    let (gh, gw) = model.grid();
    let c = model.embed_dim();
    let emb = Tensor::randn(0f32, 1., (gh * gw, c), &Device::Cpu).unwrap();
    let prepared = model.prepare(&emb).unwrap();
    let pe = model.prompt_encoder();
    for sets in [1usize, 3] {
        let sparse: Vec<f32> =
            (0..sets).flat_map(|i| pe.sparse(&[([3.0 + 9.0 * i as f32, 20.0], PointLabel::Positive)], None)).collect();
        let sparse = Tensor::from_vec(sparse, (sets, 2, c), &Device::Cpu).unwrap();
        let (masks, iou) = model.decode(&emb, &sparse, None).unwrap();
        let (pm, piou) = model.decode_prepared(&prepared, &sparse).unwrap();
        assert_close(&format!("{sets} sets: masks"), &pm, &masks, 1e-5);
        assert_close(&format!("{sets} sets: iou"), &piou, &iou, 1e-5);
    }
}
