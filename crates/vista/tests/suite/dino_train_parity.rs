//! DINO's training step against PyTorch (facebookresearch/dino's `DINOHead`, `DINOLoss`,
//! `utils.get_params_groups` / `clip_gradients` / `cancel_gradients_last_layer`,
//! `torch.optim.AdamW` and the EMA of `train_one_epoch`, reproduced in
//! `tools/reference/gen_dino_loss.py` → `tests/fixtures/dino_loss/`).
//!
//! Three cases: `nll1` (`norm_last_layer = True`, last layer frozen while epoch < 2), `nll0`
//! (`norm_last_layer = False`, trainable `weight_g`, no freeze) and `bn1` (as `nll1`, with
//! `use_bn_in_head`: a training-mode BatchNorm1d after each hidden layer, running statistics
//! checked after every chained forward); head 16 → 32 → 32 → 8 → 24,
//! 2 + 3 crops of a batch of 4, three iterations at epochs 1, 1, 2 (teacher temperature warmup
//! 0.04 → 0.07 over 3 epochs: 0.055, 0.055, 0.07).
//!
//! Each stage is tested in isolation from the reference's inputs to that stage, then the whole
//! three-iteration loop is chained on our own values. Tolerances (max abs, f32):
//!
//! | stage                                  | tolerance |
//! |----------------------------------------|-----------|
//! | head outputs, loss, diagnostics, grads | 1e-5      |
//! | clipped gradients and norms, centre    | 1e-6 (norms: 1e-6 relative) |
//! | AdamW parameters and moments           | 1e-6      |
//! | EMA teacher                            | 1e-6      |
//! | three chained iterations               | 1e-5      |

use crate::common;

use std::collections::HashMap;

use candle_core::{Device, Tensor, Var};
use serde_json::Value;
use vista::train::batch_norm::BatchNorms;
use vista::train::dino::{
    cancel_gradients_last_layer, clip_gradients, ema_update, get_params_groups, AdamW, AdamWConfig, DinoHead,
    DinoHeadConfig, DinoLoss, DinoLossConfig, Grads,
};

const TOL_FORWARD: f32 = 1e-5;
const TOL_GRAD: f32 = 1e-5;
const TOL_CLIP: f32 = 1e-6;
const TOL_CENTER: f32 = 1e-6;
const TOL_ADAMW: f32 = 1e-6;
const TOL_EMA: f32 = 1e-6;
const TOL_CHAIN: f32 = 1e-5;

const CASES: [&str; 3] = ["nll1", "nll0", "bn1"];

struct Case {
    name: &'static str,
    golden: HashMap<String, Tensor>,
    manifest: Value,
}

impl Case {
    fn load(name: &'static str) -> Self {
        let dir = common::fixtures().join("dino_loss");
        Self {
            name,
            golden: common::load_golden(&dir.join(format!("{name}.safetensors"))),
            manifest: common::manifest(&dir.join("manifest.json")),
        }
    }

    fn t(&self, key: &str) -> &Tensor {
        self.golden.get(key).unwrap_or_else(|| panic!("{}: no golden `{key}`", self.name))
    }

    fn scalar(&self, key: &str) -> f32 {
        self.t(key).to_scalar::<f32>().unwrap()
    }

    fn cfg(&self) -> &Value {
        &self.manifest["config"]
    }

    fn meta(&self) -> &Value {
        &self.manifest["cases"][self.name]
    }

    fn iteration(&self, k: usize) -> &Value {
        &self.meta()["iterations"][k]
    }

    fn n_iters(&self) -> usize {
        self.meta()["iterations"].as_array().unwrap().len()
    }

    fn head_cfg(&self, norm_last_layer: bool) -> DinoHeadConfig {
        let c = self.cfg();
        let u = |k: &str| c[k].as_u64().unwrap() as usize;
        DinoHeadConfig {
            in_dim: u("in_dim"),
            out_dim: u("out_dim"),
            norm_last_layer,
            nlayers: u("nlayers"),
            hidden_dim: u("hidden_dim"),
            bottleneck_dim: u("bottleneck_dim"),
            use_bn: self.meta()["use_bn"].as_bool().unwrap_or(false),
        }
    }

