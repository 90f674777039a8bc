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

/// main_dino.py's `utils.LARS` and its `torch.optim.SGD(momentum=0.9)`, as `vista train dino
/// --optimizer lars|sgd` runs them (`train::Momentum` over `get_params_groups`' two groups, the
/// schedule set per step as `train_one_epoch` does): three chained steps, parameters and
/// momentum buffers ≤ 1e-5. A zero tensor takes LARS's fallback trust ratio of one; a zero
/// gradient on a decayed weight makes the decay the whole update.
#[test]
fn lars_and_sgd_match_main_dino_over_three_steps() {
    use vista::train::dino::{get_params_groups, ParamGroup};
    use vista::train::{Grads, Momentum, MomentumRule, Param};
    let dir = fixtures().join("resnet/lars");
    let manifest = manifest(&dir.join("manifest.json"));
    let names = ["conv.weight", "fc.weight", "fc.bias", "bn.weight", "zero.weight"];
    for (file, rule) in [("golden.safetensors", MomentumRule::Lars), ("golden_sgd.safetensors", MomentumRule::Sgd)] {
        let golden = load_golden(&dir.join(file));
        let params: Vec<Param> = names
            .iter()
            .map(|n| {
                Param::new(n.to_string(), candle_core::Var::from_tensor(&golden[&format!("init.{n}")]).unwrap(), true)
            })
            .collect();
        // DINO's own grouping rule gives the reference's groups.
        let groups = get_params_groups(&params);
        let want: Vec<Vec<String>> = ["regularized", "not_regularized"]
            .iter()
            .map(|k| manifest[*k].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect())
            .collect();
        let got: Vec<Vec<String>> = groups.iter().map(|g: &ParamGroup| g.names.clone()).collect();
        assert_eq!(got, want, "{file}: groups");
        let mut opt = Momentum::new(&params, groups, rule).unwrap();
        for (step, s) in manifest["schedule"].as_array().unwrap().iter().enumerate() {
            opt.set_dino_schedule(s["lr"].as_f64().unwrap(), s["weight_decay"].as_f64().unwrap());
            let mut grads = Grads::new();
            for n in names {
                grads.insert(n, golden[&format!("step{step}.grad.{n}")].clone());
            }
            opt.step(&grads).unwrap();
            let buffers: std::collections::HashMap<&str, &Tensor> = opt.buffers().into_iter().collect();
            for (p, n) in params.iter().zip(names) {
                let tag = format!("{file} step {step} {n}");
                assert_close(
                    &format!("{tag} param"),
                    p.var().as_tensor(),
                    &golden[&format!("step{step}.param.{n}")],
                    1e-5,
                );
                assert_close(&format!("{tag} buffer"), buffers[n], &golden[&format!("step{step}.mu.{n}")], 1e-5);
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

/// DINO's ResNet in training, as main_dino.py runs it (BatchNorm in training mode for student and
/// teacher alike): one forward of torchvision's network (planes / 16) on a batch, the gradient of
/// `(features · R).sum()` for every parameter, the running statistics after the forward, and the
/// eval-mode features with them. Tolerances: features 1e-4; each gradient 1e-4 of its tensor's
/// largest magnitude (at least 1e-4: the BatchNorm backward sums over the batch in another order);
/// running statistics 1e-5 relative.
#[test]
fn dino_resnet_trains_as_torchvision_in_train_mode() {
    use vista::train::dino::{ResNetDims, TrainResNet};
    use vista::train::Grads;
    let dir = fixtures().join("resnet/dino_resnet50_train");
    let golden = load_golden(&dir.join("golden.safetensors"));
    let before = vista::weights::formats::read_tensors(&dir.join("before_step.pth"), None, &Device::Cpu).unwrap();
    let dims = ResNetDims { layers: [3, 4, 6, 3], stem: 64, planes: [4, 8, 16, 32] };
    let net = TrainResNet::from_tensors(dims, &before, &Device::Cpu).unwrap();
    let saved = net.running_stats();
    let feats = net.forward(&golden["pixel_values"], true).unwrap();
    assert_close("train features", &feats, &golden["features"], 1e-4);
    let loss = (&feats * &golden["r"]).unwrap().sum_all().unwrap();
    let grads = Grads::from_backward(net.params(), &loss.backward().unwrap());
    assert_eq!(grads.len(), net.params().len(), "every parameter has a gradient");
    for p in net.params() {
        let want = &golden[&format!("grad.{}", p.name())];
        let scale = want.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap().max(1.0);
        assert_close(&format!("grad {}", p.name()), grads.get(p.name()).unwrap(), want, 1e-4 * scale);
    }
    let state: std::collections::HashMap<String, Tensor> = net.state_dict().unwrap().into_iter().collect();
    let mut stats = 0;
    for (name, want) in golden.iter().filter_map(|(k, v)| k.strip_prefix("after.").map(|n| (n, v))) {
        let scale = want.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap().max(1.0);
        assert_close(&format!("running {name}"), &state[name], want, 1e-5 * scale);
        stats += 1;
    }
    assert_eq!(stats, 2 * 53, "every BatchNorm's two running statistics");
    let eval = net.forward(&golden["eval_pixel_values"], false).unwrap();
    assert_close("eval features", &eval, &golden["eval_features"], 1e-4);
    // The exported state dict loads into the inference backbone and gives the same features.
    let tensors: Vec<(String, Tensor)> = net.state_dict().unwrap();
    let mut store = vista::weights::TensorStore::new("<trained>", &Device::Cpu, DType::F32);
    store.insert_as_named(tensors.into_iter().collect(), |_| false);
    let inference = vista::dino::resnet::ResNet::load(&store.root()).unwrap();
    let nhwc = golden["eval_pixel_values"].permute((0, 2, 3, 1)).unwrap().contiguous().unwrap();
    let (_, pooled) = inference.forward_stages(&nhwc).unwrap();
    assert_close("inference features of the trained state", &pooled, &golden["eval_features"], 1e-4);
    // What a failed training step puts back: the statistics from before the forward.
    net.set_running_stats(saved);
    for (name, t) in net.running_stats() {
        let init = if name.ends_with("running_var") { 1.0 } else { 0.0 };
        let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(v.iter().all(|&x| x == init), "{name} not restored");
    }
}
