//! Which classifier fits a labelled set best: the few-shot methods of the CLIP / DINO
//! literature on precomputed features, scored by stratified k-fold cross-validation with their
//! hyper-parameters chosen by an inner cross-validation on each training part.
//!
//! Methods ([`Method`]): DINO's weighted k-NN (k and T by inner CV), multinomial logistic
//! regression with an L2 penalty (the CLIP paper's linear probe, `C` by inner CV, fitted to
//! convergence by L-BFGS), CLIP zero-shot (class-prompt text embeddings), Tip-Adapter (Zhang et
//! al. 2022: the training features as a key-value cache added to the zero-shot logits; α and β by
//! inner CV) and a WiSE-FT-style interpolation of the zero-shot head and the probe (α by inner
//! CV). Features are L2-normalised rows throughout (cosine geometry, as both k-NN and CLIP's
//! heads use them).

use super::knn::{knn_predict, normalize_rows, KnnOptions};
use super::linear_probe::SplitMix64;
use crate::nn::gemm::{matmul, MatMut, MatRef, Parallelism};
use crate::{Error, Result};

/// A classifier family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// DINO's weighted k-NN (`exp(s / T)` votes of the `k` most similar training images).
    Knn,
    /// Multinomial logistic regression, L2-penalised (`C · Σ CE + ½‖W‖²`, as scikit-learn).
    Logistic,
    /// CLIP zero-shot: the class whose prompt embedding is most similar (no training images).
    ZeroShot,
    /// Tip-Adapter: `100 · x·Tᵀ + α · exp(−β (1 − x·Fᵀ)) · L` (training features `F`, one-hot `L`).
    TipAdapter,
    /// WiSE-FT-style blend of heads: `W = (1 − α) · 100 · T + α · W_probe`, `b = α · b_probe`.
    Blend,
}

impl Method {
    /// Every method, in report order.
    pub const ALL: [Method; 5] = [Method::ZeroShot, Method::Knn, Method::Logistic, Method::TipAdapter, Method::Blend];

    /// The method's name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Method::Knn => "knn",
            Method::Logistic => "logistic",
            Method::ZeroShot => "zero-shot",
            Method::TipAdapter => "tip-adapter",
            Method::Blend => "blend",
        }
    }

    /// Whether it needs the class prompts' text embeddings (a CLIP backbone).
    pub fn needs_text(self) -> bool {
        matches!(self, Method::ZeroShot | Method::TipAdapter | Method::Blend)
    }
}

/// Normalised features of a labelled set, in memory.
#[derive(Debug, Clone)]
pub struct Features {
    /// Row width.
    pub dim: usize,
    /// `[n, dim]`, rows L2-normalised.
    pub rows: Vec<f32>,
    /// Class index per row.
    pub labels: Vec<usize>,
    /// Number of classes.
    pub classes: usize,
}

impl Features {
    /// Features from raw rows (normalised here); labels below `classes`.
    pub fn new(dim: usize, mut rows: Vec<f32>, labels: Vec<usize>, classes: usize) -> Result<Self> {
        if dim == 0 || rows.len() != labels.len() * dim {
            return Err(Error::arg("features", format!("{} values for {} rows of {dim}", rows.len(), labels.len())));
        }
        if let Some(&l) = labels.iter().find(|&&l| l >= classes) {
            return Err(Error::arg("labels", format!("label {l} with {classes} classes")));
        }
        normalize_rows(&mut rows, dim);
        Ok(Self { dim, rows, labels, classes })
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True without rows.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The rows at `idx`.
    pub fn select(&self, idx: &[usize]) -> Features {
        let rows = idx.iter().flat_map(|&i| self.rows[i * self.dim..(i + 1) * self.dim].iter().copied()).collect();
        let labels = idx.iter().map(|&i| self.labels[i]).collect();
        Features { dim: self.dim, rows, labels, classes: self.classes }
    }

    fn row(&self, i: usize) -> &[f32] {
        &self.rows[i * self.dim..(i + 1) * self.dim]
    }
}

/// Stratified fold assignment: each class's rows shuffled (seeded) and dealt round-robin over
/// `folds` folds, so every fold holds each class's share. Rows of a class with a single image
/// get no fold (`None`): they only ever train, since no fold could test them against a training
/// example of their own class.
pub fn stratified_folds(labels: &[usize], classes: usize, folds: usize, seed: u64) -> Vec<Option<usize>> {
    let mut out = vec![None; labels.len()];
    let mut rng = SplitMix64::new(seed);
    for c in 0..classes {
        let mut rows: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == c).collect();
        if rows.len() < 2 {
            continue;
        }
        rng.shuffle(&mut rows);
        for (j, &i) in rows.iter().enumerate() {
            out[i] = Some(j % folds);
        }
    }
    out
}

/// Hyper-parameters of one fitted method.
#[derive(Debug, Clone, PartialEq)]
pub enum Params {
    /// k-NN.
    Knn {
        /// Neighbours.
        k: usize,
        /// Vote temperature.
        t: f32,
    },
    /// Logistic regression.
    Logistic {
        /// Inverse regularisation strength.
        c: f64,
    },
    /// Zero-shot: nothing to choose.
    ZeroShot,
    /// Tip-Adapter.
    TipAdapter {
        /// Cache weight.
        alpha: f32,
        /// Cache sharpness.
        beta: f32,
    },
    /// The blend of heads.
    Blend {
        /// The probe's share.
        alpha: f32,
        /// The probe's `C`.
        c: f64,
    },
}

impl std::fmt::Display for Params {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Params::Knn { k, t } => write!(f, "k={k} T={t}"),
            Params::Logistic { c } => write!(f, "C={c}"),
            Params::ZeroShot => write!(f, "-"),
            Params::TipAdapter { alpha, beta } => write!(f, "alpha={alpha} beta={beta}"),
            Params::Blend { alpha, c } => write!(f, "alpha={alpha} C={c}"),
        }
    }
}

