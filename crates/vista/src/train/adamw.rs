//! `torch.optim.AdamW` over named parameter groups ([`AdamW`]), as every training recipe builds
//! it: groups with their own learning rate and weight decay, the shared update kernel of
//! [`crate::optim::adamw`].

use std::collections::HashMap;
use std::sync::Mutex;

use candle_core::{CpuStorage, InplaceOp1, InplaceOp2, Layout, Tensor, Var};

use super::ops::{f32_slice, f32_slice_mut};
use super::param::{Grads, Param};
use crate::optim::adamw::{self, AdamWConfig, Scalars};
use crate::{Error, Result};

/// `torch.optim.AdamW`'s default learning rate: a group's until the schedule sets it.
pub const TORCH_DEFAULT_LR: f64 = 1e-3;
/// `torch.optim.AdamW`'s default weight decay: a group's unless it sets its own.
pub const TORCH_DEFAULT_WEIGHT_DECAY: f64 = 1e-2;

/// One parameter group as given to the optimiser: the parameter names and optional overrides
/// of the optimiser's defaults (a key absent from PyTorch's group dict).
#[derive(Debug, Clone, PartialEq)]
pub struct ParamGroup {
    /// The state-dict names of the group's parameters.
    pub names: Vec<String>,
    /// The group's learning rate (`None`: the optimiser's default).
    pub lr: Option<f64>,
    /// The group's weight decay (`None`: the optimiser's default).
    pub weight_decay: Option<f64>,
}

/// A parameter group inside the optimiser, with its current learning rate and weight decay.
#[derive(Debug, Clone, PartialEq)]
pub struct OptimGroup {
    /// The state-dict names of the group's parameters.
    pub names: Vec<String>,
    /// Current learning rate.
    pub lr: f64,
    /// Current weight decay.
    pub weight_decay: f64,
}

#[derive(Debug, Clone)]
struct AdamState {
    step: u64,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
}

/// The deferred rows of a matrix stepped with [`AdamW::step_rows`]: each row's last applied
/// step, and the scalars of the steps some row has still to take (with a zero gradient).
#[derive(Debug, Clone)]
struct LazyRows {
    /// Per row, the step its values and moments are current to.
    current: Vec<u64>,
    /// `log[i]` holds the scalars of step `base + 1 + i`.
    base: u64,
    log: Vec<Scalars>,
}

impl LazyRows {
    /// Brings one row (`p`, `m`, `v`: its values) from step `*current` to step `to`.
    fn replay(&self, current: &mut u64, to: u64, p: &mut [f32], m: &mut [f32], v: &mut [f32]) {
        if *current >= to {
            return;
        }
        let steps = &self.log[(*current - self.base) as usize..(to - self.base) as usize];
        // Zero moments stay zero under zero gradients (checked once, not per step).
        if m.iter().all(|&x| x == 0.0) && v.iter().all(|&x| x == 0.0) {
            for s in steps {
                adamw::update_zero_grad_zero_moments(p, s);
            }
        } else {
            for s in steps {
                adamw::update_zero_grad(p, m, v, s);
            }
        }
        *current = to;
    }
}

/// The groups as an optimiser keeps them, and each named parameter's variable: every name must be
/// one of `params` (a float tensor) and appear once; a group without its own learning rate or
/// weight decay takes the optimiser's defaults.
pub(crate) fn resolve_groups(
    params: &[Param],
    groups: Vec<ParamGroup>,
    default_lr: f64,
    default_weight_decay: f64,
) -> Result<(Vec<OptimGroup>, HashMap<String, Var>)> {
    let mut vars = HashMap::new();
    let mut out = Vec::with_capacity(groups.len());
    for g in groups {
        for name in &g.names {
            let p = params
                .iter()
                .find(|p| p.name() == name)
                .ok_or_else(|| Error::arg("groups", format!("no parameter named `{name}`")))?;
            if !p.var().dtype().is_float() {
                return Err(Error::arg("groups", format!("`{name}` is not a float tensor")));
            }
            if vars.insert(name.clone(), p.var().clone()).is_some() {
                return Err(Error::arg("groups", format!("`{name}` appears in more than one group")));
            }
        }
        out.push(OptimGroup {
            names: g.names,
            lr: g.lr.unwrap_or(default_lr),
            weight_decay: g.weight_decay.unwrap_or(default_weight_decay),
        });
    }
    Ok((out, vars))
}

