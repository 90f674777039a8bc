//! DINO's training schedules, computed once into per-iteration (or per-epoch) arrays, as
//! `main_dino.py` / `utils.py` of facebookresearch/dino compute them with numpy (f64).
//!
//! * [`cosine_scheduler`] is `utils.cosine_scheduler` operation for operation: a linear warmup
//!   (`np.linspace(start_warmup_value, base_value, warmup_iters)`, last value exactly
//!   `base_value`) followed by the half cosine
//!   `final + 0.5 (base - final) (1 + cos(pi i / n))`, `i = 0..n`, `n` the iterations after the
//!   warmup. The last value is therefore *not* `final_value` but one step before it.
//! * [`teacher_temp_schedule`] is `DINOLoss.teacher_temp_schedule`: a per-*epoch* linear warmup
//!   from `warmup_teacher_temp` to `teacher_temp` over `warmup_teacher_temp_epochs` epochs,
//!   then constant.
//! * [`DinoSchedules`] builds the four arrays `main_dino.py` uses from a [`DinoScheduleConfig`]
//!   (defaults: `main_dino.py`'s argument defaults): learning rate with the linear scaling rule
//!   `lr * batch_size_total / 256`, weight decay 0.04 → 0.4, teacher EMA momentum 0.996 → 1,
//!   teacher temperature.
//!
//! Agreement with numpy (`tests/train_schedule.rs`, goldens from
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

/// `DINOLoss.teacher_temp_schedule`: one value per epoch,
/// `concat(linspace(warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs),
/// ones(nepochs - warmup_teacher_temp_epochs) * teacher_temp)`.
///
/// Errors when the warmup is longer than the training (numpy refuses a negative size).
pub fn teacher_temp_schedule(
    warmup_teacher_temp: f64,
    teacher_temp: f64,
    warmup_teacher_temp_epochs: usize,
    nepochs: usize,
) -> Result<Vec<f64>> {
    if warmup_teacher_temp_epochs > nepochs {
        return Err(Error::arg(
            "warmup_teacher_temp_epochs",
            format!("{warmup_teacher_temp_epochs} warmup epochs is more than the {nepochs} epochs of training"),
        ));
    }
    let mut s = linspace(warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs);
    s.extend(std::iter::repeat_n(teacher_temp, nepochs - warmup_teacher_temp_epochs));
    Ok(s)
}

/// The hyper-parameters of `main_dino.py` that its schedules depend on. [`Default`] is
/// `main_dino.py`'s argument defaults, for one GPU with 64 images (`batch_size_total = 64`) and
/// `niter_per_ep = 1` (set it to the number of batches per epoch, `len(data_loader)`, which
/// drops the last incomplete batch).
#[derive(Debug, Clone, PartialEq)]
pub struct DinoScheduleConfig {
    /// Number of training epochs (`--epochs`, 100).
    pub epochs: usize,
    /// Iterations (batches) per epoch (`len(data_loader)`).
    pub niter_per_ep: usize,
    /// Images per iteration over all devices (`batch_size_per_gpu * world_size`, 64).
    pub batch_size_total: usize,
    /// Peak learning rate for a batch of 256 (`--lr`, 0.0005); scaled by `batch_size_total / 256`.
    pub lr: f64,
    /// Final learning rate (`--min_lr`, 1e-6).
    pub min_lr: f64,
    /// Epochs of linear learning-rate warmup from 0 (`--warmup_epochs`, 10).
    pub warmup_epochs: usize,
    /// Initial weight decay (`--weight_decay`, 0.04).
    pub weight_decay: f64,
    /// Final weight decay (`--weight_decay_end`, 0.4).
    pub weight_decay_end: f64,
    /// Initial teacher EMA momentum (`--momentum_teacher`, 0.996); it goes to 1.
    pub momentum_teacher: f64,
    /// Initial teacher temperature (`--warmup_teacher_temp`, 0.04).
    pub warmup_teacher_temp: f64,
    /// Teacher temperature after the warmup (`--teacher_temp`, 0.04).
    pub teacher_temp: f64,
    /// Epochs of teacher-temperature warmup (`--warmup_teacher_temp_epochs`, 0).
    pub warmup_teacher_temp_epochs: usize,
}

impl Default for DinoScheduleConfig {
    fn default() -> Self {
        Self {
            epochs: 100,
            niter_per_ep: 1,
            batch_size_total: 64,
            lr: 0.0005,
            min_lr: 1e-6,
            warmup_epochs: 10,
            weight_decay: 0.04,
            weight_decay_end: 0.4,
            momentum_teacher: 0.996,
            warmup_teacher_temp: 0.04,
            teacher_temp: 0.04,
            warmup_teacher_temp_epochs: 0,
        }
    }
}

impl DinoScheduleConfig {
    /// The peak learning rate after the linear scaling rule, `lr * batch_size_total / 256`
    /// (in `main_dino.py`'s order of operations).
    pub fn scaled_lr(&self) -> f64 {
        self.lr * self.batch_size_total as f64 / 256.0
    }
}

/// The schedules of `main_dino.py`: `lr`, `wd` and `momentum` have one value per iteration
/// (`epochs * niter_per_ep`, indexed by the global iteration `epoch * niter_per_ep + it`),
/// `teacher_temp` one per epoch.
#[derive(Debug, Clone, PartialEq)]
pub struct DinoSchedules {
    /// `cosine_scheduler(lr * batch_size_total / 256, min_lr, epochs, niter, warmup_epochs)`.
    pub lr: Vec<f64>,
    /// `cosine_scheduler(weight_decay, weight_decay_end, epochs, niter)` (first parameter
    /// group only: DINO does not decay biases and norms).
    pub wd: Vec<f64>,
    /// `cosine_scheduler(momentum_teacher, 1, epochs, niter)`: teacher EMA momentum.
    pub momentum: Vec<f64>,
    /// `DINOLoss.teacher_temp_schedule`, per epoch.
    pub teacher_temp: Vec<f64>,
}

impl DinoSchedules {
    pub fn new(cfg: &DinoScheduleConfig) -> Result<Self> {
        let (e, n) = (cfg.epochs, cfg.niter_per_ep);
        Ok(Self {
            lr: cosine_scheduler(cfg.scaled_lr(), cfg.min_lr, e, n, cfg.warmup_epochs, 0.0)?,
            wd: cosine_scheduler(cfg.weight_decay, cfg.weight_decay_end, e, n, 0, 0.0)?,
            momentum: cosine_scheduler(cfg.momentum_teacher, 1.0, e, n, 0, 0.0)?,
            teacher_temp: teacher_temp_schedule(
                cfg.warmup_teacher_temp,
                cfg.teacher_temp,
                cfg.warmup_teacher_temp_epochs,
                cfg.epochs,
            )?,
        })
    }

    /// Number of training iterations (`epochs * niter_per_ep`).
    pub fn len(&self) -> usize {
        self.lr.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lr.is_empty()
    }
}