/// The searched grids.
pub const KNN_KS: [usize; 6] = [1, 3, 5, 10, 20, 50];
/// k-NN temperatures searched.
pub const KNN_TS: [f32; 3] = [0.02, 0.07, 0.2];
/// Logistic-regression `C`s searched (the CLIP paper sweeps `C` on a log scale).
pub const LOGISTIC_CS: [f64; 9] = [0.1, 0.316, 1.0, 3.16, 10.0, 31.6, 100.0, 316.0, 1000.0];
/// Tip-Adapter's α searched.
pub const TIP_ALPHAS: [f32; 4] = [0.5, 1.0, 2.0, 5.0];
/// Tip-Adapter's β searched (5.5 is the paper's default).
pub const TIP_BETAS: [f32; 4] = [1.0, 3.0, 5.5, 10.0];
/// Blend shares searched (0 = zero-shot, 1 = the probe).
pub const BLEND_ALPHAS: [f32; 5] = [0.0, 0.25, 0.5, 0.75, 1.0];
/// CLIP's logit scale for the zero-shot head (the released models' learned 100).
pub const ZERO_SHOT_SCALE: f32 = 100.0;

/// A multinomial linear head: `logits = x·Wᵀ + b`.
#[derive(Debug, Clone, PartialEq)]
pub struct LinearHead {
    /// `[classes, dim]`.
    pub weight: Vec<f32>,
    /// `[classes]`.
    pub bias: Vec<f32>,
    /// Row width.
    pub dim: usize,
}

impl LinearHead {
    /// The zero-shot head of class text embeddings `text` (`[classes, dim]`, normalised here).
    pub fn zero_shot(text: &[f32], dim: usize) -> Self {
        let mut w = text.to_vec();
        normalize_rows(&mut w, dim);
        let classes = w.len() / dim;
        Self { weight: w.iter().map(|v| v * ZERO_SHOT_SCALE).collect(), bias: vec![0.0; classes], dim }
    }

    /// Number of classes.
    pub fn classes(&self) -> usize {
        self.bias.len()
    }

    /// Logits of one row.
    pub fn logits(&self, x: &[f32]) -> Vec<f32> {
        self.weight.chunks_exact(self.dim).zip(&self.bias).map(|(w, b)| dot(w, x) + b).collect()
    }

    /// `(1 − α) · self + α · other`.
    pub fn interpolate(&self, other: &LinearHead, alpha: f32) -> LinearHead {
        let mix = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (1.0 - alpha) * x + alpha * y).collect();
        LinearHead { weight: mix(&self.weight, &other.weight), bias: mix(&self.bias, &other.bias), dim: self.dim }
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}

/// Multinomial logistic regression minimising `C · Σᵢ CE(xᵢ, yᵢ) + ½‖W‖²` (the bias is not
/// penalised, as scikit-learn's `lbfgs`), by L-BFGS (10 pairs, Armijo backtracking) until the
/// gradient's max-norm is below `1e-5 · max(1, |f|)`, the objective stops moving (relative
/// 1e-10) or 1,000 iterations; the two products per evaluation are f32 GEMMs, the rest f64.
pub fn logistic_regression(train: &Features, c: f64) -> LinearHead {
    head_of(&logistic_params(train, c, None), train.dim, train.classes)
}

fn head_of(p: &[f64], d: usize, k: usize) -> LinearHead {
    LinearHead {
        weight: p[..k * d].iter().map(|&v| v as f32).collect(),
        bias: p[k * d..].iter().map(|&v| v as f32).collect(),
        dim: d,
    }
}

/// The fitted parameters `[W (k·d); b (k)]` of [`logistic_regression`], from `init` when given
/// (a neighbouring `C`'s solution: the optimum is the same, reached in fewer steps).
fn logistic_params(train: &Features, c: f64, init: Option<&[f64]>) -> Vec<f64> {
    let (d, k) = (train.dim, train.classes);
    let n_params = k * d + k;
    let n = train.len();
    let par = Parallelism::Rayon(rayon::current_num_threads());
    let objective = |p: &[f64], grad: &mut [f64]| -> f64 {
        let (w, b) = p.split_at(k * d);
        let w32: Vec<f32> = w.iter().map(|&v| v as f32).collect();
        // Z = X·Wᵀ (f32 GEMM), then the softmax, loss and residual C·(P − Y) per row in f64.
        let mut z = vec![0f32; n * k];
        matmul(
            MatMut::row_major(&mut z, n, k),
            MatRef::row_major(&train.rows, n, d),
            MatRef::row_major(&w32, k, d).t(),
            1.0,
            false,
            par,
        );
        let mut residual = vec![0f32; n * k];
        let mut loss = 0.0;
        grad[k * d..].fill(0.0);
        let mut zi = vec![0f64; k];
        for i in 0..n {
            for j in 0..k {
                zi[j] = f64::from(z[i * k + j]) + b[j];
            }
            let m = zi.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let s: f64 = zi.iter().map(|v| (v - m).exp()).sum();
            let y = train.labels[i];
            loss += c * (m + s.ln() - zi[y]);
            for j in 0..k {
                let g = c * ((zi[j] - m).exp() / s - if j == y { 1.0 } else { 0.0 });
                residual[i * k + j] = g as f32;
                grad[k * d + j] += g;
            }
        }
        // ∂/∂W = Rᵀ·X + W.
        let mut gw = vec![0f32; k * d];
        matmul(
            MatMut::row_major(&mut gw, k, d),
            MatRef::row_major(&residual, n, k).t(),
            MatRef::row_major(&train.rows, n, d),
            1.0,
            false,
            par,
        );
        for ((g, &r), &wv) in grad[..k * d].iter_mut().zip(&gw).zip(w) {
            *g = f64::from(r) + wv;
        }
        loss + 0.5 * w.iter().map(|v| v * v).sum::<f64>()
    };
    let start = init.map(<[f64]>::to_vec).unwrap_or_else(|| vec![0.0; n_params]);
    lbfgs(start, objective, 1000, 1e-5)
}