    /// Tensors `<prefix><name>` for every head parameter name.
    fn params_with_prefix(&self, prefix: &str) -> HashMap<String, Tensor> {
        self.golden.iter().filter_map(|(k, v)| k.strip_prefix(prefix).map(|n| (n.to_string(), v.clone()))).collect()
    }

    fn student(&self) -> DinoHead {
        let nll = self.meta()["norm_last_layer"].as_bool().unwrap();
        DinoHead::from_tensors(self.head_cfg(nll), &self.params_with_prefix("student.")).unwrap()
    }

    /// main_dino.py: the teacher head has `norm_last_layer`'s default (True) and no gradients.
    fn teacher(&self) -> DinoHead {
        let mut t = DinoHead::from_tensors(self.head_cfg(true), &self.params_with_prefix("teacher.")).unwrap();
        t.set_requires_grad(false);
        t
    }

    fn loss_fn(&self) -> DinoLoss {
        let c = self.cfg();
        let f = |k: &str| c[k].as_f64().unwrap();
        let u = |k: &str| c[k].as_u64().unwrap() as usize;
        let mut cfg = DinoLossConfig::new(
            u("out_dim"),
            u("ncrops"),
            f("warmup_teacher_temp"),
            f("teacher_temp"),
            u("warmup_teacher_temp_epochs"),
            u("nepochs"),
        );
        cfg.student_temp = f("student_temp");
        cfg.center_momentum = f("center_momentum");
        let mut loss = DinoLoss::new(cfg, &Device::Cpu).unwrap();
        loss.set_center(self.t("center_init")).unwrap();
        loss
    }

    /// The golden gradients `<prefix><name>` in parameter order.
    fn grads(&self, prefix: &str) -> Grads {
        let mut g = Grads::new();
        for n in self.meta()["parameters"].as_array().unwrap() {
            let n = n.as_str().unwrap();
            if let Some(t) = self.golden.get(&format!("{prefix}{n}")) {
                g.insert(n, t.clone());
            }
        }
        g
    }

    fn bias_before_batch_norm(&self, name: &str) -> bool {
        bias_before_batch_norm(&self.head_cfg(true), name)
    }

    fn epoch(&self, k: usize) -> usize {
        self.iteration(k)["epoch"].as_u64().unwrap() as usize
    }

    fn f(&self, k: usize, key: &str) -> f64 {
        self.iteration(k)[key].as_f64().unwrap()
    }

    fn freeze(&self) -> usize {
        self.meta()["freeze_last_layer"].as_u64().unwrap() as usize
    }

    fn clip(&self) -> f64 {
        self.cfg()["clip"].as_f64().unwrap()
    }

    fn adamw_config(&self) -> AdamWConfig {
        let a = &self.cfg()["adamw"];
        assert!(!a["amsgrad"].as_bool().unwrap());
        let b = a["betas"].as_array().unwrap();
        AdamWConfig { betas: (b[0].as_f64().unwrap(), b[1].as_f64().unwrap()), eps: a["eps"].as_f64().unwrap() }
    }
}

/// A hidden linear layer's bias followed by a BatchNorm (`use_bn`): `mlp.0.bias`, `mlp.3.bias`, …
/// (`nn.Sequential`'s numbering, spelled out here rather than taken from the head under test).
fn bias_before_batch_norm(cfg: &DinoHeadConfig, name: &str) -> bool {
    cfg.use_bn && (0..cfg.nlayers.saturating_sub(1)).any(|i| name == format!("mlp.{}.bias", 3 * i))
}

fn scalar_close(name: &str, ours: f32, golden: f32, tol: f32) -> f32 {
    let d = (ours - golden).abs();
    assert!(d <= tol, "{name}: ours {ours}, reference {golden}, diff {d:e} > {tol:e}");
    d
}

fn names(v: &Value) -> Vec<String> {
    v.as_array().unwrap().iter().map(|x| x.as_str().unwrap().to_string()).collect()
}