/// `train_one_epoch`'s per-iteration settings: `param_group["lr"] = lr` for every group, and
/// `param_group["weight_decay"] = wd` for the first ("only the first group is regularized").
pub(crate) fn set_dino_schedule(groups: &mut [OptimGroup], lr: f64, weight_decay: f64) {
    for (i, g) in groups.iter_mut().enumerate() {
        g.lr = lr;
        if i == 0 {
            g.weight_decay = weight_decay;
        }
    }
}

/// `torch.optim.AdamW(params_groups, **config)`; updates the parameters' variables in place.
#[derive(Debug, Clone)]
pub struct AdamW {
    cfg: AdamWConfig,
    groups: Vec<OptimGroup>,
    vars: HashMap<String, Var>,
    state: HashMap<String, AdamState>,
    lazy: HashMap<String, LazyRows>,
}

impl AdamW {
    /// `torch.optim.AdamW(groups, betas=…, eps=…)` with torch's default learning rate and weight
    /// decay for the groups that set none. Every name in `groups` must be one of `params`, and
    /// appear once.
    pub fn new(params: &[Param], groups: Vec<ParamGroup>, cfg: AdamWConfig) -> Result<Self> {
        let (groups, vars) = resolve_groups(params, groups, TORCH_DEFAULT_LR, TORCH_DEFAULT_WEIGHT_DECAY)?;
        Ok(Self { cfg, groups, vars, state: HashMap::new(), lazy: HashMap::new() })
    }

    /// β and ε.
    pub fn config(&self) -> &AdamWConfig {
        &self.cfg
    }

    /// The groups with their current learning rate and weight decay.
    pub fn groups(&self) -> &[OptimGroup] {
        &self.groups
    }

    /// The groups, to set their learning rate and weight decay.
    pub fn groups_mut(&mut self) -> &mut [OptimGroup] {
        &mut self.groups
    }

    /// `train_one_epoch`: `param_group["lr"] = lr` for every group, and
    /// `param_group["weight_decay"] = wd` for the first ("only the first group is regularized").
    pub fn set_dino_schedule(&mut self, lr: f64, weight_decay: f64) {
        set_dino_schedule(&mut self.groups, lr, weight_decay);
    }

    /// The step count and the two moments of `name`, once it has been stepped. The rows of a
    /// matrix stepped with [`step_rows`](Self::step_rows) may lag (values and moments) until
    /// [`sync`](Self::sync).
    pub fn state(&self, name: &str) -> Option<(u64, &Tensor, &Tensor)> {
        self.state.get(name).map(|s| (s.step, &s.exp_avg, &s.exp_avg_sq))
    }

    /// Every stepped parameter's `(name, step, exp_avg, exp_avg_sq)`, sorted by name (the
    /// optimiser's `state_dict()["state"]`).
    pub fn state_entries(&self) -> Vec<(&str, u64, &Tensor, &Tensor)> {
        let mut v: Vec<_> = self.state.iter().map(|(n, s)| (n.as_str(), s.step, &s.exp_avg, &s.exp_avg_sq)).collect();
        v.sort_by(|a, b| a.0.cmp(b.0));
        v
    }

