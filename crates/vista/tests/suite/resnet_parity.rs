//! The CNN encoders equal their references on committed tiny random-weight checkpoints
//! (`tools/reference/gen_resnet.py`): CLIP's `ModifiedResNet` (open_clip `modified_resnet.py`) with
//! RN50's and RN50x4's stage depths, in OpenAI's release naming (architecture inferred from the
//! shapes) and in open_clip's layout, at the native input size and another one.
//!
//! Tolerances (float32; our convolutions are im2col GEMMs that sum in another order than
//! PyTorch's): every stage's activations 1e-4 max abs, embeddings cosine ≥ 0.99999, logits 1e-3
//! (a factor exp(logit_scale) ≈ 19 on cosines).

use candle_core::{DType, Device, Tensor};

use crate::common::*;
use vista::clip::loader;
use vista::weights::clip::ClipFamily;

fn ids_of(t: &Tensor) -> Vec<Vec<u32>> {
    let rows = t.to_dtype(DType::I64).unwrap().to_vec2::<i64>().unwrap();
    rows.into_iter().map(|r| r.into_iter().map(|x| x as u32).collect()).collect()
}

#[test]
fn clip_resnet_towers_match_open_clip_at_native_and_other_sizes() {
    for (case, file, other, depths) in [
        ("clip_rn50_openai", "model.pt", 96, [3, 4, 6, 3]),
        ("clip_rn50x4_openclip", "open_clip_model.safetensors", 100, [4, 6, 10, 6]),
    ] {
        let dir = fixtures().join("resnet").join(case);
        let loaded = loader::load_model(dir.join(file).to_str().unwrap(), None, &Device::Cpu).unwrap();
        assert_eq!(loaded.family, ClipFamily::OpenClip, "{case}");
        assert!(loaded.report.unused.is_empty(), "{case}: unused {:?}", loaded.report.unused);
        let model = &loaded.model;
        let rn = model.config().vision.resnet.unwrap_or_else(|| panic!("{case}: not read as a ResNet"));
        assert_eq!(rn.layers, depths, "{case}: stage depths");
        for golden_file in ["golden.safetensors".to_string(), format!("golden_{other}.safetensors")] {
            let golden = load_golden(&dir.join(&golden_file));
            let tag = format!("{case}/{golden_file}");
            let mut trace = Vec::new();
            let img = model.encode_image_traced(&golden["pixel_values"], &mut trace).unwrap();
            let names: Vec<&str> = trace.iter().map(|(n, _)| n.as_str()).collect();
            assert_eq!(
                names,
                ["vision.stem", "vision.layer1", "vision.layer2", "vision.layer3", "vision.layer4", "image_embeds"],
                "{tag}"
            );
            for (name, ours) in &trace {
                assert_close(&format!("{tag}/{name}"), ours, &golden[name.as_str()], 1e-4);
            }
            let cos = min_row_cosine(&img, &golden["image_embeds"]);
            assert!(cos >= 0.99999, "{tag}: image cosine {cos}");
            let txt = model.encode_text(&ids_of(&golden["input_ids"])).unwrap();
            let cos = min_row_cosine(&txt, &golden["text_embeds"]);
            assert!(cos >= 0.99999, "{tag}: text cosine {cos}");
            let logits = model.logits(&img, &txt).unwrap();
            assert_close(&format!("{tag}/logits"), &logits, &golden["logits_per_image"], 1e-3);
        }
    }
}

#[test]
fn clip_resnet_batches_equal_singles_and_the_device_path_agrees() {
    let dir = fixtures().join("resnet/clip_rn50x4_openclip");
    let golden = load_golden(&dir.join("golden_100.safetensors"));
    let model = loader::load_model(dir.to_str().unwrap(), None, &Device::Cpu).unwrap().model;
    let px = &golden["pixel_values"];
    let batch = model.encode_image(px).unwrap();
    for i in 0..2 {
        let one = model.encode_image(&px.narrow(0, i, 1).unwrap()).unwrap();
        assert_close(&format!("image {i}"), &one, &batch.narrow(0, i, 1).unwrap(), 1e-5);
    }
    // The candle-op path every other device runs (convolutions, pools, the attention pool).
    let portable = vista::nn::cpu::with_portable_paths(|| model.encode_image(px).unwrap());
    assert_close("portable path", &portable, &batch, 1e-4);
}