fn grad_norm(t: &Tensor) -> f32 {
    t.sqr().unwrap().sum_all().unwrap().sqrt().unwrap().to_scalar::<f32>().unwrap()
}

#[test]
fn head_loss_diagnostics_gradients_and_centre_match() {
    for name in CASES {
        let c = Case::load(name);
        let student = c.student();
        let teacher = c.teacher();
        let mut loss_fn = c.loss_fn();
        let epoch = c.epoch(0);
        let mut worst = [0f32; 4];

        let s_out = student.forward(c.t("x_student")).unwrap();
        let t_out = teacher.forward(c.t("x_teacher")).unwrap();
        worst[0] =
            common::assert_close(&format!("{name} student_output"), &s_out, c.t("it0.student_output"), TOL_FORWARD)
                .max(common::assert_close(
                    &format!("{name} teacher_output"),
                    &t_out,
                    c.t("it0.teacher_output"),
                    TOL_FORWARD,
                ));

        let out = loss_fn.forward(&s_out, &t_out, epoch).unwrap();
        assert!((out.teacher_temp - c.f(0, "teacher_temp")).abs() < 1e-15);
        worst[1] =
            scalar_close(&format!("{name} loss"), out.loss.to_scalar().unwrap(), c.scalar("it0.loss"), TOL_FORWARD);
        worst[1] = worst[1].max(scalar_close(
            &format!("{name} teacher entropy"),
            out.teacher_entropy.to_scalar().unwrap(),
            c.scalar("it0.teacher_entropy"),
            TOL_FORWARD,
        ));
        worst[1] = worst[1].max(scalar_close(
            &format!("{name} kl"),
            out.kl.to_scalar().unwrap(),
            c.scalar("it0.kl"),
            TOL_FORWARD,
        ));
        worst[3] = common::assert_close(&format!("{name} center"), loss_fn.center(), c.t("it0.center"), TOL_CENTER);

        let grads = Grads::from_backward(student.params(), &out.loss.backward().unwrap());
        let golden = c.grads("it0.grad.");
        assert_eq!(
            grads.names().collect::<Vec<_>>(),
            golden.names().collect::<Vec<_>>(),
            "{name}: parameters with a gradient"
        );
        for (n, g) in grads.iter() {
            worst[2] =
                worst[2].max(common::assert_close(&format!("{name} grad {n}"), g, golden.get(n).unwrap(), TOL_GRAD));
            if c.bias_before_batch_norm(n) {
                let norm = grad_norm(g);
                assert!(norm < 1e-5, "{name}: `{n}` feeds a BatchNorm, its gradient should vanish, norm {norm:e}");
            }
        }
        // The loss alone, from the reference's head outputs.
        let mut loss_fn = c.loss_fn();
        let s_var = Var::from_tensor(c.t("it0.student_output")).unwrap();
        let out = loss_fn.forward(s_var.as_tensor(), c.t("it0.teacher_output"), epoch).unwrap();
        scalar_close(
            &format!("{name} loss (reference outputs)"),
            out.loss.to_scalar().unwrap(),
            c.scalar("it0.loss"),
            TOL_FORWARD,
        );
        println!(
            "{name}: max abs diff outputs {:.2e}, loss/diagnostics {:.2e}, grads {:.2e}, centre {:.2e}",
            worst[0], worst[1], worst[2], worst[3]
        );
    }
}

