//! Self-supervised training support (DINO, `main_dino.py` of facebookresearch/dino).
//!
//! * [`schedule`]: the per-iteration learning-rate, weight-decay and teacher-momentum cosine
//!   schedules and the per-epoch teacher temperature, numerically as the reference computes
//!   them.
//!
//! The multi-crop data augmentation (`DataAugmentationDINO`) lives with the other image code,
//! in [`crate::image::augment`].

pub mod dino;
pub mod ops;
pub mod schedule;

pub use schedule::{cosine_scheduler, linspace, teacher_temp_schedule, DinoScheduleConfig, DinoSchedules};
