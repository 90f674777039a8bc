//! Parity with the DINO and DINOv2 references on tiny random-weight backbones
//! (`tools/reference/gen_dino.py`): DINO's and DINOv2's own `vision_transformer.py` (official
//! `.pth` naming, a full training checkpoint's teacher too), transformers' `ViTModel`,
//! `Dinov2Model` (MLP and SwiGLU) and `Dinov2WithRegistersModel`, each at its native size, a
//! larger square size and a non-square size, so every position-embedding interpolation recipe
//! is pinned.
//!
//! Tolerances: resampled position embedding ≤ 1e-5, per-block and final tokens, CLS, patch and
//! register tokens ≤ 1e-4 (values O(1)), last-block attention probabilities ≤ 1e-5.

use crate::common;

use candle_core::Tensor;
use common::{assert_close, fixtures, load_golden, manifest};
use vista::dino::loader::{self, LoadOptions};
use vista::dino::DinoVit;

fn load(case: &str, file: &str, key: Option<&str>) -> DinoVit {
    let dir = fixtures().join("dino").join(case);
    let m = manifest(&dir.join("manifest.json"));
    let heads = m["config"]["num_heads"].as_u64().or(m["config"]["num_attention_heads"].as_u64()).map(|h| h as usize);
    let options = LoadOptions { num_heads: heads, checkpoint_key: key.map(str::to_string), ..Default::default() };
    let loaded =
        loader::load_model(dir.join(file).to_str().unwrap(), &options).unwrap_or_else(|e| panic!("{case}: {e}"));
    assert!(loaded.report.unused.is_empty(), "{case}: unused {:?}", loaded.report.unused);
    loaded.model
}

fn check(case: &str, model: &DinoVit) {
    let g = load_golden(&fixtures().join("dino").join(case).join("golden.safetensors"));
    let mut sizes: Vec<String> = g.keys().filter_map(|k| k.strip_prefix("x.").map(str::to_string)).collect();
    sizes.sort();
    assert_eq!(sizes.len(), 3, "{case}");
    for s in sizes {
        let name = |k: &str| format!("{case} {k}.{s}");
        let x = g[&format!("x.{s}")].permute((0, 2, 3, 1)).unwrap().contiguous().unwrap();
        let out = model.forward(&x, true, true).unwrap();
        let key = |k: &str| format!("{k}.{s}");
        assert_close(
            &name("pos_embed_interp"),
            &out.pos_embed.unsqueeze(0).unwrap(),
            &g[&key("pos_embed_interp")],
            1e-5,
        );
        for (i, b) in out.blocks.iter().enumerate() {
            assert_close(&name(&format!("block.{i}")), b, &g[&key(&format!("block.{i}"))], 1e-4);
        }
        assert_close(&name("final"), &out.tokens, &g[&key("final")], 1e-4);
        assert_close(&name("cls"), &out.cls().unwrap(), &g[&key("cls")], 1e-4);
        assert_close(&name("patch"), &out.patches().unwrap(), &g[&key("patch")], 1e-4);
        if let Some(r) = g.get(&key("registers")) {
            assert_close(&name("registers"), &out.register_tokens().unwrap(), r, 1e-4);
        }
        let attn: &Tensor = out.attention.as_ref().unwrap();
        assert_close(&name("attn_last"), attn, &g[&key("attn_last")], 1e-5);
    }
}

#[test]
fn dino_v1_official() {
    check("v1_official", &load("v1_official", "dino_vit_tiny_pretrain.pth", None));
}

#[test]
fn dino_v1_training_checkpoint_teacher_by_default() {
    check("v1_official", &load("v1_official", "dino_vit_tiny_full_checkpoint.pth", None));
    check("v1_official", &load("v1_official", "dino_vit_tiny_full_checkpoint.pth", Some("teacher")));
}

#[test]
fn dino_v1_hugging_face() {
    check("v1_hf", &load("v1_hf", "model.safetensors", None));
}

#[test]
fn dinov2_official_mlp() {
    check("v2_official_mlp", &load("v2_official_mlp", "dinov2_vit_tiny_pretrain.pth", None));
}

#[test]
fn dinov2_official_swiglu_with_registers() {
    check(
        "v2_official_swiglu_reg4",
        &load("v2_official_swiglu_reg4", "dinov2_vit_tiny_reg4_swiglu_pretrain.pth", None),
    );
}

#[test]
fn dinov2_hugging_face_variants() {
    for case in ["v2_hf_mlp", "v2_hf_swiglu", "v2_hf_reg4_swiglu"] {
        check(case, &load(case, "model.safetensors", None));
    }
}