#[test]
fn clip_gradients_and_last_layer_freeze_match() {
    for name in CASES {
        let c = Case::load(name);
        let mut worst = 0f32;
        for (clip, norms_key, prefix) in [
            (c.clip(), "it0.norms", "it0.clipped."),
            (c.cfg()["clip_mixed"].as_f64().unwrap(), "it0.mixed_norms", "it0.clipped_mixed."),
        ] {
            let mut grads = c.grads("it0.grad.");
            let norms = clip_gradients(&mut grads, clip).unwrap();
            let golden: Vec<f32> = c.t(norms_key).to_vec1().unwrap();
            assert_eq!(norms.len(), golden.len());
            for (a, b) in norms.iter().zip(&golden) {
                assert!((a - b).abs() <= TOL_CLIP * b.abs().max(1.0), "{name} clip {clip}: norm {a} vs {b}");
            }
            let n_clipped = golden.iter().filter(|&&n| clip as f32 / (n + 1e-6) < 1.0).count();
            println!("{name}: clip {clip}: {n_clipped} of {} gradients clipped", golden.len());
            let expected = c.grads(prefix);
            for (n, g) in grads.iter() {
                worst = worst.max(common::assert_close(
                    &format!("{name} clip {clip} {n}"),
                    g,
                    expected.get(n).unwrap(),
                    TOL_CLIP,
                ));
            }
        }
        // The freeze, at every iteration's epoch, on the reference's clipped gradients.
        for k in 0..c.n_iters() {
            let mut grads = c.grads(&format!("it{k}.clipped."));
            cancel_gradients_last_layer(c.epoch(k), &mut grads, c.freeze());
            let expected = names(&c.iteration(k)["params_with_final_grad"]);
            assert_eq!(grads.names().collect::<Vec<_>>(), expected, "{name} it{k}: gradients left after the freeze");
            let frozen = c.iteration(k)["last_layer_frozen"].as_bool().unwrap();
            assert_eq!(grads.names().any(|n| n.contains("last_layer")), !frozen, "{name} it{k}");
        }
        println!("{name}: clipped gradients max abs diff {worst:.2e}");
    }
}

#[test]
fn params_groups_and_adamw_steps_match() {
    for name in CASES {
        let c = Case::load(name);
        let student = c.student();
        let groups = get_params_groups(student.params());
        let pg = &c.meta()["params_groups"];
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].names, names(&pg["regularized"]), "{name}: regularized group");
        assert_eq!(groups[1].names, names(&pg["not_regularized"]), "{name}: not regularized group");
        assert_eq!((groups[0].weight_decay, groups[1].weight_decay), (None, Some(0.0)));

        let mut opt = AdamW::new(student.params(), groups, c.adamw_config()).unwrap();
        let mut worst = 0f32;
        for k in 0..c.n_iters() {
            let before = student.state_dict().unwrap();
            opt.set_dino_schedule(c.f(k, "lr"), c.f(k, "weight_decay"));
            assert_eq!(opt.groups()[1].weight_decay, 0.0);
            let grads = c.grads(&format!("it{k}.final."));
            opt.step(&grads).unwrap();
            // Parameters only: the reference's running statistics moved with its forwards.
            for (n, t) in student.state_dict().unwrap().into_iter().filter(|(n, _)| !BatchNorms::is_buffer(n)) {
                let golden = c.t(&format!("it{k}.student.{n}"));
                worst = worst.max(common::assert_close(&format!("{name} it{k} AdamW {n}"), &t, golden, TOL_ADAMW));
                if grads.get(&n).is_none() {
                    // No gradient: untouched (no decay either).
                    let old = &before.iter().find(|(m, _)| *m == n).unwrap().1;
                    assert_eq!(common::max_abs_diff(&t, old).0, 0.0, "{name} it{k}: `{n}` moved without gradient");
                }
                match opt.state(&n) {
                    Some((_, m, v)) => {
                        common::assert_close(
                            &format!("{name} it{k} exp_avg {n}"),
                            m,
                            c.t(&format!("it{k}.exp_avg.{n}")),
                            TOL_ADAMW,
                        );
                        common::assert_close(
                            &format!("{name} it{k} exp_avg_sq {n}"),
                            v,
                            c.t(&format!("it{k}.exp_avg_sq.{n}")),
                            TOL_ADAMW,
                        );
                    }
                    None => {
                        assert!(!c.golden.contains_key(&format!("it{k}.exp_avg.{n}")), "{name} it{k}: no state for {n}")
                    }
                }
            }
        }
        println!("{name}: AdamW parameters max abs diff over {} steps {worst:.2e}", c.n_iters());
    }
}

