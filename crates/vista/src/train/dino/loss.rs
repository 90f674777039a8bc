//! `main_dino.DINOLoss`: cross-entropy between the centred, sharpened teacher distribution and
//! the student's, over every pair (teacher global view `iq`, student view `v ≠ iq`), and the EMA
//! of the centre.
//!
//! For `epoch`, with `T = teacher_temp_schedule[epoch]` ([`super::schedule::teacher_temp_schedule`]):
//!
//! * student: `s = student_output / student_temp`, chunked into `ncrops` views of `B` rows;
//! * teacher: `q = softmax((teacher_output − center) / T)`, detached, chunked into 2 views;
//! * `loss = mean over pairs (iq, v), v ≠ iq, of mean_b Σ_k −q_iq[b,k] log_softmax(s_v)[b,k]`
//!   (`2·ncrops − 2` pairs);
//! * then `center ← center·m + mean_rows(teacher_output)·(1 − m)` (one process: no all-reduce).
//!
//! Softmax and log-softmax are composed from differentiable ops (`x − max`, `exp`, `sum`, `log`,
//! with the row maximum detached — the result does not depend on it), not
//! `candle_nn::ops::softmax_last_dim`, which has no backward. Divisions by the temperatures are
//! true divisions by the temperature rounded to the tensor's dtype, as PyTorch's
//! `tensor / python_float`.
//!
//! On the CPU in f32 the loss is one op (`LossOp`): the teacher's probabilities are computed
//! directly, and the student's log-softmax, the pair sums and the gradient
//! `(p ΣQ − Q) / (B · pairs · T_s)` in one pass each over the rows on the thread team. The
//! composed ops (eighteen differentiable candle ops on the student's side, each a pass over the
//! logits or their per-view sums forward and backward, each gradient also summed into a zeroed
//! buffer by candle's backward) remain the path on other devices and
//! dtypes, and the reference the fused op is tested against (`tests/suite/device_fallback.rs`).
//!
//! Diagnostics for collapse detection (both detached, with the centre before the update):
//! the teacher entropy `mean_rows(−Σ_k q log q)` (→ 0: one-hot teacher, the "sharpening"
//! collapse; → ln K: uniform teacher, the "centring" collapse) and the mean over the loss pairs
//! of `KL(q_iq ‖ softmax(s_v))`, which equals `loss − teacher entropy` (→ 0 with a collapsed
//! student that copies the teacher).

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Shape, Tensor, D};

use super::schedule::teacher_temp_schedule;
use crate::nn::cpu::{exp_fast, lane_sum, rows_per_task, with_simd};
use crate::train::ops::{dot, f32_slice, on_cpu_kernels, softmax_row, sum, values, CpuOut};
use crate::{Error, Result};

/// The arguments of `DINOLoss(out_dim, ncrops, warmup_teacher_temp, teacher_temp,
/// warmup_teacher_temp_epochs, nepochs, student_temp=0.1, center_momentum=0.9)`.
#[derive(Debug, Clone, PartialEq)]
pub struct DinoLossConfig {
    /// Width of the head's output, the number of prototypes (`out_dim`).
    pub out_dim: usize,
    /// Total crops per image: 2 global + the local ones (`local_crops_number + 2`).
    pub ncrops: usize,
    /// Teacher temperature at the start of the warm-up (`--warmup_teacher_temp`).
    pub warmup_teacher_temp: f64,
    /// Teacher temperature after the warm-up (`--teacher_temp`).
    pub teacher_temp: f64,
    /// Epochs of the linear temperature warm-up (`--warmup_teacher_temp_epochs`).
    pub warmup_teacher_temp_epochs: usize,
    /// Epochs of the run (`nepochs`), the length of the temperature schedule.
    pub nepochs: usize,
    /// Student temperature (`student_temp`, 0.1).
    pub student_temp: f64,
    /// EMA momentum of the centre (`center_momentum`, 0.9).
    pub center_momentum: f64,
}