/// Minimises a smooth convex `f` from `x` (L-BFGS, 10 correction pairs).
fn lbfgs(mut x: Vec<f64>, mut f: impl FnMut(&[f64], &mut [f64]) -> f64, max_iter: usize, tol: f64) -> Vec<f64> {
    let n = x.len();
    let mut g = vec![0.0; n];
    let mut fx = f(&x, &mut g);
    let mut history: std::collections::VecDeque<(Vec<f64>, Vec<f64>, f64)> = std::collections::VecDeque::new();
    let mut g_new = vec![0.0; n];
    for _ in 0..max_iter {
        if g.iter().fold(0f64, |m, v| m.max(v.abs())) <= tol * fx.abs().max(1.0) {
            break;
        }
        // Two-loop recursion: direction = -H·g.
        let mut q = g.clone();
        let mut alphas = Vec::with_capacity(history.len());
        for (s, y, rho) in history.iter().rev() {
            let a = rho * dot64(s, &q);
            q.iter_mut().zip(y).for_each(|(qi, yi)| *qi -= a * yi);
            alphas.push(a);
        }
        let gamma = history
            .back()
            .map(|(s, y, _)| dot64(s, y) / dot64(y, y))
            .unwrap_or(1.0 / g.iter().map(|v| v.abs()).sum::<f64>().max(1.0));
        q.iter_mut().for_each(|v| *v *= gamma);
        for ((s, y, rho), a) in history.iter().zip(alphas.iter().rev()) {
            let b = rho * dot64(y, &q);
            q.iter_mut().zip(s).for_each(|(qi, si)| *qi += (a - b) * si);
        }
        let dir: Vec<f64> = q.iter().map(|v| -v).collect();
        let slope = dot64(&g, &dir);
        if slope >= 0.0 {
            history.clear();
            continue;
        }
        let mut step = 1.0;
        let mut x_new = vec![0.0; n];
        let mut f_new;
        loop {
            x_new.iter_mut().zip(&x).zip(&dir).for_each(|((xn, xi), di)| *xn = xi + step * di);
            f_new = f(&x_new, &mut g_new);
            if f_new <= fx + 1e-4 * step * slope || step < 1e-12 {
                break;
            }
            step *= 0.5;
        }
        let s: Vec<f64> = x_new.iter().zip(&x).map(|(a, b)| a - b).collect();
        let y: Vec<f64> = g_new.iter().zip(&g).map(|(a, b)| a - b).collect();
        let sy = dot64(&s, &y);
        if sy > 1e-12 {
            if history.len() == 10 {
                history.pop_front();
            }
            history.push_back((s, y, 1.0 / sy));
        }
        let done = (fx - f_new).abs() <= 1e-10 * fx.abs().max(1.0);
        x.copy_from_slice(&x_new);
        g.copy_from_slice(&g_new);
        fx = f_new;
        if done {
            break;
        }
    }
    x
}