#[test]
fn ema_teacher_update_matches() {
    for name in CASES {
        let c = Case::load(name);
        let teacher = c.teacher();
        let mut worst = 0f32;
        for k in 0..c.n_iters() {
            // The student after iteration k's optimiser step, from the reference.
            let cfg = c.student().config().clone();
            let student = DinoHead::from_tensors(cfg, &c.params_with_prefix(&format!("it{k}.student."))).unwrap();
            ema_update(teacher.params(), student.params(), c.f(k, "momentum")).unwrap();
            // The EMA moves parameters only (running statistics are each network's own).
            for (n, t) in teacher.state_dict().unwrap().into_iter().filter(|(n, _)| !BatchNorms::is_buffer(n)) {
                let golden = c.t(&format!("it{k}.teacher.{n}"));
                worst = worst.max(common::assert_close(&format!("{name} it{k} EMA {n}"), &t, golden, TOL_EMA));
            }
        }
        println!("{name}: EMA teacher max abs diff {worst:.2e}");
    }
}

/// The whole `train_one_epoch` loop for three iterations on our own values only.
#[test]
fn three_chained_iterations_match() {
    for name in CASES {
        let c = Case::load(name);
        let student = c.student();
        let teacher = c.teacher();
        let mut loss_fn = c.loss_fn();
        let mut opt = AdamW::new(student.params(), get_params_groups(student.params()), c.adamw_config()).unwrap();
        let mut worst = 0f32;
        for k in 0..c.n_iters() {
            let epoch = c.epoch(k);
            opt.set_dino_schedule(c.f(k, "lr"), c.f(k, "weight_decay"));
            let t_out = teacher.forward(c.t("x_teacher")).unwrap();
            let s_out = student.forward(c.t("x_student")).unwrap();
            let out = loss_fn.forward(&s_out, &t_out, epoch).unwrap();
            worst = worst.max(scalar_close(
                &format!("{name} it{k} loss"),
                out.loss.to_scalar().unwrap(),
                c.scalar(&format!("it{k}.loss")),
                TOL_CHAIN,
            ));
            worst = worst.max(scalar_close(
                &format!("{name} it{k} entropy"),
                out.teacher_entropy.to_scalar().unwrap(),
                c.scalar(&format!("it{k}.teacher_entropy")),
                TOL_CHAIN,
            ));
            worst = worst.max(scalar_close(
                &format!("{name} it{k} kl"),
                out.kl.to_scalar().unwrap(),
                c.scalar(&format!("it{k}.kl")),
                TOL_CHAIN,
            ));
            let mut grads = Grads::from_backward(student.params(), &out.loss.backward().unwrap());
            clip_gradients(&mut grads, c.clip()).unwrap();
            cancel_gradients_last_layer(epoch, &mut grads, c.freeze());
            opt.step(&grads).unwrap();
            // A hidden layer's bias before a BatchNorm has a zero gradient but for rounding, and
            // AdamW's m / √v turns that noise into whole steps: each side moves it by its own
            // noise. The BatchNorm takes it out of every output, not out of the running mean, so
            // it is pinned to the reference's value after each update for the rest to compare.
            let pin = |head: &DinoHead, prefix: &str| {
                for p in head.params().iter().filter(|p| c.bias_before_batch_norm(p.name())) {
                    p.var().set(c.t(&format!("it{k}.{prefix}.{}", p.name()))).unwrap();
                }
            };
            pin(&student, "student");
            ema_update(teacher.params(), student.params(), c.f(k, "momentum")).unwrap();
            pin(&teacher, "teacher");
            worst = worst.max(common::assert_close(
                &format!("{name} it{k} center"),
                loss_fn.center(),
                c.t(&format!("it{k}.center")),
                TOL_CHAIN,
            ));
            for (n, t) in student.state_dict().unwrap() {
                worst = worst.max(common::assert_close(
                    &format!("{name} it{k} student {n}"),
                    &t,
                    c.t(&format!("it{k}.student.{n}")),
                    TOL_CHAIN,
                ));
            }
            for (n, t) in teacher.state_dict().unwrap() {
                worst = worst.max(common::assert_close(
                    &format!("{name} it{k} teacher {n}"),
                    &t,
                    c.t(&format!("it{k}.teacher.{n}")),
                    TOL_CHAIN,
                ));
            }
        }
        println!("{name}: three chained iterations max abs diff {worst:.2e}");
    }
}

