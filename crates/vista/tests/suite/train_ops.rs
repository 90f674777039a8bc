//! The fused training ops (`train::ops`) give the values and gradients of the same functions
//! composed from candle's elementary differentiable ops (whose backward candle derives).
//!
//! Tolerances: values and gradients ≤ 2e-5. The fused GELU uses the Abramowitz–Stegun erf
//! (error 6.4e-7, as torch's vectorised GELU) and softmax a polynomial exp; everything else is
//! the same arithmetic in another order (f32 rounding, ~1e-6 at these magnitudes).

use candle_core::{Device, Tensor, Var, D};
use vista::train::ops;

fn var(shape: &[usize], seed: u64, scale: f32, offset: f32) -> Var {
    crate::common::pattern_var(shape, seed, scale, offset)
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    a.sub(b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
}

/// A weighting of the output, so that the gradient reaching the op is not uniform.
fn weighted_sum(y: &Tensor, seed: u64) -> Tensor {
    let w = var(y.dims(), seed, 1.0, 0.1);
    y.mul(w.as_tensor()).unwrap().sum_all().unwrap()
}

#[test]
fn layer_norm_matches_the_composed_op_with_gradients() {
    let (x, w, b) = (var(&[3, 5, 24], 1, 2.0, 0.3), var(&[24], 2, 0.5, 1.0), var(&[24], 3, 0.2, 0.0));
    let eps = 1e-6;
    let fused = ops::layer_norm(x.as_tensor(), w.as_tensor(), b.as_tensor(), eps).unwrap();
    let composed = {
        let x = x.as_tensor();
        let mean = x.mean_keepdim(D::Minus1).unwrap();
        let c = x.broadcast_sub(&mean).unwrap();
        let var = c.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
        let n = c.broadcast_div(&(var + eps).unwrap().sqrt().unwrap()).unwrap();
        n.broadcast_mul(w.as_tensor()).unwrap().broadcast_add(b.as_tensor()).unwrap()
    };
    assert!(max_diff(&fused, &composed) < 2e-5, "values differ by {}", max_diff(&fused, &composed));
    let gf = weighted_sum(&fused, 9).backward().unwrap();
    let gc = weighted_sum(&composed, 9).backward().unwrap();
    for (name, v) in [("x", &x), ("w", &w), ("b", &b)] {
        let d = max_diff(gf.get(v.as_tensor()).unwrap(), gc.get(v.as_tensor()).unwrap());
        assert!(d < 2e-5, "d{name} differs by {d}");
    }
}

#[test]
fn softmax_matches_the_composed_op_with_gradients() {
    let x = var(&[4, 3, 17], 4, 6.0, -1.0);
    let fused = ops::softmax_last(x.as_tensor()).unwrap();
    let composed = {
        let x = x.as_tensor();
        let z = x.broadcast_sub(&x.max_keepdim(D::Minus1).unwrap().detach()).unwrap();
        let e = z.exp().unwrap();
        e.broadcast_div(&e.sum_keepdim(D::Minus1).unwrap()).unwrap()
    };
    assert!(max_diff(&fused, &composed) < 2e-5);
    let rows: f32 = fused
        .sum(D::Minus1)
        .unwrap()
        .sub(&fused.sum(D::Minus1).unwrap().ones_like().unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap();
    assert!(rows < 1e-6, "rows sum to 1 within {rows}");
    let gf = weighted_sum(&fused, 5).backward().unwrap();
    let gc = weighted_sum(&composed, 5).backward().unwrap();
    let d = max_diff(gf.get(x.as_tensor()).unwrap(), gc.get(x.as_tensor()).unwrap());
    assert!(d < 2e-5, "dx differs by {d}");
}

#[test]
fn gelu_matches_exact_erf_gelu_with_gradients() {
    let x = var(&[7, 33], 6, 4.0, 0.0);
    let fused = ops::gelu(x.as_tensor()).unwrap();
    let composed = {
        let x = x.as_tensor();
        let e = x.affine(std::f64::consts::FRAC_1_SQRT_2, 0.0).unwrap().erf().unwrap();
        x.mul(&e.affine(0.5, 0.5).unwrap()).unwrap()
    };
    assert!(max_diff(&fused, &composed) < 2e-5, "values differ by {}", max_diff(&fused, &composed));
    let gf = weighted_sum(&fused, 7).backward().unwrap();
    let gc = weighted_sum(&composed, 7).backward().unwrap();
    let d = max_diff(gf.get(x.as_tensor()).unwrap(), gc.get(x.as_tensor()).unwrap());
    assert!(d < 2e-5, "dx differs by {d}");
}

#[test]
fn add_bias_matches_broadcast_add_with_gradients() {
    let (x, b) = (var(&[2, 9, 12], 8, 1.0, 0.0), var(&[12], 9, 1.0, 0.5));
    let fused = ops::add_bias(x.as_tensor(), b.as_tensor()).unwrap();
    let composed = x.as_tensor().broadcast_add(b.as_tensor()).unwrap();
    assert_eq!(max_diff(&fused, &composed), 0.0);
    let gf = weighted_sum(&fused, 10).backward().unwrap();
    let gc = weighted_sum(&composed, 10).backward().unwrap();
    for v in [&x, &b] {
        let d = max_diff(gf.get(v.as_tensor()).unwrap(), gc.get(v.as_tensor()).unwrap());
        assert!(d < 2e-5, "gradient differs by {d}");
    }
}

#[test]
fn fused_ops_reject_shapes_that_do_not_fit() {
    let x = var(&[2, 8], 1, 1.0, 0.0);
    let w = var(&[7], 2, 1.0, 0.0);
    let err = ops::layer_norm(x.as_tensor(), w.as_tensor(), w.as_tensor(), 1e-6).unwrap_err().to_string();
    assert!(err.contains("width 8") && err.contains("[7]"), "{err}");
    let err = ops::add_bias(x.as_tensor(), w.as_tensor()).unwrap_err().to_string();
    assert!(err.contains("[7]") && err.contains("width 8"), "{err}");
}

#[test]
fn attention_matches_the_composed_op_with_gradients() {
    for causal in [false, true] {
        // 2 batches × 3 heads, 7 tokens of width 20 (not a multiple of 16: the dot's tail too).
        let (q, k, v) =
            (var(&[2, 3, 7, 20], 11, 1.5, 0.1), var(&[2, 3, 7, 20], 12, 1.5, -0.2), var(&[2, 3, 7, 20], 13, 1.0, 0.0));
        let scale = 0.2;
        let fused = ops::attention(q.as_tensor(), k.as_tensor(), v.as_tensor(), scale, causal).unwrap();
        let composed = {
            let s = (q.as_tensor() * scale).unwrap().matmul(&k.as_tensor().t().unwrap()).unwrap();
            let s = if causal {
                let m: Vec<f32> = (0..49).map(|x| if x % 7 > x / 7 { f32::NEG_INFINITY } else { 0.0 }).collect();
                s.broadcast_add(&Tensor::from_vec(m, (7, 7), &Device::Cpu).unwrap()).unwrap()
            } else {
                s
            };
            let z = s.broadcast_sub(&s.max_keepdim(D::Minus1).unwrap().detach()).unwrap();
            let e = z.exp().unwrap();
            e.broadcast_div(&e.sum_keepdim(D::Minus1).unwrap()).unwrap().matmul(v.as_tensor()).unwrap()
        };
        assert!(
            max_diff(&fused, &composed) < 2e-5,
            "causal {causal}: values differ by {}",
            max_diff(&fused, &composed)
        );
        let gf = weighted_sum(&fused, 14).backward().unwrap();
        let gc = weighted_sum(&composed, 14).backward().unwrap();
        for (name, t) in [("q", &q), ("k", &k), ("v", &v)] {
            let d = max_diff(gf.get(t.as_tensor()).unwrap(), gc.get(t.as_tensor()).unwrap());
            assert!(d < 2e-5, "causal {causal}: d{name} differs by {d}");
        }
    }
}
