//! Optimisation building blocks shared by every training loop and probe: AdamW ([`adamw`]) and
//! schedules ([`schedule`]). Model-agnostic, like [`crate::nn`].

pub mod adamw;
pub mod schedule;

pub use adamw::{AdamW, AdamWConfig};
pub use schedule::{cosine_scheduler, linspace};