impl DinoLossConfig {
    /// With DINOLoss's defaults `student_temp = 0.1`, `center_momentum = 0.9`.
    pub fn new(
        out_dim: usize,
        ncrops: usize,
        warmup_teacher_temp: f64,
        teacher_temp: f64,
        warmup_teacher_temp_epochs: usize,
        nepochs: usize,
    ) -> Self {
        Self {
            out_dim,
            ncrops,
            warmup_teacher_temp,
            teacher_temp,
            warmup_teacher_temp_epochs,
            nepochs,
            student_temp: 0.1,
            center_momentum: 0.9,
        }
    }
}

/// What [`DinoLoss::forward`] returns.
#[derive(Debug, Clone)]
pub struct DinoLossOutput {
    /// The loss, a 0-dimensional tensor differentiable with respect to the student output.
    pub loss: Tensor,
    /// Mean teacher entropy `−Σ q log q` of the sharpened teacher (0-dim, detached, f32).
    pub teacher_entropy: Tensor,
    /// Mean `KL(teacher ‖ student)` over the loss pairs (0-dim, detached, f32).
    pub kl: Tensor,
    /// The teacher temperature used (`teacher_temp_schedule[epoch]`).
    pub teacher_temp: f64,
}

/// `DINOLoss` with its `center` buffer (`[1, out_dim]`, f32, zeros at creation).
#[derive(Debug, Clone)]
pub struct DinoLoss {
    cfg: DinoLossConfig,
    center: Tensor,
    temps: Vec<f64>,
}

impl DinoLoss {
    /// The loss with a zero centre on `device`. Errors when `out_dim` is 0, `ncrops` < 2 or the
    /// temperature warm-up is longer than the run.
    pub fn new(cfg: DinoLossConfig, device: &Device) -> Result<Self> {
        if cfg.out_dim == 0 {
            return Err(Error::arg("out_dim", "must be positive"));
        }
        if cfg.ncrops < 2 {
            return Err(Error::arg("ncrops", format!("{} crops; DINO needs the 2 global crops at least", cfg.ncrops)));
        }
        let temps = teacher_temp_schedule(
            cfg.warmup_teacher_temp,
            cfg.teacher_temp,
            cfg.warmup_teacher_temp_epochs,
            cfg.nepochs,
        )?;
        let center = Tensor::zeros((1, cfg.out_dim), DType::F32, device)?;
        Ok(Self { cfg, center, temps })
    }

    /// Returns the configuration.
    pub fn config(&self) -> &DinoLossConfig {
        &self.cfg
    }

    /// The centre, `[1, out_dim]` f32 (the `center` entry of DINO's `dino_loss` state dict).
    pub fn center(&self) -> &Tensor {
        &self.center
    }

    /// Sets the centre (resuming from a checkpoint).
    pub fn set_center(&mut self, center: &Tensor) -> Result<()> {
        let center = match center.rank() {
            1 => center.unsqueeze(0)?,
            _ => center.clone(),
        };
        if center.dims() != [1, self.cfg.out_dim] {
            return Err(Error::arg("center", format!("shape {:?}, expected [1, {}]", center.dims(), self.cfg.out_dim)));
        }
        self.center = center.to_dtype(DType::F32)?.to_device(self.center.device())?.copy()?;
        Ok(())
    }

    /// `teacher_temp_schedule[epoch]`; an error past the schedule (numpy's IndexError).
    pub fn teacher_temp(&self, epoch: usize) -> Result<f64> {
        self.temps.get(epoch).copied().ok_or_else(|| {
            Error::arg(
                "epoch",
                format!("epoch {epoch} is past the {} epochs of the temperature schedule", self.temps.len()),
            )
        })
    }

