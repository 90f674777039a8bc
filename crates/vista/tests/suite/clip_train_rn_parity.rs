//! CLIP training with a ResNet image tower (open_clip's `ModifiedResNet`, the `RN50` family)
//! against open_clip, goldens from `tools/reference/gen_clip_train_rn.py` →
//! `tests/fixtures/clip_train_rn/`: a tiny random-weight model (stages `[1, 1, 1, 1]` of width 4,
//! 64 px, the attention pool 128 wide in 4 heads) with every BatchNorm weight, bias and running
//! statistic perturbed, so none can be skipped. BatchNorm runs as `model.train()` runs it: each
//! forward normalises by its batch and moves the running statistics, which evaluation uses.
//!
//! | stage | tolerance (max abs, f32) | why |
//! |---|---|---|
//! | features, loss | 1e-5 | f32 sums in another order |
//! | gradients | 1e-5 · max(1, max \|g\|) | as the ViT's: BatchNorm's and the convolutions' backward sum over the batch and the map in another order |
//! | running statistics | 1e-5 | one momentum update of batch means and variances |
//! | two chained AdamW steps | 1e-5 (the text key biases: the steps' lr sum) | as the ViT's chained steps |
//! | evaluation-mode embeddings | 1e-5 | the moved statistics, through the whole tower |

use crate::clip_train_parity::{self, tol_of, Case};
use crate::common;

use std::collections::BTreeSet;

use candle_core::{Device, Tensor};
use vista::train::clip::run::export_open_clip;
use vista::train::clip::{clip_loss, ClipTrainConfig, ClipTrainer, MicroBatch, TrainClip};

fn case() -> Case {
    Case::load(common::fixtures().join("clip_train_rn"))
}

fn trainer(c: &Case, config: ClipTrainConfig) -> ClipTrainer {
    let steps = c.manifest["training"]["total_steps"].as_u64().unwrap() as usize;
    ClipTrainer::new(config, steps, Some(&c.weights), &Device::Cpu).unwrap()
}

fn train_config(c: &Case) -> ClipTrainConfig {
    c.train_config_from(&c.manifest["training"])
}

/// Every running statistic of `state` against `prefix.<name>`.
fn check_running(c: &Case, what: &str, state: &[(String, Tensor)], prefix: &str) {
    let stats: Vec<_> = state.iter().filter(|(n, _)| n.contains(".running_")).collect();
    let want = c.golden.keys().filter(|k| k.starts_with(&format!("{prefix}.")) && k.contains(".running_"));
    assert_eq!(stats.len(), want.count(), "{what}: every running statistic");
    for (n, t) in stats {
        common::assert_close(&format!("{what} {n}"), t, c.g(&format!("{prefix}.{n}")), 1e-5);
    }
}

fn scalar(t: &Tensor) -> f64 {
    clip_train_parity::scalar(t) as f64
}

fn grad_tol(g: &Tensor) -> f32 {
    tol_of(g, 1e-5)
}

#[test]
fn a_training_forward_its_gradients_and_running_statistics_equal_open_clip() {
    let c = case();
    let model = TrainClip::from_tensors(c.config.clone(), &c.weights, &Device::Cpu).unwrap();
    let (pixels, ids) = c.micro("batch0");
    let (img, txt) = model.features(&pixels, &ids).unwrap();
    common::assert_close("image_features", &img, c.g("image_features"), 1e-5);
    common::assert_close("text_features", &txt, c.g("text_features"), 1e-5);
    let loss = clip_loss(&img, &txt, &model.logit_scale().unwrap()).unwrap();
    assert!((scalar(&loss) - scalar(c.g("loss"))).abs() < 1e-5, "loss {} vs {}", scalar(&loss), scalar(c.g("loss")));
    let store = loss.backward().unwrap();
    assert_eq!(model.params().len(), c.manifest["parameters"].as_object().unwrap().len(), "every parameter");
    for p in model.params() {
        let g = store.get(p.var().as_tensor()).unwrap_or_else(|| panic!("`{}` has no gradient", p.name()));
        let want = c.g(&format!("grad.{}", p.name()));
        common::assert_close(&format!("grad.{}", p.name()), g, want, grad_tol(want));
    }
    check_running(&c, "after one training forward", &model.state_dict().unwrap(), "train1");
}

