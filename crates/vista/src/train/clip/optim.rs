//! open_clip's optimisation recipe (`open_clip_train/main.py`, `scheduler.py`, `train.py`) and
//! the fine-tuning tools: LiT tower locking (`lock_image_tower`, `lock_text_tower`) and WiSE-FT
//! weight interpolation (mlfoundations/wise-ft).

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use crate::train::adamw::ParamGroup;
use crate::train::param::{Grads, Param};
use crate::{Error, Result};

/// `main.py`'s two groups: parameters that are 1-D, or whose name contains `bn`, `ln`, `bias` or
/// `logit_scale`, get no weight decay (`gain_or_bias_params`); the rest get `weight_decay`.
/// Only parameters with `requires_grad`, in parameter order; the no-decay group first, as
/// `main.py` lists them.
pub fn param_groups(params: &[Param], weight_decay: f64) -> Vec<ParamGroup> {
    let exclude = |p: &Param| {
        let n = p.name();
        p.var().rank() < 2 || n.contains("bn") || n.contains("ln") || n.contains("bias") || n.contains("logit_scale")
    };
    let (mut no_decay, mut decay) = (Vec::new(), Vec::new());
    for p in params.iter().filter(|p| p.requires_grad()) {
        if exclude(p) {
            no_decay.push(p.name().to_string());
        } else {
            decay.push(p.name().to_string());
        }
    }
    vec![
        ParamGroup { names: no_decay, lr: None, weight_decay: Some(0.0) },
        ParamGroup { names: decay, lr: None, weight_decay: Some(weight_decay) },
    ]
}

/// `torch.nn.utils.clip_grad_norm_(params, max_norm)`: the total norm `‖(‖g₁‖, ‖g₂‖, …)‖₂`, and
/// every gradient multiplied by `min(max_norm / (total + 1e-6), 1)`. Returns the total norm.
pub fn clip_grad_norm(grads: &mut Grads, max_norm: f64) -> Result<f64> {
    if grads.is_empty() {
        return Ok(0.0);
    }
    let norms =
        grads.iter().map(|(_, g)| Ok(g.to_dtype(DType::F32)?.sqr()?.sum_all()?.sqrt()?)).collect::<Result<Vec<_>>>()?;
    let total = Tensor::stack(&norms, 0)?.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()?;
    let coef = (max_norm as f32 / (total + 1e-6)).min(1.0);
    for (_, g) in grads.iter_mut() {
        *g = g.affine(coef as f64, 0.0)?;
    }
    Ok(total as f64)
}

/// The learning-rate schedules of `scheduler.py`, per optimiser step.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum LrSchedule {
    /// `cosine_lr`: linear warm-up `base·(step+1)/warmup`, then `0.5·(1 + cos(π·e/es))·base`.
    Cosine,
    /// `const_lr`: warm-up, then `base`.
    Const,
    /// `const_lr_cooldown`: warm-up, `base`, and over the last `cooldown_steps`
    /// `(1 − e/es)^power · (base − end) + end`.
    ConstCooldown {
        /// Steps of the cool-down at the end.
        cooldown_steps: usize,
        /// `--lr-cooldown-power`.
        power: f64,
        /// `--lr-cooldown-end`.
        end_lr: f64,
    },
}

impl LrSchedule {
    /// The learning rate of optimiser step `step` (from 0) of `steps`.
    pub fn lr(&self, base: f64, warmup: usize, steps: usize, step: usize) -> f64 {
        if step < warmup {
            return base * (step + 1) as f64 / warmup as f64;
        }
        match *self {
            LrSchedule::Cosine => {
                let e = (step - warmup) as f64;
                let es = steps as f64 - warmup as f64;
                0.5 * (1.0 + (std::f64::consts::PI * e / es).cos()) * base
            }
            LrSchedule::Const => base,
            LrSchedule::ConstCooldown { cooldown_steps, power, end_lr } => {
                let start = steps.saturating_sub(cooldown_steps);
                if step < start {
                    base
                } else {
                    let e = (step - start) as f64;
                    let es = (steps - start) as f64;
                    let decay = (1.0 - e / es).powf(power);
                    decay * (base - end_lr) + end_lr
                }
            }
        }
    }
}

