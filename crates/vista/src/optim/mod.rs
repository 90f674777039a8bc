//! Optimisation building blocks shared by every training loop and probe: AdamW ([`adamw`]), LARS
//! ([`lars`], DINO's optimiser for ResNets) and schedules ([`schedule`]). Model-agnostic, like [`crate::nn`].

pub mod adamw;
pub mod lars;
pub mod schedule;

pub use adamw::{AdamW, AdamWConfig};
pub use lars::LarsConfig;
pub use schedule::{cosine_scheduler, linspace};