#[test]
fn two_chained_steps_and_the_evaluation_after_them_equal_open_clip() {
    let c = case();
    let mut trainer = trainer(&c, train_config(&c));
    for i in 0..2 {
        let m = trainer.step(&[c.micro(&format!("batch{i}"))]).unwrap();
        let (want_loss, want_norm) =
            (scalar(c.g(&format!("step{i}.loss"))), scalar(c.g(&format!("step{i}.total_norm"))));
        assert!((m.loss - want_loss).abs() < 1e-5, "step {i} loss {} vs {want_loss}", m.loss);
        assert!(
            (m.grad_norm - want_norm).abs() < 1e-5 * want_norm.max(1.0),
            "step {i} norm {} vs {want_norm}",
            m.grad_norm
        );
    }
    let state = trainer.model().state_dict().unwrap();
    for (n, t) in &state {
        let want = c.g(&format!("after2.{n}"));
        if n.ends_with("attn.in_proj_bias") {
            // The key part's gradient is zero in exact arithmetic (softmax ignores a constant
            // shift of a query's scores): rounding noise on both sides, which AdamW's 1/√v turns
            // into steps of up to lr. Held to the sum of the two steps' learning rates, as in
            // `clip_train_parity::check_state`; the query and value parts to 1e-5.
            let w = t.dim(0).unwrap() / 3;
            for (part, start, tol) in [("q", 0, 1e-5), ("k", w, 1.5e-3), ("v", 2 * w, 1e-5)] {
                let (o, g) = (t.narrow(0, start, w).unwrap(), want.narrow(0, start, w).unwrap());
                common::assert_close(&format!("after2.{n} ({part})"), &o, &g, tol);
            }
        } else {
            common::assert_close(&format!("after2.{n}"), t, want, 1e-5);
        }
    }
    check_running(&c, "after two steps", &state, "after2");
    // model.eval(): BatchNorm by the running statistics the steps left.
    let (pixels, _) = c.micro("batch0");
    let eval = trainer.model().detached().encode_image(&pixels).unwrap();
    common::assert_close("eval.image_embeds", &eval, c.g("eval.image_embeds"), 1e-5);
    // And so does the exported model every CLIP command loads.
    let dir = tempfile::tempdir().unwrap();
    export_open_clip(dir.path(), &trainer.config.model, &state).unwrap();
    let loaded = vista::clip::loader::load_model(dir.path().to_str().unwrap(), None, &Device::Cpu).unwrap();
    let nchw = c.g("batch0.images");
    common::assert_close("exported model", &loaded.model.encode_image(nchw).unwrap(), c.g("eval.image_embeds"), 1e-5);
}

#[test]
fn feature_cached_accumulation_moves_the_statistics_as_open_clip() {
    let c = case();
    let trainer = trainer(&c, train_config(&c));
    let (pixels, ids) = c.micro("accum");
    let m = ids.len() / 2;
    let micro: Vec<MicroBatch> =
        (0..2).map(|j| (pixels.narrow(0, j * m, m).unwrap(), ids[j * m..(j + 1) * m].to_vec())).collect();
    let (_, grads) = trainer.gradients(&micro).unwrap();
    for p in trainer.params() {
        let g = grads.get(p.name()).unwrap_or_else(|| panic!("no accumulated gradient for `{}`", p.name()));
        let want = c.g(&format!("accum2.grad.{}", p.name()));
        common::assert_close(&format!("accum2.grad.{}", p.name()), g, want, grad_tol(want));
    }
    // The caching pass runs in training mode too: each micro-batch moved the statistics twice.
    check_running(&c, "after accumulation", &trainer.model().state_dict().unwrap(), "accum2");
}

