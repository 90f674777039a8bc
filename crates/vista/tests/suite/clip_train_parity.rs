//! CLIP training against open_clip (`open_clip.model.CLIP`, `open_clip.loss.ClipLoss` /
//! `SigLipLoss`, `open_clip_train.train.train_one_epoch`, `scheduler.py`, `main.py`'s parameter
//! groups, `lock_image_tower` / `lock_text_tower`, wise-ft's `_merge`), goldens from
//! `tools/reference/gen_clip_train.py` → `tests/fixtures/clip_train/`.
//!
//! Two tiny random-weight models in open_clip's naming (`quickgelu`: QuickGELU, 2 + 2 layers;
//! `gelu`: exact GELU, 3 + 2 layers), every LayerNorm and zero-initialised bias perturbed so that
//! none can be skipped. Tolerances (max abs, f32):
//!
//! | stage | tolerance | why |
//! |---|---|---|
//! | features, loss | 1e-5 | f32 sums in another order |
//! | gradients | 1e-5 · max(1, max \|g\|) | the text embeddings' gradients reach ~10 |
//! | three chained AdamW steps (weights, moments) | 1e-5 | AdamW divides by √v, so a gradient's last-bit difference moves a weight by up to ~lr·1e-6 relative |
//! | feature-cached accumulation vs the plain batch | 1e-5 (towers) | the bound; `logit_scale` gets `accum_freq` × its gradient, as in open_clip |
//! | WiSE-FT | 1e-6 | one multiply-add |
//! | schedules | 1e-12 | f64 formulas |

use crate::common;

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use serde_json::Value;
use vista::clip::ClipConfig;
use vista::train::clip::{
    clip_loss, lock_image_tower, lock_text_tower, param_groups, siglip_loss, wise_ft, ClipTrainConfig, ClipTrainer,
    LogitInit, LrSchedule, MicroBatch, TrainClip,
};

const CONFIGS: [&str; 2] = ["quickgelu", "gelu"];

/// One fixture folder: the model, its config, the goldens and the manifest (also read by
/// `clip_train_rn_parity`).
pub(crate) struct Case {
    pub dir: PathBuf,
    pub config: ClipConfig,
    pub weights: HashMap<String, Tensor>,
    pub golden: HashMap<String, Tensor>,
    pub manifest: Value,
}

fn case(name: &str) -> Case {
    Case::load(common::fixtures().join("clip_train").join(name))
}

fn top_manifest() -> Value {
    common::manifest(&common::fixtures().join("clip_train/manifest.json"))
}

impl Case {
    pub fn load(dir: PathBuf) -> Self {
        Case {
            config: ClipConfig::from_open_clip_json(&dir.join("open_clip_config.json")).unwrap(),
            weights: common::load_golden(&dir.join("model.safetensors")),
            golden: common::load_golden(&dir.join("golden.safetensors")),
            manifest: common::manifest(&dir.join("manifest.json")),
            dir,
        }
    }

    pub fn g(&self, key: &str) -> &Tensor {
        self.golden.get(key).unwrap_or_else(|| panic!("{}: no golden `{key}`", self.dir.display()))
    }

    /// NCHW images → channels-last.
    fn images(&self, key: &str) -> Tensor {
        self.g(key).permute((0, 2, 3, 1)).unwrap().contiguous().unwrap()
    }

    fn texts(&self, key: &str) -> Vec<Vec<u32>> {
        let t = self.g(key).to_dtype(DType::I64).unwrap().to_vec2::<i64>().unwrap();
        t.into_iter().map(|r| r.into_iter().map(|x| x as u32).collect()).collect()
    }

    pub fn micro(&self, prefix: &str) -> MicroBatch {
        (self.images(&format!("{prefix}.images")), self.texts(&format!("{prefix}.texts")))
    }

    fn model(&self) -> TrainClip {
        TrainClip::from_tensors(self.config.clone(), &self.weights, &Device::Cpu).unwrap()
    }

