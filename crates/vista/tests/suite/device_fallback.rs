//! The device paths equal the fast CPU kernels, on the CPU.
//!
//! Every layer with a hand-written CPU kernel also has a device path of candle ops (what runs on
//! CUDA, and for bf16/f16 anywhere): `vista::nn::portable`, the `Attach` ops of
//! `vista::train::ops`, the tensor paths of AdamW / EMA / gradient clipping. With the fast
//! kernels switched off (`vista::nn::cpu::with_portable_paths`) they run on the CPU too, so they
//! are checked here without a GPU:
//!
//! * op by op, against the CPU kernel on random inputs (max abs diff, stated per test);
//! * model by model on the committed fixtures (`examples/gpu_check/parity.rs`, the same checks
//!   `gpu_check` runs on a GPU): CLIP image / text embeddings, DINO and DINOv2 tokens and attention
//!   maps, SAM embeddings, masks, IoU and low-res logits, and two DINO training steps (loss,
//!   gradients, parameters after AdamW and EMA), with the limits written there (f32: cosine
//!   ≥ 0.99999, max abs ≤ 1e-4, ≤ 0.1 % mask pixels, IoU ≤ 1e-3, loss and gradients ≤ 1e-3
//!   relative).
//!
//! Each test prints what it measured (`cargo test --release -p vista --test suite device_fallback -- --nocapture`).

#[path = "../../examples/gpu_check/parity.rs"]
mod parity;

use candle_core::{DType, Device, Tensor, D};
use vista::nn::conv::{Conv2d, DepthwiseConv2d};
use vista::nn::cpu::{self, with_portable_paths, ScoreBias};
use vista::nn::portable::{self, Bias};
use vista::nn::{window, Activation};

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    let a: Vec<f32> = a.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    let b: Vec<f32> = b.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, |m, d| if d.is_nan() { f32::NAN } else { m.max(d) })
}

