//! SAM's ViT image encoder (`ImageEncoderViT`): a patch embedding, an absolute position
//! embedding, transformer blocks attending within 14×14 windows except at the global-attention
//! indexes, decomposed relative positions in every block, and a convolutional neck to 256
//! channels. Tokens stay channels-last (`[B, H, W, C]`) from the patch embedding to the neck.

use candle_core::{Device, Module, Tensor};

use super::config::VitConfig;
use crate::nn::conv::Conv2d;
use crate::nn::cpu::{self, ScoreBias};
use crate::nn::window::{rel_pos_table, window_partition, window_unpartition};
use crate::nn::{portable, Activation, LayerNorm, Linear};
use crate::weights::Vb;
use crate::Result;

/// Named intermediate activations, recorded when asked for (parity tests).
pub type Taps = Vec<(String, Tensor)>;

pub(crate) fn tap(taps: &mut Option<&mut Taps>, name: impl Into<String>, t: &Tensor) {
    if let Some(taps) = taps {
        taps.push((name.into(), t.clone()));
    }
}

/// The neck shared by SAM and MobileSAM: 1×1 conv, LayerNorm2d, 3×3 conv, LayerNorm2d (both
/// convolutions without bias; LayerNorm2d is a LayerNorm over channels, ε = 1e-6).
#[derive(Debug, Clone)]
pub struct Neck {
    conv1: Linear,
    ln1: LayerNorm,
    conv2: Conv2d,
    ln2: LayerNorm,
}

impl Neck {
    /// Reads the neck below `vb`: `cin` channels in, `cout` out.
    pub fn load(vb: &Vb, cin: usize, cout: usize) -> Result<Self> {
        let conv1 = vb.pp(0).get(&[cout, cin, 1, 1], "weight")?.reshape((cout, cin))?;
        let conv2 = vb.pp(2).get(&[cout, cout, 3, 3], "weight")?;
        Ok(Self {
            conv1: Linear::new(conv1, None)?,
            ln1: LayerNorm::load(&vb.pp(1), cout, 1e-6)?,
            conv2: Conv2d::new(&conv2, None, 1, 1)?,
            ln2: LayerNorm::load(&vb.pp(3), cout, 1e-6)?,
        })
    }

    /// # Shapes
    /// `[B, H, W, Cin] -> [B, H, W, Cout]`
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = self.ln1.forward(&self.conv1.forward_act(x, None)?)?;
        Ok(self.ln2.forward(&self.conv2.forward(&x)?)?)
    }
}

struct Block {
    norm1: LayerNorm,
    qkv: Linear,
    /// What `qkv` gives a zero (padding) token: the window padding's projection (host copy for
    /// the CPU kernel, and `[3C]` on the weights' device for the device path).
    qkv_pad: Vec<f32>,
    qkv_pad_t: Tensor,
    proj: Linear,
    /// Gathered relative positions, `[g, g, D]` for the grid side `g` this block attends over
    /// (host copies, and the same on the weights' device).
    rel_h: Vec<f32>,
    rel_w: Vec<f32>,
    rel_h_t: Tensor,
    rel_w_t: Tensor,
    /// Window side; 0 = global attention.
    window: usize,
    heads: usize,
    norm2: LayerNorm,
    lin1: Linear,
    lin2: Linear,
}

impl Block {
    fn load(vb: &Vb, cfg: &VitConfig, window: usize) -> Result<Self> {
        let c = cfg.embed_dim;
        let d = c / cfg.num_heads;
        let grid = cfg.image_size / cfg.patch_size;
        let side = if window > 0 { window } else { grid };
        let attn = vb.pp("attn");
        let qkv = Linear::load(&attn.pp("qkv"), c, 3 * c, true)?;
        let like = (vb.device(), vb.dtype());
        let qkv_pad_t = qkv.forward_act(&Tensor::zeros((1, c), vb.dtype(), vb.device())?, None)?.flatten_all()?;
        let qkv_pad = host_f32(&qkv_pad_t)?;
        let rel = |name: &str| -> Result<(Vec<f32>, Tensor)> {
            let t = attn.get(&[2 * side - 1, d], name)?;
            let table = rel_pos_table(&host_f32(&t)?, d, side, side);
            let on_device = portable::upload(&table, &[side, side, d], like)?;
            Ok((table, on_device))
        };
        let ((rel_h, rel_h_t), (rel_w, rel_w_t)) = (rel("rel_pos_h")?, rel("rel_pos_w")?);
        Ok(Self {
            norm1: LayerNorm::load(&vb.pp("norm1"), c, cfg.layer_norm_eps)?,
            qkv,
            qkv_pad,
            qkv_pad_t,
            proj: Linear::load(&attn.pp("proj"), c, c, true)?,
            rel_h,
            rel_w,
            rel_h_t,
            rel_w_t,
            window,
            heads: cfg.num_heads,
            norm2: LayerNorm::load(&vb.pp("norm2"), c, cfg.layer_norm_eps)?,
            lin1: Linear::load(&vb.pp("mlp").pp("lin1"), c, cfg.mlp_dim, true)?,
            lin2: Linear::load(&vb.pp("mlp").pp("lin2"), cfg.mlp_dim, c, true)?,
        })
    }

