//! MobileSAM's image encoder: TinyViT (`mobile_sam/modeling/tiny_vit_sam.py`).
//!
//! A convolutional patch embedding (/4), one stage of MBConv blocks, then attention stages whose
//! blocks attend within windows with a learned bias per (head, offset), each followed by a
//! depthwise 3×3 "local" convolution and an MLP; patch merging between stages (MobileSAM keeps
//! stride 1 in the last merge, when the width is 320, 448 or 576, so the output grid is /16);
//! and SAM's neck. Every `Conv2d_BN` has its eval-mode BatchNorm folded into the convolution at
//! load, as `Conv2d_BN.fuse` does. Tokens stay channels-last (`[B, H, W, C]`) throughout.

use candle_core::{Device, Module, Tensor};

use super::config::TinyVitConfig;
use super::image_encoder::{host_f32, tap, Neck, Taps};
use crate::nn::conv::{fold_batch_norm, BatchNorm, Conv2d, DepthwiseConv2d};
use crate::nn::cpu::{self, ScoreBias};
use crate::nn::window::{attention_bias_index, window_partition, window_unpartition};
use crate::nn::{portable, Activation, LayerNorm, Linear};
use crate::weights::Vb;
use crate::Result;

/// A `Conv2d_BN` (`c`: conv without bias, `bn`: BatchNorm2d) folded into one weight and bias.
fn conv_bn(vb: &Vb, cin_per_group: usize, cout: usize, k: usize) -> Result<(Tensor, Tensor)> {
    let w = vb.pp("c").get(&[cout, cin_per_group, k, k], "weight")?;
    let bn = vb.pp("bn");
    let bn = BatchNorm {
        weight: bn.get(&[cout], "weight")?,
        bias: bn.get(&[cout], "bias")?,
        running_mean: bn.get(&[cout], "running_mean")?,
        running_var: bn.get(&[cout], "running_var")?,
        eps: 1e-5,
    };
    fold_batch_norm(&w, &bn)
}

/// A 1×1 `Conv2d_BN` as a linear layer over channels.
fn pointwise(vb: &Vb, cin: usize, cout: usize) -> Result<Linear> {
    let (w, b) = conv_bn(vb, cin, cout, 1)?;
    Linear::new(w.reshape((cout, cin))?, Some(b))
}

fn depthwise(vb: &Vb, c: usize, stride: usize) -> Result<DepthwiseConv2d> {
    let (w, b) = conv_bn(vb, 1, c, 3)?;
    DepthwiseConv2d::new(&w, Some(&b), stride, 1)
}

fn gelu(x: &Tensor) -> Result<Tensor> {
    Ok(Activation::Gelu.forward(x)?)
}

/// `MBConv`: expand 1×1, depthwise 3×3, project 1×1, residual, GELU.
struct MbConv {
    conv1: Linear,
    conv2: DepthwiseConv2d,
    conv3: Linear,
}

impl MbConv {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.conv1.forward_act(x, Some(Activation::Gelu))?;
        let h = self.conv2.forward(&h, Some(Activation::Gelu))?;
        let h = self.conv3.forward_act(&h, None)?;
        crate::nn::add_act(&h, x, Activation::Gelu)
    }
}

/// `PatchMerging`: 1×1, depthwise 3×3 with stride, 1×1.
struct PatchMerging {
    conv1: Linear,
    conv2: DepthwiseConv2d,
    conv3: Linear,
}

