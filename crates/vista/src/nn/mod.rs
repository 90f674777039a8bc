//! Building blocks that know nothing of CLIP, DINO or SAM, one idea per file.
//!
//! Inference paths use candle's fused kernels (layer norm, softmax) for speed; those record no
//! backward op, so training code must not call these forwards.

pub mod activation;
pub mod attention;
pub mod conv;
pub mod cpu;
pub mod gemm;
pub mod interpolate;
pub mod linear;
pub mod mlp;
pub mod norm;
pub mod portable;
pub mod window;

pub use activation::Activation;
pub use attention::FusedQkvAttention;
pub use linear::Linear;
pub use mlp::Mlp;
pub use norm::LayerNorm;
pub use portable::{add, add_act};
