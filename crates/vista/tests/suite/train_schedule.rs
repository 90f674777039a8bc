//! DINO schedules against numpy (facebookresearch/dino's `utils.cosine_scheduler` and
//! `DINOLoss.teacher_temp_schedule`, copied verbatim into tools/reference/gen_dino_train.py →
//! tests/fixtures/dino_train/schedules.json), plus properties that hold for any configuration.
//!
//! Tolerance: 1e-12 absolute (f64; the only difference can be the last bit of `cos`). Measured:
//! see the printed maximum.

use std::path::{Path, PathBuf};

use serde_json::Value;
use vista::optim::{cosine_scheduler, linspace};
use vista::train::dino::{teacher_temp_schedule, DinoSchedules, DinoTrainConfig};

const TOL: f64 = 1e-12;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dino_train")
}

fn golden() -> Value {
    let text = std::fs::read_to_string(fixtures().join("schedules.json")).expect("schedules.json");
    serde_json::from_str(&text).expect("json")
}

fn f(v: &Value, k: &str) -> f64 {
    v[k].as_f64().unwrap_or_else(|| panic!("{k}"))
}

fn u(v: &Value, k: &str) -> usize {
    v[k].as_u64().unwrap_or_else(|| panic!("{k}")) as usize
}

fn values(v: &Value) -> Vec<f64> {
    v.as_array().expect("array").iter().map(|x| x.as_f64().expect("number")).collect()
}

/// Max abs difference; panics with the first index over tolerance.
fn compare(name: &str, ours: &[f64], reference: &[f64]) -> f64 {
    assert_eq!(ours.len(), reference.len(), "{name}: length");
    let mut worst = 0f64;
    for (i, (a, b)) in ours.iter().zip(reference).enumerate() {
        let d = (a - b).abs();
        assert!(d <= TOL, "{name}[{i}]: ours {a:e}, numpy {b:e}, diff {d:e}");
        worst = worst.max(d);
    }
    worst
}

#[test]
fn cosine_scheduler_matches_numpy() {
    let g = golden();
    let mut worst = 0f64;
    let cases = g["cosine"].as_array().unwrap();
    assert!(cases.len() >= 5);
    for c in cases {
        let name = c["name"].as_str().unwrap();
        let ours = cosine_scheduler(
            f(c, "base_value"),
            f(c, "final_value"),
            u(c, "epochs"),
            u(c, "niter_per_ep"),
            u(c, "warmup_epochs"),
            f(c, "start_warmup_value"),
        )
        .unwrap();
        worst = worst.max(compare(name, &ours, &values(&c["values"])));
    }
    println!("cosine_scheduler: max |diff| vs numpy = {worst:e}");
}

#[test]
fn teacher_temp_matches_numpy() {
    let g = golden();
    let mut worst = 0f64;
    for c in g["teacher_temp"].as_array().unwrap() {
        let name = c["name"].as_str().unwrap();
        let ours = teacher_temp_schedule(
            f(c, "warmup_teacher_temp"),
            f(c, "teacher_temp"),
            u(c, "warmup_teacher_temp_epochs"),
            u(c, "nepochs"),
        )
        .unwrap();
        worst = worst.max(compare(name, &ours, &values(&c["values"])));
    }
    println!("teacher_temp_schedule: max |diff| vs numpy = {worst:e}");
}

#[test]
fn dino_schedules_match_main_dino() {
    let g = golden();
    for c in g["dino"].as_array().unwrap() {
        let a = &c["args"];
        let niter_per_ep = u(a, "niter_per_ep");
        let cfg = DinoTrainConfig {
            epochs: u(a, "epochs"),
            batch_size: u(a, "batch_size_total"),
            lr: f(a, "lr"),
            min_lr: f(a, "min_lr"),
            warmup_epochs: u(a, "warmup_epochs"),
            weight_decay: f(a, "weight_decay"),
            weight_decay_end: f(a, "weight_decay_end"),
            momentum_teacher: f(a, "momentum_teacher"),
            warmup_teacher_temp: f(a, "warmup_teacher_temp"),
            teacher_temp: f(a, "teacher_temp"),
            warmup_teacher_temp_epochs: u(a, "warmup_teacher_temp_epochs"),
            ..main_dino_defaults()
        };
        let s = DinoSchedules::new(&cfg, niter_per_ep).unwrap();
        let name = a["name"].as_str().unwrap();
        compare(&format!("{name}.lr"), &s.lr, &values(&c["lr"]));
        compare(&format!("{name}.wd"), &s.wd, &values(&c["wd"]));
        compare(&format!("{name}.momentum"), &s.momentum, &values(&c["momentum"]));
        compare(&format!("{name}.teacher_temp"), &s.teacher_temp, &values(&c["teacher_temp"]));
        assert_eq!(s.len(), cfg.epochs * niter_per_ep);
    }
}