    /// The recipe of the golden loop: cosine_lr(1e-3, warmup 2, 7 steps), AdamW(β 0.9/0.98,
    /// ε 1e-6, wd 0.2), clip_grad_norm 20.
    fn train_config(&self) -> ClipTrainConfig {
        self.train_config_from(&top_manifest()["training"])
    }

    /// The recipe a manifest's `training` entry names.
    pub fn train_config_from(&self, t: &Value) -> ClipTrainConfig {
        let mut c = ClipTrainConfig::new(self.config.clone());
        c.epochs = 1;
        c.batch_size = t["batch"].as_u64().unwrap() as usize;
        c.lr = t["lr"].as_f64().unwrap();
        c.weight_decay = t["weight_decay"].as_f64().unwrap();
        c.betas = (t["betas"][0].as_f64().unwrap(), t["betas"][1].as_f64().unwrap());
        c.eps = t["eps"].as_f64().unwrap();
        c.warmup = t["warmup"].as_u64().unwrap() as usize;
        c.grad_clip_norm = t["grad_clip_norm"].as_f64();
        c
    }

    fn trainer(&self, config: ClipTrainConfig, weights: &HashMap<String, Tensor>) -> ClipTrainer {
        let steps = top_manifest()["training"]["total_steps"].as_u64().unwrap() as usize;
        ClipTrainer::new(config, steps, Some(weights), &Device::Cpu).unwrap()
    }
}

pub(crate) fn scalar(t: &Tensor) -> f32 {
    t.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()[0]
}

/// `rel` of the tensor's largest magnitude, at least `rel`.
pub(crate) fn tol_of(g: &Tensor, rel: f32) -> f32 {
    rel * g.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap().max(1.0)
}

fn grad_tol(g: &Tensor) -> f32 {
    tol_of(g, 1e-5)
}

#[test]
fn features_loss_and_every_gradient_equal_open_clip() {
    for name in CONFIGS {
        let c = case(name);
        let model = c.model();
        let (pixels, ids) = c.micro("batch0");
        let (img, txt) = model.features(&pixels, &ids).unwrap();
        common::assert_close(&format!("{name} image_features"), &img, c.g("image_features"), 1e-5);
        common::assert_close(&format!("{name} text_features"), &txt, c.g("text_features"), 1e-5);
        assert!(
            (model.logit_scale().unwrap().exp().unwrap().to_scalar::<f32>().unwrap() - scalar(c.g("logit_scale")))
                .abs()
                < 1e-5
        );
        let loss = clip_loss(&img, &txt, &model.logit_scale().unwrap()).unwrap();
        assert!(
            (scalar(&loss) - scalar(c.g("loss"))).abs() < 1e-5,
            "{name} loss {} vs {}",
            scalar(&loss),
            scalar(c.g("loss"))
        );
        let store = loss.backward().unwrap();
        for p in model.params() {
            let g = store.get(p.var().as_tensor()).unwrap_or_else(|| panic!("{name}: `{}` has no gradient", p.name()));
            let want = c.g(&format!("grad.{}", p.name()));
            common::assert_close(&format!("{name} grad.{}", p.name()), g, want, grad_tol(want));
        }
    }
}

#[test]
fn siglip_loss_and_gradients_equal_open_clip() {
    let c = case("quickgelu");
    let mut weights = c.weights.clone();
    let init = LogitInit::SIGLIP;
    weights.insert("logit_scale".into(), Tensor::new(init.scale as f32, &Device::Cpu).unwrap());
    weights.insert("logit_bias".into(), Tensor::new(init.bias.unwrap() as f32, &Device::Cpu).unwrap());
    let model = TrainClip::from_tensors(c.config.clone(), &weights, &Device::Cpu).unwrap();
    let (pixels, ids) = c.micro("batch0");
    let (img, txt) = model.features(&pixels, &ids).unwrap();
    let loss = siglip_loss(&img, &txt, &model.logit_scale().unwrap(), &model.logit_bias().unwrap().unwrap()).unwrap();
    assert!(
        (scalar(&loss) - scalar(c.g("siglip.loss"))).abs() < 1e-4,
        "{} vs {}",
        scalar(&loss),
        scalar(c.g("siglip.loss"))
    );
    let store = loss.backward().unwrap();
    for p in model.params() {
        let g = store.get(p.var().as_tensor()).unwrap_or_else(|| panic!("`{}` has no gradient", p.name()));
        let want = c.g(&format!("siglip.grad.{}", p.name()));
        common::assert_close(&format!("siglip grad.{}", p.name()), g, want, 1e-4 * grad_tol(want) / 1e-5);
    }
}

