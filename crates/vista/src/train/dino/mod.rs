//! DINO's training step, differentiable with candle's autograd, numerically as
//! facebookresearch/dino computes it (`main_dino.py`, `utils.py`, `vision_transformer.py`).
//!
//! * [`head`]: [`DinoHead`], the projection head (`vision_transformer.DINOHead`, GELU MLP,
//!   L2 normalisation, weight-normalised last layer), with DINO's init and its state-dict names.
//! * [`loss`]: [`DinoLoss`] (`main_dino.DINOLoss`): cross-entropy between the centred, sharpened
//!   teacher and the student over all (teacher view, other student view) pairs, and the centre
//!   EMA; plus collapse diagnostics (teacher entropy, KL(teacher ‖ student)).
//! * [`optim`]: `utils.get_params_groups`, `torch.optim.AdamW` ([`AdamW`]),
//!   `utils.clip_gradients`, `utils.cancel_gradients_last_layer`.
//! * [`ema`]: the teacher update of `train_one_epoch`.
//!
//! Parameters are named candle [`Var`]s ([`Param`]); the gradients of one backward pass are a
//! [`Grads`], ordered as the parameters, where a parameter without gradient (`p.grad is None` in
//! PyTorch: frozen, unused, or cancelled by the last-layer freeze) is absent.
//!
//! One iteration of `train_one_epoch` (one process, fp32):
//!
//! ```no_run
//! # use vista::train::dino::*;
//! # use candle_core::{Device, Tensor};
//! # fn step(student: &DinoHead, teacher: &DinoHead, loss_fn: &mut DinoLoss, opt: &mut AdamW,
//! #         x_student: &Tensor, x_teacher: &Tensor, epoch: usize, lr: f64, wd: f64, m: f64)
//! #         -> vista::Result<()> {
//! opt.set_dino_schedule(lr, wd); // lr of every group, weight decay of the first
//! let teacher_output = teacher.forward(x_teacher)?; // the 2 global views
//! let student_output = student.forward(x_student)?; // all crops
//! let out = loss_fn.forward(&student_output, &teacher_output, epoch)?; // also updates the centre
//! let mut grads = Grads::from_backward(student.params(), &out.loss.backward()?);
//! clip_gradients(&mut grads, 3.0)?;
//! cancel_gradients_last_layer(epoch, &mut grads, 1);
//! opt.step(&grads)?;
//! ema_update(teacher.params(), student.params(), m)?;
//! # Ok(()) }
//! ```
//!
//! Agreement with PyTorch: `tests/suite/dino_train_parity.rs` (goldens from
//! `tools/reference/gen_dino_loss.py`).

pub mod arch;
pub mod backbone;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod ema;
pub mod head;
pub mod loss;
pub mod monitor;
pub mod multicrop;
pub mod optim;
pub mod resnet;
pub mod run;
pub mod schedule;
pub mod trainer;

pub use arch::{CropBackbone, TrainBackbone};
pub use backbone::TrainVit;
pub use config::{DinoTrainConfig, OptimizerKind};
pub use ema::ema_update;
pub use head::{DinoHead, DinoHeadConfig};
pub use loss::{DinoLoss, DinoLossConfig, DinoLossOutput};
pub use monitor::{CollapseMonitor, MetricsLog, StepMetrics};
pub use multicrop::multi_crop_forward;
pub use optim::{cancel_gradients_last_layer, clip_gradients, get_params_groups, AdamW, OptimGroup, ParamGroup};
pub use resnet::{ResNetDims, TrainResNet};
pub use run::{run, Event, KnnEval, RunOptions};
pub use schedule::{teacher_temp_schedule, DinoSchedules};
pub use trainer::DinoTrainer;

pub use crate::optim::AdamWConfig;

pub(crate) use crate::train::param::load_params;
pub use crate::train::param::{Grads, Param};
