//! Building blocks that know nothing of CLIP, DINO or SAM, one idea per file.
//!
//! Inference paths use candle's fused kernels (layer norm, softmax) for speed; those record no
//! backward op, so training code must not call these forwards.

pub mod activation;
pub mod attention;
pub mod conv;
pub mod cpu;
pub mod gemm;
pub mod interpolate;
pub mod linear;
pub mod mlp;
pub mod norm;
pub mod packed;
pub mod pool;
pub mod portable;
pub mod resnet;
pub mod team;
pub mod window;
pub mod winograd;

pub use activation::Activation;
pub use attention::FusedQkvAttention;
pub use linear::Linear;
pub use mlp::Mlp;
pub use norm::LayerNorm;
pub use portable::{add, add_act};

/// Test data: candle's CPU generator cannot be seeded, so unit tests draw from this one.
#[cfg(test)]
pub(crate) mod testing {
    use candle_core::{Device, Shape, Tensor};
    use rand_chacha::rand_core::{RngCore, SeedableRng};

    /// `N(mean, std²)` values (Box–Muller over a ChaCha8 stream keyed by `seed`), on the CPU.
    pub fn randn(seed: u64, mean: f32, std: f32, shape: impl Into<Shape>) -> Tensor {
        let shape = shape.into();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut u = || ((rng.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        let v: Vec<f32> = (0..shape.elem_count())
            .map(|_| {
                let (u1, u2) = (u(), u());
                mean + std * ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
            })
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).expect("shape and values agree")
    }

    /// `max |a − b|` over two tensors of one shape.
    pub fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
    }
}
