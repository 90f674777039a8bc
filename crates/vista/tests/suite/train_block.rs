//! The fused transformer block (`train::block::forward`, one custom op on the CPU) gives the
//! values and gradients of the same block composed from candle ops and the fused element-wise
//! ops (`train::block::composed`, whose backward candle derives): CLIP's text block (causal,
//! QuickGELU), CLIP's image block (GELU) and DINO's (no qkv bias, LayerScale, stochastic depth
//! with a dropped sample), at widths that leave partial GEMM panels and tiles; and the packed
//! text block (`block::forward_packed`: captions of different lengths end to end, each
//! attending to its own tokens) against the composed block run on each caption alone.
//!
//! Tolerance: 2e-5 of each tensor's largest magnitude; for the vectors (biases, LayerNorm and
//! LayerScale gains), whose gradients are sums over every row, of the larger of that and the
//! output bias's gradient (the column sums of `dy`): LayerNorm₁'s bias gradient is a sum whose
//! key-side terms cancel exactly (softmax ignores a shift of every score in a row), so what is
//! left is small against the rounding of the terms. Both sides compute in f32; the differences
//! are summation order (the packed GEMM's depth passes against candle's GEMM, attention's row
//! sums) and the polynomial exp in the attention probabilities (relative 2e-7), amplified by
//! the attention's conditioning (the `qkv` weight is drawn at twice the 1/√C scale, so the
//! softmax rows are peaked). The attention kernels alone match an f64 evaluation of the definitions to 5e-6 (the unit test in
//! `train/block.rs`).

use candle_core::{Tensor, Var};
use vista::nn::Activation;
use vista::train::block::{self, BlockParams, BlockSpec, DropPath};

fn var(shape: &[usize], seed: u64, scale: f32, offset: f32) -> Var {
    crate::common::pattern_var(shape, seed, scale, offset)
}

fn rel_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    let d: f32 = a.sub(b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap();
    let m: f32 = b.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap();
    d / m.max(1e-6)
}

struct Case {
    b: usize,
    n: usize,
    c: usize,
    hidden: usize,
    spec: BlockSpec,
    qkv_bias: bool,
    layer_scale: bool,
    drop: Option<DropPath>,
    /// Sequences of these lengths packed end to end (`x: [Σ lengths, C]`; `b`, `n` unused).
    packed: Option<Vec<usize>>,
}

