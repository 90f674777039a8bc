//! The momentum optimisers `main_dino.py` offers besides AdamW (`--optimizer sgd|lars`, "to use
//! with convnet and large batches"), over named parameter groups as [`super::AdamW`] is:
//!
//! * [`MomentumRule::Sgd`]: `torch.optim.SGD(params_groups, lr=0, momentum=0.9)` —
//!   `d = g + λ·p`, `μ ← 0.9·μ + d` (`μ = d` at the first step), `p ← p − lr·μ`;
//! * [`MomentumRule::Lars`]: `utils.LARS(params_groups)` (facebookresearch/dino `utils.py`,
//!   "almost copy-paste" of Barlow Twins' LARS) — for a tensor that is not 1-D, `d = g + λ·p`
//!   scaled by the trust ratio `q = η·‖p‖ / ‖d‖` (`q = 1` when either norm is 0), η = 0.001; a
//!   1-D tensor (bias, norm gain) takes its gradient as is; then `μ ← 0.9·μ + d`,
//!   `p ← p − lr·μ`.
//!
//! Element-wise in the parameters' dtype with candle ops, on their device, in torch's order of
//! operations (the norms are candle's sums, not torch's: an ulp apart). A parameter without a
//! gradient is skipped, its buffer untouched.

use std::collections::HashMap;

use candle_core::{DType, Tensor, Var};
use serde::{Deserialize, Serialize};

use super::adamw::{resolve_groups, set_dino_schedule, OptimGroup, ParamGroup};
use super::param::{Grads, Param};
use crate::{Error, Result};

/// Which momentum rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MomentumRule {
    /// `torch.optim.SGD` with momentum.
    Sgd,
    /// DINO's `utils.LARS`.
    Lars,
}

/// `μ` of torch's SGD and of `utils.LARS`.
pub const MOMENTUM: f64 = 0.9;
/// LARS's trust coefficient η (`utils.LARS`'s default, which `main_dino.py` keeps).
pub const LARS_ETA: f64 = 0.001;

/// SGD with momentum or LARS over named parameter groups.
#[derive(Debug, Clone)]
pub struct Momentum {
    rule: MomentumRule,
    groups: Vec<OptimGroup>,
    vars: HashMap<String, Var>,
    buffers: HashMap<String, Tensor>,
}

impl Momentum {
    /// `SGD(groups, lr=0, momentum=0.9)` or `LARS(groups)`: groups without a weight decay of
    /// their own take both optimisers' default, 0 (not AdamW's 1e-2).
    pub fn new(params: &[Param], groups: Vec<ParamGroup>, rule: MomentumRule) -> Result<Self> {
        let (groups, vars) = resolve_groups(params, groups, 0.0, 0.0)?;
        Ok(Self { rule, groups, vars, buffers: HashMap::new() })
    }

    /// The rule.
    pub fn rule(&self) -> MomentumRule {
        self.rule
    }

    /// The groups with their current learning rate and weight decay.
    pub fn groups(&self) -> &[OptimGroup] {
        &self.groups
    }

    /// `train_one_epoch`: every group's learning rate, the first group's weight decay.
    pub fn set_dino_schedule(&mut self, lr: f64, weight_decay: f64) {
        set_dino_schedule(&mut self.groups, lr, weight_decay);
    }

    /// Every stepped parameter's momentum buffer, sorted by name (`state_dict()["state"]`).
    pub fn buffers(&self) -> Vec<(&str, &Tensor)> {
        let mut v: Vec<_> = self.buffers.iter().map(|(n, t)| (n.as_str(), t)).collect();
        v.sort_by(|a, b| a.0.cmp(b.0));
        v
    }

    /// Restores one parameter's momentum buffer, which must have the parameter's shape.
    pub fn set_buffer(&mut self, name: &str, buffer: Tensor) -> Result<()> {
        let var = self.vars.get(name).ok_or_else(|| Error::arg("state", format!("no parameter named `{name}`")))?;
        if buffer.dims() != var.dims() {
            return Err(Error::arg(
                "state",
                format!("`{name}`: momentum buffer {:?}, the parameter {:?}", buffer.dims(), var.dims()),
            ));
        }
        self.buffers.insert(name.to_string(), buffer.to_dtype(var.dtype())?.to_device(var.device())?);
        Ok(())
    }

    /// One step with `grads`.
    pub fn step(&mut self, grads: &Grads) -> Result<()> {
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
                let p = var.as_tensor().detach();
                let g = grad.detach().to_dtype(p.dtype())?.to_device(p.device())?;
                let adapted = self.rule == MomentumRule::Lars && p.rank() != 1;
                let mut d = if self.rule == MomentumRule::Sgd && wd != 0.0 || adapted {
                    (&g + p.affine(wd, 0.0)?)?
                } else {
                    g
                };
                if adapted {
                    let norm = |t: &Tensor| -> Result<Tensor> { Ok(t.to_dtype(DType::F32)?.sqr()?.sum_all()?.sqrt()?) };
                    let (pn, dn) = (norm(&p)?, norm(&d)?);
                    let ratio = (pn.affine(LARS_ETA, 0.0)? / &dn)?;
                    let both = (pn.gt(0f32)? * dn.gt(0f32)?)?;
                    let q = both.where_cond(&ratio, &Tensor::ones((), DType::F32, p.device())?)?;
                    d = d.broadcast_mul(&q.to_dtype(p.dtype())?)?;
                }
                let mu = match self.buffers.get(name) {
                    Some(mu) => (mu.affine(MOMENTUM, 0.0)? + &d)?,
                    None => d,
                };
                var.set(&(&p - mu.affine(lr, 0.0)?)?)?;
                self.buffers.insert(name.clone(), mu);
            }
        }
        Ok(())
    }
}