    /// Restores one parameter's state (`load_state_dict`): the moments must have the
    /// parameter's shape.
    pub fn set_state(&mut self, name: &str, step: u64, exp_avg: Tensor, exp_avg_sq: Tensor) -> Result<()> {
        let var = self.vars.get(name).ok_or_else(|| Error::arg("state", format!("no parameter named `{name}`")))?;
        for (what, t) in [("exp_avg", &exp_avg), ("exp_avg_sq", &exp_avg_sq)] {
            if t.dims() != var.dims() {
                return Err(Error::arg(
                    "state",
                    format!("`{name}`: {what} has shape {:?}, the parameter {:?}", t.dims(), var.dims()),
                ));
            }
        }
        // A copy: the moments are updated in place, so they must not share the caller's buffers (or
        // each other's).
        let to_var = |t: Tensor| -> Result<Tensor> { Ok(t.to_dtype(var.dtype())?.to_device(var.device())?.copy()?) };
        let (exp_avg, exp_avg_sq) = (to_var(exp_avg)?, to_var(exp_avg_sq)?);
        self.lazy.remove(name);
        self.state.insert(name.to_string(), AdamState { step, exp_avg, exp_avg_sq });
        Ok(())
    }

    /// One optimiser step with `grads` (parameters without a gradient are skipped; gradients of
    /// parameters outside the groups are ignored).
    pub fn step(&mut self, grads: &Grads) -> Result<()> {
        for gi in 0..self.groups.len() {
            let (lr, wd) = (self.groups[gi].lr, self.groups[gi].weight_decay);
            for ni in 0..self.groups[gi].names.len() {
                let name = &self.groups[gi].names[ni];
                let Some(grad) = grads.get(name) else { continue };
                let name = name.clone();
                self.sync_one(&name)?;
                self.step_one(&name, grad, lr, wd)?;
            }
        }
        Ok(())
    }

    /// The moments of `name` (zero before its first step).
    fn state_of(&mut self, name: &str) -> Result<&mut AdamState> {
        if !self.state.contains_key(name) {
            // Two buffers: the fused step below updates each moment in place.
            let t = self.vars[name].as_detached_tensor();
            let st = AdamState { step: 0, exp_avg: t.zeros_like()?, exp_avg_sq: t.zeros_like()? };
            self.state.insert(name.to_string(), st);
        }
        Ok(self.state.get_mut(name).expect("state inserted above"))
    }

    fn step_one(&mut self, name: &str, grad: &Tensor, lr: f64, wd: f64) -> Result<()> {
        let (beta1, beta2) = self.cfg.betas;
        let eps = self.cfg.eps;
        let cfg = self.cfg;
        let var = self.vars[name].clone();
        if grad.dims() != var.dims() {
            return Err(Error::arg(
                "grads",
                format!("`{name}`: gradient {:?} for a parameter {:?}", grad.dims(), var.dims()),
            ));
        }
        let grad = grad.detach().to_dtype(var.dtype())?.to_device(var.device())?;
        let st = self.state_of(name)?;
        st.step += 1;
        let t = st.step as i32;
        if crate::nn::cpu::eligible(&grad) && crate::nn::cpu::eligible(var.as_tensor()) {
            let scalars = Scalars::new(&cfg, lr, wd, st.step);
            return fused_adamw(var.as_tensor(), &grad, &st.exp_avg, &st.exp_avg_sq, &scalars);
        }
        let bias_correction1 = 1.0 - beta1.powi(t);
        let bias_correction2 = 1.0 - beta2.powi(t);
        let step_size = lr / bias_correction1;
        let bias_correction2_sqrt = bias_correction2.sqrt();
        let p = var.as_detached_tensor();
        // Decoupled weight decay.
        let p = if wd != 0.0 { p.affine(1.0 - lr * wd, 0.0)? } else { p };
        // exp_avg.lerp_(grad, 1 - beta1) (weight < 0.5: self + w (end - self)).
        st.exp_avg = st.exp_avg.add(&grad.sub(&st.exp_avg)?.affine(1.0 - beta1, 0.0)?)?;
        // exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2).
        st.exp_avg_sq = st.exp_avg_sq.affine(beta2, 0.0)?.add(&grad.sqr()?.affine(1.0 - beta2, 0.0)?)?;
        let denom = div_scalar(&st.exp_avg_sq.sqrt()?, bias_correction2_sqrt)?.affine(1.0, eps)?;
        let p = p.sub(&st.exp_avg.div(&denom)?.affine(step_size, 0.0)?)?;
        var.set(&p)?;
        Ok(())
    }

