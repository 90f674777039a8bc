//! CLIP equals its references (transformers `CLIPModel`, open_clip `CLIP`) on committed tiny
//! random-weight checkpoints in both namings, both activations, odd image sizes and several text
//! lengths. Fixtures: `tools/reference/gen_clip.py`.
//!
//! Tolerances (float32 throughout; our GEMMs sum in another order than PyTorch's): intermediates
//! and embeddings 1e-4 max abs with cosine >= 0.99999, logits 1e-3 (they carry a factor
//! exp(logit_scale) ~ 19 on cosines).

use crate::common;

use candle_core::{DType, Device, Tensor};
use common::*;
use vista::clip::loader;
use vista::weights::clip::ClipFamily;

const CASES: [(&str, ClipFamily); 4] = [
    ("hf_quickgelu", ClipFamily::HuggingFace),
    ("hf_gelu", ClipFamily::HuggingFace),
    ("openclip_quickgelu", ClipFamily::OpenClip),
    ("openclip_gelu", ClipFamily::OpenClip),
];

fn ids_of(t: &Tensor) -> Vec<Vec<u32>> {
    t.to_dtype(DType::I64)
        .unwrap()
        .to_vec2::<i64>()
        .unwrap()
        .into_iter()
        .map(|r| r.into_iter().map(|x| x as u32).collect())
        .collect()
}

fn tolerance(manifest: &serde_json::Value, key: &str) -> f32 {
    manifest["tolerances"][key]["max_abs"].as_f64().unwrap_or_else(|| panic!("no tolerance for {key}")) as f32
}

#[test]
fn clip_matches_reference_in_every_naming_and_activation() {
    for (case, family) in CASES {
        let dir = fixtures().join("clip").join(case);
        let manifest = manifest(&dir.join("manifest.json"));
        let golden = load_golden(&dir.join("golden.safetensors"));
        let loaded = loader::load_model(dir.to_str().unwrap(), None, &Device::Cpu).unwrap();
        assert_eq!(loaded.family, family, "{case}: family");
        assert!(loaded.report.unused.is_empty(), "{case}: unused tensors {:?}", loaded.report.unused);
        let model = &loaded.model;

        let mut trace = Vec::new();
        let img = model.encode_image_traced(&golden["pixel_values"], &mut trace).unwrap();
        let ids = ids_of(&golden["input_ids"]);
        let txt = model.encode_text_traced(&ids, &mut trace).unwrap();
        let mut compared = 0;
        for (name, ours) in &trace {
            let g = golden.get(name).unwrap_or_else(|| panic!("{case}: golden lacks `{name}`"));
            assert_close(&format!("{case}/{name}"), ours, g, tolerance(&manifest, name));
            compared += 1;
        }
        assert!(compared >= 10, "{case}: only {compared} intermediates compared");
        for (name, ours) in [("image_embeds", &img), ("text_embeds", &txt)] {
            let cos = min_row_cosine(ours, &golden[name]);
            assert!(cos >= 0.99999, "{case}/{name}: cosine {cos}");
        }
        let logits = model.logits(&img, &txt).unwrap();
        assert_close(
            &format!("{case}/logits_per_image"),
            &logits,
            &golden["logits_per_image"],
            tolerance(&manifest, "logits_per_image"),
        );

        // The fast path (sequences trimmed after the last end-of-text) gives the same embeddings.
        let fast = model.encode_text(&ids).unwrap();
        assert_close(&format!("{case}/text_embeds (trimmed)"), &fast, &golden["text_embeds"], 1e-4);
    }
}

#[test]
fn a_batch_equals_its_singles() {
    let dir = fixtures().join("clip/openclip_gelu");
    let golden = load_golden(&dir.join("golden.safetensors"));
    let model = loader::load_model(dir.to_str().unwrap(), None, &Device::Cpu).unwrap().model;
    let px = &golden["pixel_values"];
    let batch = model.encode_image(px).unwrap();
    for i in 0..px.dim(0).unwrap() {
        let one = model.encode_image(&px.narrow(0, i, 1).unwrap()).unwrap();
        assert_close(&format!("image {i}"), &one, &batch.narrow(0, i, 1).unwrap(), 1e-5);
    }
    let ids = ids_of(&golden["input_ids"]);
    let batch = model.encode_text(&ids).unwrap();
    for (i, seq) in ids.iter().enumerate() {
        let one = model.encode_text(std::slice::from_ref(seq)).unwrap();
        assert_close(&format!("text {i}"), &one, &batch.narrow(0, i, 1).unwrap(), 1e-5);
    }
}