fn dot64(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Tip-Adapter's logits for `test` rows: `100 · x·Tᵀ + α · exp(−β (1 − x·Fᵀ)) · L`.
pub fn tip_adapter_logits(
    zero_shot: &LinearHead,
    cache: &Features,
    test: &Features,
    alpha: f32,
    beta: f32,
) -> Vec<Vec<f32>> {
    (0..test.len())
        .map(|i| {
            let x = test.row(i);
            let mut logits = zero_shot.logits(x);
            for j in 0..cache.len() {
                let a = (-beta * (1.0 - dot(x, cache.row(j)))).exp();
                logits[cache.labels[j]] += alpha * a;
            }
            logits
        })
        .collect()
}

/// The predictions of a fitted method on `test`.
fn predict(
    method: Method,
    params: &Params,
    train: &Features,
    test: &Features,
    text: Option<&LinearHead>,
) -> Result<Vec<usize>> {
    Ok(match (method, params) {
        (Method::Knn, Params::Knn { k, t }) => {
            let options = KnnOptions { ks: vec![(*k).min(train.len())], temperature: *t, ..Default::default() };
            let p = knn_predict(&train.rows, &train.labels, &test.rows, train.dim, train.classes, &options)?;
            p[0].rankings.iter().map(|r| r[0]).collect()
        }
        (Method::Logistic, Params::Logistic { c }) => {
            let head = logistic_regression(train, *c);
            (0..test.len()).map(|i| argmax(&head.logits(test.row(i)))).collect()
        }
        (Method::ZeroShot, _) => {
            let head = text.ok_or_else(|| Error::arg("method", "zero-shot needs a CLIP backbone"))?;
            (0..test.len()).map(|i| argmax(&head.logits(test.row(i)))).collect()
        }
        (Method::TipAdapter, Params::TipAdapter { alpha, beta }) => {
            let head = text.ok_or_else(|| Error::arg("method", "Tip-Adapter needs a CLIP backbone"))?;
            tip_adapter_logits(head, train, test, *alpha, *beta).iter().map(|l| argmax(l)).collect()
        }
        (Method::Blend, Params::Blend { alpha, c }) => {
            let zs = text.ok_or_else(|| Error::arg("method", "the blend needs a CLIP backbone"))?;
            let head = zs.interpolate(&logistic_regression(train, *c), *alpha);
            (0..test.len()).map(|i| argmax(&head.logits(test.row(i)))).collect()
        }
        (m, p) => return Err(Error::arg("params", format!("{p:?} do not fit {}", m.name()))),
    })
}

/// The candidate hyper-parameters of a method for a training set of `n` rows.
fn grid(method: Method, n: usize) -> Vec<Params> {
    match method {
        Method::Knn => KNN_KS
            .iter()
            .filter(|&&k| k <= n.max(1))
            .flat_map(|&k| KNN_TS.iter().map(move |&t| Params::Knn { k, t }))
            .collect(),
        Method::Logistic => LOGISTIC_CS.iter().map(|&c| Params::Logistic { c }).collect(),
        Method::ZeroShot => vec![Params::ZeroShot],
        Method::TipAdapter => TIP_ALPHAS
            .iter()
            .flat_map(|&alpha| TIP_BETAS.iter().map(move |&beta| Params::TipAdapter { alpha, beta }))
            .collect(),
        Method::Blend => Vec::new(), // built from the probe's C, below
    }
}

fn accuracy(pred: &[usize], labels: &[usize]) -> f64 {
    pred.iter().zip(labels).filter(|(p, l)| p == l).count() as f64 / labels.len().max(1) as f64
}

/// The hyper-parameters of `method` that a 3-fold stratified CV on `train` scores best (the
/// first of equals, grids being ordered from the simplest).
pub fn choose_params(method: Method, train: &Features, text: Option<&LinearHead>, seed: u64) -> Result<Params> {
    let folds = stratified_folds(&train.labels, train.classes, 3, seed ^ 0x5eed);
    let splits: Vec<(Vec<usize>, Vec<usize>)> = (0..3)
        .map(|f| {
            let test: Vec<usize> = (0..train.len()).filter(|&i| folds[i] == Some(f)).collect();
            let fit: Vec<usize> = (0..train.len()).filter(|&i| folds[i] != Some(f)).collect();
            (fit, test)
        })
        .filter(|(fit, test)| !fit.is_empty() && !test.is_empty())
        .collect();
    let candidates = match method {
        Method::Blend => {
            let Params::Logistic { c } = choose_params(Method::Logistic, train, text, seed)? else { unreachable!() };
            BLEND_ALPHAS.iter().map(|&alpha| Params::Blend { alpha, c }).collect()
        }
        m => grid(m, splits.iter().map(|(fit, _)| fit.len()).min().unwrap_or(train.len())),
    };
    if candidates.len() == 1 || splits.is_empty() {
        return candidates.into_iter().next().ok_or_else(|| Error::arg("train", "too few images to choose"));
    }
    if method == Method::Knn {
        // One neighbour scan per split and temperature scores every k at once.
        let n_fit = splits.iter().map(|(fit, _)| fit.len()).min().unwrap_or(train.len());
        let ks: Vec<usize> = KNN_KS.iter().copied().filter(|&k| k <= n_fit.max(1)).collect();
        let mut correct = vec![0.0; ks.len() * KNN_TS.len()];
        for (fit, test) in &splits {
            let (a, b) = (train.select(fit), train.select(test));
            for (ti, &t) in KNN_TS.iter().enumerate() {
                let options = KnnOptions { ks: ks.clone(), temperature: t, ..Default::default() };
                for (ki, p) in knn_predict(&a.rows, &a.labels, &b.rows, a.dim, a.classes, &options)?.iter().enumerate()
                {
                    let pred: Vec<usize> = p.rankings.iter().map(|r| r[0]).collect();
                    correct[ki * KNN_TS.len() + ti] += accuracy(&pred, &b.labels) * b.len() as f64;
                }
            }
        }
        // The grid's order (k outer, T inner); the first of equals.
        let best = (0..correct.len()).fold(0, |best, i| if correct[i] > correct[best] { i } else { best });
        return Ok(Params::Knn { k: ks[best / KNN_TS.len()], t: KNN_TS[best % KNN_TS.len()] });
    }
    if let Method::Blend = method {
        // The probe does not depend on α: fitted once per split, every α scored on it.
        let zs = text.ok_or_else(|| Error::arg("method", "the blend needs a CLIP backbone"))?;
        let c = match &candidates[0] {
            Params::Blend { c, .. } => *c,
            _ => unreachable!("blend candidates"),
        };
        let mut correct = vec![0.0; BLEND_ALPHAS.len()];
        for (fit, test) in &splits {
            let (a, b) = (train.select(fit), train.select(test));
            let probe = logistic_regression(&a, c);
            for (i, &alpha) in BLEND_ALPHAS.iter().enumerate() {
                let head = zs.interpolate(&probe, alpha);
                let pred: Vec<usize> = (0..b.len()).map(|r| argmax(&head.logits(b.row(r)))).collect();
                correct[i] += accuracy(&pred, &b.labels) * b.len() as f64;
            }
        }
        let best = (0..correct.len()).fold(0, |best, i| if correct[i] > correct[best] { i } else { best });
        return Ok(Params::Blend { alpha: BLEND_ALPHAS[best], c });
    }
    if method == Method::Logistic {
        // Along the ascending C path, each fit starts from the previous C's solution.
        let mut correct = vec![0.0; LOGISTIC_CS.len()];
        for (fit, test) in &splits {
            let (a, b) = (train.select(fit), train.select(test));
            let mut prev: Option<Vec<f64>> = None;
            for (i, &c) in LOGISTIC_CS.iter().enumerate() {
                let p = logistic_params(&a, c, prev.as_deref());
                let head = head_of(&p, a.dim, a.classes);
                let pred: Vec<usize> = (0..b.len()).map(|r| argmax(&head.logits(b.row(r)))).collect();
                correct[i] += accuracy(&pred, &b.labels) * b.len() as f64;
                prev = Some(p);
            }
        }
        let best = (0..correct.len()).fold(0, |best, i| if correct[i] > correct[best] { i } else { best });
        return Ok(Params::Logistic { c: LOGISTIC_CS[best] });
    }
    let mut best: Option<(f64, Params)> = None;
    for p in candidates {
        let mut correct = 0.0;
        for (fit, test) in &splits {
            let (a, b) = (train.select(fit), train.select(test));
            correct += accuracy(&predict(method, &p, &a, &b, text)?, &b.labels) * b.len() as f64;
        }
        if best.as_ref().is_none_or(|(s, _)| correct > *s) {
            best = Some((correct, p));
        }
    }
    Ok(best.expect("candidates").1)
}

/// One method's cross-validated result.
#[derive(Debug, Clone)]
pub struct MethodReport {
    /// The method.
    pub method: Method,
    /// Accuracy of each outer fold.
    pub fold_accuracy: Vec<f64>,
    /// Macro-F1 of each outer fold.
    pub fold_macro_f1: Vec<f64>,
    /// The hyper-parameters each outer fold chose.
    pub fold_params: Vec<Params>,
    /// `confusion[true][predicted]`, summed over the folds.
    pub confusion: Vec<Vec<u64>>,
    /// Out-of-fold prediction per row (`None` for rows never tested).
    pub predictions: Vec<Option<usize>>,
}

fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len().max(1) as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt())
}

