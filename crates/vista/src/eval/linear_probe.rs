//! Linear probe: a linear classifier trained on frozen features, the second standard score of
//! self-supervised features after k-NN (DINO's `eval_linear.py` trains `nn.Linear(dim,
//! num_labels)` on frozen backbone features and reports top-1 / top-5).
//!
//! Plain f32 on slices, no autograd: logits `z = x·Wᵀ + b` (one GEMM), softmax cross-entropy
//! averaged over the batch, and its exact gradient written out — `∂L/∂z = (softmax(z) −
//! onehot(y)) / B`, `∂L/∂W = (∂L/∂z)ᵀ·x`, `∂L/∂b = Σᵢ ∂L/∂zᵢ`. Parameters as DINO initialises
//! them (weights `N(0, 0.01²)`, bias 0); optimiser [`AdamW`] as `torch.optim.AdamW`; learning rate
//! on DINO's cosine schedule over every step ([`cosine_scheduler`]), optionally after a linear
//! warmup;
//! mini-batches from a seeded shuffle ([`SplitMix64`]), the last one partial (`drop_last=False`).
//!
//! Where this departs from `eval_linear.py` (which uses SGD with momentum 0.9, no weight decay,
//! a per-epoch cosine over 100 epochs, and no feature normalisation): the optimiser is AdamW, the
//! cosine is stepped per mini-batch, and features are standardised by default
//! ([`FeatureNorm`]), which makes one learning rate fit features of any scale.

use crate::nn::gemm::{matmul, MatMut, MatRef, Parallelism};
use crate::optim::{cosine_scheduler, AdamW, AdamWConfig};
use crate::{Error, Result};

/// SplitMix64 (Steele, Lea & Flood 2014; the generator `java.util.SplittableRandom` and the
/// xoshiro authors' seeding use): a 64-bit state advanced by the golden-ratio increment and
/// mixed by two multiply-xorshift rounds. Small, fast, statistically sound for shuffling and
/// initialisation, and the same sequence on every platform for a seed.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator whose state starts at `seed` (any value, 0 included).
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `0..n` (Lemire's multiply-shift; the bias, below n / 2⁶⁴, is negligible).
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }

    /// Standard normal (Box–Muller, one of the pair).
    pub fn next_normal(&mut self) -> f64 {
        let u1 = 1.0 - self.next_f64(); // (0, 1]: ln is finite
        let u2 = self.next_f64();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// Fisher–Yates shuffle in place.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i + 1));
        }
    }
}

/// How features are transformed before the classifier (fitted on the training features, then
/// applied unchanged to any features the probe scores).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FeatureNorm {
    /// Use the features as they are (DINO's `eval_linear.py`).
    None,
    /// Each row divided by its L2 norm (as the k-NN evaluation).
    L2,
    /// Each dimension shifted by its training mean and divided by its training standard
    /// deviation (population; a constant dimension is divided by 1, as scikit-learn's
    /// `StandardScaler`).
    #[default]
    Standardize,
}

/// Training settings of [`LinearProbe::train`].
#[derive(Debug, Clone, PartialEq)]
pub struct LinearProbeConfig {
    /// Passes over the training set (DINO: 100).
    pub epochs: usize,
    /// Mini-batch size; the last batch of an epoch may be smaller.
    pub batch_size: usize,
    /// Peak learning rate (AdamW's usual 1e-3).
    pub lr: f64,
    /// Learning rate the cosine ends at.
    pub min_lr: f64,
    /// Epochs of linear warmup before the cosine.
    pub warmup_epochs: usize,
    /// AdamW's decoupled weight decay (DINO's linear eval: 0), applied to the bias too.
    pub weight_decay: f64,
    /// AdamW's β₁ (0.9).
    pub beta1: f64,
    /// AdamW's β₂ (0.999).
    pub beta2: f64,
    /// AdamW's ε (1e-8).
    pub eps: f64,
    /// Standard deviation of the initial weights (DINO: 0.01; the bias starts at 0).
    pub init_std: f64,
    /// Seeds the initialisation and the shuffles.
    pub seed: u64,
    /// Feature transform fitted on the training features (default: standardise).
    pub normalization: FeatureNorm,
}

impl Default for LinearProbeConfig {
    fn default() -> Self {
        Self {
            epochs: 100,
            batch_size: 256,
            lr: 1e-3,
            min_lr: 0.0,
            warmup_epochs: 0,
            weight_decay: 0.0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            init_std: 0.01,
            seed: 0,
            normalization: FeatureNorm::default(),
        }
    }
}

/// What training recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainReport {
    /// Mean cross-entropy over each epoch's samples (as the parameters were when each batch was
    /// scored).
    pub epoch_losses: Vec<f64>,
    /// Optimiser steps taken.
    pub steps: usize,
}