fn randn(shape: &[usize], seed: u64) -> Tensor {
    // Seeded, so every run measures the same inputs.
    use rand_chacha::rand_core::{RngCore, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|_| {
            let u1 = ((rng.next_u32() >> 8) as f32 + 0.5) / (1u32 << 24) as f32;
            let u2 = (rng.next_u32() >> 8) as f32 / (1u32 << 24) as f32;
            (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn report(what: &str, d: f32, tol: f32) {
    eprintln!("{what}: max abs diff {d:.3e} (tolerance {tol:.0e})");
    assert!(d <= tol, "{what}: max abs diff {d:e} > {tol:e}");
}

#[test]
fn attention_with_every_bias_equals_the_cpu_kernel() {
    let (b, gh, gw, h, d) = (2, 9, 14, 3, 8);
    let n = gh * gw;
    let qkv = randn(&[b, n, 3 * h * d], 1);
    let scale = 1.0 / (d as f64).sqrt();
    let mask: Vec<f32> = (0..n * n).map(|i| if i % n > i / n { f32::NEG_INFINITY } else { 0.0 }).collect();
    let mask_t = Tensor::from_vec(mask.clone(), (n, n), &Device::Cpu).unwrap();
    let table = randn(&[h, n, n], 2);
    let tv: Vec<f32> = table.flatten_all().unwrap().to_vec1().unwrap();
    let rh = randn(&[gh, gh, d], 3);
    let rw = randn(&[gw, gw, d], 4);
    let (rhv, rwv): (Vec<f32>, Vec<f32>) =
        (rh.flatten_all().unwrap().to_vec1().unwrap(), rw.flatten_all().unwrap().to_vec1().unwrap());
    let cases: [(&str, ScoreBias, Bias); 4] = [
        ("none", ScoreBias::None, Bias::None),
        ("shared mask", ScoreBias::Shared(&mask), Bias::Shared(&mask_t)),
        ("per-head table", ScoreBias::PerHead(&tv), Bias::PerHead(&table)),
        (
            "decomposed rel pos",
            ScoreBias::DecomposedRelPos { grid: (gh, gw), rel_h: &rhv, rel_w: &rwv },
            Bias::DecomposedRelPos { grid: (gh, gw), rel_h: &rh, rel_w: &rw },
        ),
    ];
    for (name, cpu_bias, dev_bias) in cases {
        let want = cpu::attention_biased(&qkv, h, scale as f32, cpu_bias).unwrap();
        let got = portable::attention(&qkv, h, scale, dev_bias).unwrap();
        report(&format!("attention, {name}"), max_diff(&got, &want), 2e-5);
    }
}

#[test]
fn window_partition_and_unpartition_equal_the_slice_loops() {
    let (b, h, w, c, ws) = (2, 11, 13, 6, 4);
    let x = randn(&[b, h, w, c], 5);
    let pad = randn(&[c], 6);
    let xv: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
    let pv: Vec<f32> = pad.to_vec1().unwrap();
    let (want, (nh, nw)) = window::window_partition(&xv, (b, h, w), c, ws, &pv);
    let (got, grid) = portable::window_partition(&x, ws, &pad).unwrap();
    assert_eq!(grid, (nh, nw));
    let want = Tensor::from_vec(want, (b * nh * nw, ws * ws, c), &Device::Cpu).unwrap();
    report("window partition", max_diff(&got, &want), 0.0);
    let back = portable::window_unpartition(&got, (b, h, w), ws).unwrap();
    report("window unpartition", max_diff(&back, &x), 0.0);
}

#[test]
fn convolutions_equal_the_cpu_loops() {
    let x = randn(&[2, 13, 10, 5], 7);
    for (k, s, p) in [(3, 1, 1), (3, 2, 1), (2, 2, 0), (3, 3, 0), (5, 2, 2)] {
        let w = randn(&[7, 5, k, k], 8);
        let bias = randn(&[7], 9);
        let conv = Conv2d::new(&w, Some(bias), s, p).unwrap();
        let want = conv.forward(&x).unwrap();
        let got = with_portable_paths(|| conv.forward(&x)).unwrap();
        report(&format!("conv k{k} s{s} p{p} (im2col)"), max_diff(&got, &want), 1e-5);
    }
    let x = randn(&[2, 9, 12, 16], 10);
    for s in [1, 2] {
        let w = randn(&[16, 1, 3, 3], 11);
        let bias = randn(&[16], 12);
        let conv = DepthwiseConv2d::new(&w, Some(&bias), s, 1).unwrap();
        for act in [None, Some(Activation::Gelu)] {
            let want = conv.forward(&x, act).unwrap();
            let got = with_portable_paths(|| conv.forward(&x, act)).unwrap();
            report(&format!("depthwise conv s{s} act {act:?}"), max_diff(&got, &want), 1e-6);
        }
    }
}

#[test]
fn mask_postprocessing_equals_the_cpu_loop() {
    let (n, lh, lw) = (3, 64, 64);
    let low = randn(&[n, lh, lw], 13);
    let flat: Vec<f32> = low.flatten_all().unwrap().to_vec1().unwrap();
    for (input, original) in [((256, 171), (300, 451)), ((256, 256), (37, 37)), ((97, 256), (90, 241))] {
        let want = vista::sam::transforms::postprocess_masks(&flat, (lh, lw), 256, input, original);
        let want = Tensor::from_vec(want, (n, original.0, original.1), &Device::Cpu).unwrap();
        let got = vista::sam::transforms::postprocess_masks_tensor(&low, 256, input, original).unwrap();
        report(&format!("postprocess {input:?} -> {original:?}"), max_diff(&got, &want), 0.0);
    }
}

#[test]
fn fused_cpu_layers_equal_their_candle_paths() {
    let x = randn(&[3, 17, 48], 14);
    let y = randn(&[3, 17, 48], 15);
    let w = randn(&[48], 16).affine(0.1, 1.0).unwrap();
    let bias = randn(&[48], 17);
    let wl = randn(&[40, 48], 18);
    let linear = vista::nn::Linear::new(wl, Some(randn(&[40], 19))).unwrap();
    for act in
        [None, Some(Activation::QuickGelu), Some(Activation::Gelu), Some(Activation::GeluTanh), Some(Activation::Relu)]
    {
        let want = linear.forward_act(&x, act).unwrap();
        let got = with_portable_paths(|| linear.forward_act(&x, act)).unwrap();
        report(&format!("linear act {act:?}"), max_diff(&got, &want), 1e-5);
    }
    let want = cpu::layer_norm(&x, &w, &bias, 1e-5).unwrap();
    let got = candle_nn::ops::layer_norm(&x, &w, &bias, 1e-5).unwrap();
    report("layer norm (candle's fused kernel)", max_diff(&got, &want), 1e-5);
    let want = cpu::add_act(&x, &y, Activation::Gelu).unwrap();
    let got = with_portable_paths(|| vista::nn::add_act(&x, &y, Activation::Gelu)).unwrap();
    report("add + gelu", max_diff(&got, &want), 1e-6);
}

#[test]
fn training_ops_equal_the_cpu_kernels_in_value_and_gradient() {
    use vista::train::ops;
    let x = candle_core::Var::from_tensor(&randn(&[6, 5, 32], 20)).unwrap();
    let w = candle_core::Var::from_tensor(&randn(&[32], 21).affine(0.2, 1.0).unwrap()).unwrap();
    let b = candle_core::Var::from_tensor(&randn(&[32], 22)).unwrap();
    let dy = randn(&[6, 5, 32], 23);
    type Op<'a> = Box<dyn Fn() -> vista::Result<Tensor> + 'a>;
    let cases: [(&str, Op); 4] = [
        ("layer_norm", Box::new(|| ops::layer_norm(x.as_tensor(), w.as_tensor(), b.as_tensor(), 1e-6))),
        ("softmax_last", Box::new(|| ops::softmax_last(x.as_tensor()))),
        ("gelu", Box::new(|| ops::gelu(x.as_tensor()))),
        ("add_bias", Box::new(|| ops::add_bias(x.as_tensor(), b.as_tensor()))),
    ];
    for (name, op) in cases {
        let run = || {
            let y = op().unwrap();
            let grads = (&y * &dy).unwrap().sum_all().unwrap().backward().unwrap();
            let g = |v: &candle_core::Var| grads.get(v.as_tensor()).cloned();
            (y, g(&x), g(&w), g(&b))
        };
        let (y0, gx0, gw0, gb0) = run();
        let (y1, gx1, gw1, gb1) = with_portable_paths(run);
        report(&format!("{name} value"), max_diff(&y1, &y0), 2e-6);
        for (what, a, b) in [("dx", gx1, gx0), ("dw", gw1, gw0), ("db", gb1, gb0)] {
            match (a, b) {
                (Some(a), Some(b)) => report(&format!("{name} {what}"), max_diff(&a, &b), 2e-5),
                (None, None) => {}
                (a, b) => {
                    panic!("{name} {what}: gradient present on one path only ({} / {})", a.is_some(), b.is_some())
                }
            }
        }
    }
}

#[test]
fn linear_equals_candles_matmul_in_value_and_gradient() {
    use vista::train::ops;
    // Rows not a multiple of the GEMM's 12-row tile, widths not of its 16- or 32-column panels.
    let x = candle_core::Var::from_tensor(&randn(&[3, 7, 37], 30)).unwrap();
    let w = candle_core::Var::from_tensor(&randn(&[45, 37], 31)).unwrap();
    let b = candle_core::Var::from_tensor(&randn(&[45], 32)).unwrap();
    let dy = randn(&[3, 7, 45], 33);
    for bias in [true, false] {
        let run = || {
            let y = ops::linear(x.as_tensor(), w.as_tensor(), bias.then(|| b.as_tensor())).unwrap();
            let grads = (&y * &dy).unwrap().sum_all().unwrap().backward().unwrap();
            let g = |v: &candle_core::Var| grads.get(v.as_tensor()).cloned();
            (y, g(&x), g(&w), g(&b))
        };
        let (y0, gx0, gw0, gb0) = run();
        let (y1, gx1, gw1, gb1) = with_portable_paths(run);
        report(&format!("linear (bias {bias}) value"), max_diff(&y1, &y0), 2e-5);
        report(&format!("linear (bias {bias}) dx"), max_diff(&gx1.unwrap(), &gx0.unwrap()), 2e-5);
        report(&format!("linear (bias {bias}) dw"), max_diff(&gw1.unwrap(), &gw0.unwrap()), 2e-5);
        assert_eq!(gb0.is_some(), bias, "a bias gradient only with a bias");
        if let (Some(a), Some(b)) = (gb1, gb0) {
            report("linear db", max_diff(&a, &b), 2e-5);
        }
    }
    let refused = ops::linear(x.as_tensor(), &randn(&[45, 36], 34), None);
    assert!(refused.unwrap_err().to_string().contains("weight [45, 36] for rows of width 37"));
    // Empty products: no rows, and rows of no values (the output is the bias).
    let empty = ops::linear(&Tensor::zeros((0, 37), DType::F32, &Device::Cpu).unwrap(), w.as_tensor(), None).unwrap();
    assert_eq!(empty.dims(), [0, 45]);
    let bias = randn(&[45], 35);
    let x0 = Tensor::zeros((4, 0), DType::F32, &Device::Cpu).unwrap();
    let y = ops::linear(&x0, &Tensor::zeros((45, 0), DType::F32, &Device::Cpu).unwrap(), Some(&bias)).unwrap();
    assert_eq!(y.dims(), [4, 45]);
    report("linear of width 0", max_diff(&y, &bias.unsqueeze(0).unwrap().repeat((4, 1)).unwrap()), 0.0);
}

#[test]
fn dino_loss_equals_its_composed_path_in_value_diagnostics_and_gradient() {
    use vista::train::dino::{DinoLoss, DinoLossConfig};
    // 4 crops of 3 images, 37 prototypes; logits of the size a head gives (|s| up to ~1), the
    // teacher sharpened at 0.04 and the centre already moved off zero.
    let (b, ncrops, k) = (3, 4, 37);
    let s = candle_core::Var::from_tensor(&randn(&[ncrops * b, k], 40)).unwrap();
    let t = randn(&[2 * b, k], 41);
    let center = randn(&[1, k], 42).affine(0.1, 0.0).unwrap();
    let run = || {
        let mut loss = DinoLoss::new(DinoLossConfig::new(k, ncrops, 0.04, 0.04, 0, 2), &Device::Cpu).unwrap();
        loss.set_center(&center).unwrap();
        let out = loss.forward(s.as_tensor(), &t, 1).unwrap();
        let grads = (&out.loss * 3.0).unwrap().backward().unwrap();
        let scalar = |x: &Tensor| x.to_scalar::<f32>().unwrap();
        let ds = grads.get(s.as_tensor()).unwrap().clone();
        ([scalar(&out.loss), scalar(&out.teacher_entropy), scalar(&out.kl)], ds, loss.center().clone())
    };
    let (v0, ds0, c0) = run();
    let (v1, ds1, c1) = with_portable_paths(run);
    for (i, what) in ["loss", "teacher entropy", "kl"].iter().enumerate() {
        report(&format!("dino loss {what}"), (v1[i] - v0[i]).abs() / v1[i].abs().max(1.0), 2e-6);
    }
    // ds = 3 · (p ΣQ − Q) / (B · pairs · T_s) with ΣQ up to 2 and a near one-hot teacher: terms of
    // up to ~2 · 3 / (3 · 6 · 0.1) ≈ 3 cancel, so a few f32 ulps of them (the fused op's exp is
    // a polynomial, its sums run in another order) are ~1e-6; 1e-5 is the goldens' gradient
    // tolerance. The gradient's own size is checked so the bound means something.
    let largest: f32 = ds0.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap();
    assert!(largest > 0.5, "largest |ds| {largest}");
    report("dino loss ds", max_diff(&ds1, &ds0), 1e-5);
    report("dino loss centre", max_diff(&c1, &c0), 1e-7);
    assert!(v0[0].is_finite() && v0[0] > 0.0, "a cross-entropy is positive: {}", v0[0]);
}

fn check(report: parity::Report) {
    for c in &report.checks {
        eprintln!(
            "{:>5} {:<32} {:<48} {:.3e} ({} {:.0e})",
            c.family,
            c.case,
            c.metric,
            c.value,
            if c.at_least { ">=" } else { "<=" },
            c.limit
        );
    }
    assert!(report.passed(), "failed: {:#?}", report.failures());
}

fn cpu_target(dtype: DType) -> parity::Target {
    parity::Target { device: Device::Cpu, dtype }
}

/// Runs one parity part on the CPU at `dtype` and checks its report.
fn run_part<E: std::fmt::Debug>(part: impl Fn(&mut parity::Report, &parity::Target) -> Result<(), E>, dtype: DType) {
    let mut r = parity::Report::default();
    part(&mut r, &cpu_target(dtype)).unwrap();
    check(r);
}

#[test]
fn clip_fixtures_through_the_device_path() {
    run_part(parity::clip, DType::F32);
}

#[test]
fn dino_fixtures_through_the_device_path() {
    run_part(parity::dino, DType::F32);
}

#[test]
fn sam_fixtures_through_the_device_path() {
    run_part(parity::sam, DType::F32);
}

#[test]
fn dino_training_step_through_the_device_path() {
    run_part(parity::train, DType::F32);
}

#[test]
fn bf16_models_stay_close_to_f32() {
    // bf16 weights and activations (as on a GPU with `--dtype bf16`), on the CPU.
    run_part(
        |r: &mut parity::Report, t: &parity::Target| {
            parity::clip(r, t)?;
            parity::dino(r, t)
        },
        DType::BF16,
    );
}

#[test]
fn softmax_rows_sum_to_one_on_the_device_path() {
    // A guard against a transposed reduction in the attention path: probabilities over keys.
    let x = randn(&[2, 3, 7, 7], 30);
    let p = candle_nn::ops::softmax_last_dim(&x).unwrap().sum(D::Minus1).unwrap();
    let ones = Tensor::ones(p.shape(), DType::F32, &Device::Cpu).unwrap();
    report("softmax row sums", max_diff(&p, &ones), 1e-6);
}
