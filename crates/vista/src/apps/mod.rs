//! Applications: what the CLI (and later the server) calls. These take paths, strings and
//! labels and give back plain vectors, scores, pictures and files; tensors stay inside.
//!
//! * [`classify`]: CLIP zero-shot classification ([`ZeroShotClassifier`]).
//! * [`dupes`]: near-duplicate thresholds per model and the nearest-neighbour statistics.
//! * [`query`]: weighted text / image search queries.
//! * [`segment`]: SAM on image files with an embedding cache, and the mask exports (PNG, COCO
//!   RLE, polygons, overlays).
//! * [`attention`]: pictures of DINO's attention maps.
//! * [`features`]: DINO features written as `.npy`, `.safetensors` or JSON lines.

pub mod attention;
pub mod classify;
pub mod dupes;
pub mod features;
pub mod plots;
pub mod query;
pub mod segment;

pub use classify::{Prediction, Templates, ZeroShotClassifier};