impl MethodReport {
    /// Mean and standard deviation (population) of the folds' accuracies.
    pub fn accuracy(&self) -> (f64, f64) {
        mean_std(&self.fold_accuracy)
    }

    /// Mean and standard deviation of the folds' macro-F1.
    pub fn macro_f1(&self) -> (f64, f64) {
        mean_std(&self.fold_macro_f1)
    }

    /// Recall of each class over all folds (`None` for a class never tested).
    pub fn per_class_recall(&self) -> Vec<Option<f64>> {
        self.confusion
            .iter()
            .enumerate()
            .map(|(c, row)| {
                let total: u64 = row.iter().sum();
                (total > 0).then(|| row[c] as f64 / total as f64)
            })
            .collect()
    }
}

/// Macro-F1 over the classes present in `labels` or `pred` (scikit-learn's `f1_score(average=
/// "macro")` with its default of 0 for an undefined precision or recall).
pub fn macro_f1(pred: &[usize], labels: &[usize], classes: usize) -> f64 {
    let mut tp = vec![0u64; classes];
    let mut fp = vec![0u64; classes];
    let mut fn_ = vec![0u64; classes];
    for (&p, &l) in pred.iter().zip(labels) {
        if p == l {
            tp[l] += 1;
        } else {
            fp[p] += 1;
            fn_[l] += 1;
        }
    }
    let present: Vec<usize> = (0..classes).filter(|&c| tp[c] + fp[c] + fn_[c] > 0).collect();
    let f1 = |c: usize| {
        let denom = 2 * tp[c] + fp[c] + fn_[c];
        if denom == 0 {
            0.0
        } else {
            2.0 * tp[c] as f64 / denom as f64
        }
    };
    present.iter().map(|&c| f1(c)).sum::<f64>() / present.len().max(1) as f64
}

/// Cross-validates `method` on `data` over the given fold assignment (rows with `None` always
/// train): per outer fold, hyper-parameters by inner CV on the training part, then scored on
/// the held-out part.
pub fn cross_validate(
    method: Method,
    data: &Features,
    folds: &[Option<usize>],
    text: Option<&LinearHead>,
    seed: u64,
) -> Result<MethodReport> {
    if method.needs_text() && text.is_none() {
        return Err(Error::arg("method", format!("{} needs a CLIP backbone's class prompts", method.name())));
    }
    let n_folds = folds.iter().flatten().max().map_or(0, |m| m + 1);
    if n_folds < 2 {
        return Err(Error::arg("folds", "cross-validation needs two folds: give at least two images of a class"));
    }
    let mut report = MethodReport {
        method,
        fold_accuracy: Vec::new(),
        fold_macro_f1: Vec::new(),
        fold_params: Vec::new(),
        confusion: vec![vec![0; data.classes]; data.classes],
        predictions: vec![None; data.len()],
    };
    for f in 0..n_folds {
        let test_idx: Vec<usize> = (0..data.len()).filter(|&i| folds[i] == Some(f)).collect();
        let train_idx: Vec<usize> = (0..data.len()).filter(|&i| folds[i] != Some(f)).collect();
        if test_idx.is_empty() || train_idx.is_empty() {
            continue;
        }
        let (train, test) = (data.select(&train_idx), data.select(&test_idx));
        let params = choose_params(method, &train, text, seed.wrapping_add(f as u64))?;
        let pred = predict(method, &params, &train, &test, text)?;
        for ((&p, &l), &i) in pred.iter().zip(&test.labels).zip(&test_idx) {
            report.confusion[l][p] += 1;
            report.predictions[i] = Some(p);
        }
        report.fold_accuracy.push(accuracy(&pred, &test.labels));
        report.fold_macro_f1.push(macro_f1(&pred, &test.labels, data.classes));
        report.fold_params.push(params);
    }
    Ok(report)
}

/// Accuracy with `shots` training images per class (a learning-curve point): `repeats` draws
/// of that many images of each class (seeded), each method fitted on them (hyper-parameters by
/// inner CV where the draw allows it, else the simplest of the grid) and scored on every other
/// image. Classes with no more than `shots` images are left out of that point (nothing would be
/// left to test them).
#[derive(Debug, Clone, PartialEq)]
pub struct CurvePoint {
    /// Training images per class.
    pub shots: usize,
    /// Accuracy of each draw.
    pub accuracies: Vec<f64>,
    /// Each draw: its training rows and the hyper-parameters chosen on them (the test rows
    /// are every other row of a class that has more than `shots`).
    pub draws: Vec<CurveDraw>,
}

/// One draw of a learning-curve point.
#[derive(Debug, Clone, PartialEq)]
pub struct CurveDraw {
    /// The training rows, ascending.
    pub train: Vec<usize>,
    /// The hyper-parameters inner cross-validation chose on them.
    pub params: Params,
}

impl CurvePoint {
    /// Mean and standard deviation over the draws.
    pub fn accuracy(&self) -> (f64, f64) {
        mean_std(&self.accuracies)
    }
}

