//! Learning-rate (and other hyper-parameter) schedules, computed once into per-iteration
//! arrays as pure functions, numerically as the references compute them with numpy (f64).
//!
//! * [`cosine_scheduler`] is `utils.cosine_scheduler` of facebookresearch/dino operation for
//!   operation: a linear warmup (`np.linspace(start_warmup_value, base_value, warmup_iters)`,
//!   last value exactly `base_value`) followed by the half cosine
//!   `final + 0.5 (base - final) (1 + cos(pi i / n))`, `i = 0..n`, `n` the iterations after the
//!   warmup. The last value is therefore *not* `final_value` but one step before it. DINO
//!   training and the linear probe both use it.
//!
//! Agreement with numpy (`tests/suite/train_schedule.rs`, goldens from
//! `tools/reference/gen_dino_train.py`): every value within 1e-12 absolute (the only possible
//! difference is the last bit of `cos`, between numpy's and the platform's libm).

use crate::{Error, Result};

/// `np.linspace(start, stop, num)` (endpoint included), with numpy's exact arithmetic:
/// `i * ((stop - start) / (num - 1)) + start`, the last value set to `stop`; `[start]` when
/// `num == 1`.
pub fn linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 0 {
        return Vec::new();
    }
    let delta = stop - start;
    if num == 1 {
        // div <= 0: y = arange(1) * delta + start.
        return vec![0.0 * delta + start];
    }
    let div = (num - 1) as f64;
    let step = delta / div;
    let mut y: Vec<f64> = if step == 0.0 {
        // numpy's special case for denormal steps: y / div * delta.
        (0..num).map(|i| i as f64 / div * delta + start).collect()
    } else {
        (0..num).map(|i| i as f64 * step + start).collect()
    };
    y[num - 1] = stop;
    y
}

/// `utils.cosine_scheduler(base_value, final_value, epochs, niter_per_ep, warmup_epochs,
/// start_warmup_value)`: `epochs * niter_per_ep` values, one per training iteration.
///
/// Errors when the warmup is longer than the training (numpy's assertion).
pub fn cosine_scheduler(
    base_value: f64,
    final_value: f64,
    epochs: usize,
    niter_per_ep: usize,
    warmup_epochs: usize,
    start_warmup_value: f64,
) -> Result<Vec<f64>> {
    let total = epochs
        .checked_mul(niter_per_ep)
        .ok_or_else(|| Error::arg("epochs", format!("{epochs} epochs x {niter_per_ep} iterations overflows")))?;
    let warmup_iters = warmup_epochs.saturating_mul(niter_per_ep);
    if warmup_iters > total {
        return Err(Error::arg(
            "warmup_epochs",
            format!("warmup of {warmup_epochs} epochs is longer than the {epochs} epochs of training"),
        ));
    }
    let mut schedule = Vec::with_capacity(total);
    if warmup_epochs > 0 {
        schedule.extend(linspace(start_warmup_value, base_value, warmup_iters));
    }
    let n = total - warmup_iters;
    let half_range = 0.5 * (base_value - final_value);
    let len = n as f64;
    schedule.extend((0..n).map(|i| final_value + half_range * (1.0 + (std::f64::consts::PI * i as f64 / len).cos())));
    debug_assert_eq!(schedule.len(), total);
    Ok(schedule)
}
