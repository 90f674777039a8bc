//! The library's integration tests, one module per area, linked into a single test binary.
//!
//! One binary rather than one per file: every test binary links the whole library with candle
//! (~150 MB each), so thirty of them cost CI minutes of linking and gigabytes of disk. Run one
//! area with a filter: `cargo test --release -p vista --test suite sam_parity::`.

mod common;

mod amg;
mod amg_large;
mod augment;
mod checkpoint_errors;
mod clip_e2e;
mod clip_parity;
mod clip_train_parity;
mod clip_train_rn_parity;
mod device_fallback;
mod dino_backbone_train;
mod dino_parity;
mod dino_pipeline;
mod dino_train_loop;
mod dino_train_parity;
mod family_parity;
mod fit_formulas;
mod hostile_inputs;
mod image_decode;
mod knn;
mod layers;
mod mask_export;
mod preprocess_parity;
mod resnet_parity;
mod sam_parity;
mod segment;
mod tokenizer_parity;
mod train_block;
mod train_conv;
mod train_ops;
mod train_schedule;
