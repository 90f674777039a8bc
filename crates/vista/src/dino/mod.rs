//! DINO (Caron et al., 2021) and DINOv2 (Oquab et al., 2023) backbones: CLS and patch features,
//! register tokens and attention maps at any input size; and DINO's ResNet-50 (torchvision's).

pub mod backbone;
pub mod config;
pub mod loader;
pub mod pipeline;
pub mod preprocess;
pub mod resnet;
pub mod vit;

pub use backbone::Backbone;
pub use config::{DinoConfig, Ffn, PosInterpolation};
pub use loader::{load_backbone, load_model, LoadOptions, Loaded};
pub use pipeline::{AttentionMaps, DinoFeatures, DinoPipeline};
pub use preprocess::{DinoPreprocess, Mode};
pub use vit::{DinoOutput, DinoVit};