    /// One optimiser step of the matrix `name` whose gradient is zero outside `rows` (distinct,
    /// ascending): `grad` holds those rows' gradients, `[rows.len(), width]` — a token
    /// embedding's, of which a batch uses a few hundred rows of tens of thousands.
    ///
    /// The result is what [`step`](Self::step) gives with the dense gradient (zeros elsewhere),
    /// bit for bit, but the other rows' updates — a zero-gradient AdamW step each, which still
    /// decays the weights and moves them along their moments — are deferred: a row takes its
    /// pending steps, in order and with the same scalars, when it next gets a gradient, when
    /// [`catch_up_rows`](Self::catch_up_rows) names it (before a forward pass reads it), or at
    /// [`sync`](Self::sync) (before anything else reads the parameter or its moments). A dense
    /// step costs a pass over the whole matrix and its two moments; the deferred one costs the
    /// same arithmetic without the memory traffic, and for a row whose moments are still zero
    /// only the decay.
    ///
    /// A parameter outside the groups is ignored; one that is not an f32 CPU matrix is stepped
    /// densely.
    pub fn step_rows(&mut self, name: &str, rows: &[u32], grad: &Tensor) -> Result<()> {
        let Some(group) = self.groups.iter().find(|g| g.names.iter().any(|n| n == name)) else { return Ok(()) };
        let (lr, wd) = (group.lr, group.weight_decay);
        let var = self.vars[name].clone();
        let (n_rows, width) = var.dims2().map_err(|_| {
            Error::arg("grads", format!("`{name}`: a row-sparse gradient for a parameter {:?}", var.dims()))
        })?;
        if grad.dims() != [rows.len(), width] {
            return Err(Error::arg(
                "grads",
                format!("`{name}`: gradient {:?} for {} rows of width {width}", grad.dims(), rows.len()),
            ));
        }
        if let Some(w) = rows.windows(2).find(|w| w[0] >= w[1]) {
            return Err(Error::arg(
                "grads",
                format!("`{name}`: rows not distinct and ascending ({} then {})", w[0], w[1]),
            ));
        }
        if let Some(&r) = rows.last().filter(|&&r| r as usize >= n_rows) {
            return Err(Error::arg("grads", format!("`{name}`: row {r} of a parameter with {n_rows} rows")));
        }
        let grad = grad.detach().to_dtype(var.dtype())?.to_device(var.device())?;
        if !crate::nn::cpu::eligible(var.as_tensor()) {
            self.sync_one(name)?;
            let index = Tensor::from_vec(rows.to_vec(), rows.len(), var.device())?;
            let dense = var.as_detached_tensor().zeros_like()?.index_add(&index, &grad, 0)?;
            return self.step_one(name, &dense, lr, wd);
        }
        let g = grad.flatten_all()?.to_vec1::<f32>()?;
        let cfg = self.cfg;
        let st = self.state_of(name)?;
        st.step += 1;
        let step = st.step;
        let (m, v) = (st.exp_avg.clone(), st.exp_avg_sq.clone());
        let lazy = self.lazy.entry(name.to_string()).or_insert_with(|| LazyRows {
            current: vec![step - 1; n_rows],
            base: step - 1,
            log: Vec::new(),
        });
        let scalars = Scalars::new(&cfg, lr, wd, step);
        with_pmv(var.as_tensor(), &m, &v, |p, m, v| {
            for (j, &r) in rows.iter().enumerate() {
                let at = r as usize * width..(r as usize + 1) * width;
                let (p, m, v) = (&mut p[at.clone()], &mut m[at.clone()], &mut v[at]);
                let mut current = lazy.current[r as usize];
                lazy.replay(&mut current, step - 1, p, m, v);
                adamw::update_serial(p, &g[j * width..(j + 1) * width], m, v, &scalars);
                lazy.current[r as usize] = step;
            }
        })?;
        lazy.log.push(scalars);
        Ok(())
    }