#[test]
fn parameter_groups_equal_main_py() {
    for name in CONFIGS {
        let c = case(name);
        let model = c.model();
        let groups = param_groups(model.params(), 0.2);
        let names =
            |v: &Value| v.as_array().unwrap().iter().map(|x| x.as_str().unwrap().to_string()).collect::<Vec<_>>();
        assert_eq!(groups[0].names, names(&c.manifest["groups"]["no_decay"]), "{name} no-decay group");
        assert_eq!(groups[1].names, names(&c.manifest["groups"]["decay"]), "{name} decay group");
        assert_eq!(groups[0].weight_decay, Some(0.0));
        assert_eq!(groups[1].weight_decay, Some(0.2));
    }
}

#[test]
fn schedules_equal_scheduler_py() {
    let s = &top_manifest()["schedule"];
    let base = s["base_lr"].as_f64().unwrap();
    let warmup = s["warmup_length"].as_u64().unwrap() as usize;
    let steps = s["steps"].as_u64().unwrap() as usize;
    let cooldown = LrSchedule::ConstCooldown {
        cooldown_steps: s["cooldown_steps"].as_u64().unwrap() as usize,
        power: s["cooldown_power"].as_f64().unwrap(),
        end_lr: s["cooldown_end_lr"].as_f64().unwrap(),
    };
    for (key, sched) in
        [("cosine_lr", LrSchedule::Cosine), ("const_lr", LrSchedule::Const), ("const_lr_cooldown", cooldown)]
    {
        for (step, want) in s[key].as_array().unwrap().iter().enumerate() {
            let got = sched.lr(base, warmup, steps, step);
            assert!((got - want.as_f64().unwrap()).abs() < 1e-12, "{key} step {step}: {got} vs {want}");
        }
    }
}

/// Compares every parameter with `prefix.<name>`.
///
/// One block is held to a looser bound: the key part of each `attn.in_proj_bias`. Its gradient
/// is zero in exact arithmetic (a bias added to every key shifts each query's scores by a
/// constant, which softmax ignores), so both sides' gradients there are rounding noise
/// (~1e-9), and AdamW, which divides by √v, turns noise into steps of up to `lr`. Those entries
/// are only held to the sum of the learning rates of the steps taken (`lr_sum`).
fn check_state(name: &str, trainer: &ClipTrainer, c: &Case, prefix: &str, tol: f32, lr_sum: f32) {
    for p in trainer.params() {
        let want = c.g(&format!("{prefix}.{}", p.name()));
        let ours = p.var().as_detached_tensor();
        let what = format!("{name} {prefix}.{}", p.name());
        if p.name().ends_with("attn.in_proj_bias") {
            let w = want.dim(0).unwrap() / 3;
            for (part, start) in [("q", 0), ("v", 2 * w)] {
                let (o, g) = (ours.narrow(0, start, w).unwrap(), want.narrow(0, start, w).unwrap());
                common::assert_close(&format!("{what} ({part})"), &o, &g, tol);
            }
            let (o, g) = (ours.narrow(0, w, w).unwrap(), want.narrow(0, w, w).unwrap());
            common::assert_close(&format!("{what} (k, zero gradient)"), &o, &g, lr_sum);
        } else {
            common::assert_close(&what, &ours, want, tol);
        }
    }
}