/// Which parameters a tower lock leaves trainable.
fn lock_groups(params: &mut [Param], groups: Vec<Vec<String>>, unlocked: usize, is_member: impl Fn(&str) -> bool) {
    for p in params.iter_mut() {
        if is_member(p.name()) {
            p.set_requires_grad(false);
        }
    }
    let keep = groups.len().saturating_sub(unlocked);
    for group in &groups[keep..] {
        for p in params.iter_mut() {
            if group.iter().any(|g| p.name() == g || p.name().starts_with(&format!("{g}."))) {
                p.set_requires_grad(true);
            }
        }
    }
}

/// `model.lock_image_tower(unlocked_groups)` (LiT): every `visual.*` parameter frozen, then the
/// last `unlocked_groups` of `[conv1, class_embedding, positional_embedding, ln_pre]`, each
/// block but the last, `[last block, ln_post]`, `[proj]` trainable again.
pub fn lock_image_tower(params: &mut [Param], layers: usize, unlocked_groups: usize) {
    let v = |n: &str| format!("visual.{n}");
    let mut groups = vec![vec![v("conv1"), v("class_embedding"), v("positional_embedding"), v("ln_pre")]];
    for i in 0..layers.saturating_sub(1) {
        groups.push(vec![v(&format!("transformer.resblocks.{i}"))]);
    }
    groups.push(vec![v(&format!("transformer.resblocks.{}", layers.saturating_sub(1))), v("ln_post")]);
    groups.push(vec![v("proj")]);
    lock_groups(params, groups, unlocked_groups, |n| n.starts_with("visual."));
}

/// `model.lock_text_tower(unlocked_layers)` (`transformer.lock_text_tower`): every text
/// parameter frozen (`token_embedding`, `positional_embedding`, the blocks, `ln_final`,
/// `text_projection`), then the last `unlocked_layers` of `[embeddings]`, each block but the
/// last, `[last block, ln_final]`, `[text_projection]` trainable again.
pub fn lock_text_tower(params: &mut [Param], layers: usize, unlocked_layers: usize) {
    let mut groups = vec![vec!["token_embedding".to_string(), "positional_embedding".to_string()]];
    for i in 0..layers.saturating_sub(1) {
        groups.push(vec![format!("transformer.resblocks.{i}")]);
    }
    groups.push(vec![format!("transformer.resblocks.{}", layers.saturating_sub(1)), "ln_final".into()]);
    groups.push(vec!["text_projection".into()]);
    let text = |n: &str| {
        ["token_embedding.", "transformer.", "ln_final."].iter().any(|p| n.starts_with(p))
            || n == "positional_embedding"
            || n == "text_projection"
    };
    lock_groups(params, groups, unlocked_layers, text);
}

/// WiSE-FT (`wise_ft.py` `_merge`): `θ = (1 − α)·θ₀ + α·θ₁` for every tensor; both state dicts
/// must have the same names and shapes.
pub fn wise_ft(
    theta_0: &[(String, Tensor)],
    theta_1: &[(String, Tensor)],
    alpha: f64,
) -> Result<Vec<(String, Tensor)>> {
    if !(0.0..=1.0).contains(&alpha) {
        return Err(Error::arg("wise-ft", format!("alpha {alpha} is not in [0, 1]")));
    }
    let find = |n: &str| theta_1.iter().find(|(m, _)| m == n).map(|(_, t)| t);
    if theta_0.len() != theta_1.len() {
        return Err(Error::arg("wise-ft", "the two models have different tensors"));
    }
    theta_0
        .iter()
        .map(|(n, t0)| {
            let t1 =
                find(n).ok_or_else(|| Error::arg("wise-ft", format!("`{n}` is missing from the fine-tuned model")))?;
            if t0.dims() != t1.dims() {
                return Err(Error::arg("wise-ft", format!("`{n}`: {:?} against {:?}", t0.dims(), t1.dims())));
            }
            Ok((n.clone(), (t0.affine(1.0 - alpha, 0.0)? + t1.affine(alpha, 0.0)?)?))
        })
        .collect()
}