/// A trained linear classifier with its feature normalisation.
#[derive(Debug, Clone, PartialEq)]
pub struct LinearProbe {
    /// Feature width.
    pub dim: usize,
    /// Number of classes (logits per sample).
    pub num_classes: usize,
    /// `[num_classes, dim]`, row-major (as `nn.Linear.weight`).
    pub weights: Vec<f32>,
    /// `[num_classes]`.
    pub bias: Vec<f32>,
    /// The feature transform applied before the classifier.
    pub normalization: FeatureNorm,
    /// Per-dimension training mean for [`FeatureNorm::Standardize`] (empty otherwise).
    pub mean: Vec<f32>,
    /// Per-dimension divisor for [`FeatureNorm::Standardize`] (empty otherwise).
    pub scale: Vec<f32>,
}

impl LinearProbe {
    /// Trains on `features` (row-major, `dim` wide) with `labels` below `num_classes`.
    pub fn train(
        features: &[f32],
        labels: &[usize],
        dim: usize,
        num_classes: usize,
        config: &LinearProbeConfig,
    ) -> Result<(Self, TrainReport)> {
        let n = check_features("features", features, dim)?;
        if labels.len() != n {
            return Err(Error::arg("labels", format!("{} labels for {n} features", labels.len())));
        }
        if n == 0 {
            return Err(Error::arg("features", "no training features"));
        }
        if num_classes == 0 {
            return Err(Error::arg("num_classes", "must be positive"));
        }
        if let Some(i) = labels.iter().position(|&l| l >= num_classes) {
            return Err(Error::arg("labels", format!("label {} at {i} is not below {num_classes}", labels[i])));
        }
        if config.batch_size == 0 {
            return Err(Error::arg("batch_size", "must be positive"));
        }
        if !(config.lr.is_finite() && config.lr >= 0.0) {
            return Err(Error::arg("lr", format!("{} is not a non-negative number", config.lr)));
        }

        let mut rng = SplitMix64::new(config.seed);
        let weights = (0..num_classes * dim).map(|_| (rng.next_normal() * config.init_std) as f32).collect();
        let mut probe = LinearProbe {
            dim,
            num_classes,
            weights,
            bias: vec![0.0; num_classes],
            normalization: config.normalization,
            mean: Vec::new(),
            scale: Vec::new(),
        };
        if config.normalization == FeatureNorm::Standardize {
            let (mean, scale) = standardization(features, dim);
            probe.mean = mean;
            probe.scale = scale;
        }
        let x = probe.normalized(features);

        // Parameters as one vector, weights then bias, so AdamW sees what `parameters()` gives.
        let n_w = num_classes * dim;
        let mut params = [probe.weights.as_slice(), probe.bias.as_slice()].concat();
        let mut grads = vec![0f32; params.len()];
        let adam = AdamWConfig { betas: (config.beta1, config.beta2), eps: config.eps };
        let mut opt = AdamW::new(params.len(), adam, config.weight_decay);
        let steps_per_epoch = n.div_ceil(config.batch_size);
        let lrs =
            cosine_scheduler(config.lr, config.min_lr, config.epochs, steps_per_epoch, config.warmup_epochs, 0.0)?;

        let mut order: Vec<usize> = (0..n).collect();
        let mut xb = vec![0f32; config.batch_size * dim];
        let mut dz = vec![0f32; config.batch_size * num_classes];
        let mut epoch_losses = Vec::with_capacity(config.epochs);
        let mut step = 0;
        for _ in 0..config.epochs {
            rng.shuffle(&mut order);
            let mut loss_sum = 0f64;
            for batch in order.chunks(config.batch_size) {
                let b = batch.len();
                for (dst, &i) in xb.chunks_exact_mut(dim).zip(batch) {
                    dst.copy_from_slice(&x[i * dim..(i + 1) * dim]);
                }
                let (w, bias) = params.split_at(n_w);
                let z = &mut dz[..b * num_classes];
                logits_into(&xb[..b * dim], w, bias, dim, num_classes, z);
                // Softmax cross-entropy and its gradient with respect to the logits, in place.
                for (row, &i) in z.chunks_exact_mut(num_classes).zip(batch) {
                    let y = labels[i];
                    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let zy = row[y] - max;
                    let mut sum = 0f32;
                    for v in row.iter_mut() {
                        *v = (*v - max).exp();
                        sum += *v;
                    }
                    loss_sum += sum.ln() as f64 - zy as f64;
                    for v in row.iter_mut() {
                        *v /= sum * b as f32;
                    }
                    row[y] -= 1.0 / b as f32;
                }
                let (gw, gb) = grads.split_at_mut(n_w);
                matmul(
                    MatMut::row_major(gw, num_classes, dim),
                    MatRef::row_major(z, b, num_classes).t(),
                    MatRef::row_major(&xb[..b * dim], b, dim),
                    1.0,
                    false,
                    Parallelism::None,
                );
                gb.fill(0.0);
                for row in z.chunks_exact(num_classes) {
                    for (g, &d) in gb.iter_mut().zip(row) {
                        *g += d;
                    }
                }
                opt.step(&mut params, &grads, lrs[step]);
                step += 1;
            }
            epoch_losses.push(loss_sum / n as f64);
        }
        let (w, b) = params.split_at(n_w);
        probe.weights = w.to_vec();
        probe.bias = b.to_vec();
        Ok((probe, TrainReport { epoch_losses, steps: step }))
    }

