//! The DINO / DINOv2 ViT as a trainable network: the same computation as the inference
//! [`crate::dino::DinoVit`], written with differentiable candle ops only (LayerNorm, softmax and
//! GELU composed from elementary ops, no fused kernels), on [`Param`]s named as the official
//! checkpoints (`cls_token`, `pos_embed`, `patch_embed.proj.*`, `blocks.N.*`, `norm.*`).
//!
//! Position embeddings for another grid (DINO's local crops) are resampled with the reference's
//! bicubic recipe expressed as a fixed `[N_out, N_in]` matrix (built once per grid by resampling
//! the identity), so the resampling is a matmul and the gradient flows back to `pos_embed`.

use std::collections::HashMap;
use std::sync::Mutex;

use candle_core::{Device, Tensor, Var, D};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::head::{gelu, trunc_normal, uniform01};
use super::Param;
use crate::dino::{DinoConfig, Ffn, PosInterpolation};
use crate::nn::interpolate::{bicubic, Resample};
use crate::{Error, Result};

/// A trainable DINO backbone.
pub struct TrainVit {
    /// The architecture.
    pub config: DinoConfig,
    params: Vec<Param>,
    index: HashMap<String, usize>,
    /// Stochastic-depth rate of the last block (`drop_path_rate`); block `i` drops its residual
    /// branches with probability `rate · i / (depth − 1)` (`torch.linspace(0, rate, depth)`).
    drop_path_rate: f64,
    /// Position-resampling matrices by patch grid.
    resample: Mutex<HashMap<(usize, usize), Tensor>>,
}

use crate::nn::Activation;
use crate::train::block::{self, BlockParams, BlockSpec, DropPath};
use crate::train::ops::{attention, layer_norm, linear};

impl TrainVit {
    /// From canonical tensors (an official checkpoint, or a snapshot of another network).
    pub fn from_tensors(config: DinoConfig, tensors: &HashMap<String, Tensor>) -> Result<Self> {
        let mut params = Vec::new();
        for (name, shape) in Self::param_shapes(&config) {
            let t = tensors.get(&name).ok_or_else(|| Error::arg("tensors", format!("missing `{name}`")))?;
            if t.dims() != shape.as_slice() {
                return Err(Error::arg("tensors", format!("`{name}` has shape {:?}, expected {shape:?}", t.dims())));
            }
            params.push(Param::new(name, Var::from_tensor(&t.to_dtype(candle_core::DType::F32)?)?, true));
        }
        let index = params.iter().enumerate().map(|(i, p)| (p.name().to_string(), i)).collect();
        Ok(Self { config, params, index, drop_path_rate: 0.0, resample: Mutex::new(HashMap::new()) })
    }

    /// DINO's initialisation (`VisionTransformer.__init__`), f32, from a seeded ChaCha8 stream:
    /// `pos_embed`, `cls_token` (and registers) and every linear weight `trunc_normal_(std=.02)`,
    /// linear biases 0, LayerNorm weights 1 and biases 0 (`_init_weights`); the patch
    /// convolution keeps `nn.Conv2d`'s default, kaiming-uniform with a = √5, i.e. weight and bias
    /// `U(−1/√fan_in, 1/√fan_in)` with `fan_in = 3·p²`; layer-scale gammas 1.
    pub fn init(config: DinoConfig, seed: u64) -> Result<Self> {
        config.validate().map_err(|m| Error::arg("config", m))?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let fan_in = 3 * config.patch_size * config.patch_size;
        let bound = 1.0 / (fan_in as f64).sqrt();
        let mut tensors = HashMap::new();
        for (name, shape) in Self::param_shapes(&config) {
            let numel: usize = shape.iter().product();
            let data: Vec<f32> = if name.starts_with("patch_embed.") {
                (0..numel).map(|_| (-bound + 2.0 * bound * uniform01(&mut rng)) as f32).collect()
            } else if name.contains("norm") && name.ends_with(".weight") || name.ends_with(".gamma") {
                vec![1.0; numel]
            } else if name.ends_with(".bias") {
                vec![0.0; numel]
            } else {
                (0..numel).map(|_| trunc_normal(&mut rng, 0.0, 0.02, -2.0, 2.0) as f32).collect()
            };
            tensors.insert(name, Tensor::from_vec(data, shape, &Device::Cpu)?);
        }
        Self::from_tensors(config, &tensors)
    }