fn check(case: Case) {
    let Case { b, n, c, hidden, spec, qkv_bias, layer_scale, drop, packed } = case;
    let w = 1.0 / (c as f32).sqrt();
    let x_shape = match &packed {
        Some(lengths) => vec![lengths.iter().sum(), c],
        None => vec![b, n, c],
    };
    let mut vars = vec![
        ("x", var(&x_shape, 1, 1.5, 0.2)),
        ("ln1.w", var(&[c], 2, 0.3, 1.0)),
        ("ln1.b", var(&[c], 3, 0.1, 0.0)),
        ("qkv.w", var(&[3 * c, c], 4, 2.0 * w, 0.0)),
        ("proj.w", var(&[c, c], 6, w, 0.0)),
        ("proj.b", var(&[c], 7, 0.1, 0.0)),
        ("ln2.w", var(&[c], 8, 0.3, 1.0)),
        ("ln2.b", var(&[c], 9, 0.1, 0.0)),
        ("fc1.w", var(&[hidden, c], 10, w, 0.0)),
        ("fc1.b", var(&[hidden], 11, 0.1, 0.0)),
        ("fc2.w", var(&[c, hidden], 12, 1.0 / (hidden as f32).sqrt(), 0.0)),
        ("fc2.b", var(&[c], 13, 0.1, 0.0)),
    ];
    if qkv_bias {
        vars.push(("qkv.b", var(&[3 * c], 5, 0.1, 0.0)));
    }
    if layer_scale {
        vars.push(("ls1", var(&[c], 14, 0.5, 0.6)));
        vars.push(("ls2", var(&[c], 15, 0.5, 0.6)));
    }
    let get = |name: &str| vars.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_tensor().clone());
    let p = BlockParams {
        ln1: (get("ln1.w").unwrap(), get("ln1.b").unwrap()),
        qkv_w: get("qkv.w").unwrap(),
        qkv_b: get("qkv.b"),
        proj: (get("proj.w").unwrap(), get("proj.b").unwrap()),
        ls1: get("ls1"),
        ln2: (get("ln2.w").unwrap(), get("ln2.b").unwrap()),
        fc1: (get("fc1.w").unwrap(), get("fc1.b").unwrap()),
        fc2: (get("fc2.w").unwrap(), get("fc2.b").unwrap()),
        ls2: get("ls2"),
    };
    let x = get("x").unwrap();
    let (fused, reference) = match &packed {
        Some(lengths) => (
            block::forward_packed(&x, lengths, &p, spec).unwrap(),
            block::composed_packed(&x, lengths, &p, spec).unwrap(),
        ),
        None => (
            block::forward(&x, &p, spec, drop.as_ref()).unwrap(),
            block::composed(&x, &p, spec, drop.as_ref()).unwrap(),
        ),
    };
    let d = rel_diff(&fused, &reference);
    assert!(d < 2e-5, "values differ by {d} (relative)");
    let weights = var(fused.dims(), 20, 1.0, 0.1);
    let gf = fused.mul(weights.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap();
    let gr = reference.mul(weights.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap();
    // The scale of a column-summed gradient: the output's own bias gradient (Σ over rows of dy).
    let col_scale: f32 = gr.get(&p.fc2.1).unwrap().abs().unwrap().max(0).unwrap().to_scalar().unwrap();
    for (name, v) in &vars {
        let (f, r) = (gf.get(v.as_tensor()), gr.get(v.as_tensor()));
        let (f, r) = (f.unwrap_or_else(|| panic!("no gradient for {name} (fused)")), r.expect("reference gradient"));
        let diff: f32 = f.sub(r).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap();
        let own: f32 = r.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap();
        let scale = if r.rank() == 1 { own.max(col_scale) } else { own };
        assert!(diff <= 2e-5 * scale, "d{name} differs by {diff} (largest {own}, scale {scale})");
    }
}

#[test]
fn fused_clip_text_block_matches_the_composed_one() {
    let spec = BlockSpec { heads: 2, eps: 1e-5, act: Activation::QuickGelu, causal: true };
    check(Case { b: 3, n: 7, c: 40, hidden: 160, spec, qkv_bias: true, layer_scale: false, drop: None, packed: None });
}

#[test]
fn packed_clip_text_block_matches_the_composed_one_on_each_caption_alone() {
    let spec = BlockSpec { heads: 2, eps: 1e-5, act: Activation::QuickGelu, causal: true };
    // A one-token caption, one past the attention's 16-row padding, and lengths in between.
    let lengths = vec![7, 1, 19, 3, 16];
    check(Case {
        b: 0,
        n: 0,
        c: 40,
        hidden: 160,
        spec,
        qkv_bias: true,
        layer_scale: false,
        drop: None,
        packed: Some(lengths),
    });
    let spec = BlockSpec { causal: false, act: Activation::Gelu, ..spec };
    check(Case {
        b: 0,
        n: 0,
        c: 40,
        hidden: 96,
        spec,
        qkv_bias: false,
        layer_scale: false,
        drop: None,
        packed: Some(vec![5, 12]),
    });
}

#[test]
fn fused_clip_image_block_matches_the_composed_one() {
    let spec = BlockSpec { heads: 4, eps: 1e-5, act: Activation::Gelu, causal: false };
    check(Case { b: 2, n: 17, c: 64, hidden: 256, spec, qkv_bias: true, layer_scale: false, drop: None, packed: None });
}

#[test]
fn fused_dino_block_with_layer_scale_and_stochastic_depth_matches_the_composed_one() {
    let spec = BlockSpec { heads: 3, eps: 1e-6, act: Activation::Gelu, causal: false };
    let drop = DropPath { attn: vec![1.25, 0.0, 1.25], mlp: vec![0.0, 1.25, 1.25] };
    check(Case {
        b: 3,
        n: 13,
        c: 48,
        hidden: 100,
        spec,
        qkv_bias: false,
        layer_scale: true,
        drop: Some(drop),
        packed: None,
    });
}

#[test]
fn a_block_refuses_mismatched_parameters_and_drop_scales() {
    let spec = BlockSpec { heads: 2, eps: 1e-5, act: Activation::Gelu, causal: false };
    let t = |s: &[usize]| var(s, 1, 0.1, 0.0).as_tensor().clone();
    let mut p = BlockParams {
        ln1: (t(&[8]), t(&[8])),
        qkv_w: t(&[24, 8]),
        qkv_b: None,
        proj: (t(&[8, 8]), t(&[8])),
        ls1: None,
        ln2: (t(&[8]), t(&[8])),
        fc1: (t(&[16, 8]), t(&[16])),
        fc2: (t(&[8, 16]), t(&[8])),
        ls2: None,
    };
    let x = t(&[2, 3, 8]);
    assert!(block::forward(&x, &p, spec, None).is_ok());
    let drop = DropPath { attn: vec![1.0], mlp: vec![1.0, 1.0] };
    let e = block::forward(&x, &p, spec, Some(&drop)).unwrap_err().to_string();
    assert!(e.contains("drop-path"), "{e}");
    p.proj = (t(&[8, 7]), t(&[8]));
    let e = block::forward(&x, &p, spec, None).unwrap_err().to_string();
    assert!(e.contains("[8, 7]"), "{e}");
    let e = block::forward(&x, &p, BlockSpec { heads: 3, ..spec }, None).unwrap_err().to_string();
    assert!(e.contains("heads"), "{e}");
    p.proj = (t(&[8, 8]), t(&[8]));
    let rows = t(&[6, 8]);
    assert!(block::forward_packed(&rows, &[2, 4], &p, spec).is_ok());
    for lengths in [&[2, 3][..], &[0, 6], &[]] {
        let e = block::forward_packed(&rows, lengths, &p, spec).unwrap_err().to_string();
        assert!(e.contains("do not cover 6 rows"), "{lengths:?}: {e}");
    }
}
