//! DINO's optimisation utilities (`utils.py`) and `torch.optim.AdamW`.
//!
//! * [`get_params_groups`]: `[{params: regularized}, {params: not_regularized,
//!   weight_decay: 0.}]`, skipping parameters without `requires_grad`; a parameter is not
//!   regularised when its name ends with `.bias` or it has one dimension (norms). Everything else
//!   is regularised — including the head's `last_layer.weight_g`, which is `[out_dim, 1]`, when
//!   it is trainable (`norm_last_layer = false`).
//! * [`AdamW`]: PyTorch's algorithm (decoupled weight decay; `amsgrad = false`), step for step:
//!   `p ← p·(1 − lr·wd)`; `m ← lerp(m, g, 1 − β₁)`; `v ← v·β₂ + (1 − β₂)·g²`;
//!   `p ← p − lr/(1 − β₁ᵗ) · m / (√v / √(1 − β₂ᵗ) + ε)`, with `t` counted per parameter. A
//!   parameter without gradient is skipped entirely (no decay, no moment update, no step count).
//!   [`AdamW::set_dino_schedule`] sets the learning rate of every group and the weight decay of
//!   the first, as `train_one_epoch` does each iteration.
//! * [`clip_gradients`]: per parameter, `clip_coef = clip / (‖g‖₂ + 1e-6)`, and `g ← g·clip_coef`
//!   when `clip_coef < 1`; returns the norms.
//! * [`cancel_gradients_last_layer`]: while `epoch < freeze_last_layer`, drops the gradients of
//!   the parameters whose name contains `last_layer` (`p.grad = None`), so that the optimiser
//!   leaves them untouched.

use candle_core::{DType, Tensor};

use super::{Grads, Param};
pub use crate::train::adamw::{AdamW, OptimGroup, ParamGroup, TORCH_DEFAULT_LR, TORCH_DEFAULT_WEIGHT_DECAY};
use crate::Result;

/// `utils.get_params_groups(model)`: the regularised group (default weight decay) then the
/// not-regularised one (weight decay 0), in parameter order.
pub fn get_params_groups(params: &[Param]) -> Vec<ParamGroup> {
    let mut regularized = Vec::new();
    let mut not_regularized = Vec::new();
    for p in params.iter().filter(|p| p.requires_grad()) {
        if p.name().ends_with(".bias") || p.var().rank() == 1 {
            not_regularized.push(p.name().to_string());
        } else {
            regularized.push(p.name().to_string());
        }
    }
    vec![
        ParamGroup { names: regularized, lr: None, weight_decay: None },
        ParamGroup { names: not_regularized, lr: None, weight_decay: Some(0.0) },
    ]
}

/// `utils.clip_gradients(model, clip)`: for each gradient, `clip_coef = clip / (‖g‖₂ + 1e-6)`
/// (in the gradient's dtype, f32 for f32), and `g ← g·clip_coef` when `clip_coef < 1`. Returns
/// the norms before clipping, in gradient order.
pub fn clip_gradients(grads: &mut Grads, clip: f64) -> Result<Vec<f32>> {
    if grads.iter().any(|(_, g)| !g.device().is_cpu()) {
        return clip_gradients_on_device(grads, clip);
    }
    let mut norms = Vec::with_capacity(grads.len());
    for (_, g) in grads.iter_mut() {
        let norm = g.sqr()?.sum_all()?.sqrt()?.to_dtype(DType::F32)?.to_scalar::<f32>()?;
        norms.push(norm);
        let clip_coef = clip as f32 / (norm + 1e-6);
        if clip_coef < 1.0 {
            *g = g.affine(clip_coef as f64, 0.0)?;
        }
    }
    Ok(norms)
}

/// [`clip_gradients`] without a round trip to the host per gradient: each norm and coefficient
/// stays on the gradient's device, `g ← g·min(clip_coef, 1)` (multiplying by 1 changes nothing),
/// and the norms come back in one transfer at the end.
fn clip_gradients_on_device(grads: &mut Grads, clip: f64) -> Result<Vec<f32>> {
    let mut norms = Vec::with_capacity(grads.len());
    for (_, g) in grads.iter_mut() {
        let norm = g.sqr()?.sum_all()?.sqrt()?.to_dtype(DType::F32)?;
        let clip_t = Tensor::new(clip as f32, g.device())?;
        let coef = clip_t.broadcast_div(&(&norm + 1e-6)?)?.minimum(1f32)?;
        *g = g.broadcast_mul(&coef.to_dtype(g.dtype())?)?;
        norms.push(norm);
    }
    if norms.is_empty() {
        return Ok(Vec::new());
    }
    Ok(Tensor::stack(&norms, 0)?.to_vec1::<f32>()?)
}

/// `utils.cancel_gradients_last_layer(epoch, model, freeze_last_layer)`: while
/// `epoch < freeze_last_layer`, removes the gradient of every parameter whose name contains
/// `last_layer`.
pub fn cancel_gradients_last_layer(epoch: usize, grads: &mut Grads, freeze_last_layer: usize) {
    if epoch >= freeze_last_layer {
        return;
    }
    grads.retain(|name| !name.contains("last_layer"));
}