#[test]
fn the_image_tower_locks_whole_as_open_clip() {
    let c = case();
    let mut config = train_config(&c);
    config.lock_image = Some(0);
    let trainer = ClipTrainer::new(config.clone(), 7, Some(&c.weights), &Device::Cpu).unwrap();
    let frozen: BTreeSet<String> =
        trainer.params().iter().filter(|p| !p.requires_grad()).map(|p| p.name().to_string()).collect();
    let want: BTreeSet<String> =
        c.manifest["lock_image_0"].as_array().unwrap().iter().map(|x| x.as_str().unwrap().to_string()).collect();
    assert_eq!(frozen, want);
    assert!(c.manifest["lock_image_1"].as_str().unwrap().starts_with("AssertionError"), "open_clip refuses it");
    config.lock_image = Some(1);
    let refused = ClipTrainer::new(config, 7, Some(&c.weights), &Device::Cpu).err().expect("refused");
    assert!(refused.to_string().contains("locks whole"), "{refused}");
}

#[test]
fn open_clip_initialisation_rules_for_the_resnet_tower() {
    let c = case();
    let model = TrainClip::init(c.config.clone(), 3, vista::train::clip::LogitInit::CLIP, &Device::Cpu).unwrap();
    let width = c.config.vision.tower.width as f32;
    for p in model.params().iter().filter(|p| p.name().starts_with("visual.")) {
        let v = p.var().as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let n = p.name();
        let max = v.iter().fold(0f32, |m, x| m.max(x.abs()));
        if n.starts_with("visual.layer") && n.ends_with(".bn3.weight") {
            assert!(v.iter().all(|&x| x == 0.0), "{n}: a bottleneck's last BatchNorm starts at zero");
        } else if n.contains(".bn") || n.contains("downsample.1") {
            let want = if n.ends_with(".weight") { 1.0 } else { 0.0 };
            assert!(v.iter().all(|&x| x == want), "{n}: {want}");
        } else if p.var().rank() == 4 {
            let dims = p.var().dims();
            let bound = 1.0 / ((dims[1] * dims[2] * dims[3]) as f32).sqrt();
            assert!(max <= bound && max > 0.5 * bound, "{n}: U(±{bound}), max {max}");
        } else if n.starts_with("visual.attnpool.") && !n.ends_with(".bias") {
            let std = (v.iter().map(|x| x * x).sum::<f32>() / v.len() as f32).sqrt();
            assert!((std * width.sqrt() - 1.0).abs() < 0.1, "{n}: std {std} vs width^-1/2");
        }
    }
    assert_eq!(model.state_dict().unwrap().iter().filter(|(n, _)| n.ends_with(".running_var")).count(), 19);
}

/// Fine-tuning starts from the ResNet CLIPs vista loads — OpenAI's `RN50.pt` layout and an
/// open_clip `RN50x4` folder — with their BatchNorm statistics: evaluated before any step, the
/// trainable model embeds as the inference model does (its golden pixels, native size).
#[test]
fn fine_tuning_starts_from_released_resnet_checkpoints_with_their_statistics() {
    use vista::clip::loader;
    for (case, file) in [("clip_rn50_openai", "model.pt"), ("clip_rn50x4_openclip", "open_clip_model.safetensors")] {
        let path = common::fixtures().join("resnet").join(case).join(file);
        let path = path.to_str().unwrap();
        let (config, tensors, _) = loader::load_tensors(&loader::resolve(path, None).unwrap()).unwrap();
        assert!(tensors.keys().any(|k| k.ends_with(".running_var")), "{case}: statistics read");
        let model = TrainClip::from_tensors(config, &tensors, &Device::Cpu).unwrap();
        let stats = model.running_stats().unwrap();
        assert!(stats.iter().all(|(k, t)| tensors[k].to_vec1::<f32>().unwrap() == t.to_vec1::<f32>().unwrap()));
        let inference = loader::load_model(path, None, &Device::Cpu).unwrap().model;
        let nchw = &common::load_golden(&common::fixtures().join("resnet").join(case).join("golden.safetensors"))
            ["pixel_values"];
        let ours = model.detached().encode_image(&nchw.permute((0, 2, 3, 1)).unwrap().contiguous().unwrap()).unwrap();
        common::assert_close(&format!("{case}: start"), &ours, &inference.encode_image(nchw).unwrap(), 1e-5);
    }
}
