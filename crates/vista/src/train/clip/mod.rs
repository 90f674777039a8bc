//! CLIP training as open_clip does it (`open_clip_train`: `main.py`, `train.py`, `scheduler.py`;
//! `open_clip/loss.py`), differentiable with candle's autograd.
//!
//! * [`model`]: [`TrainClip`], both towers and the temperature in OpenAI's naming, open_clip's
//!   initialisation.
//! * [`loss`]: `ClipLoss` and `SigLipLoss`.
//! * [`optim`]: open_clip's parameter groups, gradient clipping by total norm, the learning-rate
//!   schedules, LiT tower locking and WiSE-FT interpolation.
//! * [`trainer`]: [`ClipTrainer::step`], one optimiser step with feature-cached accumulation.
//! * [`data`]: image–caption batches built on worker threads.
//! * [`eval`]: zero-shot top-1 and retrieval recall@K.
//! * [`run`]: the loop with resumable checkpoints, `metrics.jsonl`, the export every CLIP
//!   command loads, and the WiSE-FT gate.
//!
//! Agreement with open_clip: `tests/suite/clip_train_parity.rs` (goldens from
//! `tools/reference/gen_clip_train.py`).

pub mod config;
pub mod data;
pub mod eval;
pub mod loss;
pub mod model;
pub mod optim;
pub mod run;
pub mod trainer;

pub use config::{ClipTrainConfig, LossKind, Start};
pub use loss::{clip_loss, siglip_loss};
pub use model::{LogitInit, TrainClip};
pub use optim::{clip_grad_norm, lock_image_tower, lock_text_tower, param_groups, wise_ft, LrSchedule};
pub use trainer::{ClipStepMetrics, ClipTrainer, MicroBatch};