    /// # Shapes
    /// `[B, H, W, C] -> [B, H, W, C]`
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, h, w, c) = x.dims4()?;
        let d = c / self.heads;
        let scale = (d as f32).powf(-0.5);
        let qkv = self.qkv.forward_act(&self.norm1.forward(x)?, None)?;
        let attn = if !cpu::eligible(&qkv) {
            self.attention_portable(&qkv)?
        } else if self.window > 0 {
            let ws = self.window;
            let (wins, (nh, nw)) =
                cpu::with_slice(&qkv, |qkv| window_partition(qkv, (b, h, w), 3 * c, ws, &self.qkv_pad))?;
            let wins = Tensor::from_vec(wins, (b * nh * nw, ws * ws, 3 * c), &Device::Cpu)?;
            let bias = ScoreBias::DecomposedRelPos { grid: (ws, ws), rel_h: &self.rel_h, rel_w: &self.rel_w };
            let out = cpu::attention_biased(&wins, self.heads, scale, bias)?;
            let out = cpu::with_slice(&out, |out| window_unpartition(out, (b, h, w), c, ws))?;
            Tensor::from_vec(out, (b, h, w, c), &Device::Cpu)?
        } else {
            let bias = ScoreBias::DecomposedRelPos { grid: (h, w), rel_h: &self.rel_h, rel_w: &self.rel_w };
            cpu::attention_biased(&qkv.reshape((b, h * w, 3 * c))?, self.heads, scale, bias)?.reshape((b, h, w, c))?
        };
        // The output projection is per token, so it runs after dropping the window padding.
        let attn = self.proj.forward_act(&attn, None)?;
        let (x, xn) = self.norm2.add_forward(x, &attn)?;
        let hidden = self.lin1.forward_act(&xn, Some(Activation::Gelu))?;
        crate::nn::add(&x, &self.lin2.forward_act(&hidden, None)?)
    }

    /// The attention of [`Self::forward`] on the device: window partition, attention with the
    /// decomposed relative positions and unpartition as candle ops.
    ///
    /// # Shapes
    /// `qkv: [B, H, W, 3C]` -> `[B, H, W, C]`
    fn attention_portable(&self, qkv: &Tensor) -> Result<Tensor> {
        let (b, h, w, c3) = qkv.dims4()?;
        let c = c3 / 3;
        let scale = ((c / self.heads) as f64).powf(-0.5);
        if self.window > 0 {
            let ws = self.window;
            let (wins, _) = portable::window_partition(qkv, ws, &self.qkv_pad_t)?;
            let bias = portable::Bias::DecomposedRelPos { grid: (ws, ws), rel_h: &self.rel_h_t, rel_w: &self.rel_w_t };
            let out = portable::attention(&wins, self.heads, scale, bias)?;
            portable::window_unpartition(&out, (b, h, w), ws)
        } else {
            let bias = portable::Bias::DecomposedRelPos { grid: (h, w), rel_h: &self.rel_h_t, rel_w: &self.rel_w_t };
            Ok(portable::attention(&qkv.reshape((b, h * w, c3))?, self.heads, scale, bias)?.reshape((b, h, w, c))?)
        }
    }
}

/// The values of `t` as host `f32` (load-time copies for the CPU kernels).
pub(crate) fn host_f32(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.to_device(&Device::Cpu)?.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1()?)
}

/// `ImageEncoderViT`.
pub struct VitEncoder {
    patch_embed: Conv2d,
    pos_embed: Tensor,
    blocks: Vec<Block>,
    neck: Neck,
}

impl VitEncoder {
    /// Reads the encoder below `vb`.
    pub fn load(vb: &Vb, cfg: &VitConfig) -> Result<Self> {
        let (c, p) = (cfg.embed_dim, cfg.patch_size);
        let grid = cfg.image_size / p;
        let pe = vb.pp("patch_embed").pp("proj");
        let patch_embed = Conv2d::new(&pe.get(&[c, 3, p, p], "weight")?, Some(pe.get(&[c], "bias")?), p, 0)?;
        let blocks = (0..cfg.depth)
            .map(|i| {
                let window = if cfg.global_attn_indexes.contains(&i) { 0 } else { cfg.window_size };
                Block::load(&vb.pp("blocks").pp(i), cfg, window)
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            patch_embed,
            pos_embed: vb.get(&[1, grid, grid, c], "pos_embed")?,
            blocks,
            neck: Neck::load(&vb.pp("neck"), c, cfg.out_chans)?,
        })
    }

    /// # Shapes
    /// `pixels: [B, S, S, 3]` (normalised, padded) -> `[B, S/p, S/p, out_chans]`
    pub fn forward(&self, pixels: &Tensor, mut taps: Option<&mut Taps>) -> Result<Tensor> {
        let x = self.patch_embed.forward(pixels)?;
        tap(&mut taps, "enc.patch_embed", &x);
        let mut x = x.broadcast_add(&self.pos_embed)?;
        tap(&mut taps, "enc.pos_added", &x);
        for (i, block) in self.blocks.iter().enumerate() {
            x = block.forward(&x)?;
            tap(&mut taps, format!("enc.block.{i}"), &x);
        }
        self.neck.forward(&x)
    }
}