    /// `DINOLoss.forward(student_output, teacher_output, epoch)`: the loss and diagnostics, then
    /// the centre update.
    ///
    /// # Shapes
    /// `student_output`: `[ncrops·B, out_dim]` (crop-major, as `MultiCropWrapper` concatenates);
    /// `teacher_output`: `[2·B, out_dim]`.
    pub fn forward(
        &mut self,
        student_output: &Tensor,
        teacher_output: &Tensor,
        epoch: usize,
    ) -> Result<DinoLossOutput> {
        let temp = self.teacher_temp(epoch)?;
        let k = self.cfg.out_dim;
        let (t_rows, t_k) = teacher_output.dims2()?;
        let (s_rows, s_k) = student_output.dims2()?;
        if t_k != k || s_k != k {
            return Err(Error::arg(
                "output",
                format!(
                    "student {:?} / teacher {:?} outputs, out_dim is {k}",
                    student_output.dims(),
                    teacher_output.dims()
                ),
            ));
        }
        if t_rows == 0 || t_rows % 2 != 0 {
            return Err(Error::arg("teacher_output", format!("{t_rows} rows, expected 2 global views of B rows")));
        }
        let b = t_rows / 2;
        let ncrops = self.cfg.ncrops;
        if s_rows != ncrops * b {
            return Err(Error::arg(
                "student_output",
                format!("{s_rows} rows, expected {ncrops} crops x {b} (the teacher's batch)"),
            ));
        }

        let n_terms = 2 * (ncrops - 1);
        if on_cpu_kernels(&[student_output, teacher_output, &self.center]) {
            let (q, entropy) = teacher_probs(&values(teacher_output)?, &values(&self.center)?, temp as f32, k);
            let op = LossOp {
                q,
                b,
                k,
                student_temp: self.cfg.student_temp as f32,
                scale: 1.0 / (b * n_terms) as f64,
                stats: Mutex::new(Vec::new()),
            };
            let loss = student_output.contiguous()?.apply_op1(op)?;
            let device = student_output.device();
            let teacher_entropy = Tensor::new(entropy as f32, device)?;
            let kl = loss.detach().sub(&teacher_entropy)?;
            self.update_center(teacher_output)?;
            return Ok(DinoLossOutput { loss, teacher_entropy, kl, teacher_temp: temp });
        }

        // Teacher centring and sharpening (detached).
        let teacher = teacher_output.detach().to_dtype(DType::F32)?;
        let logits = div_scalar(&teacher.broadcast_sub(&self.center)?, temp)?;
        let (q, log_q) = softmax_and_log(&logits)?;
        let teacher_entropy = q.mul(&log_q)?.sum(D::Minus1)?.mean_all()?.neg()?;

        // Student log-probabilities, [ncrops, B, K].
        let s = div_scalar(student_output, self.cfg.student_temp)?;
        let ls = log_softmax(&s)?.reshape((ncrops, b, k))?;
        let ls_sum = ls.sum(0)?;
        let q = q.to_dtype(ls.dtype())?.reshape((2, b, k))?;
        // Σ over pairs of Σ_b Σ_k q_iq · ls_v = Σ_iq Σ q_iq · (Σ_v ls_v − ls_iq).
        let mut acc: Option<Tensor> = None;
        for iq in 0..2 {
            let others = ls_sum.sub(&ls.get(iq)?)?;
            let term = q.get(iq)?.mul(&others)?.sum_all()?;
            acc = Some(match acc {
                None => term,
                Some(a) => a.add(&term)?,
            });
        }
        let loss = acc.expect("two teacher views").affine(-1.0 / (b * n_terms) as f64, 0.0)?;
        let kl = loss.detach().to_dtype(DType::F32)?.sub(&teacher_entropy)?;

        self.update_center(teacher_output)?;
        Ok(DinoLossOutput { loss, teacher_entropy, kl, teacher_temp: temp })
    }

