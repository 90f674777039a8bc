//! End-to-end tests of the `vista` binary, one module per command family, linked into a single
//! test binary (see `crates/vista/tests/suite/main.rs` for why). Run one area with a filter:
//! `cargo test --release -p vista-cli --test suite segment::`.

mod common;

mod cli;
mod dino;
mod fashion_mnist;
mod index;
mod segment;
mod train;
mod train_clip;
