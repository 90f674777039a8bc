//! The CNN towers' training ops (`train::conv`): the convolution against a direct f64
//! convolution and its adjoint (values, `dX`, `dW`), for every geometry ResNets use (7×7/2 stem,
//! 3×3 with and without stride, 1×1 with and without stride), non-square inputs of both
//! parities, and an input whose im2col rows take more than one pass; BatchNorm in training mode
//! against the composed candle ops (values, statistics, gradients).
//!
//! Tolerances: ≤ 2e-5 of the largest magnitude of each compared tensor. Both sides are exact
//! sums of at most a few thousand f32 products; the vista side rounds in f32 in another order
//! (~1e-6 relative at these depths).

use candle_core::{Device, Tensor, Var, D};
use vista::train::conv;

fn var(shape: &[usize], seed: u64, scale: f32, offset: f32) -> Var {
    crate::common::pattern_var(shape, seed, scale, offset)
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

/// Largest difference relative to the largest magnitude of `want`.
fn rel_diff(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-12);
    got.iter().zip(want).map(|(g, w)| (*g as f64 - w).abs()).fold(0f64, f64::max) / scale
}

struct Direct {
    y: Vec<f64>,
    dx: Vec<f64>,
    dw: Vec<f64>,
}

/// Direct convolution of `x: [b, c, h, w]` by `wt: [o, c, k, k]` in f64, and for the loss
/// `Σ y ⊙ g` its gradients in `x` and `wt` (the adjoint, summed tap by tap).
#[allow(clippy::too_many_arguments)]
fn direct(
    x: &[f32],
    wt: &[f32],
    g: &[f32],
    (b, c, h, w): (usize, usize, usize, usize),
    o: usize,
    k: usize,
    s: usize,
    p: usize,
) -> Direct {
    let (ho, wo) = ((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1);
    let mut y = vec![0f64; b * o * ho * wo];
    let mut dx = vec![0f64; x.len()];
    let mut dw = vec![0f64; wt.len()];
    for bi in 0..b {
        for oi in 0..o {
            for oy in 0..ho {
                for ox in 0..wo {
                    let at = ((bi * o + oi) * ho + oy) * wo + ox;
                    let gv = g[at] as f64;
                    let mut acc = 0f64;
                    for ci in 0..c {
                        for ky in 0..k {
                            let iy = (oy * s + ky) as isize - p as isize;
                            if iy < 0 || iy >= h as isize {
                                continue;
                            }
                            for kx in 0..k {
                                let ix = (ox * s + kx) as isize - p as isize;
                                if ix < 0 || ix >= w as isize {
                                    continue;
                                }
                                let xi = ((bi * c + ci) * h + iy as usize) * w + ix as usize;
                                let wi = ((oi * c + ci) * k + ky) * k + kx;
                                acc += x[xi] as f64 * wt[wi] as f64;
                                dx[xi] += gv * wt[wi] as f64;
                                dw[wi] += gv * x[xi] as f64;
                            }
                        }
                    }
                    y[at] = acc;
                }
            }
        }
    }
    Direct { y, dx, dw }
}

fn check_conv((b, c, h, w): (usize, usize, usize, usize), o: usize, k: usize, s: usize, p: usize) {
    let what = format!("[{b}, {c}, {h}, {w}] * [{o}, {c}, {k}, {k}] stride {s} pad {p}");
    let x = var(&[b, c, h, w], 1, 1.5, 0.2);
    let wt = var(&[o, c, k, k], 2, 0.3, 0.0);
    let y = conv::conv2d(x.as_tensor(), wt.as_tensor(), s, p).unwrap();
    let (ho, wo) = ((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1);
    assert_eq!(y.dims(), [b, o, ho, wo], "{what}");
    let g = var(y.dims(), 3, 1.0, 0.1);
    let grads = y.mul(g.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap();
    let want = direct(&flat(x.as_tensor()), &flat(wt.as_tensor()), &flat(g.as_tensor()), (b, c, h, w), o, k, s, p);
    for (name, got, want) in [
        ("y", flat(&y), &want.y),
        ("dx", flat(grads.get(x.as_tensor()).unwrap()), &want.dx),
        ("dw", flat(grads.get(wt.as_tensor()).unwrap()), &want.dw),
    ] {
        let d = rel_diff(&got, want);
        assert!(d <= 2e-5, "{what}: {name} differs by {d:.2e} of its largest magnitude");
    }
}

#[test]
fn conv2d_matches_a_direct_convolution_and_its_adjoint() {
    check_conv((2, 3, 16, 16), 8, 7, 2, 3); // the stem
    check_conv((2, 6, 9, 9), 5, 3, 1, 1);
    check_conv((2, 6, 9, 8), 5, 3, 2, 1); // odd × even: candle's backward pads this wrongly
    check_conv((3, 4, 7, 10), 6, 3, 2, 0);
    check_conv((2, 8, 5, 6), 7, 1, 1, 0); // pointwise: no im2col
    check_conv((2, 8, 7, 6), 9, 1, 2, 0); // torchvision's strided shortcut
    check_conv((1, 3, 3, 3), 2, 3, 1, 1); // one image, smaller than the kernel's reach
}

#[test]
fn conv2d_backward_spans_several_im2col_passes() {
    // 16 × 16 × 576 values of im2col per image: fourteen images per 2M-value pass, thirty images.
    check_conv((30, 64, 16, 16), 4, 3, 1, 1);
}

#[test]
fn conv2d_refuses_mismatched_shapes() {
    let x = Tensor::zeros((1, 3, 8, 8), candle_core::DType::F32, &Device::Cpu).unwrap();
    for (w, s) in [((4, 2, 3, 3), 1), ((4, 3, 3, 2), 1), ((4, 3, 3, 3), 0), ((4, 3, 11, 11), 1)] {
        let w = Tensor::zeros(w, candle_core::DType::F32, &Device::Cpu).unwrap();
        let e = conv::conv2d(&x, &w, s, 0).unwrap_err().to_string();
        assert!(e.contains("conv2d"), "{e}");
    }
}

#[test]
fn batch_norm_train_matches_the_composed_op_with_gradients() {
    let (x, gamma, beta) = (var(&[3, 5, 4, 6], 4, 2.0, 0.7), var(&[5], 5, 0.5, 1.0), var(&[5], 6, 0.2, 0.0));
    let eps = 1e-5;
    let (y, mean, var_b) = conv::batch_norm_train(x.as_tensor(), gamma.as_tensor(), beta.as_tensor(), eps).unwrap();
    let (cm, cv, composed) = {
        let x = x.as_tensor();
        let n = (3 * 4 * 6) as f64;
        let mean = (x.sum_keepdim(0).unwrap().sum_keepdim(2).unwrap().sum_keepdim(3).unwrap() / n).unwrap();
        let c = x.broadcast_sub(&mean).unwrap();
        let v = (c.sqr().unwrap().sum_keepdim(0).unwrap().sum_keepdim(2).unwrap().sum_keepdim(3).unwrap() / n).unwrap();
        let xn = c.broadcast_div(&(&v + eps).unwrap().sqrt().unwrap()).unwrap();
        let y = xn
            .broadcast_mul(&gamma.as_tensor().reshape((1, 5, 1, 1)).unwrap())
            .unwrap()
            .broadcast_add(&beta.as_tensor().reshape((1, 5, 1, 1)).unwrap())
            .unwrap();
        (mean.flatten_all().unwrap(), v.flatten_all().unwrap(), y)
    };
    let close = |a: &Tensor, b: &Tensor| {
        let d: f32 =
            a.sub(b).unwrap().abs().unwrap().flatten_all().unwrap().max(D::Minus1).unwrap().to_scalar().unwrap();
        d
    };
    assert!(close(&y, &composed) < 2e-5, "y differs by {}", close(&y, &composed));
    assert!(close(&mean, &cm) < 2e-6 && close(&var_b, &cv) < 2e-5, "statistics differ");
    let w = var(y.dims(), 9, 1.0, 0.1);
    let gf = y.mul(w.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap();
    let gc = composed.mul(w.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap();
    for (name, v) in [("x", &x), ("gamma", &gamma), ("beta", &beta)] {
        let d = close(gf.get(v.as_tensor()).unwrap(), gc.get(v.as_tensor()).unwrap());
        assert!(d < 2e-5, "d{name} differs by {d}");
    }
}
