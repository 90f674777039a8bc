//! The teacher update of `train_one_epoch`:
//!
//! ```python
//! with torch.no_grad():
//!     m = momentum_schedule[it]
//!     for param_q, param_k in zip(student.module.parameters(), teacher_without_ddp.parameters()):
//!         param_k.data.mul_(m).add_((1 - m) * param_q.detach().data)
//! ```
//!
//! Every parameter, frozen ones included (`parameters()` ignores `requires_grad`): with
//! `norm_last_layer = false` the teacher's `weight_g` follows the student's.

use candle_core::Tensor;

use super::Param;
use crate::{Error, Result};

/// `teacher ← teacher·m + student·(1 − m)` for each pair of parameters, in order (as DINO's
/// `zip`); the names and shapes must match. No gradient is recorded; the teacher's variables are
/// updated in place. The scalars are rounded to the parameters' dtype as PyTorch's in-place
/// `mul_` / `add_` round them.
pub fn ema_update(teacher: &[Param], student: &[Param], momentum: f64) -> Result<()> {
    if teacher.len() != student.len() {
        return Err(Error::arg(
            "teacher",
            format!("{} teacher parameters for {} student parameters", teacher.len(), student.len()),
        ));
    }
    for (k, q) in teacher.iter().zip(student) {
        if k.name() != q.name() || k.var().dims() != q.var().dims() {
            return Err(Error::arg(
                "teacher",
                format!(
                    "teacher `{}` {:?} paired with student `{}` {:?}",
                    k.name(),
                    k.var().dims(),
                    q.name(),
                    q.var().dims()
                ),
            ));
        }
        let kt = k.var().as_detached_tensor();
        let qt = q.var().as_detached_tensor().to_dtype(kt.dtype())?.to_device(kt.device())?;
        let updated = if crate::nn::cpu::eligible(&kt) {
            fused_ema(&kt, &qt, momentum)?
        } else {
            kt.affine(momentum, 0.0)?.add(&qt.affine(1.0 - momentum, 0.0)?)?
        };
        k.var().set(&updated)?;
    }
    Ok(())
}

/// `k·m + q·(1 − m)` for f32 CPU tensors in one pass, the same f32 operations as the tensor
/// path (`affine` then `add`), so the same bits.
fn fused_ema(k: &Tensor, q: &Tensor, momentum: f64) -> Result<Tensor> {
    use crate::nn::cpu::{with_simd, with_slice};
    use rayon::prelude::*;
    let (a, b) = (momentum as f32, (1.0 - momentum) as f32);
    let mut out = vec![0f32; k.elem_count()];
    with_slice(k, |ks| {
        with_slice(q, |qs| {
            out.par_chunks_mut(16 * 1024).zip(ks.par_chunks(16 * 1024).zip(qs.par_chunks(16 * 1024))).for_each(
                |(o, (k, q))| {
                    with_simd(
                        #[inline(always)]
                        || {
                            for ((o, k), q) in o.iter_mut().zip(k).zip(q) {
                                *o = (k * a + 0.0) + (q * b + 0.0);
                            }
                        },
                    )
                },
            )
        })
    })??;
    Ok(Tensor::from_vec(out, k.shape(), k.device())?)
}
