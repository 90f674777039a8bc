//! One module per subcommand; each parses its arguments, resolves them through [`crate::args`]
//! and calls the library. No subcommand imports another.

pub mod attention;
pub mod classify;
pub mod dupes;
pub mod embed;
pub mod features;
pub mod fit;
pub mod index;
pub mod knn;
pub mod linear_probe;
pub mod sam_auto;
pub mod sam_encode;
pub mod search;
pub mod segment;
pub mod serve;
pub mod train_clip;
pub mod train_dino;