    /// Sets the stochastic-depth rate (`drop_path_rate`; DINO's student uses 0.1, the teacher 0).
    pub fn with_drop_path(mut self, rate: f64) -> Result<Self> {
        if !(0.0..1.0).contains(&rate) {
            return Err(Error::arg("drop_path", format!("rate {rate} is not in [0, 1)")));
        }
        self.drop_path_rate = rate;
        Ok(self)
    }

    /// The stochastic-depth rate of the last block (`drop_path_rate`).
    pub fn drop_path_rate(&self) -> f64 {
        self.drop_path_rate
    }

    /// `requires_grad` of every parameter (false for the teacher).
    pub fn set_requires_grad(&mut self, requires_grad: bool) {
        for p in &mut self.params {
            p.set_requires_grad(requires_grad);
        }
    }

    /// Copies of the current values, in parameter order, official names.
    pub fn state_dict(&self) -> Result<Vec<(String, Tensor)>> {
        self.params.iter().map(|p| Ok((p.name().to_string(), p.snapshot()?))).collect()
    }

    /// Overwrites every parameter in place; names and shapes must match exactly.
    pub fn load_state_dict<'a>(&self, tensors: impl IntoIterator<Item = (&'a str, &'a Tensor)>) -> Result<()> {
        super::load_params(&self.params, tensors, "this backbone")
    }

    /// DINO's `drop_path` for one block: a per-sample `[B, 1, 1]` factor, 0 with probability
    /// `p` and `1 / (1 − p)` otherwise (`floor(keep_prob + U[0, 1))` / keep_prob).
    /// The factors are drawn on the host (the same stream on every device) and placed on `device`.
    fn drop_path_scales(b: usize, p: f64, rng: &mut ChaCha8Rng) -> Vec<f32> {
        let keep = 1.0 - p;
        (0..b).map(|_| if (keep + uniform01(rng)).floor() >= 1.0 { (1.0 / keep) as f32 } else { 0.0 }).collect()
    }

    fn drop_path_mask(b: usize, p: f64, rng: &mut ChaCha8Rng, device: &Device) -> Result<Tensor> {
        Ok(Tensor::from_vec(Self::drop_path_scales(b, p, rng), (b, 1, 1), device)?)
    }

    /// Every parameter's canonical name and shape, in a fixed order.
    pub fn param_shapes(cfg: &DinoConfig) -> Vec<(String, Vec<usize>)> {
        let (c, p, m, h) = (cfg.embed_dim, cfg.patch_size, cfg.grid(), cfg.ffn_hidden);
        let mut v: Vec<(String, Vec<usize>)> = vec![
            ("cls_token".into(), vec![1, 1, c]),
            ("pos_embed".into(), vec![1, 1 + m * m, c]),
            ("patch_embed.proj.weight".into(), vec![c, 3, p, p]),
            ("patch_embed.proj.bias".into(), vec![c]),
        ];
        if cfg.num_register_tokens > 0 {
            v.push(("register_tokens".into(), vec![1, cfg.num_register_tokens, c]));
        }
        for i in 0..cfg.depth {
            let b = |n: &str| format!("blocks.{i}.{n}");
            v.push((b("norm1.weight"), vec![c]));
            v.push((b("norm1.bias"), vec![c]));
            v.push((b("attn.qkv.weight"), vec![3 * c, c]));
            if cfg.qkv_bias {
                v.push((b("attn.qkv.bias"), vec![3 * c]));
            }
            v.push((b("attn.proj.weight"), vec![c, c]));
            v.push((b("attn.proj.bias"), vec![c]));
            if cfg.layer_scale {
                v.push((b("ls1.gamma"), vec![c]));
                v.push((b("ls2.gamma"), vec![c]));
            }
            v.push((b("norm2.weight"), vec![c]));
            v.push((b("norm2.bias"), vec![c]));
            match cfg.ffn {
                Ffn::Mlp => {
                    v.push((b("mlp.fc1.weight"), vec![h, c]));
                    v.push((b("mlp.fc1.bias"), vec![h]));
                    v.push((b("mlp.fc2.weight"), vec![c, h]));
                    v.push((b("mlp.fc2.bias"), vec![c]));
                }
                Ffn::SwiGlu => {
                    v.push((b("mlp.w12.weight"), vec![2 * h, c]));
                    v.push((b("mlp.w12.bias"), vec![2 * h]));
                    v.push((b("mlp.w3.weight"), vec![c, h]));
                    v.push((b("mlp.w3.bias"), vec![c]));
                }
            }
        }
        v.push(("norm.weight".into(), vec![c]));
        v.push(("norm.bias".into(), vec![c]));
        v
    }

    /// Every parameter, in state-dict order.
    pub fn params(&self) -> &[Param] {
        &self.params
    }

    fn p(&self, name: &str) -> Result<Tensor> {
        let i = self.index.get(name).ok_or_else(|| Error::arg("param", format!("no parameter `{name}`")))?;
        Ok(self.params[*i].value())
    }

    /// The `[gh·gw, M²]` matrix that resamples the trained position grid to `gh × gw` with the
    /// checkpoint's recipe (identity for the trained grid), on `device` (built on the host once
    /// per grid, then cached there).
    fn resample_matrix(&self, gh: usize, gw: usize, square_pixels: bool, device: &Device) -> Result<Option<Tensor>> {
        let m = self.config.grid();
        if gh * gw == m * m && square_pixels {
            return Ok(None);
        }
        if let Some(t) = self.resample.lock().ok().and_then(|c| c.get(&(gh, gw)).cloned()) {
            return Ok(Some(t));
        }
        let n = m * m;
        let mut eye = vec![0f32; n * n];
        for i in 0..n {
            eye[i * n + i] = 1.0;
        }
        let (out, (oh, ow)) = match self.config.interpolation {
            PosInterpolation::ScaleFactorOffset { offset, antialias } => bicubic(
                &eye,
                (m, m),
                n,
                Resample::ScaleFactor((gh as f64 + offset) / m as f64, (gw as f64 + offset) / m as f64),
                antialias,
            ),
            PosInterpolation::Size { antialias } => bicubic(&eye, (m, m), n, Resample::Size(gh, gw), antialias),
        };
        if (oh, ow) != (gh, gw) {
            return Err(Error::arg("image", format!("position grid resampled to {oh}x{ow}, wanted {gh}x{gw}")));
        }
        let t = Tensor::from_vec(out, (gh * gw, n), device)?;
        if let Ok(mut c) = self.resample.lock() {
            c.insert((gh, gw), t.clone());
        }
        Ok(Some(t))
    }

    /// All tokens after the final norm, `[B, 1 + R + h·w, C]`.
    ///
    /// # Shapes
    /// `pixels: [B, H, W, 3]` channels-last, normalised; H and W multiples of the patch size.
    pub fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        self.forward_train(pixels, None)
    }

    /// [`forward`](Self::forward) in training mode: with `drop_path` a random stream, each
    /// block's residual branches are dropped per sample at the block's stochastic-depth rate
    /// (one mask for the attention branch, another for the MLP branch, as two `DropPath` calls).
    pub fn forward_train(&self, pixels: &Tensor, mut drop_path: Option<&mut ChaCha8Rng>) -> Result<Tensor> {
        let cfg = &self.config;
        let (b, ph, pw, _) = pixels.dims4()?;
        let (p, c) = (cfg.patch_size, cfg.embed_dim);
        if ph % p != 0 || pw % p != 0 {
            return Err(Error::arg("pixels", format!("{pw}x{ph} is not a multiple of the {p}-pixel patch")));
        }
        let (gh, gw) = (ph / p, pw / p);
        let patches =
            pixels.reshape((b, gh, p, gw, p, 3))?.permute((0, 1, 3, 2, 4, 5))?.reshape((b * gh * gw, p * p * 3))?;
        let w = self.p("patch_embed.proj.weight")?.permute((0, 2, 3, 1))?.reshape((c, p * p * 3))?;
        let x = linear(&patches, &w, Some(&self.p("patch_embed.proj.bias")?))?.reshape((b, gh * gw, c))?;
        let pos = self.p("pos_embed")?.squeeze(0)?; // [1 + M², C]
        let cls_pos = pos.narrow(0, 0, 1)?;
        let grid_pos = pos.narrow(0, 1, pos.dim(0)? - 1)?;
        let grid_pos = match self.resample_matrix(gh, gw, ph == pw, pos.device())? {
            Some(r) => r.matmul(&grid_pos)?,
            None => grid_pos,
        };
        let x = x.broadcast_add(&grid_pos.unsqueeze(0)?)?;
        let cls = self.p("cls_token")?.reshape((1, c))?.add(&cls_pos)?.unsqueeze(0)?.broadcast_as((b, 1, c))?;
        let mut parts = vec![cls.contiguous()?];
        if cfg.num_register_tokens > 0 {
            let r = self.p("register_tokens")?;
            parts.push(r.broadcast_as((b, cfg.num_register_tokens, c))?.contiguous()?);
        }
        parts.push(x);
        let mut x = Tensor::cat(&parts, 1)?;
        let (heads, d) = (cfg.num_heads, c / cfg.num_heads);
        let scale = 1.0 / (d as f64).sqrt();
        let eps = cfg.layer_norm_eps;
        for i in 0..cfg.depth {
            let q = |n: &str| self.p(&format!("blocks.{i}.{n}"));
            let rate = if cfg.depth > 1 { self.drop_path_rate * i as f64 / (cfg.depth - 1) as f64 } else { 0.0 };
            if cfg.ffn == Ffn::Mlp {
                // One fused op per block (`train::block`); the two stochastic-depth masks drawn in
                // the order the composed branches draw them (attention, then MLP).
                let drop = match (drop_path.as_deref_mut(), rate > 0.0) {
                    (Some(rng), true) => {
                        let attn = Self::drop_path_scales(b, rate, rng);
                        Some(DropPath { attn, mlp: Self::drop_path_scales(b, rate, rng) })
                    }
                    _ => None,
                };
                let ls = |n: &str| if cfg.layer_scale { q(n).map(Some) } else { Ok(None) };
                let params = BlockParams {
                    ln1: (q("norm1.weight")?, q("norm1.bias")?),
                    qkv_w: q("attn.qkv.weight")?,
                    qkv_b: if cfg.qkv_bias { Some(q("attn.qkv.bias")?) } else { None },
                    proj: (q("attn.proj.weight")?, q("attn.proj.bias")?),
                    ls1: ls("ls1.gamma")?,
                    ln2: (q("norm2.weight")?, q("norm2.bias")?),
                    fc1: (q("mlp.fc1.weight")?, q("mlp.fc1.bias")?),
                    fc2: (q("mlp.fc2.weight")?, q("mlp.fc2.bias")?),
                    ls2: ls("ls2.gamma")?,
                };
                let spec = BlockSpec { heads, eps, act: Activation::Gelu, causal: false };
                x = block::forward(&x, &params, spec, drop.as_ref())?;
                continue;
            }
            let h = layer_norm(&x, &q("norm1.weight")?, &q("norm1.bias")?, eps)?;
            let qkv_b = if cfg.qkv_bias { Some(q("attn.qkv.bias")?) } else { None };
            let qkv = linear(&h, &q("attn.qkv.weight")?, qkv_b.as_ref())?;
            let n = x.dim(1)?;
            let t = qkv.reshape((b, n, 3, heads, d))?.permute((2, 0, 3, 1, 4))?;
            let a = attention(&t.get(0)?, &t.get(1)?, &t.get(2)?, scale, false)?.transpose(1, 2)?.reshape((b, n, c))?;
            let mut a = linear(&a, &q("attn.proj.weight")?, Some(&q("attn.proj.bias")?))?;
            if cfg.layer_scale {
                a = a.broadcast_mul(&q("ls1.gamma")?)?;
            }
            if let (Some(rng), true) = (drop_path.as_deref_mut(), rate > 0.0) {
                a = a.broadcast_mul(&Self::drop_path_mask(b, rate, rng, x.device())?)?;
            }
            x = (x + a)?;
            let h = layer_norm(&x, &q("norm2.weight")?, &q("norm2.bias")?, eps)?;
            let mut f = match cfg.ffn {
                Ffn::Mlp => {
                    let h = gelu(&linear(&h, &q("mlp.fc1.weight")?, Some(&q("mlp.fc1.bias")?))?)?;
                    linear(&h, &q("mlp.fc2.weight")?, Some(&q("mlp.fc2.bias")?))?
                }
                Ffn::SwiGlu => {
                    let x12 = linear(&h, &q("mlp.w12.weight")?, Some(&q("mlp.w12.bias")?))?;
                    let hid = cfg.ffn_hidden;
                    let (x1, x2) = (x12.narrow(D::Minus1, 0, hid)?, x12.narrow(D::Minus1, hid, hid)?);
                    let silu = x1.broadcast_div(&(x1.neg()?.exp()? + 1.0)?)?;
                    linear(&(silu * x2)?, &q("mlp.w3.weight")?, Some(&q("mlp.w3.bias")?))?
                }
            };
            if cfg.layer_scale {
                f = f.broadcast_mul(&q("ls2.gamma")?)?;
            }
            if let (Some(rng), true) = (drop_path.as_deref_mut(), rate > 0.0) {
                f = f.broadcast_mul(&Self::drop_path_mask(b, rate, rng, x.device())?)?;
            }
            x = (x + f)?;
        }
        layer_norm(&x, &self.p("norm.weight")?, &self.p("norm.bias")?, eps)
    }
}