#[test]
fn three_chained_steps_equal_train_one_epoch() {
    for name in CONFIGS {
        let c = case(name);
        let mut trainer = c.trainer(c.train_config(), &c.weights);
        for i in 0..3 {
            let m = trainer.step(&[c.micro(&format!("batch{i}"))]).unwrap();
            let want_loss = scalar(c.g(&format!("step{i}.loss"))) as f64;
            let want_norm = scalar(c.g(&format!("step{i}.total_norm"))) as f64;
            let want_lr = c.manifest["steps"]["lr"][i].as_f64().unwrap();
            assert!((m.loss - want_loss).abs() < 1e-5, "{name} step {i} loss {} vs {want_loss}", m.loss);
            assert!(
                (m.grad_norm - want_norm).abs() < 1e-5 * want_norm,
                "{name} step {i} norm {} vs {want_norm}",
                m.grad_norm
            );
            assert!((m.lr - want_lr).abs() < 1e-12, "{name} step {i} lr");
            if i == 0 {
                check_state(name, &trainer, &c, "after1", 1e-5, 5e-4);
            }
        }
        check_state(name, &trainer, &c, "after3", 1e-5, 2.5e-3);
        let opt = trainer_moments(&trainer);
        for (pname, m, v) in opt {
            common::assert_close(&format!("{name} exp_avg.{pname}"), &m, c.g(&format!("after3.exp_avg.{pname}")), 1e-5);
            common::assert_close(
                &format!("{name} exp_avg_sq.{pname}"),
                &v,
                c.g(&format!("after3.exp_avg_sq.{pname}")),
                1e-5,
            );
        }
    }
}

fn trainer_moments(t: &ClipTrainer) -> Vec<(String, Tensor, Tensor)> {
    t.optimizer().state_entries().into_iter().map(|(n, _, m, v)| (n.to_string(), m.clone(), v.clone())).collect()
}

#[test]
fn the_logit_scale_clamp_equals_open_clip() {
    let c = case("quickgelu");
    let mut weights = c.weights.clone();
    weights.insert("logit_scale".into(), c.g("clamp.before").reshape(()).unwrap());
    let mut trainer = c.trainer(c.train_config(), &weights);
    trainer.step(&[c.micro("clamp")]).unwrap();
    let after = trainer.model().logit_scale().unwrap().to_scalar::<f32>().unwrap();
    assert_eq!(after, scalar(c.g("clamp.after")), "clamped to log(100) in f32");
    assert!(scalar(c.g("clamp.unclamped")) > after, "the step alone went past the clamp");
}

#[test]
fn feature_cached_accumulation_equals_the_plain_batch() {
    for name in CONFIGS {
        let c = case(name);
        let trainer = c.trainer(c.train_config(), &c.weights);
        let (pixels, ids) = c.micro("accum");
        for freq in [2usize, 4] {
            let m = ids.len() / freq;
            let micro: Vec<MicroBatch> =
                (0..freq).map(|j| (pixels.narrow(0, j * m, m).unwrap(), ids[j * m..(j + 1) * m].to_vec())).collect();
            let (_, grads) = trainer.gradients(&micro).unwrap();
            for p in trainer.params() {
                let g =
                    grads.get(p.name()).unwrap_or_else(|| panic!("{name}: no accumulated gradient for `{}`", p.name()));
                let open_clip = c.g(&format!("accum{freq}.grad.{}", p.name()));
                common::assert_close(
                    &format!("{name} accum{freq}.grad.{}", p.name()),
                    g,
                    open_clip,
                    grad_tol(open_clip),
                );
                if !p.name().starts_with("logit_") {
                    let plain = c.g(&format!("plain8.grad.{}", p.name()));
                    common::assert_close(
                        &format!("{name} accum{freq} vs plain8 {}", p.name()),
                        g,
                        plain,
                        grad_tol(plain),
                    );
                }
            }
        }
    }
}

fn frozen(model: &TrainClip) -> BTreeSet<String> {
    model.params().iter().filter(|p| !p.requires_grad()).map(|p| p.name().to_string()).collect()
}

fn listed(v: &Value) -> BTreeSet<String> {
    v.as_array().unwrap().iter().map(|x| x.as_str().unwrap().to_string()).collect()
}