fn assert_gradient_coverage(
    label: &str,
    head: &DinoHead,
    x_student: &Tensor,
    x_teacher: &Tensor,
    loss_fn: &mut DinoLoss,
    epoch: usize,
) {
    let t_out = head.forward(x_teacher).unwrap().detach();
    let s_out = head.forward(x_student).unwrap();
    let out = loss_fn.forward(&s_out, &t_out, epoch).unwrap();
    let grads = Grads::from_backward(head.params(), &out.loss.backward().unwrap());
    for p in head.params() {
        match (p.requires_grad(), grads.get(p.name())) {
            (true, Some(g)) => {
                let n = grad_norm(g);
                // A bias just before a BatchNorm has a zero gradient but for rounding.
                let before_bn = bias_before_batch_norm(head.config(), p.name());
                assert!((n > 0.0 || before_bn) && n.is_finite(), "{label}: `{}` gradient norm {n}", p.name());
            }
            (true, None) => panic!("{label}: trainable `{}` received no gradient", p.name()),
            (false, Some(_)) => panic!("{label}: frozen `{}` received a gradient", p.name()),
            (false, None) => {}
        }
    }
    let weight_g = head.param("last_layer.weight_g").unwrap();
    assert_eq!(weight_g.requires_grad(), !head.config().norm_last_layer, "{label}");
    assert_eq!(
        grads.get("last_layer.weight_g").is_some(),
        !head.config().norm_last_layer,
        "{label}: weight_g gradient"
    );
}

#[test]
fn every_trainable_parameter_gets_a_gradient_and_frozen_weight_g_none() {
    for name in CASES {
        let c = Case::load(name);
        let student = c.student();
        let mut loss_fn = c.loss_fn();
        assert_gradient_coverage(name, &student, c.t("x_student"), c.t("x_teacher"), &mut loss_fn, 1);
        // DINO's own initialisation (tiny weights, zero biases) as well.
        let cfg = student.config().clone();
        let fresh = DinoHead::new(cfg.clone(), 11, &Device::Cpu).unwrap();
        let mut loss_fn = c.loss_fn();
        assert_gradient_coverage(
            &format!("{name} (DINO init)"),
            &fresh,
            c.t("x_student"),
            c.t("x_teacher"),
            &mut loss_fn,
            0,
        );
    }
}

