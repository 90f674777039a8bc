//! CLIP's pre-norm residual attention block and the stack of them, named as OpenAI's
//! `clip/model.py::ResidualAttentionBlock` (`ln_1`, `attn.in_proj_weight`, `ln_2`, `mlp.c_fc`, `mlp.c_proj`).

use candle_core::{Module, Tensor};

use crate::nn::{Activation, FusedQkvAttention, LayerNorm, Linear, Mlp};
use crate::weights::Vb;
use crate::Result;

/// Named activations recorded during a forward pass, for parity tests and debugging.
pub type Trace = Vec<(String, Tensor)>;

pub(crate) fn record(trace: &mut Option<&mut Trace>, name: impl Into<String>, t: &Tensor) {
    if let Some(tr) = trace.as_deref_mut() {
        tr.push((name.into(), t.clone()));
    }
}

/// One pre-norm transformer block (open_clip's `ResidualAttentionBlock`,
/// `transformer.resblocks.N`).
#[derive(Debug, Clone)]
pub struct ResidualAttentionBlock {
    ln_1: LayerNorm,
    attn: FusedQkvAttention,
    ln_2: LayerNorm,
    mlp: Mlp,
}

impl ResidualAttentionBlock {
    /// Reads the block's weights below `vb`.
    pub fn load(vb: &Vb, width: usize, heads: usize, mlp_dim: usize, act: Activation, eps: f64) -> Result<Self> {
        let a = vb.pp("attn");
        let qkv =
            Linear::new(a.get(&[3 * width, width], "in_proj_weight")?, Some(a.get(&[3 * width], "in_proj_bias")?))?;
        let proj = Linear::load(&a.pp("out_proj"), width, width, true)?;
        Ok(Self {
            ln_1: LayerNorm::load(&vb.pp("ln_1"), width, eps)?,
            attn: FusedQkvAttention::new(qkv, proj, heads, width),
            ln_2: LayerNorm::load(&vb.pp("ln_2"), width, eps)?,
            mlp: Mlp::load(&vb.pp("mlp"), ("c_fc", "c_proj"), width, mlp_dim, act)?,
        })
    }

    /// # Shapes
    /// `x: [B, N, C] -> [B, N, C]`
    pub fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let a = self.attn.forward(&self.ln_1.forward(x)?, mask)?;
        let (x, h) = self.ln_2.add_forward(x, &a)?;
        let m = self.mlp.forward(&h)?;
        crate::nn::add(&x, &m)
    }
}

/// The shape of one tower's transformer, as both tower configs give it (in JSON, its fields
/// stand in the tower's own object).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TowerDims {
    /// Token width (transformers `hidden_size`, open_clip `width`).
    pub width: usize,
    /// Transformer blocks (`num_hidden_layers`, open_clip `layers`).
    pub layers: usize,
    /// Attention heads (`num_attention_heads`; open_clip `heads`, or `width / head_width` for
    /// the image tower).
    pub heads: usize,
    /// Hidden width of each block's MLP (`intermediate_size`; open_clip `width * mlp_ratio`).
    pub mlp_dim: usize,
    /// The MLP activation (`hidden_act`; open_clip `quick_gelu`).
    pub act: Activation,
    /// LayerNorm epsilon (`layer_norm_eps`).
    pub eps: f64,
}

/// A tower's stack of blocks (open_clip's `Transformer`).
#[derive(Debug, Clone)]
pub struct Transformer {
    blocks: Vec<ResidualAttentionBlock>,
}

impl Transformer {
    /// Reads the blocks below `vb` (`resblocks.N`).
    pub fn load(vb: &Vb, t: &TowerDims) -> Result<Self> {
        let vb = vb.pp("resblocks");
        let blocks = (0..t.layers)
            .map(|i| ResidualAttentionBlock::load(&vb.pp(i), t.width, t.heads, t.mlp_dim, t.act, t.eps))
            .collect::<Result<_>>()?;
        Ok(Self { blocks })
    }

    /// Runs every block, recording `{prefix}.blocks.{i}` into `trace` when given.
    pub fn forward(
        &self,
        x: &Tensor,
        mask: Option<&Tensor>,
        prefix: &str,
        mut trace: Option<&mut Trace>,
    ) -> Result<Tensor> {
        let mut x = x.clone();
        for (i, b) in self.blocks.iter().enumerate() {
            x = b.forward(&x, mask)?;
            record(&mut trace, format!("{prefix}.blocks.{i}"), &x);
        }
        Ok(x)
    }
}
