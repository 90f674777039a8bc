//! vista: CLIP, DINO and SAM implemented natively in Rust. It loads the checkpoints people
//! already have — Hugging Face safetensors and the original PyTorch releases — as they are, and
//! matches each family's reference implementation numerically.
//!
//! # Quick start
//!
//! The examples run on the tiny random-weight models committed with the tests
//! (`tests/fixtures/`); give a Hugging Face id (`openai/clip-vit-base-patch32`,
//! `facebook/dinov2-small`, `facebook/sam-vit-base`) or a checkpoint file for real models.
//!
//! **CLIP**: embed texts and images, classify zero-shot.
//!
//! ```
//! use candle_core::Device;
//! use vista::apps::{Templates, ZeroShotClassifier};
//! use vista::clip::ClipPipeline;
//!
//! # fn main() -> vista::Result<()> {
//! let clip = ClipPipeline::load("tests/fixtures/clip/openclip_e2e", None, &Device::Cpu)?;
//! let texts = clip.embed_texts(&["a red saree with a gold border", "a kurta"])?; // [2, D], unit rows
//! assert_eq!(texts.dims()[0], 2);
//!
//! let labels = ["saree", "kurta", "lehenga"].map(String::from);
//! let classifier = ZeroShotClassifier::new(&clip, &labels, &Templates::Default)?;
//! let images = [std::path::PathBuf::from("tests/fixtures/preprocess/chelsea.png")];
//! for image in clip.embed_files(&images, 32, |_| {}) {
//!     let top = classifier.classify_one(&image.embedding?, 2)?;
//!     println!("{}: {} {:.1} %", image.path.display(), top[0].label, 100.0 * top[0].prob);
//! }
//! # Ok(())
//! # }
//! ```
//!
//! **DINO / DINOv2**: CLS and patch features, attention maps.
//!
//! ```
//! use vista::dino::{DinoPipeline, LoadOptions};
//!
//! # fn main() -> vista::Result<()> {
//! let dino = DinoPipeline::load("tests/fixtures/dino/v2_hf_reg4_swiglu/model.safetensors", &LoadOptions::default())?;
//! let f = dino.features_file("tests/fixtures/preprocess/astronaut.png".as_ref(), true)?;
//! assert_eq!(f.cls.len(), dino.model.embed_dim());
//! assert_eq!(f.patches.len(), f.grid.0 * f.grid.1 * f.cls.len());
//! # Ok(())
//! # }
//! ```
//!
//! **SAM**: encode an image once, prompt it many times.
//!
//! ```
//! use std::sync::Arc;
//! use vista::sam::{self, Point, Predictor, Prompts};
//!
//! # fn main() -> vista::Result<()> {
//! let loaded = sam::load_model("tests/fixtures/sam/vit_hf", &sam::LoadOptions::default())?;
//! let predictor = Predictor::new(Arc::new(loaded.model));
//! let image = vista::image::load_rgb("tests/fixtures/preprocess/coffee.png", &Default::default())?;
//! let session = predictor.set_image(&image)?; // the expensive encoder, once
//! let point = Point { x: 40.0, y: 30.0, positive: true };
//! let masks = session.predict(&Prompts { points: vec![point], multimask: true, ..Default::default() })?;
//! let best = masks.best(0);
//! println!("mask {best}: IoU {:.3}", masks.score(0, best));
//! # Ok(())
//! # }
//! ```
//!
//! # Layout
//!
//! Layers point one way (`tests/suite/layers.rs` checks it; `docs/ARCHITECTURE.md` says why):
//!
//! | layer | modules |
//! |---|---|
//! | 0 | [`error`], [`device`] |
//! | 1 | [`nn`] (blocks and fused CPU kernels), [`image`] (decode, Pillow-equivalent resampling, augmentation) |
//! | 2 | [`optim`] (AdamW, schedules), [`data`] (files, ImageFolder, IDX, npy) |
//! | 3 | [`weights`] (checkpoint formats, per-family name tables, hub) |
//! | 4 | [`clip`], [`dino`], [`sam`]: one folder per model, with its front-end |
//! | 5 | [`eval`] (k-NN, linear probe, feature cache) |
//! | 6 | [`train`] (DINO training), [`apps`] (classify, query, segment export, pictures), [`index`] (photo index) |
//!
//! A module uses only lower layers; `nn` reads weights through [`weights::Vb`], as candle-nn
//! holds its VarBuilder, and `optim` runs its update through `nn`'s SIMD dispatch.

#![warn(missing_docs)]

pub mod apps;
pub mod clip;
pub mod data;
pub mod device;
pub mod dino;
pub mod error;
pub mod eval;
pub mod image;
pub mod index;
pub mod memory;
pub mod nn;
pub mod optim;
pub mod sam;
pub mod train;
pub mod weights;

pub use error::{Error, Result};