    /// Brings `rows` of `name` up to date (see [`step_rows`](Self::step_rows)): what a forward
    /// pass that reads only those rows needs. Rows out of range are an error.
    pub fn catch_up_rows(&mut self, name: &str, rows: impl IntoIterator<Item = u32>) -> Result<()> {
        let Some(lazy) = self.lazy.get_mut(name) else { return Ok(()) };
        let step = lazy.base + lazy.log.len() as u64;
        let width = self.vars[name].dims().get(1).copied().unwrap_or(0);
        let n_rows = lazy.current.len();
        let st = &self.state[name];
        let rows: Vec<u32> =
            rows.into_iter().filter(|&r| (r as usize) >= n_rows || lazy.current[r as usize] < step).collect();
        if rows.is_empty() {
            return Ok(());
        }
        with_pmv(self.vars[name].as_tensor(), &st.exp_avg, &st.exp_avg_sq, |p, m, v| {
            for r in rows {
                let r = r as usize;
                if r >= n_rows {
                    return Err(Error::arg("rows", format!("`{name}`: row {r} of a parameter with {n_rows} rows")));
                }
                let at = r * width..(r + 1) * width;
                let mut current = lazy.current[r];
                lazy.replay(&mut current, step, &mut p[at.clone()], &mut m[at.clone()], &mut v[at]);
                lazy.current[r] = current;
            }
            Ok(())
        })?
    }

    /// Every deferred row update taken (see [`step_rows`](Self::step_rows)): the parameters and
    /// moments are then exactly what dense steps would have made them.
    pub fn sync(&mut self) -> Result<()> {
        let names: Vec<String> = self.lazy.keys().cloned().collect();
        for name in names {
            self.sync_one(&name)?;
        }
        Ok(())
    }

    fn sync_one(&mut self, name: &str) -> Result<()> {
        use rayon::prelude::*;
        let Some(lazy) = self.lazy.get_mut(name) else { return Ok(()) };
        if lazy.log.is_empty() {
            return Ok(());
        }
        let step = lazy.base + lazy.log.len() as u64;
        let width = self.vars[name].dims().get(1).copied().unwrap_or(0).max(1);
        let st = &self.state[name];
        let mut current = std::mem::take(&mut lazy.current);
        let lazy_ref = &*lazy;
        with_pmv(self.vars[name].as_tensor(), &st.exp_avg, &st.exp_avg_sq, |p, m, v| {
            p.par_chunks_mut(width)
                .zip(m.par_chunks_mut(width))
                .zip(v.par_chunks_mut(width))
                .zip(current.par_iter_mut())
                .for_each(|(((p, m), v), c)| lazy_ref.replay(c, step, p, m, v));
        })?;
        lazy.current = current;
        lazy.base = step;
        lazy.log.clear();
        Ok(())
    }
}

/// Runs `f` on the values of a parameter and its two moments (distinct f32 CPU buffers), which
/// it may change.
fn with_pmv<R>(
    p: &Tensor,
    m: &Tensor,
    v: &Tensor,
    f: impl FnOnce(&mut [f32], &mut [f32], &mut [f32]) -> R,
) -> Result<R> {
    with_values_mut(p, |p| with_values_mut(m, |m| with_values_mut(v, |v| f(p, m, v))))??
}

