//! Segment Anything (Kirillov et al., 2023) and MobileSAM: a point, box or mask in, the
//! object's mask out.
//!
//! One file per component, named as in `segment_anything/modeling/`: [`image_encoder`] (the ViT
//! with windowed attention and decomposed relative positions), [`tiny_vit`] (MobileSAM's
//! encoder), [`prompt_encoder`], [`transformer`] (the two-way transformer), [`mask_decoder`];
//! [`transforms`] is `ResizeLongestSide` and the mask post-processing; [`predictor`] encodes an
//! image once and answers prompts ([`Predictor::set_image`] → [`Session::predict`]).

pub mod config;
pub mod image_encoder;
pub mod loader;
pub mod mask_decoder;
pub mod model;
pub mod predictor;
pub mod prompt_encoder;
pub mod tiny_vit;
pub mod transformer;
pub mod transforms;

pub use config::SamConfig;
pub use loader::{load_model, LoadOptions, Loaded};
pub use model::Sam;
pub use predictor::{Point, Prediction, Predictor, Prompts, Session};