/// The learning curve of `method` on `data` at each of `shots` (see [`CurvePoint`]).
pub fn learning_curve(
    method: Method,
    data: &Features,
    shots: &[usize],
    repeats: usize,
    text: Option<&LinearHead>,
    seed: u64,
) -> Result<Vec<CurvePoint>> {
    let mut out = Vec::new();
    for &s in shots {
        if s == 0 {
            return Err(Error::arg("shots", "0 images per class"));
        }
        let mut accuracies = Vec::new();
        let mut draws = Vec::new();
        for r in 0..repeats.max(1) {
            let mut rng = SplitMix64::new(seed ^ (s as u64) << 20 ^ r as u64);
            let (mut train_idx, mut test_idx) = (Vec::new(), Vec::new());
            for c in 0..data.classes {
                let mut rows: Vec<usize> = (0..data.len()).filter(|&i| data.labels[i] == c).collect();
                if rows.len() <= s {
                    continue;
                }
                rng.shuffle(&mut rows);
                train_idx.extend_from_slice(&rows[..s]);
                test_idx.extend_from_slice(&rows[s..]);
            }
            if train_idx.is_empty() {
                break;
            }
            train_idx.sort_unstable();
            test_idx.sort_unstable();
            let (train, test) = (data.select(&train_idx), data.select(&test_idx));
            let params = choose_params(method, &train, text, seed.wrapping_add(r as u64))?;
            accuracies.push(accuracy(&predict(method, &params, &train, &test, text)?, &test.labels));
            draws.push(CurveDraw { train: train_idx, params });
        }
        if !accuracies.is_empty() {
            out.push(CurvePoint { shots: s, accuracies, draws });
        }
    }
    Ok(out)
}

/// What a classifier file records besides its tensors: how to make its features again.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HeadInfo {
    /// `vista-head-1`.
    pub format: String,
    /// `clip`, `dino` or `pixels`.
    pub backbone: String,
    /// The model argument the features came from (empty for pixels).
    pub model: String,
    /// The method's name ([`Method::name`]).
    pub method: String,
    /// Its hyper-parameters, as [`Params`] prints them.
    pub params: String,
    /// Class names; a prediction indexes this list.
    pub classes: Vec<String>,
    /// Feature width.
    pub dim: usize,
    /// The cross-validated accuracy it was chosen with.
    pub accuracy: f64,
    /// A DINO backbone's evaluation preprocessing, when not the checkpoint's own: the shortest
    /// side resized to this...
    #[serde(default)]
    pub resize: Option<u32>,
    /// ...then centre-cropped to this.
    #[serde(default)]
    pub crop: Option<u32>,
}

/// The `format` of [`HeadInfo`].
pub const HEAD_FORMAT: &str = "vista-head-1";

/// A fitted classifier on normalised features.
#[derive(Debug, Clone)]
pub enum Head {
    /// Logistic regression, zero-shot or the blend: `x·Wᵀ + b`.
    Linear(LinearHead),
    /// Weighted k-NN over the stored training features.
    Knn {
        /// The training features (the cache of votes).
        train: Features,
        /// Neighbours.
        k: usize,
        /// Vote temperature.
        t: f32,
    },
    /// Tip-Adapter: the zero-shot head plus the cache of training features.
    TipAdapter {
        /// The zero-shot head.
        zero_shot: LinearHead,
        /// The training features.
        cache: Features,
        /// Cache weight.
        alpha: f32,
        /// Cache sharpness.
        beta: f32,
    },
}

impl Head {
    /// `method` with `params` fitted on all of `data`.
    pub fn fit(method: Method, params: &Params, data: &Features, text: Option<&LinearHead>) -> Result<Head> {
        let need_text = || text.cloned().ok_or_else(|| Error::arg("method", format!("{} needs CLIP", method.name())));
        Ok(match (method, params) {
            (Method::Knn, Params::Knn { k, t }) => Head::Knn { train: data.clone(), k: (*k).min(data.len()), t: *t },
            (Method::Logistic, Params::Logistic { c }) => Head::Linear(logistic_regression(data, *c)),
            (Method::ZeroShot, _) => Head::Linear(need_text()?),
            (Method::TipAdapter, Params::TipAdapter { alpha, beta }) => {
                Head::TipAdapter { zero_shot: need_text()?, cache: data.clone(), alpha: *alpha, beta: *beta }
            }
            (Method::Blend, Params::Blend { alpha, c }) => {
                Head::Linear(need_text()?.interpolate(&logistic_regression(data, *c), *alpha))
            }
            (m, p) => return Err(Error::arg("params", format!("{p:?} do not fit {}", m.name()))),
        })
    }