/// One AdamW update of an f32 CPU parameter with the shared kernel ([`adamw::update`]), the
/// same f32 operations in the same order as the tensor-op path above (so the same bits), in
/// place: the parameter's, `exp_avg`'s and `exp_avg_sq`'s own buffers are written, one pass over
/// the four (no copies out and back, no new buffers: the token embedding alone is millions of
/// values). The three must not share storage (each moment is its own buffer, see `step` and
/// `set_state`); a clone of a moment follows its updates.
fn fused_adamw(p: &Tensor, g: &Tensor, m: &Tensor, v: &Tensor, s: &Scalars) -> Result<()> {
    let g = g.contiguous()?;
    with_values_mut(m, |m| {
        with_values_mut(v, |v| p.inplace_op2(&g, &Update { moments: Mutex::new(Some((m, v))), scalars: *s }))
    })???;
    Ok(())
}

/// Runs `f` on the contiguous f32 values of `t`, which it may change (a candle in-place op: the
/// storage is locked for writing meanwhile).
fn with_values_mut<R>(t: &Tensor, f: impl FnOnce(&mut [f32]) -> R) -> Result<R> {
    struct Op<F, R> {
        f: Mutex<Option<F>>,
        out: Mutex<Option<R>>,
    }
    impl<F: FnOnce(&mut [f32]) -> R, R> InplaceOp1 for Op<F, R> {
        fn name(&self) -> &'static str {
            "adamw-moment"
        }
        fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
            let data = f32_slice_mut(storage, layout)?;
            let f = self.f.lock().expect("not poisoned").take().expect("run once");
            *self.out.lock().expect("not poisoned") = Some(f(data));
            Ok(())
        }
    }
    let op = Op { f: Mutex::new(Some(f)), out: Mutex::new(None) };
    t.inplace_op1(&op)?;
    Ok(op.out.into_inner().expect("not poisoned").expect("the op ran"))
}

/// The in-place AdamW update of a parameter from its gradient, with its two moments' values.
struct Update<'a> {
    moments: Mutex<Option<(&'a mut [f32], &'a mut [f32])>>,
    scalars: Scalars,
}

impl InplaceOp2 for Update<'_> {
    fn name(&self) -> &'static str {
        "adamw"
    }

    fn cpu_fwd(&self, dst: &mut CpuStorage, dst_l: &Layout, g: &CpuStorage, g_l: &Layout) -> candle_core::Result<()> {
        let (p, g) = (f32_slice_mut(dst, dst_l)?, f32_slice(g, g_l)?);
        let (m, v) = self.moments.lock().expect("not poisoned").take().expect("run once");
        adamw::update(p, g, m, v, &self.scalars);
        Ok(())
    }
}