    /// `DINOLoss.update_center`: `center ← center·m + (Σ_rows teacher_output / rows)·(1 − m)`,
    /// without gradient.
    pub fn update_center(&mut self, teacher_output: &Tensor) -> Result<()> {
        let t = teacher_output.detach().to_dtype(DType::F32)?;
        let (rows, k) = t.dims2()?;
        if k != self.cfg.out_dim || rows == 0 {
            return Err(Error::arg("teacher_output", format!("shape {:?}, out_dim is {}", t.dims(), self.cfg.out_dim)));
        }
        let batch_center = div_scalar(&t.sum_keepdim(0)?, rows as f64)?;
        let m = self.cfg.center_momentum;
        self.center = self.center.affine(m, 0.0)?.add(&batch_center.affine(1.0 - m, 0.0)?)?;
        Ok(())
    }
}

/// `x / s` with `s` rounded to `x`'s dtype: a true division, as PyTorch's `tensor / float`
/// (candle's `tensor / f64` multiplies by the reciprocal).
fn div_scalar(x: &Tensor, s: f64) -> Result<Tensor> {
    let s = Tensor::new(s, x.device())?.to_dtype(x.dtype())?;
    Ok(x.broadcast_div(&s)?)
}

/// `F.log_softmax(x, dim=-1)` from differentiable ops: `z − log Σ exp z`, `z = x − max(x)` with
/// the maximum detached.
pub fn log_softmax(x: &Tensor) -> Result<Tensor> {
    let z = x.broadcast_sub(&x.max_keepdim(D::Minus1)?.detach())?;
    let lse = z.exp()?.sum_keepdim(D::Minus1)?.log()?;
    Ok(z.broadcast_sub(&lse)?)
}

/// `(F.softmax(x, -1), F.log_softmax(x, -1))` sharing `exp(x − max)`.
pub fn softmax_and_log(x: &Tensor) -> Result<(Tensor, Tensor)> {
    let z = x.broadcast_sub(&x.max_keepdim(D::Minus1)?.detach())?;
    let e = z.exp()?;
    let sum = e.sum_keepdim(D::Minus1)?;
    Ok((e.broadcast_div(&sum)?, z.broadcast_sub(&sum.log()?)?))
}

/// The teacher's sharpened distribution on the CPU: per row of `t: [2B, K]`,
/// `q = softmax((t − center) / T)` (a true division, as the composed path), and the mean over
/// rows of `−Σ q log q` (the teacher entropy).
fn teacher_probs(t: &[f32], center: &[f32], temp: f32, k: usize) -> (Vec<f32>, f64) {
    let mut q = vec![0f32; t.len()];
    let rows = rows_per_task(k);
    let parts = crate::nn::team::map_chunks(&mut q, rows * k, |i, q| {
        let t = &t[i * rows * k..][..q.len()];
        with_simd(
            #[inline(always)]
            || {
                let mut logits = vec![0f32; k];
                let mut plogp = 0f64;
                for (q, t) in q.chunks_exact_mut(k).zip(t.chunks_exact(k)) {
                    for ((l, t), c) in logits.iter_mut().zip(t).zip(center) {
                        *l = (t - c) / temp;
                    }
                    // z = logits − max first (at T = 0.04 the logits reach tens, and `q · logits`
                    // would cancel against `max` in f32): log q = z − ln Σ e^z, so
                    // Σ q log q = q · z − ln Σ e^z · Σ q.
                    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    logits.iter_mut().for_each(|l| *l -= max);
                    let (_, total) = softmax_row(&logits, q);
                    plogp += f64::from(dot(q, &logits)) - f64::from(total.ln()) * f64::from(sum(q));
                }
                plogp
            },
        )
    });
    let rows_total = (t.len() / k.max(1)).max(1);
    (q, -parts.iter().sum::<f64>() / rows_total as f64)
}

