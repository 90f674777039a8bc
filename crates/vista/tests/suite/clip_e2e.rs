//! The whole CLIP user path equals the reference: strings through the real tokenizer, image files
//! through decoding and preprocessing, both towers, and zero-shot probabilities — against
//! open_clip (`tools/reference/gen_clip_e2e.py`, a tiny model with the real 49408-token vocabulary).

use crate::common;

use candle_core::{DType, Device};
use common::*;
use vista::apps::{Templates, ZeroShotClassifier};
use vista::clip::ClipPipeline;
use vista::image;

fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect()
}

#[test]
fn strings_and_files_in_embeddings_and_probabilities_out_equal_open_clip() {
    let dir = fixtures().join("clip/openclip_e2e");
    let manifest = manifest(&dir.join("manifest.json"));
    let golden = load_golden(&dir.join("golden.safetensors"));
    let p = ClipPipeline::load(dir.to_str().unwrap(), None, &Device::Cpu).unwrap();
    assert!(p.report.unused.is_empty(), "unused: {:?}", p.report.unused);

    // Tokenizer: exact ids.
    let texts = strings(&manifest["texts"]);
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let ids = p.tokenizer.tokenize_batch(&refs, 77).unwrap();
    let want: Vec<Vec<i64>> = golden["input_ids"].to_dtype(DType::I64).unwrap().to_vec2().unwrap();
    for (i, (ours, theirs)) in ids.iter().zip(&want).enumerate() {
        let theirs: Vec<u32> = theirs.iter().map(|&x| x as u32).collect();
        assert_eq!(ours, &theirs, "token ids of {:?}", texts[i]);
    }
    let txt = p.model.encode_text(&ids).unwrap();
    assert_close("text_embeds", &txt, &golden["text_embeds"], 1e-4);

    // Images: decode + preprocess + tower.
    let images_dir = fixtures().join("preprocess");
    let imgs: Vec<_> = strings(&manifest["images"])
        .iter()
        .map(|n| image::load_rgb(images_dir.join(n), &Default::default()).unwrap())
        .collect();
    let pixels = p.preprocess.to_tensor(&imgs, &Device::Cpu).unwrap();
    // One uint8 step, divided by the smallest std, bounds any pixel difference.
    let one_step = 1.0 / 255.0 / 0.2613;
    assert_close("pixel_values", &pixels, &golden["pixel_values"], one_step + 1e-5);
    let img = p.model.encode_image(&pixels).unwrap();
    let d = assert_close("image_embeds", &img, &golden["image_embeds"], 2e-3);
    eprintln!("image_embeds max abs diff {d:e}");

    // Zero-shot, as the CLIP notebook builds class weights.
    let labels = strings(&manifest["labels"]);
    let templates = Templates::Custom(strings(&manifest["templates"]));
    let zs = ZeroShotClassifier::new(&p, &labels, &templates).unwrap();
    let img_n = vista::clip::l2_normalize(&img).unwrap();
    let preds = zs.classify(&img_n, labels.len()).unwrap();
    let probs: Vec<Vec<f32>> = golden["zeroshot_probs"].to_vec2().unwrap();
    for (row, want) in preds.iter().zip(&probs) {
        for pr in row {
            let j = labels.iter().position(|l| l == &pr.label).unwrap();
            assert!((pr.prob - want[j]).abs() <= 1e-3, "{}: {} vs {}", pr.label, pr.prob, want[j]);
        }
    }
}