/// torchvision's ResNet (DINO's `resnet50` with `fc` = identity): every stage ≤ 1e-4 and the
/// pooled features ≤ 1e-4, from DINO's release file and from a training checkpoint's teacher, at
/// two input sizes (one not square); through the pipeline, the pooled feature is the CLS token.
#[test]
fn dino_resnet50_matches_torchvision() {
    use vista::dino::{loader as dino_loader, Backbone, LoadOptions};
    let dir = fixtures().join("resnet/dino_resnet50");
    for file in ["dino_resnet50_pretrain.pth", "checkpoint.pth"] {
        let files = dino_loader::resolve(dir.join(file).to_str().unwrap()).unwrap();
        let loaded = dino_loader::load_backbone(&files, &LoadOptions::default()).unwrap();
        assert!(loaded.report.unused.is_empty(), "{file}: unused {:?}", loaded.report.unused);
        let Backbone::ResNet(net) = &loaded.model else { panic!("{file}: not read as a ResNet") };
        assert_eq!(net.depths(), [3, 4, 6, 3], "{file}");
        for golden_file in ["golden.safetensors", "golden_72x88.safetensors"] {
            let golden = load_golden(&dir.join(golden_file));
            let tag = format!("{file}/{golden_file}");
            let nhwc = golden["pixel_values"].permute((0, 2, 3, 1)).unwrap().contiguous().unwrap();
            let (stages, feats) = net.forward_stages(&nhwc).unwrap();
            assert_eq!(stages.len(), 5, "{tag}");
            for (name, ours) in &stages {
                assert_close(&format!("{tag}/{name}"), ours, &golden[name.as_str()], 1e-4);
            }
            assert_close(&format!("{tag}/features"), &feats, &golden["features"], 1e-4);
            let out = loaded.model.forward(&nhwc, false, false).unwrap();
            assert_close(&format!("{tag}/cls"), &out.cls().unwrap(), &golden["features"], 1e-4);
            let (h, w) = out.grid;
            assert_eq!(out.patches().unwrap().dims(), &[2, h * w, net.embed_dim()], "{tag}: patch tokens");
        }
    }
    // A ViT architecture named for a ResNet file is refused, naming both.
    let files = dino_loader::resolve(dir.join("dino_resnet50_pretrain.pth").to_str().unwrap()).unwrap();
    let options = LoadOptions { arch: Some("dino_vits16".into()), ..Default::default() };
    let err = dino_loader::load_backbone(&files, &options).err().expect("refused").to_string();
    assert!(err.contains("dino_vits16") && err.contains("ResNet"), "{err}");
}

/// main_dino.py's `utils.LARS`, three chained steps on two parameter groups (weights with decay,
/// 1-D tensors without; a zero tensor and a zero update take the trust ratio's fallback of one):
/// parameters and momentum buffers ≤ 1e-5.
#[test]
fn lars_matches_main_dino_over_three_steps() {
    use vista::optim::lars::{update, LarsConfig};
    let dir = fixtures().join("resnet/lars");
    let golden = load_golden(&dir.join("golden.safetensors"));
    let manifest = manifest(&dir.join("manifest.json"));
    let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let regularized: Vec<String> =
        manifest["regularized"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
    let names = ["conv.weight", "fc.weight", "fc.bias", "bn.weight", "zero.weight"];
    let mut params: Vec<Vec<f32>> = names.iter().map(|n| flat(&golden[&format!("init.{n}")])).collect();
    let mut mu: Vec<Vec<f32>> = params.iter().map(|p| vec![0.0; p.len()]).collect();
    let cfg = LarsConfig::default();
    for (step, s) in manifest["schedule"].as_array().unwrap().iter().enumerate() {
        let (lr, wd) = (s["lr"].as_f64().unwrap(), s["weight_decay"].as_f64().unwrap());
        for (i, n) in names.iter().enumerate() {
            let g = flat(&golden[&format!("step{step}.grad.{n}")]);
            let ndim = golden[&format!("init.{n}")].rank();
            let decay = if regularized.iter().any(|r| r == n) { wd } else { 0.0 };
            update(&mut params[i], &g, &mut mu[i], ndim, lr, decay, &cfg);
            for (what, ours) in [("param", &params[i]), ("mu", &mu[i])] {
                let want = flat(&golden[&format!("step{step}.{what}.{n}")]);
                let worst = ours.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                assert!(worst <= 1e-5, "step {step} {what} {n}: {worst:e}");
            }
        }
    }
}

/// A ResNet CLIP goes wherever a CLIP goes: the pipeline behind `embed`, `classify`, `index` and
/// `search` embeds image files with it (preprocessed at the checkpoint's 64 px), normalised. (Built
/// by hand: `ClipPipeline::load` refuses the fixture's 1,000-token vocabulary, rightly.)
#[test]
fn a_resnet_clip_embeds_image_files_through_the_pipeline() {
    use vista::clip::pipeline::{preprocess_for, tokenizer_for};
    let dir = fixtures().join("resnet/clip_rn50x4_openclip");
    let refused = vista::clip::ClipPipeline::load(dir.to_str().unwrap(), None, &Device::Cpu).err().unwrap();
    assert!(refused.to_string().contains("1000 tokens"), "{refused}");
    let loaded = loader::load_model(dir.to_str().unwrap(), None, &Device::Cpu).unwrap();
    let pipeline = vista::clip::ClipPipeline {
        preprocess: preprocess_for(loaded.model.config()),
        tokenizer: tokenizer_for(loaded.family, None).unwrap(),
        model: loaded.model,
        decode: Default::default(),
        family: loaded.family,
        report: loaded.report,
    };
    let images = ["astronaut.png", "synth_tall_19x64.png"].map(|f| fixtures().join("preprocess").join(f));
    let out = pipeline.embed_files(&images, 2, |_| {});
    for (path, e) in images.iter().zip(&out) {
        let v = e.embedding.as_ref().unwrap_or_else(|err| panic!("{}: {err}", path.display()));
        assert_eq!(v.len(), 24);
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "{}: norm {norm}", path.display());
    }
    let single = pipeline.embed_file(&images[0]).unwrap();
    let batched = out[0].embedding.as_ref().unwrap();
    assert!(single.iter().zip(batched).all(|(a, b)| (a - b).abs() < 1e-5));
}
