//! `torch.optim.AdamW` (Loshchilov & Hutter's decoupled weight decay), the single-tensor path
//! with `amsgrad=False`, `maximize=False`: one update kernel ([`update`]) that every optimiser of
//! vista runs — the linear probe's flat [`AdamW`] and DINO's parameter-group optimiser
//! (`train::dino::AdamW`). Per step `t` (from 1), for parameters `p` and gradients `g`:
//!
//! ```text
//! p ← p · (1 − lr·λ)                      decoupled weight decay
//! m ← m + (1 − β₁)(g − m)                 (torch: exp_avg.lerp_(g, 1 − β₁))
//! v ← β₂·v + (1 − β₂)·g²
//! p ← p − lr / (1 − β₁ᵗ) · m / (√v / √(1 − β₂ᵗ) + ε)
//! ```
//!
//! The scalars are formed in f64 and rounded to f32 as torch forms them from Python floats
//! ([`Scalars`]); the element-wise updates are f32, in the order of the candle-op sequence DINO
//! runs on other devices (so both paths give the same bits). Results agree with torch's to a few
//! ulp, not bit for bit: torch's CPU kernels fuse the moment updates into FMAs (plain
//! multiply-adds here, which vectorise) and take the square root from MKL, ±1 ulp off the
//! correctly rounded one used here.

use rayon::prelude::*;

use crate::nn::cpu::with_simd;

/// AdamW's hyper-parameters besides the learning rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    /// `(β₁, β₂)`.
    pub betas: (f64, f64),
    /// ε added to the denominator.
    pub eps: f64,
}

impl Default for AdamWConfig {
    /// torch's defaults: β = (0.9, 0.999), ε = 1e-8.
    fn default() -> Self {
        Self { betas: (0.9, 0.999), eps: 1e-8 }
    }
}

/// The scalars of one update, formed in f64 as torch forms them and rounded to f32.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scalars {
    /// `1 − lr·λ`.
    pub decay: f32,
    /// Whether `λ ≠ 0` (torch skips the decay multiply then).
    pub apply_decay: bool,
    /// `1 − β₁`.
    pub w1: f32,
    /// `β₂`.
    pub b2: f32,
    /// `1 − β₂`.
    pub w2: f32,
    /// `√(1 − β₂ᵗ)`.
    pub bias_correction2_sqrt: f32,
    /// ε.
    pub eps: f32,
    /// `lr / (1 − β₁ᵗ)`.
    pub step_size: f32,
}

impl Scalars {
    /// The scalars of step `step` (from 1) at learning rate `lr` and weight decay `weight_decay`.
    pub fn new(config: &AdamWConfig, lr: f64, weight_decay: f64, step: u64) -> Self {
        let (beta1, beta2) = config.betas;
        let t = step as i32;
        Self {
            decay: (1.0 - lr * weight_decay) as f32,
            apply_decay: weight_decay != 0.0,
            w1: (1.0 - beta1) as f32,
            b2: beta2 as f32,
            w2: (1.0 - beta2) as f32,
            bias_correction2_sqrt: (1.0 - beta2.powi(t)).sqrt() as f32,
            eps: config.eps as f32,
            step_size: (lr / (1.0 - beta1.powi(t))) as f32,
        }
    }
}

/// One AdamW update of `p` with gradient `g` and moments `m`, `v`, in place, in one pass over
/// the four arrays (parallel chunks, AVX-512 where the CPU has it).
///
/// # Panics
/// If the slices differ in length.
pub fn update(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], s: &Scalars) {
    assert!(
        g.len() == p.len() && m.len() == p.len() && v.len() == p.len(),
        "AdamW: one gradient and moment per parameter"
    );
    const CHUNK: usize = 16 * 1024;
    p.par_chunks_mut(CHUNK)
        .zip(g.par_chunks(CHUNK))
        .zip(m.par_chunks_mut(CHUNK))
        .zip(v.par_chunks_mut(CHUNK))
        .for_each(|(((p, g), m), v)| update_serial(p, g, m, v, s));
}

/// [`update`] on the calling thread (for short slices, e.g. one row of a matrix): the same f32
/// operations on every element, so the same bits.
///
/// # Panics
/// If the slices differ in length.
pub fn update_serial(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], s: &Scalars) {
    assert!(
        g.len() == p.len() && m.len() == p.len() && v.len() == p.len(),
        "AdamW: one gradient and moment per parameter"
    );
    kernel(p, |i| g[i], m, v, s);
}

/// [`update`] with a zero gradient, on the calling thread, with the same bits.
///
/// # Panics
/// If the slices differ in length.
pub fn update_zero_grad(p: &mut [f32], m: &mut [f32], v: &mut [f32], s: &Scalars) {
    assert!(m.len() == p.len() && v.len() == p.len(), "AdamW: one moment per parameter");
    kernel(p, |_| 0.0, m, v, s);
}

/// The element-wise update, the gradient of element `i` being `g(i)` (inlined: a slice read or
/// a constant zero, vectorised either way).
#[inline(always)]
fn kernel(p: &mut [f32], g: impl Fn(usize) -> f32, m: &mut [f32], v: &mut [f32], s: &Scalars) {
    let s = *s;
    with_simd(
        #[inline(always)]
        || {
            for i in 0..p.len() {
                let pi = if s.apply_decay { p[i] * s.decay + 0.0 } else { p[i] };
                let gi = g(i);
                let mi = m[i] + ((gi - m[i]) * s.w1 + 0.0);
                let vi = (v[i] * s.b2 + 0.0) + (gi * gi * s.w2 + 0.0);
                let denom = (vi.sqrt() / s.bias_correction2_sqrt) * 1.0 + s.eps;
                p[i] = pi - ((mi / denom) * s.step_size + 0.0);
                m[i] = mi;
                v[i] = vi;
            }
        },
    )
}

/// [`update_zero_grad`] where both moments are zero (a row that never had a gradient), with the
/// same bits: the moments stay zero and `m / (√v / … + ε)` is zero, so only the decoupled decay
/// `p · (1 − lr·λ)` moves `p`.
pub fn update_zero_grad_zero_moments(p: &mut [f32], s: &Scalars) {
    if !s.apply_decay {
        return;
    }
    let d = s.decay;
    with_simd(
        #[inline(always)]
        || {
            for x in p.iter_mut() {
                *x = *x * d + 0.0;
            }
        },
    )
}

/// AdamW over one flat parameter vector (the linear probe's weights and bias), with its state.
#[derive(Debug, Clone)]
pub struct AdamW {
    /// β and ε.
    pub config: AdamWConfig,
    /// Decoupled weight decay λ (multiplied by the step's learning rate).
    pub weight_decay: f64,
    step: u64,
    exp_avg: Vec<f32>,
    exp_avg_sq: Vec<f32>,
}

impl AdamW {
    /// State for `len` parameters (moments at zero, no step taken).
    pub fn new(len: usize, config: AdamWConfig, weight_decay: f64) -> Self {
        Self { config, weight_decay, step: 0, exp_avg: vec![0.0; len], exp_avg_sq: vec![0.0; len] }
    }

    /// Steps taken so far.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// One update of `params` from `grads` at learning rate `lr`.
    ///
    /// # Panics
    /// If the parameter count changed or `grads` has another length.
    pub fn step(&mut self, params: &mut [f32], grads: &[f32], lr: f64) {
        assert_eq!(params.len(), self.exp_avg.len(), "AdamW: parameter count changed");
        self.step += 1;
        let s = Scalars::new(&self.config, lr, self.weight_decay, self.step);
        update(params, grads, &mut self.exp_avg, &mut self.exp_avg_sq, &s);
    }
}