#[test]
fn tower_locks_freeze_what_open_clip_freezes() {
    for name in CONFIGS {
        let c = case(name);
        for n in 0..3usize {
            let mut model = c.model();
            lock_image_tower(model.params_mut(), c.config.vision.tower.layers, n);
            assert_eq!(frozen(&model), listed(&c.manifest["lock_image"][n.to_string()]), "{name} lock_image({n})");
            let mut model = c.model();
            lock_text_tower(model.params_mut(), c.config.text.tower.layers, n);
            if let Some(want) = c.manifest["lock_text"].get(n.to_string()) {
                assert_eq!(frozen(&model), listed(want), "{name} lock_text({n})");
            }
        }
    }
}

#[test]
fn lit_training_leaves_the_locked_tower_bit_identical() {
    for name in CONFIGS {
        let c = case(name);
        let mut config = c.train_config();
        config.lock_image = Some(1);
        let mut trainer = c.trainer(config, &c.weights);
        for i in 0..3 {
            trainer.step(&[c.micro(&format!("batch{i}"))]).unwrap();
        }
        check_state(name, &trainer, &c, "lit1.after3", 1e-5, 2.5e-3);
        for p in trainer.params().iter().filter(|p| !p.requires_grad()) {
            let now = p.var().as_detached_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let start = c.weights[p.name()].flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert!(
                now.iter().zip(&start).all(|(a, b)| a.to_bits() == b.to_bits()),
                "{name}: locked `{}` changed",
                p.name()
            );
        }
        assert_eq!(frozen(trainer.model()), listed(&c.manifest["lit1"]["locked"]), "{name} LiT frozen set");
    }
}

#[test]
fn wise_ft_equals_the_reference_merge() {
    let c = case("quickgelu");
    let names: Vec<String> = c.model().params().iter().map(|p| p.name().to_string()).collect();
    let theta0: Vec<(String, Tensor)> = names.iter().map(|n| (n.clone(), c.weights[n].clone())).collect();
    let theta1: Vec<(String, Tensor)> =
        names.iter().map(|n| (n.clone(), c.g(&format!("after3.{n}")).clone())).collect();
    for alpha in [0.5, 0.3] {
        let merged = wise_ft(&theta0, &theta1, alpha).unwrap();
        for (n, t) in &merged {
            common::assert_close(&format!("wise{alpha}.{n}"), t, c.g(&format!("wise{alpha}.{n}")), 1e-6);
        }
    }
    assert!(wise_ft(&theta0, &theta1, 1.5).is_err());
}

/// open_clip's initialisation rules, checked statistically: per parameter, the mean and standard
/// deviation of vista's draws against the rule's (and open_clip's measured, `init_stats.json`),
/// within 5 standard errors.
#[test]
fn initialisation_follows_open_clip_rules() {
    let stats = common::manifest(&common::fixtures().join("clip_train/init_stats.json"));
    let dir = tempfile::tempdir().unwrap();
    let cfg_path = dir.path().join("open_clip_config.json");
    std::fs::write(&cfg_path, serde_json::to_string(&serde_json::json!({"model_cfg": stats["config"]})).unwrap())
        .unwrap();
    let config = ClipConfig::from_open_clip_json(&cfg_path).unwrap();
    let model = TrainClip::init(config, 0, LogitInit::CLIP, &Device::Cpu).unwrap();
    let params = stats["parameters"].as_object().unwrap();
    assert_eq!(params.len(), model.params().len());
    for p in model.params() {
        let s = &params[p.name()];
        let v = p.var().as_detached_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        let std = if v.len() > 1 {
            (v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
        } else {
            0.0
        };
        let (want_mean, want_std) = (s["expected_mean"].as_f64().unwrap(), s["expected_std"].as_f64().unwrap());
        if want_std == 0.0 {
            assert!((mean - want_mean).abs() < 1e-6 && std < 1e-9, "{}: {mean} ± {std}, rule {}", p.name(), s["rule"]);
            continue;
        }
        let se = want_std / n.sqrt();
        assert!((mean - want_mean).abs() < 5.0 * se + 1e-7, "{}: mean {mean} vs {want_mean} ({})", p.name(), s["rule"]);
        assert!(
            (std - want_std).abs() < 5.0 * want_std / (2.0 * (n - 1.0)).sqrt(),
            "{}: std {std} vs {want_std} ({})",
            p.name(),
            s["rule"]
        );
    }
}