    /// Class probabilities of one L2-normalised feature row: the softmax of the logits, or for
    /// k-NN the share of the neighbours' votes.
    pub fn probabilities(&self, x: &[f32]) -> Vec<f32> {
        let softmax = |z: Vec<f32>| {
            let m = z.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let e: Vec<f32> = z.iter().map(|v| (v - m).exp()).collect();
            let s: f32 = e.iter().sum();
            e.iter().map(|v| v / s).collect::<Vec<f32>>()
        };
        match self {
            Head::Linear(h) => softmax(h.logits(x)),
            Head::TipAdapter { zero_shot, cache, alpha, beta } => {
                let one = Features { dim: cache.dim, rows: x.to_vec(), labels: vec![0], classes: cache.classes };
                softmax(tip_adapter_logits(zero_shot, cache, &one, *alpha, *beta).remove(0))
            }
            Head::Knn { train, k, t } => {
                let mut sims: Vec<(f32, usize)> = (0..train.len()).map(|j| (dot(x, train.row(j)), j)).collect();
                sims.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap_or(std::cmp::Ordering::Equal).then(a.1.cmp(&b.1)));
                let mut votes = vec![0f32; train.classes];
                for &(s, j) in sims.iter().take(*k) {
                    votes[train.labels[j]] += (s / t).exp();
                }
                let total: f32 = votes.iter().sum();
                votes.iter().map(|v| v / total.max(f32::MIN_POSITIVE)).collect()
            }
        }
    }

    /// Writes the head as one safetensors file, `info` as JSON in its metadata.
    pub fn save(&self, path: &std::path::Path, info: &HeadInfo) -> Result<()> {
        use candle_core::{Device, Tensor};
        let dev = Device::Cpu;
        let mut tensors: Vec<(String, Tensor)> = Vec::new();
        let linear = |h: &LinearHead, prefix: &str, out: &mut Vec<(String, Tensor)>| -> Result<()> {
            out.push((format!("{prefix}weight"), Tensor::from_slice(&h.weight, (h.classes(), h.dim), &dev)?));
            out.push((format!("{prefix}bias"), Tensor::from_slice(&h.bias, h.classes(), &dev)?));
            Ok(())
        };
        let cache = |f: &Features, out: &mut Vec<(String, Tensor)>| -> Result<()> {
            out.push(("train.features".into(), Tensor::from_slice(&f.rows, (f.len(), f.dim), &dev)?));
            let labels: Vec<u32> = f.labels.iter().map(|&l| l as u32).collect();
            out.push(("train.labels".into(), Tensor::from_slice(&labels, f.len(), &dev)?));
            Ok(())
        };
        match self {
            Head::Linear(h) => linear(h, "", &mut tensors)?,
            Head::Knn { train, .. } => cache(train, &mut tensors)?,
            Head::TipAdapter { zero_shot, cache: c, .. } => {
                linear(zero_shot, "", &mut tensors)?;
                cache(c, &mut tensors)?;
            }
        }
        let meta: std::collections::HashMap<String, String> = [
            ("format".to_string(), HEAD_FORMAT.to_string()),
            ("vista_head".to_string(), serde_json::to_string(info).map_err(|e| Error::arg("head", e.to_string()))?),
        ]
        .into();
        crate::weights::formats::write_safetensors(path, tensors.iter().map(|(n, t)| (n.as_str(), t)), &meta)
    }

    /// Reads a head written by [`Head::save`].
    pub fn load(path: &std::path::Path) -> Result<(Head, HeadInfo)> {
        use candle_core::Device;
        let bad = |m: String| Error::Checkpoint { path: path.to_path_buf(), message: m };
        let (tensors, meta) = crate::weights::formats::read_safetensors(path, &Device::Cpu)?;
        if meta.get("format").map(String::as_str) != Some(HEAD_FORMAT) {
            return Err(bad(format!("not a vista classifier head (metadata `format` is not {HEAD_FORMAT})")));
        }
        let info: HeadInfo = serde_json::from_str(meta.get("vista_head").map(String::as_str).unwrap_or(""))
            .map_err(|e| bad(format!("metadata `vista_head`: {e}")))?;
        let classes = info.classes.len();
        let f32s = |name: &str| -> Result<Vec<f32>> {
            let t = tensors.get(name).ok_or_else(|| bad(format!("no tensor `{name}`")))?;
            Ok(t.flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1()?)
        };
        let linear = || -> Result<LinearHead> {
            let (weight, bias) = (f32s("weight")?, f32s("bias")?);
            if bias.len() != classes || weight.len() != classes * info.dim {
                return Err(bad(format!("weight/bias do not fit {classes} classes of width {}", info.dim)));
            }
            Ok(LinearHead { weight, bias, dim: info.dim })
        };
        let cache = || -> Result<Features> {
            let rows = f32s("train.features")?;
            let t = tensors.get("train.labels").ok_or_else(|| bad("no tensor `train.labels`".into()))?;
            let labels: Vec<usize> = t.to_vec1::<u32>()?.into_iter().map(|l| l as usize).collect();
            if info.dim == 0 || rows.len() != labels.len() * info.dim || labels.iter().any(|&l| l >= classes) {
                return Err(bad("train.features / train.labels do not fit the head".into()));
            }
            Ok(Features { dim: info.dim, rows, labels, classes })
        };
        let num = |key: &str| -> Result<f32> {
            info.params
                .split_whitespace()
                .find_map(|kv| kv.strip_prefix(&format!("{key}=")).and_then(|v| v.parse().ok()))
                .ok_or_else(|| bad(format!("params `{}` lack {key}", info.params)))
        };
        let head = match info.method.as_str() {
            "logistic" | "zero-shot" | "blend" => Head::Linear(linear()?),
            "knn" => Head::Knn { train: cache()?, k: num("k")? as usize, t: num("T")? },
            "tip-adapter" => {
                Head::TipAdapter { zero_shot: linear()?, cache: cache()?, alpha: num("alpha")?, beta: num("beta")? }
            }
            other => return Err(bad(format!("unknown method `{other}`"))),
        };
        Ok((head, info))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blobs(per_class: usize, classes: usize, dim: usize, seed: u64) -> Features {
        let mut rng = SplitMix64::new(seed);
        let mut rows = Vec::new();
        let mut labels = Vec::new();
        for c in 0..classes {
            for _ in 0..per_class {
                for d in 0..dim {
                    let centre = if d % classes == c { 2.0 } else { 0.0 };
                    rows.push((centre + 0.7 * rng.next_normal()) as f32);
                }
                labels.push(c);
            }
        }
        Features::new(dim, rows, labels, classes).unwrap()
    }

    #[test]
    fn folds_are_stratified_and_singletons_only_train() {
        let labels = [0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 2];
        let f = stratified_folds(&labels, 3, 2, 7);
        assert_eq!(f[10], None);
        for c in 0..2 {
            let per: Vec<usize> =
                (0..2).map(|k| (0..labels.len()).filter(|&i| labels[i] == c && f[i] == Some(k)).count()).collect();
            assert!(per[0].abs_diff(per[1]) <= 1, "{per:?}");
        }
    }

    #[test]
    fn logistic_regression_reaches_the_optimum() {
        let data = blobs(20, 3, 6, 1);
        let head = logistic_regression(&data, 1.0);
        // At the optimum the gradient vanishes: C·Σ (p − y) x + W = 0.
        let (d, k) = (data.dim, data.classes);
        let mut grad = head.weight.iter().map(|&w| f64::from(w)).collect::<Vec<_>>();
        for i in 0..data.len() {
            let z = head.logits(data.row(i));
            let m = z.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let s: f32 = z.iter().map(|v| (v - m).exp()).sum();
            for j in 0..k {
                let g = f64::from((z[j] - m).exp() / s) - f64::from(u8::from(j == data.labels[i]));
                for t in 0..d {
                    grad[j * d + t] += g * f64::from(data.row(i)[t]);
                }
            }
        }
        let worst = grad.iter().fold(0f64, |m, v| m.max(v.abs()));
        assert!(worst < 1e-3, "gradient {worst}");
    }

    #[test]
    fn tip_adapter_and_blend_follow_their_formulas() {
        let cache = blobs(3, 2, 4, 2);
        let test = blobs(2, 2, 4, 3);
        let text = vec![1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 1.0];
        let zs = LinearHead::zero_shot(&text, 4);
        let got = tip_adapter_logits(&zs, &cache, &test, 2.0, 5.5);
        for (i, row) in got.iter().enumerate() {
            let x = test.row(i);
            for c in 0..2 {
                let t = &text[c * 4..(c + 1) * 4];
                let zs_logit = 100.0 * dot(x, t) / dot(t, t).sqrt();
                let cache_logit: f32 = (0..cache.len())
                    .filter(|&j| cache.labels[j] == c)
                    .map(|j| (-5.5 * (1.0 - dot(x, cache.row(j)))).exp())
                    .sum();
                assert!((row[c] - (zs_logit + 2.0 * cache_logit)).abs() < 1e-3, "{} vs {}", row[c], zs_logit);
            }
        }
        let probe = LinearHead { weight: vec![1.0; 8], bias: vec![0.5, -0.5], dim: 4 };
        let mixed = zs.interpolate(&probe, 0.25);
        assert!((mixed.weight[0] - (0.75 * zs.weight[0] + 0.25)).abs() < 1e-6);
        assert!((mixed.bias[1] - (-0.125)).abs() < 1e-7);
    }

    #[test]
    fn learning_curves_rise_with_shots() {
        let data = blobs(20, 3, 6, 9);
        let curve = learning_curve(Method::Knn, &data, &[1, 4, 16], 3, None, 0).unwrap();
        assert_eq!(curve.iter().map(|p| p.shots).collect::<Vec<_>>(), vec![1, 4, 16]);
        assert!(curve.iter().all(|p| p.accuracies.len() == 3));
        assert!(curve[2].accuracy().0 >= curve[0].accuracy().0 - 0.05, "{curve:?}");
        // 20 images a class: 20 shots leaves nothing to test.
        assert!(learning_curve(Method::Knn, &data, &[20], 1, None, 0).unwrap().is_empty());
    }

    #[test]
    fn heads_round_trip_through_their_file() {
        let data = blobs(6, 2, 4, 5);
        let text = vec![1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 1.0];
        let zs = LinearHead::zero_shot(&text, 4);
        let dir = tempfile::tempdir().unwrap();
        for (m, p) in [
            (Method::Logistic, Params::Logistic { c: 10.0 }),
            (Method::Knn, Params::Knn { k: 3, t: 0.07 }),
            (Method::TipAdapter, Params::TipAdapter { alpha: 2.0, beta: 5.5 }),
            (Method::Blend, Params::Blend { alpha: 0.5, c: 1.0 }),
        ] {
            let head = Head::fit(m, &p, &data, Some(&zs)).unwrap();
            let info = HeadInfo {
                format: HEAD_FORMAT.into(),
                backbone: "clip".into(),
                model: "m".into(),
                method: m.name().into(),
                params: p.to_string(),
                classes: vec!["a".into(), "b".into()],
                dim: 4,
                accuracy: 0.5,
                resize: Some(28),
                crop: None,
            };
            let path = dir.path().join(format!("{}.safetensors", m.name()));
            head.save(&path, &info).unwrap();
            let (back, back_info) = Head::load(&path).unwrap();
            assert_eq!(back_info, info);
            for i in 0..data.len() {
                let (a, b) = (head.probabilities(data.row(i)), back.probabilities(data.row(i)));
                assert_eq!(a, b, "{}", m.name());
                assert!((a.iter().sum::<f32>() - 1.0).abs() < 1e-5);
            }
        }
        std::fs::write(dir.path().join("x.safetensors"), b"junk").unwrap();
        assert!(Head::load(&dir.path().join("x.safetensors")).is_err());
    }

    #[test]
    fn cross_validation_separates_separable_classes() {
        let data = blobs(12, 3, 6, 4);
        let folds = stratified_folds(&data.labels, 3, 4, 0);
        for m in [Method::Knn, Method::Logistic] {
            let r = cross_validate(m, &data, &folds, None, 0).unwrap();
            assert_eq!(r.fold_accuracy.len(), 4);
            assert!(r.accuracy().0 > 0.8, "{}: {:?}", m.name(), r.accuracy());
            assert_eq!(r.confusion.iter().flatten().sum::<u64>(), 36);
        }
        assert!(cross_validate(Method::ZeroShot, &data, &folds, None, 0).is_err());
        assert_eq!(macro_f1(&[0, 1, 1], &[0, 1, 0], 2), (2.0 / 3.0 + 2.0 / 3.0) / 2.0);
    }
}
