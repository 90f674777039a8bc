//! Shared helpers for the parity tests: load goldens, compare with a report that names the
//! tensor, its shape, the largest difference and where it is.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub fn load_golden(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn manifest(path: &Path) -> serde_json::Value {
    let s = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&s).unwrap()
}

/// Largest absolute difference, its flat index, and the two values there.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> (f32, usize, f32, f32) {
    let a: Vec<f32> = a.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    let b: Vec<f32> = b.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    let mut worst = (0f32, 0usize, 0f32, 0f32);
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        let d = (x - y).abs();
        if d > worst.0 || d.is_nan() {
            worst = (d, i, *x, *y);
        }
    }
    worst
}

fn unravel(mut i: usize, dims: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; dims.len()];
    for (k, d) in dims.iter().enumerate().rev() {
        idx[k] = i % d;
        i /= d;
    }
    idx
}

/// Asserts `ours` equals `golden` within `tol` (max abs), naming the tensor on failure.
pub fn assert_close(name: &str, ours: &Tensor, golden: &Tensor, tol: f32) -> f32 {
    assert_eq!(ours.dims(), golden.dims(), "{name}: shape {:?} vs golden {:?}", ours.dims(), golden.dims());
    let (d, i, x, y) = max_abs_diff(ours, golden);
    assert!(
        d <= tol && !d.is_nan(),
        "{name} {:?}: max abs diff {d:e} > {tol:e} at {:?} (ours {x}, reference {y})",
        ours.dims(),
        unravel(i, ours.dims())
    );
    d
}

/// Row-wise cosine similarity of two `[B, D]` tensors; returns the smallest.
pub fn min_row_cosine(a: &Tensor, b: &Tensor) -> f32 {
    let a: Vec<Vec<f32>> = a.to_dtype(DType::F32).unwrap().to_vec2().unwrap();
    let b: Vec<Vec<f32>> = b.to_dtype(DType::F32).unwrap().to_vec2().unwrap();
    a.iter()
        .zip(&b)
        .map(|(x, y)| {
            let dot: f64 = x.iter().zip(y).map(|(p, q)| (*p as f64) * (*q as f64)).sum();
            let nx: f64 = x.iter().map(|p| (*p as f64).powi(2)).sum::<f64>().sqrt();
            let ny: f64 = y.iter().map(|p| (*p as f64).powi(2)).sum::<f64>().sqrt();
            (dot / (nx * ny)) as f32
        })
        .fold(f32::INFINITY, f32::min)
}

/// A trainable tensor holding a fixed, varied pattern (a scrambled sine, no RNG dependency):
/// `offset + scale · sin(1.7 · sin(0.7137 i + 1.31 seed))`.
pub fn pattern_var(shape: &[usize], seed: u64, scale: f32, offset: f32) -> candle_core::Var {
    let n: usize = shape.iter().product();
    let v: Vec<f32> =
        (0..n).map(|i| offset + scale * ((i as f32 * 0.7137 + seed as f32 * 1.31).sin() * 1.7).sin()).collect();
    candle_core::Var::from_tensor(&Tensor::from_vec(v, shape, &candle_core::Device::Cpu).unwrap()).unwrap()
}