/// `main_dino.py`'s argument defaults (ViT-S/16).
fn main_dino_defaults() -> DinoTrainConfig {
    DinoTrainConfig::preset("vit_small").unwrap()
}

#[test]
fn defaults_are_main_dino_arguments() {
    let c = main_dino_defaults();
    assert_eq!((c.epochs, c.warmup_epochs, c.warmup_teacher_temp_epochs), (100, 10, 0));
    assert_eq!((c.lr, c.min_lr, c.weight_decay, c.weight_decay_end), (0.0005, 1e-6, 0.04, 0.4));
    assert_eq!((c.momentum_teacher, c.warmup_teacher_temp, c.teacher_temp), (0.996, 0.04, 0.04));
    assert_eq!(DinoTrainConfig { batch_size: 1024, ..c }.scaled_lr(), 0.002);
}

fn assert_monotone(name: &str, s: &[f64], increasing: bool) {
    for (i, w) in s.windows(2).enumerate() {
        let ok = if increasing { w[1] >= w[0] } else { w[1] <= w[0] };
        assert!(ok, "{name}: not monotone at {i}: {} -> {}", w[0], w[1]);
    }
}

#[test]
fn properties_of_the_cosine_schedule() {
    for &(epochs, niter, warmup) in &[(10usize, 7usize, 0usize), (10, 7, 3), (5, 1, 2), (3, 13, 3), (100, 2, 10)] {
        let (base, fin, start) = (0.5, 0.01, 0.02);
        let s = cosine_scheduler(base, fin, epochs, niter, warmup, start).unwrap();
        let w = warmup * niter;
        assert_eq!(s.len(), epochs * niter);
        // Warmup: linear from start_warmup_value to exactly base_value, increasing.
        if w > 0 {
            assert_eq!(s[0], start);
            assert_eq!(s[w - 1], base);
            assert_monotone("warmup", &s[..w], true);
            if w > 2 {
                let step = s[1] - s[0];
                for k in 1..w {
                    assert!((s[k] - s[k - 1] - step).abs() < 1e-12, "warmup not linear at {k}");
                }
            }
        }
        // Cosine: from exactly base_value, decreasing towards (not reaching) final_value.
        let cos = &s[w..];
        if !cos.is_empty() {
            assert_eq!(cos[0], base);
            assert_monotone("cosine", cos, false);
            let n = cos.len() as f64;
            let last = fin + 0.5 * (base - fin) * (1.0 + (std::f64::consts::PI * (n - 1.0) / n).cos());
            assert!((cos[cos.len() - 1] - last).abs() < 1e-15);
            assert!(cos.iter().all(|&v| v > fin || (n == 1.0 && v == base)));
            // symmetric around the midpoint: s[i] + s[n - i] = base + final
            for i in 1..cos.len() {
                let j = cos.len() - i;
                if j < cos.len() && i != j {
                    assert!((cos[i] + cos[j] - (base + fin)).abs() < 1e-12);
                }
            }
        }
    }
    // Increasing schedules (momentum, weight decay) are monotone the other way.
    let m = cosine_scheduler(0.996, 1.0, 7, 5, 0, 0.0).unwrap();
    assert_eq!(m[0], 0.996);
    assert_monotone("momentum", &m, true);
    assert!(m.iter().all(|&v| (0.996..1.0).contains(&v)));
}

#[test]
fn properties_of_the_teacher_temperature() {
    let t = teacher_temp_schedule(0.04, 0.07, 30, 100).unwrap();
    assert_eq!(t.len(), 100);
    assert_eq!((t[0], t[29], t[30], t[99]), (0.04, 0.07, 0.07, 0.07));
    assert_monotone("teacher_temp", &t, true);
    assert_eq!(teacher_temp_schedule(0.04, 0.04, 0, 3).unwrap(), vec![0.04; 3]);
}

#[test]
fn linspace_edge_cases() {
    assert!(linspace(0.0, 1.0, 0).is_empty());
    assert_eq!(linspace(0.3, 1.0, 1), vec![0.3]);
    assert_eq!(linspace(0.0, 1.0, 5), vec![0.0, 0.25, 0.5, 0.75, 1.0]);
    assert_eq!(linspace(2.0, 2.0, 3), vec![2.0; 3]);
}

#[test]
fn invalid_configurations_are_errors() {
    assert!(cosine_scheduler(1.0, 0.0, 2, 5, 3, 0.0).is_err());
    assert!(teacher_temp_schedule(0.04, 0.07, 11, 10).is_err());
    assert!(DinoSchedules::new(&DinoTrainConfig { epochs: 5, warmup_epochs: 10, ..main_dino_defaults() }, 1).is_err());
    // zero iterations: empty, not an error (numpy gives empty arrays too)
    assert!(cosine_scheduler(1.0, 0.0, 0, 5, 0, 0.0).unwrap().is_empty());
}