    /// Logits `[rows, num_classes]` for `features` (normalised as in training first).
    pub fn logits(&self, features: &[f32]) -> Result<Vec<f32>> {
        let n = check_features("features", features, self.dim)?;
        let x = self.normalized(features);
        let mut out = vec![0f32; n * self.num_classes];
        for (xs, zs) in x.chunks(1024 * self.dim).zip(out.chunks_mut(1024 * self.num_classes)) {
            logits_into(xs, &self.weights, &self.bias, self.dim, self.num_classes, zs);
        }
        Ok(out)
    }

    /// Per row, the best `min(width, num_classes)` classes by logit, best first (equal logits:
    /// lower class first).
    pub fn predict(&self, features: &[f32], width: usize) -> Result<Vec<Vec<usize>>> {
        let z = self.logits(features)?;
        let width = width.min(self.num_classes);
        Ok(z.chunks_exact(self.num_classes)
            .map(|row| {
                let mut idx: Vec<usize> = (0..self.num_classes).collect();
                idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
                idx.truncate(width);
                idx
            })
            .collect())
    }

    /// Top-1 and top-5 accuracy in percent (DINO's `accuracy(output, target, topk=(1, 5))`;
    /// top-5 is top-`num_classes` below five classes).
    pub fn evaluate(&self, features: &[f32], labels: &[usize]) -> Result<(f64, f64)> {
        let ranked = self.predict(features, 5)?;
        if labels.len() != ranked.len() {
            return Err(Error::arg("labels", format!("{} labels for {} features", labels.len(), ranked.len())));
        }
        if labels.is_empty() {
            return Err(Error::arg("labels", "no test samples"));
        }
        let top1 = ranked.iter().zip(labels).filter(|(r, &l)| r[0] == l).count();
        let top5 = ranked.iter().zip(labels).filter(|(r, l)| r.contains(l)).count();
        let total = labels.len() as f64;
        Ok((top1 as f64 * 100.0 / total, top5 as f64 * 100.0 / total))
    }

    fn normalized(&self, features: &[f32]) -> Vec<f32> {
        let mut x = features.to_vec();
        match self.normalization {
            FeatureNorm::None => {}
            FeatureNorm::L2 => super::knn::normalize_rows(&mut x, self.dim),
            FeatureNorm::Standardize => {
                for row in x.chunks_exact_mut(self.dim) {
                    for ((v, m), s) in row.iter_mut().zip(&self.mean).zip(&self.scale) {
                        *v = (*v - m) / s;
                    }
                }
            }
        }
        x
    }
}

fn check_features(name: &str, features: &[f32], dim: usize) -> Result<usize> {
    if dim == 0 {
        return Err(Error::arg("dim", "must be positive"));
    }
    if !features.len().is_multiple_of(dim) {
        return Err(Error::arg(name, format!("{} values are not rows of {dim}", features.len())));
    }
    if let Some(i) = features.iter().position(|v| !v.is_finite()) {
        return Err(Error::arg(name, format!("row {} holds a non-finite value ({})", i / dim, features[i])));
    }
    Ok(features.len() / dim)
}

/// Per-dimension mean and population standard deviation (1 where it is 0), in f64.
fn standardization(features: &[f32], dim: usize) -> (Vec<f32>, Vec<f32>) {
    let n = (features.len() / dim) as f64;
    let mut mean = vec![0f64; dim];
    for row in features.chunks_exact(dim) {
        for (m, &v) in mean.iter_mut().zip(row) {
            *m += v as f64;
        }
    }
    mean.iter_mut().for_each(|m| *m /= n);
    let mut var = vec![0f64; dim];
    for row in features.chunks_exact(dim) {
        for ((s, &v), m) in var.iter_mut().zip(row).zip(&mean) {
            *s += (v as f64 - m).powi(2);
        }
    }
    let scale = var.iter().map(|s| if *s > 0.0 { (s / n).sqrt() as f32 } else { 1.0 }).collect();
    (mean.into_iter().map(|m| m as f32).collect(), scale)
}

/// `z = x·Wᵀ + b` for `x` of `rows × dim`, `W` of `num_classes × dim`.
fn logits_into(x: &[f32], w: &[f32], bias: &[f32], dim: usize, num_classes: usize, z: &mut [f32]) {
    let rows = x.len() / dim;
    for row in z.chunks_exact_mut(num_classes) {
        row.copy_from_slice(bias);
    }
    // SAFETY: x is rows × dim row-major, w num_classes × dim row-major (read transposed), z rows ×
    // num_classes row-major.
    matmul(
        MatMut::row_major(z, rows, num_classes),
        MatRef::row_major(x, rows, dim),
        MatRef::row_major(w, num_classes, dim).t(),
        1.0,
        true,
        Parallelism::None,
    );
}