#[test]
fn dino_initialisation_statistics() {
    let cfg = DinoHeadConfig { hidden_dim: 256, bottleneck_dim: 64, ..DinoHeadConfig::new(128, 512) };
    let head = DinoHead::new(cfg.clone(), 3, &Device::Cpu).unwrap();
    let again = DinoHead::new(cfg.clone(), 3, &Device::Cpu).unwrap();
    let other = DinoHead::new(cfg.clone(), 4, &Device::Cpu).unwrap();
    let names: Vec<&str> = head.params().iter().map(|p| p.name()).collect();
    assert_eq!(
        names,
        [
            "mlp.0.weight",
            "mlp.0.bias",
            "mlp.2.weight",
            "mlp.2.bias",
            "mlp.4.weight",
            "mlp.4.bias",
            "last_layer.weight_g",
            "last_layer.weight_v"
        ]
    );
    for ((p, q), r) in head.params().iter().zip(again.params()).zip(other.params()) {
        let (a, b, o) = (p.snapshot().unwrap(), q.snapshot().unwrap(), r.snapshot().unwrap());
        assert_eq!(common::max_abs_diff(&a, &b).0, 0.0, "{}: seeded init not reproducible", p.name());
        let v: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        let std = (v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
        match p.name() {
            s if s.ends_with(".weight") => {
                assert!(common::max_abs_diff(&a, &o).0 > 0.0, "{s}: seed ignored");
                assert!((std - 0.02).abs() < 0.02 * 0.05, "{s}: std {std}");
                assert!(mean.abs() < 4.0 * 0.02 / n.sqrt(), "{s}: mean {mean}");
                assert!(v.iter().all(|x| x.abs() <= 2.0));
            }
            s if s.ends_with(".bias") => assert!(v.iter().all(|&x| x == 0.0), "{s}"),
            "last_layer.weight_g" => {
                assert!(v.iter().all(|&x| x == 1.0));
                assert!(!p.requires_grad());
            }
            "last_layer.weight_v" => {
                let bound = 1.0 / (cfg.bottleneck_dim as f64).sqrt();
                assert!(v.iter().all(|&x| (x as f64).abs() <= bound));
                let expected = bound / 3f64.sqrt();
                assert!((std - expected).abs() < expected * 0.05, "weight_v std {std} vs {expected}");
            }
            s => panic!("unexpected parameter {s}"),
        }
    }
    // The output rows of the last layer have norm |g| = 1 with norm_last_layer.
    let w = head.last_layer_weight().unwrap();
    let norms: Vec<f32> = w.sqr().unwrap().sum(1).unwrap().sqrt().unwrap().to_vec1().unwrap();
    assert!(norms.iter().all(|n| (n - 1.0).abs() < 1e-5), "{norms:?}");
    assert_eq!(head.trainable_params().count(), 7);
}

#[test]
fn state_dict_roundtrip_and_errors() {
    let c = Case::load("nll0");
    let student = c.student();
    let fresh = DinoHead::new(student.config().clone(), 1, &Device::Cpu).unwrap();
    let sd = student.state_dict().unwrap();
    fresh.load_state_dict(sd.iter().map(|(n, t)| (n.as_str(), t))).unwrap();
    for ((n, a), (_, b)) in fresh.state_dict().unwrap().iter().zip(&sd) {
        assert_eq!(common::max_abs_diff(a, b).0, 0.0, "{n}");
    }
    // state_dict is a copy: later updates leave it alone.
    let before = fresh.state_dict().unwrap();
    ema_update(fresh.params(), c.teacher().params(), 0.5).unwrap();
    assert_eq!(common::max_abs_diff(&before[0].1, &sd[0].1).0, 0.0);

    let mut missing = c.params_with_prefix("student.");
    missing.remove("mlp.2.bias");
    assert!(DinoHead::from_tensors(student.config().clone(), &missing).is_err());
    let mut wrong = c.params_with_prefix("student.");
    wrong.insert("mlp.0.bias".into(), Tensor::zeros(3, candle_core::DType::F32, &Device::Cpu).unwrap());
    assert!(DinoHead::from_tensors(student.config().clone(), &wrong).is_err());

    let mut loss_fn = c.loss_fn();
    let s = c.t("it0.student_output");
    let t = c.t("it0.teacher_output");
    assert!(loss_fn.forward(&s.narrow(0, 0, 16).unwrap(), t, 1).is_err(), "student rows not ncrops x B");
    assert!(loss_fn.forward(s, &t.narrow(0, 0, 7).unwrap(), 1).is_err(), "odd teacher rows");
    assert!(loss_fn.forward(s, t, 5).is_err(), "epoch past the schedule");
    assert!(ema_update(&student.params()[..2], c.teacher().params(), 0.9).is_err());
}

/// `F.normalize` of a zero row: value 0 and PyTorch's gradient `1/eps` (not NaN).
#[test]
fn normalize_zero_row_gradient_is_finite() {
    let x = Var::from_tensor(&Tensor::new(&[[0f32, 0., 0.], [3., 0., 4.]], &Device::Cpu).unwrap()).unwrap();
    let y = vista::train::dino::head::normalize(x.as_tensor(), 1e-12).unwrap();
    let v: Vec<Vec<f32>> = y.to_vec2().unwrap();
    assert_eq!(v, [[0., 0., 0.], [0.6, 0., 0.8]]);
    let g = y.sum_all().unwrap().backward().unwrap();
    let g: Vec<Vec<f32>> = g.get(x.as_tensor()).unwrap().to_vec2().unwrap();
    assert!(g.iter().flatten().all(|x| x.is_finite()), "{g:?}");
    assert!(g[0].iter().all(|&x| (x / 1e12 - 1.0).abs() < 1e-5), "{g:?}");
}