impl PatchMerging {
    fn load(vb: &Vb, dim: usize, out_dim: usize) -> Result<Self> {
        // MobileSAM's change to TinyViT: no down-sampling into the last stage.
        let stride = if matches!(out_dim, 320 | 448 | 576) { 1 } else { 2 };
        Ok(Self {
            conv1: pointwise(&vb.pp("conv1"), dim, out_dim)?,
            conv2: depthwise(&vb.pp("conv2"), out_dim, stride)?,
            conv3: pointwise(&vb.pp("conv3"), out_dim, out_dim)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.conv1.forward_act(x, Some(Activation::Gelu))?;
        let h = self.conv2.forward(&h, Some(Activation::Gelu))?;
        self.conv3.forward_act(&h, None)
    }
}

/// `TinyViTBlock`: windowed attention with learned offset biases, a depthwise local
/// convolution, an MLP.
struct TinyBlock {
    norm: LayerNorm,
    /// Rows reordered from TinyViT's per-head `[q, k, v]` to `[3, H, D]`.
    qkv: Linear,
    /// The projection of a zero (padding) token after the attention's LayerNorm (host copy,
    /// and `[3C]` on the weights' device).
    qkv_pad: Vec<f32>,
    qkv_pad_t: Tensor,
    proj: Linear,
    /// `[H, ws², ws²]`, gathered from `attention_biases` by offset (host copy, and on the
    /// weights' device).
    bias: Vec<f32>,
    bias_t: Tensor,
    heads: usize,
    window: usize,
    local_conv: DepthwiseConv2d,
    mlp_norm: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

impl TinyBlock {
    fn load(vb: &Vb, dim: usize, heads: usize, window: usize, hidden: usize) -> Result<Self> {
        let attn = vb.pp("attn");
        let d = dim / heads;
        let norm = LayerNorm::load(&attn.pp("norm"), dim, 1e-5)?;
        // TinyViT views qkv as [N, heads, (q, k, v)·d]; the fused kernel wants [N, (q, k, v), heads, d].
        let order: Vec<u32> = (0..3)
            .flat_map(|s| (0..heads).flat_map(move |h| (0..d).map(move |j| (h * 3 * d + s * d + j) as u32)))
            .collect();
        let order = Tensor::new(order.as_slice(), vb.device())?;
        let w = attn.pp("qkv").get(&[3 * dim, dim], "weight")?.index_select(&order, 0)?;
        let b = attn.pp("qkv").get(&[3 * dim], "bias")?.index_select(&order, 0)?;
        let qkv = Linear::new(w, Some(b))?;
        let zero = Tensor::zeros((1, dim), vb.dtype(), vb.device())?;
        let qkv_pad_t = qkv.forward_act(&norm.forward(&zero)?, None)?.flatten_all()?;
        let qkv_pad = host_f32(&qkv_pad_t)?;
        let n = window * window;
        let table = host_f32(&attn.get(&[heads, n], "attention_biases")?)?;
        let idx = attention_bias_index(window);
        let bias: Vec<f32> =
            (0..heads).flat_map(|h| idx.iter().map(move |&i| (h, i))).map(|(h, i)| table[h * n + i]).collect();
        let bias_t = portable::upload(&bias, &[heads, n, n], (vb.device(), vb.dtype()))?;
        Ok(Self {
            norm,
            qkv,
            qkv_pad,
            qkv_pad_t,
            proj: Linear::load(&attn.pp("proj"), dim, dim, true)?,
            bias,
            bias_t,
            heads,
            window,
            local_conv: depthwise(&vb.pp("local_conv"), dim, 1)?,
            mlp_norm: LayerNorm::load(&vb.pp("mlp").pp("norm"), dim, 1e-5)?,
            fc1: Linear::load(&vb.pp("mlp").pp("fc1"), dim, hidden, true)?,
            fc2: Linear::load(&vb.pp("mlp").pp("fc2"), hidden, dim, true)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, h, w, c) = x.dims4()?;
        let ws = self.window;
        let scale = ((c / self.heads) as f32).powf(-0.5);
        // The reference pads before the attention's LayerNorm; a zero token's normalised
        // projection is `qkv_pad`, so normalising and projecting the real tokens first is exact.
        // When the grid equals the window there is one window and no padding, as its fast path.
        let qkv = self.qkv.forward_act(&self.norm.forward(x)?, None)?;
        let out = if cpu::eligible(&qkv) {
            let (wins, (nh, nw)) =
                cpu::with_slice(&qkv, |qkv| window_partition(qkv, (b, h, w), 3 * c, ws, &self.qkv_pad))?;
            let wins = Tensor::from_vec(wins, (b * nh * nw, ws * ws, 3 * c), &Device::Cpu)?;
            let out = cpu::attention_biased(&wins, self.heads, scale, ScoreBias::PerHead(&self.bias))?;
            let out = cpu::with_slice(&out, |out| window_unpartition(out, (b, h, w), c, ws))?;
            Tensor::from_vec(out, (b, h, w, c), &Device::Cpu)?
        } else {
            let (wins, _) = portable::window_partition(&qkv, ws, &self.qkv_pad_t)?;
            let out = portable::attention(&wins, self.heads, scale as f64, portable::Bias::PerHead(&self.bias_t))?;
            portable::window_unpartition(&out, (b, h, w), ws)?
        };
        let out = self.proj.forward_act(&out, None)?;
        let x = self.local_conv.forward(&crate::nn::add(x, &out)?, None)?;
        let hidden = self.fc1.forward_act(&self.mlp_norm.forward(&x)?, Some(Activation::Gelu))?;
        crate::nn::add(&x, &self.fc2.forward_act(&hidden, None)?)
    }
}

enum Stage {
    Conv(Vec<MbConv>),
    Attention(Vec<TinyBlock>),
}

/// MobileSAM's `TinyViT` with SAM's neck.
pub struct TinyVitEncoder {
    stem1: Conv2d,
    stem2: Conv2d,
    stages: Vec<(Stage, Option<PatchMerging>)>,
    neck: Neck,
}

impl TinyVitEncoder {
    /// Reads the encoder below `vb`.
    pub fn load(vb: &Vb, cfg: &TinyVitConfig) -> Result<Self> {
        let dims = &cfg.embed_dims;
        let seq = vb.pp("patch_embed").pp("seq");
        let (w1, b1) = conv_bn(&seq.pp(0), 3, dims[0] / 2, 3)?;
        let (w2, b2) = conv_bn(&seq.pp(2), dims[0] / 2, dims[0], 3)?;
        let mut stages = Vec::new();
        for s in 0..dims.len() {
            let layer = vb.pp("layers").pp(s);
            let blocks = layer.pp("blocks");
            let stage = if s == 0 {
                let hidden = cfg.hidden_dims[0];
                Stage::Conv(
                    (0..cfg.depths[0])
                        .map(|i| {
                            let b = blocks.pp(i);
                            Ok(MbConv {
                                conv1: pointwise(&b.pp("conv1"), dims[0], hidden)?,
                                conv2: depthwise(&b.pp("conv2"), hidden, 1)?,
                                conv3: pointwise(&b.pp("conv3"), hidden, dims[0])?,
                            })
                        })
                        .collect::<Result<_>>()?,
                )
            } else {
                Stage::Attention(
                    (0..cfg.depths[s])
                        .map(|i| {
                            TinyBlock::load(
                                &blocks.pp(i),
                                dims[s],
                                cfg.num_heads[s],
                                cfg.window_sizes[s],
                                cfg.hidden_dims[s],
                            )
                        })
                        .collect::<Result<_>>()?,
                )
            };
            let merge = if s + 1 < dims.len() {
                Some(PatchMerging::load(&layer.pp("downsample"), dims[s], dims[s + 1])?)
            } else {
                None
            };
            stages.push((stage, merge));
        }
        Ok(Self {
            stem1: Conv2d::new(&w1, Some(b1), 2, 1)?,
            stem2: Conv2d::new(&w2, Some(b2), 2, 1)?,
            stages,
            neck: Neck::load(&vb.pp("neck"), *dims.last().expect("at least one stage"), cfg.out_chans)?,
        })
    }

    /// # Shapes
    /// `pixels: [B, S, S, 3]` (normalised, padded) -> `[B, S/16, S/16, out_chans]`
    pub fn forward(&self, pixels: &Tensor, mut taps: Option<&mut Taps>) -> Result<Tensor> {
        let x = gelu(&self.stem1.forward(pixels)?)?;
        let mut x = self.stem2.forward(&x)?;
        tap(&mut taps, "enc.patch_embed", &x);
        for (i, (stage, merge)) in self.stages.iter().enumerate() {
            match stage {
                Stage::Conv(blocks) => {
                    for b in blocks {
                        x = b.forward(&x)?;
                    }
                }
                Stage::Attention(blocks) => {
                    for b in blocks {
                        x = b.forward(&x)?;
                    }
                }
            }
            if let Some(m) = merge {
                x = m.forward(&x)?;
            }
            tap(&mut taps, format!("enc.layer.{i}"), &x);
        }
        self.neck.forward(&x)
    }
}
