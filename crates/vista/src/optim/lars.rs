//! LARS (You et al., 2017) as DINO trains its ResNets with it: `main_dino.py --optimizer lars`,
//! `utils.LARS` ("almost copy-paste" of Barlow Twins' LARS). Per parameter tensor `p` with
//! gradient `g`, momentum buffer `μ` (zero at first), at learning rate `lr` and weight decay `λ`:
//!
//! ```text
//! if p is not 1-D:   d = g + λ·p
//!                    q = η·‖p‖ / ‖d‖   (1 when ‖p‖ = 0 or ‖d‖ = 0)
//!                    d = d · q
//! else:              d = g              (biases and norm gains: no decay, no adaptation)
//! μ ← m·μ + d
//! p ← p − lr·μ
//! ```
//!
//! with `m = 0.9`, `η = 0.001` (utils.LARS's defaults, which main_dino.py keeps); DINO sets
//! `λ` only on its regularised group (the other group's `weight_decay` is 0 — moot here, since the
//! 1-D tensors it holds take no decay either way). Arithmetic in f32 as torch's, the norms summed
//! in f64 (torch's CPU norm accumulates in a wider type for large tensors; the difference is an
//! ulp of the norm).

/// LARS's constants.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LarsConfig {
    /// Momentum `m`.
    pub momentum: f64,
    /// Trust coefficient `η`.
    pub eta: f64,
}

impl Default for LarsConfig {
    /// `utils.LARS`'s defaults: momentum 0.9, η 0.001.
    fn default() -> Self {
        Self { momentum: 0.9, eta: 0.001 }
    }
}

fn norm(x: &[f32]) -> f32 {
    x.iter().map(|&v| v as f64 * v as f64).sum::<f64>().sqrt() as f32
}

/// One LARS update of the tensor `p` (`ndim` dimensions) with gradient `g` and momentum buffer
/// `mu`, in place.
///
/// # Panics
/// If the slices differ in length.
pub fn update(p: &mut [f32], g: &[f32], mu: &mut [f32], ndim: usize, lr: f64, weight_decay: f64, cfg: &LarsConfig) {
    assert!(g.len() == p.len() && mu.len() == p.len(), "LARS: one gradient and buffer entry per parameter");
    let m = cfg.momentum as f32;
    let lr = lr as f32;
    if ndim == 1 {
        for ((p, &g), mu) in p.iter_mut().zip(g).zip(mu.iter_mut()) {
            *mu = *mu * m + g;
            *p -= lr * *mu;
        }
        return;
    }
    let wd = weight_decay as f32;
    let d: Vec<f32> = g.iter().zip(p.iter()).map(|(&g, &p)| g + wd * p).collect();
    let (pn, dn) = (norm(p), norm(&d));
    let q = if pn > 0.0 && dn > 0.0 { (cfg.eta as f32 * pn) / dn } else { 1.0 };
    for ((p, d), mu) in p.iter_mut().zip(d).zip(mu.iter_mut()) {
        *mu = *mu * m + d * q;
        *p -= lr * *mu;
    }
}
