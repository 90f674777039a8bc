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
}

impl AdamW {
    /// `torch.optim.AdamW(groups, betas=…, eps=…)` with torch's default learning rate and weight
    /// decay for the groups that set none. Every name in `groups` must be one of `params`, and
    /// appear once.
    pub fn new(params: &[Param], groups: Vec<ParamGroup>, cfg: AdamWConfig) -> Result<Self> {
        let (groups, vars) = resolve_groups(params, groups, TORCH_DEFAULT_LR, TORCH_DEFAULT_WEIGHT_DECAY)?;
        Ok(Self { cfg, groups, vars, state: HashMap::new() })
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

    /// The step count and the two moments of `name`, once it has been stepped.
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
        self.state.insert(name.to_string(), AdamState { step, exp_avg, exp_avg_sq });
        Ok(())
    }

    /// One optimiser step with `grads` (parameters without a gradient are skipped; gradients of
    /// parameters outside the groups are ignored).
    pub fn step(&mut self, grads: &Grads) -> Result<()> {
        let (beta1, beta2) = self.cfg.betas;
        let eps = self.cfg.eps;
        for group in &self.groups {
            let (lr, wd) = (group.lr, group.weight_decay);
            for name in &group.names {
                let Some(grad) = grads.get(name) else { continue };
                let var = &self.vars[name];
                if grad.dims() != var.dims() {
                    return Err(Error::arg(
                        "grads",
                        format!("`{name}`: gradient {:?} for a parameter {:?}", grad.dims(), var.dims()),
                    ));
                }
                let grad = grad.detach().to_dtype(var.dtype())?.to_device(var.device())?;
                if !self.state.contains_key(name) {
                    // Two buffers: the fused step below updates each moment in place.
                    let t = var.as_detached_tensor();
                    let st = AdamState { step: 0, exp_avg: t.zeros_like()?, exp_avg_sq: t.zeros_like()? };
                    self.state.insert(name.clone(), st);
                }
                let st = self.state.get_mut(name).expect("state inserted above");
                st.step += 1;
                let t = st.step as i32;
                if crate::nn::cpu::eligible(&grad) && crate::nn::cpu::eligible(var.as_tensor()) {
                    let scalars = Scalars::new(&self.cfg, lr, wd, st.step);
                    fused_adamw(var.as_tensor(), &grad, &st.exp_avg, &st.exp_avg_sq, &scalars)?;
                    continue;
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
            }
        }
        Ok(())
    }
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