/// `x / s` with `s` rounded to `x`'s dtype (PyTorch's `tensor / float`).
fn div_scalar(x: &Tensor, s: f64) -> Result<Tensor> {
    let s = Tensor::new(s, x.device())?.to_dtype(x.dtype())?;
    Ok(x.broadcast_div(&s)?)
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor, Var};

    use super::*;

    fn bits(t: &Tensor) -> Vec<u32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap().into_iter().map(f32::to_bits).collect()
    }

    /// Deferred row steps, caught up at odd times, give the dense steps' parameters and moments
    /// bit for bit: rows stepped often, rarely and never, with and without weight decay, the
    /// learning rate changing every step.
    #[test]
    fn row_steps_equal_dense_steps_with_zero_rows() {
        let (rows, width) = (9, 37);
        let mut state = 12345u64;
        let mut rnd = move || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        };
        let init: Vec<f32> = (0..rows * width).map(|_| rnd()).collect();
        let init2: Vec<f32> = (0..rows * width).map(|_| rnd()).collect();
        let make = |name: &str, v: &[f32]| {
            Param::new(
                name,
                Var::from_tensor(&Tensor::from_slice(v, (rows, width), &Device::Cpu).unwrap()).unwrap(),
                true,
            )
        };
        let dense_params = [make("a", &init), make("b", &init2)];
        let lazy_params = [make("a", &init), make("b", &init2)];
        let groups = || {
            vec![
                ParamGroup { names: vec!["a".into()], lr: None, weight_decay: Some(0.2) },
                ParamGroup { names: vec!["b".into()], lr: None, weight_decay: Some(0.0) },
            ]
        };
        let cfg = AdamWConfig::default();
        let mut dense = AdamW::new(&dense_params, groups(), cfg).unwrap();
        let mut lazy = AdamW::new(&lazy_params, groups(), cfg).unwrap();
        // Row 8 never gets a gradient; row 0 every step; the rest now and then.
        let touched = |step: usize| -> Vec<u32> {
            (0..rows as u32 - 1).filter(|&r| r == 0 || (step * 7 + r as usize * 3).is_multiple_of(5)).collect()
        };
        for step in 0..12 {
            let lr = 1e-2 * (1.0 + step as f64).sqrt();
            for g in dense.groups_mut().iter_mut().chain(lazy.groups_mut().iter_mut()) {
                g.lr = lr;
            }
            let r = touched(step);
            let values: Vec<f32> = (0..r.len() * width).map(|_| rnd()).collect();
            let compact = Tensor::from_slice(&values, (r.len(), width), &Device::Cpu).unwrap();
            let index = Tensor::from_slice(&r, r.len(), &Device::Cpu).unwrap();
            let full =
                Tensor::zeros((rows, width), DType::F32, &Device::Cpu).unwrap().index_add(&index, &compact, 0).unwrap();
            let mut grads = Grads::new();
            grads.insert("a", full.clone());
            grads.insert("b", full);
            dense.step(&grads).unwrap();
            lazy.step_rows("a", &r, &compact).unwrap();
            lazy.step_rows("b", &r, &compact).unwrap();
            if step % 4 == 1 {
                lazy.catch_up_rows("a", [2, 8, 2]).unwrap();
            }
            if step == 6 {
                lazy.sync().unwrap();
            }
        }
        lazy.sync().unwrap();
        for ((d, l), name) in dense_params.iter().zip(&lazy_params).zip(["a", "b"]) {
            assert_eq!(bits(&d.snapshot().unwrap()), bits(&l.snapshot().unwrap()), "{name}: parameter");
            let (ds, dm, dv) = dense.state(name).unwrap();
            let (ls, lm, lv) = lazy.state(name).unwrap();
            assert_eq!(ds, ls, "{name}: step");
            assert_eq!(bits(dm), bits(lm), "{name}: exp_avg");
            assert_eq!(bits(dv), bits(lv), "{name}: exp_avg_sq");
        }
        // The never-touched row decayed (group a) and stayed put (group b).
        let a = lazy_params[0].snapshot().unwrap().get(8).unwrap().to_vec1::<f32>().unwrap();
        assert!(a.iter().zip(&init[8 * width..]).all(|(x, y)| x.abs() < y.abs() || *y == 0.0));
        let b = lazy_params[1].snapshot().unwrap().get(8).unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(b, init2[8 * width..].to_vec());
    }

    #[test]
    fn row_steps_refuse_bad_rows() {
        let p = [Param::new("a", Var::zeros((4, 3), DType::F32, &Device::Cpu).unwrap(), true)];
        let groups = vec![ParamGroup { names: vec!["a".into()], lr: None, weight_decay: None }];
        let mut opt = AdamW::new(&p, groups, AdamWConfig::default()).unwrap();
        let g = Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap();
        for rows in [[1u32, 1], [2, 1], [1, 4]] {
            let e = opt.step_rows("a", &rows, &g).unwrap_err().to_string();
            assert!(e.contains("`a`"), "{e}");
        }
        let e = opt.step_rows("a", &[1], &g).unwrap_err().to_string();
        assert!(e.contains("gradient [2, 3] for 1 rows"), "{e}");
    }
}
