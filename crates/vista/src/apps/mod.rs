//! What the CLI (and later the server) calls. These take paths, strings and labels and give back
//! plain vectors and scores; tensors stay inside.

pub mod classify;
pub mod clip_pipeline;
pub mod dataset;
pub mod dino_pipeline;
pub mod files;
pub mod knn;
pub mod linear_probe;
pub mod masks;
pub mod npy;
pub mod query;
pub mod segment;

pub use classify::{Prediction, Templates, ZeroShotClassifier};
pub use clip_pipeline::{ClipPipeline, ImageEmbedding};
