//! The trainable DINO backbone (`train::dino::TrainVit`, differentiable ops only) computes what
//! the references compute, at native and resampled grids, and every parameter gets a gradient.

use crate::common;

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use common::{assert_close, fixtures, load_golden, manifest};
use vista::dino::loader::{self, LoadOptions};
use vista::train::dino::{Grads, TrainVit};
use vista::weights::formats;

fn trainable(case: &str, file: &str) -> TrainVit {
    let dir = fixtures().join("dino").join(case);
    let heads = manifest(&dir.join("manifest.json"))["config"]["num_heads"].as_u64().map(|h| h as usize);
    let path = dir.join(file);
    let options = LoadOptions { num_heads: heads, ..Default::default() };
    let config = loader::load_model(path.to_str().unwrap(), &options).unwrap().model.config;
    let tensors: HashMap<String, Tensor> = formats::read_tensors(&path, None, &Device::Cpu).unwrap();
    TrainVit::from_tensors(config, &tensors).unwrap()
}

fn check(case: &str, file: &str) {
    let model = trainable(case, file);
    let g = load_golden(&fixtures().join("dino").join(case).join("golden.safetensors"));
    for key in g.keys().filter(|k| k.starts_with("x.")) {
        let size = &key[2..];
        let x = g[key].permute((0, 2, 3, 1)).unwrap().contiguous().unwrap();
        let out = model.forward(&x).unwrap();
        assert_close(&format!("{case} final.{size}"), &out, &g[&format!("final.{size}")], 1e-4);
    }
    // One backward pass through a resampled grid: every parameter receives a gradient, none zero.
    let x = g.iter().find(|(k, _)| k.starts_with("x.") && !k.ends_with("x28") && !k.ends_with("x32")).unwrap().1;
    let x = x.permute((0, 2, 3, 1)).unwrap().contiguous().unwrap();
    let loss = model.forward(&x).unwrap().sqr().unwrap().sum_all().unwrap();
    let grads = Grads::from_backward(model.params(), &loss.backward().unwrap());
    for p in model.params() {
        let gr = grads.get(p.name()).unwrap_or_else(|| panic!("{case}: no gradient for {}", p.name()));
        let norm: f32 = gr.sqr().unwrap().sum_all().unwrap().to_scalar().unwrap();
        assert!(norm > 0.0 && norm.is_finite(), "{case}: gradient of {} is {norm}", p.name());
    }
}

#[test]
fn trainable_dino_v1_matches_the_reference_and_gets_every_gradient() {
    check("v1_official", "dino_vit_tiny_pretrain.pth");
}

#[test]
fn trainable_dinov2_swiglu_registers_matches_the_reference_and_gets_every_gradient() {
    check("v2_official_swiglu_reg4", "dinov2_vit_tiny_reg4_swiglu_pretrain.pth");
}

#[test]
fn trainable_dinov2_mlp_matches_the_reference() {
    check("v2_official_mlp", "dinov2_vit_tiny_pretrain.pth");
}

#[test]
fn multi_crop_forward_equals_one_pass_per_crop() {
    use vista::train::dino::{multi_crop_forward, DinoHead, DinoHeadConfig};
    let model = trainable("v1_official", "dino_vit_tiny_pretrain.pth");
    let mut cfg = DinoHeadConfig::new(32, 24);
    cfg.hidden_dim = 16;
    cfg.bottleneck_dim = 8;
    let head = DinoHead::new(cfg, 7, &Device::Cpu).unwrap();
    let crop = |seed: u64, side: usize| {
        let n = 2 * side * side * 3;
        let v: Vec<f32> = (0..n).map(|i| (((i as u64 * 2654435761 + seed * 97) % 1000) as f32 / 500.0) - 1.0).collect();
        Tensor::from_vec(v, (2, side, side, 3), &Device::Cpu).unwrap()
    };
    // Two globals at 32 px, three locals at 16 px: two backbone passes.
    let crops = vec![crop(1, 32), crop(2, 32), crop(3, 16), crop(4, 16), crop(5, 16)];
    let all = multi_crop_forward(&model, &head, &crops, None).unwrap();
    assert_eq!(all.dims(), &[10, 24]);
    for (i, c) in crops.iter().enumerate() {
        let one = multi_crop_forward(&model, &head, std::slice::from_ref(c), None).unwrap();
        assert_close(&format!("crop {i}"), &all.narrow(0, 2 * i, 2).unwrap(), &one, 1e-5);
    }
}