/// The DINO loss on the CPU, one op over the student output `[ncrops·B, K]` (crop-major) given
/// the teacher's detached probabilities `q: [2B, K]`.
///
/// With `s' = s / T_s`, `ls = log_softmax(s')` per row and, for student row `(v, b)`,
/// `Q = Σ_{iq ≠ v} q_iq[b]` (the one other global view for `v < 2`, both for a local view):
/// `loss = −scale · Σ_rows Q · ls` with `scale = 1 / (B · n_pairs)`; backward
/// `ds = scale · (p ΣQ − Q) / T_s` with `p = softmax(s')` (log-softmax's backward
/// `g − p Σg` with `g = −scale · Q`, then the division's). Rows run in parallel on the thread
/// team; the loss adds the rows' terms in f64, in row order.
struct LossOp {
    q: Vec<f32>,
    b: usize,
    k: usize,
    student_temp: f32,
    scale: f64,
    /// Per student row, `max(s') + ln Σ e^(s' − max)` (the log-sum-exp), from the forward.
    stats: Mutex<Vec<f32>>,
}

impl LossOp {
    /// `Q` for student row `r` into `out`; returns `ΣQ`.
    #[inline(always)]
    fn targets(&self, r: usize, out: &mut [f32]) -> f32 {
        let (v, b, k) = (r / self.b, r % self.b, self.k);
        let (q0, q1) = (&self.q[b * k..][..k], &self.q[(self.b + b) * k..][..k]);
        match v {
            0 => out.copy_from_slice(q1),
            1 => out.copy_from_slice(q0),
            _ => {
                for ((o, a), c) in out.iter_mut().zip(q0).zip(q1) {
                    *o = a + c;
                }
            }
        }
        sum(out)
    }
}

impl CustomOp1 for LossOp {
    fn name(&self) -> &'static str {
        "vista-dino-loss"
    }

    fn cpu_fwd(&self, st: &CpuStorage, l: &Layout) -> CpuOut {
        let s = f32_slice(st, l)?;
        let (k, t) = (self.k, self.student_temp);
        let rows = s.len() / k.max(1);
        let mut lse = vec![0f32; rows];
        let per = rows_per_task(k);
        let parts = crate::nn::team::map_chunks(&mut lse, per, |i, lse| {
            with_simd(
                #[inline(always)]
                || {
                    let (mut sp, mut target) = (vec![0f32; k], vec![0f32; k]);
                    let mut acc = 0f64;
                    for (j, lse) in lse.iter_mut().enumerate() {
                        let r = i * per + j;
                        for (o, v) in sp.iter_mut().zip(&s[r * k..][..k]) {
                            *o = v / t;
                        }
                        let max = sp.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                        *lse = max + lane_sum(&sp, |v| exp_fast(v - max)).ln();
                        let total = self.targets(r, &mut target);
                        // Σ Q · (s' − lse) = Q · s' − lse · ΣQ.
                        acc += f64::from(dot(&target, &sp)) - f64::from(*lse) * f64::from(total);
                    }
                    acc
                },
            )
        });
        let loss = -parts.iter().sum::<f64>() * self.scale;
        *self.stats.lock().unwrap_or_else(|e| e.into_inner()) = lse;
        Ok((CpuStorage::F32(vec![loss as f32]), Shape::from(())))
    }

    fn bwd(&self, s: &Tensor, _y: &Tensor, dy: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let sv = values(s)?;
        let g = values(dy)?.first().copied().unwrap_or(0.0);
        let lse = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        let (k, t) = (self.k, self.student_temp);
        let scale = (f64::from(g) * self.scale) as f32;
        let mut ds = vec![0f32; sv.len()];
        let per = rows_per_task(k);
        crate::nn::team::for_each_chunk(&mut ds, per * k, |i, ds| {
            with_simd(
                #[inline(always)]
                || {
                    let mut target = vec![0f32; k];
                    for (j, ds) in ds.chunks_exact_mut(k).enumerate() {
                        let r = i * per + j;
                        let total = self.targets(r, &mut target);
                        let l = lse[r];
                        for ((d, v), q) in ds.iter_mut().zip(&sv[r * k..][..k]).zip(&target) {
                            let p = exp_fast(v / t - l);
                            *d = scale * (p * total - q) / t;
                        }
                    }
                },
            )
        });
        Ok(Some(Tensor::from_vec(ds, s.shape(), &Device::Cpu)?))
    }
}
