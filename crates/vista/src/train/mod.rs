//! Training: one folder per recipe, each loop written as named phases — [`dino`]
//! (`main_dino.py` of facebookresearch/dino) — over the shared optimisers and schedules of
//! [`crate::optim`], [`ops`], fused element-wise ops with a hand-written backward, and
//! [`block`], a whole transformer block as one op with its backward written out, and [`conv`],
//! the convolution and BatchNorm of the CNN towers likewise.
//!
//! The multi-crop data augmentation (`DataAugmentationDINO`) lives with the other image code,
//! in [`crate::image::augment`].

pub mod adamw;
pub mod batch_norm;
pub mod block;
pub mod clip;
pub mod conv;
pub mod dino;
pub mod loader;
pub mod momentum;
pub mod ops;
pub mod param;

pub use adamw::AdamW;
pub use momentum::{Momentum, MomentumRule};
pub use param::{Grads, Param};
