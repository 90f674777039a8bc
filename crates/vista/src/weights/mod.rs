//! Everything about foreign checkpoints.
//!
//! * [`formats`] reads safetensors (tensor by tensor, no memory map: see there) and PyTorch
//!   zip-pickles (`.bin`, `.pth`, `.pt`).
//! * [`store`] holds the tensors under the model's canonical names and hands them out through a
//!   [`store::Vb`] path builder that checks every shape; [`store::LoadReport`] lists what was loaded
//!   and what was left unused. A missing or misshapen tensor is an error naming it (in the
//!   checkpoint's own spelling) and both shapes — nothing is ever filled with random values.
//! * One module per model holds its checkpoint families' rename / split / fuse / transpose
//!   tables ([`clip`], [`dino`], [`sam`]) behind [`store::Family`]; [`TensorStore::from_family`]
//!   detects the family and fills the store the same way for every model, and model code never
//!   asks which family a checkpoint came from.
//! * [`hub`] turns a model argument (a file, a folder or a Hugging Face id) into local files.

pub mod clip;
pub mod dino;
pub mod formats;
pub mod hub;
pub mod sam;
pub mod store;

pub use store::{Family, LoadReport, Loaded, TensorStore, Vb};
