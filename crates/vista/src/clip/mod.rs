//! CLIP: Radford et al., "Learning Transferable Visual Models From Natural Language Supervision" (2021).
//! References: openai/CLIP `clip/model.py`; mlfoundations/open_clip `src/open_clip/model.py`,
//! `transformer.py`, `modified_resnet.py`; huggingface/transformers `models/clip/modeling_clip.py`.

pub mod config;
pub mod loader;
pub mod model;
pub mod pipeline;
pub mod resnet;
pub mod text;
pub mod tokenizer;
pub mod transformer;
pub mod vision;

pub use config::ClipConfig;
pub use loader::{load_model, Loaded};
pub use model::{l2_normalize, ClipModel};
pub use pipeline::{ClipPipeline, ImageEmbedding};
