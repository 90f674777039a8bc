//! vista: CLIP, DINO and SAM implemented natively in Rust.
//!
//! Layers point one way: [`nn`] and [`image`] ← [`weights`] ← [`clip`] ← [`apps`].
//! See `docs/ARCHITECTURE.md` for the layout and why.

pub mod apps;
pub mod clip;
pub mod device;
pub mod dino;
pub mod error;
pub mod image;
pub mod index;
pub mod nn;
pub mod sam;
pub mod train;
pub mod weights;

pub use error::{Error, Result};
