//! CLIP as a trainable network: both towers and the temperature, the same computation as the
//! inference [`crate::clip::ClipModel`], written with differentiable candle ops (the fused
//! LayerNorm, softmax and GELU of [`crate::train::ops`], which carry their own backward), on
//! [`Param`]s named as OpenAI's and open_clip's state dicts (`visual.conv1.weight`,
//! `visual.transformer.resblocks.N.attn.in_proj_weight`, `token_embedding.weight`,
//! `text_projection`, `logit_scale`, ...), so a checkpoint vista loads is a starting point and the
//! trained weights are a checkpoint every CLIP command loads. The image tower is a ViT or
//! open_clip's `ModifiedResNet` (`visual.conv1..3`, `visual.layerN.M.*`, `visual.attnpool.*`),
//! whose BatchNorm runs in training mode (batch statistics, running statistics moved, as
//! `model.train()`) except in [`TrainClip::detached`] (`model.eval()`).

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::clip::config::{ClipConfig, ResNetDims, TextPooling};
use crate::clip::transformer::TowerDims;
use crate::train::batch_norm::BatchNorms;
use crate::train::block::{self, BlockParams, BlockSpec};
use crate::train::dino::head::{normalize, uniform01};
use crate::train::ops::{layer_norm, linear, softmax_last};
use crate::train::param::{load_params, Param};
use crate::{Error, Result};

/// open_clip's initial temperature, `logit_scale = log(1 / 0.07)` (`CLIP.__init__`).
pub const INIT_LOGIT_SCALE: f64 = 2.659_260_036_932_778_4;
/// open_clip's clamp of the learned temperature after every step (`train_one_epoch`:
/// `logit_scale.clamp_(0, math.log(100))`).
pub const MAX_LOGIT_SCALE: f64 = 4.605_170_185_988_092;

/// A trainable CLIP.
pub struct TrainClip {
    /// The architecture.
    pub config: ClipConfig,
    params: Vec<Param>,
    index: HashMap<String, usize>,
    /// A ResNet image tower's BatchNorm statistics.
    bn: Option<BatchNorms>,
    /// BatchNorm by the batch's statistics (`model.train()`), else by the running ones.
    train_mode: bool,
}

/// `x @ w` for `x: [B, in]`, `w: [in, out]` (the towers' `proj` / `text_projection`).
fn project(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    Ok(x.matmul(w)?)
}

/// A normal draw (Box–Muller, one per call).
fn normal(rng: &mut ChaCha8Rng, std: f64) -> f64 {
    let u1 = 1.0 - uniform01(rng);
    let u2 = uniform01(rng);
    std * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// How one tensor is initialised.
#[derive(Debug, Clone, Copy)]
enum Init {
    Normal(f64),
    /// `U(−b, b)`.
    Uniform(f64),
    Const(f64),
}

impl TrainClip {
    /// Every parameter's canonical name and shape, in a fixed order (open_clip's state dict).
    pub fn param_shapes(cfg: &ClipConfig, logit_bias: bool) -> Vec<(String, Vec<usize>)> {
        let v = &cfg.vision;
        let (w, p) = (v.tower.width, v.patch_size);
        let mut out: Vec<(String, Vec<usize>)> = vec![
            ("positional_embedding".into(), vec![cfg.text.context_length, cfg.text.tower.width]),
            ("text_projection".into(), vec![cfg.text.tower.width, cfg.embed_dim]),
            ("logit_scale".into(), vec![]),
        ];
        if logit_bias {
            out.push(("logit_bias".into(), vec![]));
        }
        if let Some(r) = &v.resnet {
            for (conv, bn, cin, cout, k) in resnet_convs(r) {
                out.push((format!("{conv}.weight"), vec![cout, cin, k, k]));
                out.push((format!("{bn}.weight"), vec![cout]));
                out.push((format!("{bn}.bias"), vec![cout]));
            }
            let a = |n: &str| format!("visual.attnpool.{n}");
            out.push((a("positional_embedding"), vec![v.num_tokens(), w]));
            for proj in ["k_proj", "q_proj", "v_proj"] {
                out.push((a(&format!("{proj}.weight")), vec![w, w]));
                out.push((a(&format!("{proj}.bias")), vec![w]));
            }
            out.push((a("c_proj.weight"), vec![cfg.embed_dim, w]));
            out.push((a("c_proj.bias"), vec![cfg.embed_dim]));
        } else {
            out.extend([
                ("visual.class_embedding".into(), vec![w]),
                ("visual.positional_embedding".into(), vec![v.num_tokens(), w]),
                ("visual.proj".into(), vec![w, cfg.embed_dim]),
                ("visual.conv1.weight".into(), vec![w, 3, p, p]),
                ("visual.ln_pre.weight".into(), vec![w]),
                ("visual.ln_pre.bias".into(), vec![w]),
            ]);
            blocks(&mut out, "visual.transformer", &v.tower);
            out.push(("visual.ln_post.weight".into(), vec![w]));
            out.push(("visual.ln_post.bias".into(), vec![w]));
        }
        blocks(&mut out, "transformer", &cfg.text.tower);
        out.push(("token_embedding.weight".into(), vec![cfg.text.vocab_size, cfg.text.tower.width]));
        out.push(("ln_final.weight".into(), vec![cfg.text.tower.width]));
        out.push(("ln_final.bias".into(), vec![cfg.text.tower.width]));
        out
    }

    /// From canonical tensors (a checkpoint vista loads, or a snapshot); `logit_bias` is trained
    /// when the tensors have it (SigLIP). A ResNet tower's BatchNorm statistics are taken when
    /// present, else torch's initial 0 and 1.
    pub fn from_tensors(config: ClipConfig, tensors: &HashMap<String, Tensor>, device: &Device) -> Result<Self> {
        config.validate().map_err(|m| Error::arg("config", m))?;
        let bn = match &config.vision.resnet {
            Some(r) => {
                if !config.vision.image_size.is_multiple_of(32) {
                    return Err(Error::arg(
                        "model",
                        format!(
                            "a ResNet tower trains at a multiple of 32 pixels (its total stride), not {}",
                            config.vision.image_size
                        ),
                    ));
                }
                Some(BatchNorms::new(resnet_convs(r).into_iter().map(|c| (c.1, c.3)), tensors, device)?)
            }
            None => None,
        };
        let with_bias = tensors.contains_key("logit_bias");
        let mut params = Vec::new();
        for (name, shape) in Self::param_shapes(&config, with_bias) {
            let t = tensors.get(&name).ok_or_else(|| Error::arg("tensors", format!("missing `{name}`")))?;
            let t =
                if t.dims().is_empty() || t.elem_count() == 1 && shape.is_empty() { t.reshape(())? } else { t.clone() };
            if t.dims() != shape.as_slice() {
                return Err(Error::arg("tensors", format!("`{name}` has shape {:?}, expected {shape:?}", t.dims())));
            }
            let var = candle_core::Var::from_tensor(&t.to_dtype(DType::F32)?.to_device(device)?)?;
            params.push(Param::new(name, var, true));
        }
        let index = params.iter().enumerate().map(|(i, p)| (p.name().to_string(), i)).collect();
        Ok(Self { config, params, index, bn, train_mode: true })
    }

    /// open_clip's initialisation, f32, from a seeded ChaCha8 stream (the distributions, not
    /// torch's random numbers):
    /// * image tower (`VisionTransformer.__init__`; its `init_parameters` is empty):
    ///   `class_embedding`, `positional_embedding` and `proj` `N(0, width^−½)`; `conv1` (no
    ///   bias) and every `nn.Linear` keep PyTorch's default, `U(±1/√fan_in)` for weight and bias;
    ///   `nn.MultiheadAttention`'s `in_proj_weight` Xavier-uniform, `in_proj_bias` and
    ///   `out_proj.bias` 0;
    /// * text tower (`TextTransformer.init_parameters`): `token_embedding` `N(0, 0.02)`,
    ///   `positional_embedding` `N(0, 0.01)`, per block `in_proj_weight` `N(0, width^−½)`,
    ///   `out_proj.weight` and `c_proj.weight` `N(0, width^−½ (2·layers)^−½)`, `c_fc.weight`
    ///   `N(0, (2·width)^−½)`, biases as the defaults above; `text_projection` `N(0, width^−½)`;
    /// * a ResNet image tower (`ModifiedResNet.init_parameters`): every convolution (no bias)
    ///   PyTorch's default `U(±1/√fan_in)`; BatchNorm weight 1 and bias 0, but each bottleneck's
    ///   `bn3.weight` 0; the attention pool's `positional_embedding` and `q/k/v/c_proj` weights
    ///   `N(0, width^−½)`, their biases `U(±1/√width)`;
    /// * LayerNorms 1 and 0; `logit_scale` `log(1/0.07)` (or `init_logit_scale`), `logit_bias`
    ///   (SigLIP) `init_logit_bias`.
    pub fn init(config: ClipConfig, seed: u64, logit: LogitInit, device: &Device) -> Result<Self> {
        config.validate().map_err(|m| Error::arg("config", m))?;
        let resnet = config.vision.resnet.is_some();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let vw = config.vision.tower.width as f64;
        let (tw, tl) = (config.text.tower.width as f64, config.text.tower.layers as f64);
        let p = config.vision.patch_size as f64;
        let mut tensors = HashMap::new();
        for (name, shape) in Self::param_shapes(&config, logit.bias.is_some()) {
            let fan_in = *shape.last().unwrap_or(&1) as f64;
            let text = !name.starts_with("visual.");
            let rule = match name.as_str() {
                n if resnet && n.starts_with("visual.") => resnet_init(n, &shape, vw),
                "logit_scale" => Init::Const(logit.scale),
                "logit_bias" => Init::Const(logit.bias.unwrap_or(0.0)),
                "visual.class_embedding" | "visual.positional_embedding" | "visual.proj" => Init::Normal(vw.powf(-0.5)),
                "visual.conv1.weight" => Init::Uniform(1.0 / (3.0 * p * p).sqrt()),
                "token_embedding.weight" => Init::Normal(0.02),
                "positional_embedding" => Init::Normal(0.01),
                "text_projection" => Init::Normal(tw.powf(-0.5)),
                n if n.contains(".ln_") || n.starts_with("ln_final") => {
                    Init::Const(if n.ends_with(".weight") { 1.0 } else { 0.0 })
                }
                n if n.ends_with("in_proj_bias") || n.ends_with("out_proj.bias") => Init::Const(0.0),
                n if n.ends_with("in_proj_weight") => {
                    if text {
                        Init::Normal(tw.powf(-0.5))
                    } else {
                        // xavier_uniform_ on [3W, W]: √(6 / (fan_in + fan_out)).
                        Init::Uniform((6.0 / (shape[0] + shape[1]) as f64).sqrt())
                    }
                }
                n if text && (n.ends_with("out_proj.weight") || n.ends_with("c_proj.weight")) => {
                    Init::Normal(tw.powf(-0.5) * (2.0 * tl).powf(-0.5))
                }
                n if text && n.ends_with("c_fc.weight") => Init::Normal((2.0 * tw).powf(-0.5)),
                // nn.Linear defaults: kaiming_uniform(a=√5) weight, U(±1/√fan_in) bias (fan_in of the layer).
                n if n.ends_with(".bias") => {
                    let layer_in = if n.ends_with("c_proj.bias") {
                        if text {
                            config.text.tower.mlp_dim
                        } else {
                            config.vision.tower.mlp_dim
                        }
                    } else if text {
                        config.text.tower.width
                    } else {
                        config.vision.tower.width
                    };
                    Init::Uniform(1.0 / (layer_in as f64).sqrt())
                }
                _ => Init::Uniform(1.0 / fan_in.sqrt()),
            };
            let numel: usize = shape.iter().product();
            let data: Vec<f32> = match rule {
                Init::Normal(std) => (0..numel).map(|_| normal(&mut rng, std) as f32).collect(),
                Init::Uniform(b) => (0..numel).map(|_| (-b + 2.0 * b * uniform01(&mut rng)) as f32).collect(),
                Init::Const(c) => vec![c as f32; numel],
            };
            tensors.insert(name, Tensor::from_vec(data, shape, &Device::Cpu)?);
        }
        Self::from_tensors(config, &tensors, device)
    }

    /// The same variables read without gradient (no graph is recorded), for evaluation: a
    /// ResNet tower's BatchNorm then normalises by (a copy of) the running statistics, as
    /// `model.eval()`.
    pub fn detached(&self) -> Self {
        let mut params = self.params.clone();
        for p in &mut params {
            p.set_requires_grad(false);
        }
        Self {
            config: self.config.clone(),
            params,
            index: self.index.clone(),
            bn: self.bn.as_ref().map(BatchNorms::copy),
            train_mode: false,
        }
    }

    /// A ResNet tower's BatchNorm statistics now (`None` for a ViT): what a failed step puts
    /// back with [`set_running_stats`](Self::set_running_stats).
    pub fn running_stats(&self) -> Option<HashMap<String, Tensor>> {
        self.bn.as_ref().map(BatchNorms::snapshot)
    }

    /// Puts back statistics taken with [`running_stats`](Self::running_stats).
    pub fn set_running_stats(&self, stats: Option<HashMap<String, Tensor>>) {
        if let (Some(bn), Some(stats)) = (&self.bn, stats) {
            bn.restore(stats);
        }
    }

    /// Every parameter, in state-dict order.
    pub fn params(&self) -> &[Param] {
        &self.params
    }

    /// Mutable parameters (to lock towers).
    pub fn params_mut(&mut self) -> &mut [Param] {
        &mut self.params
    }

    /// Whether the model learns a SigLIP bias.
    pub fn has_logit_bias(&self) -> bool {
        self.index.contains_key("logit_bias")
    }

    /// Copies of the current values, in parameter order, canonical names; then a ResNet
    /// tower's BatchNorm statistics.
    pub fn state_dict(&self) -> Result<Vec<(String, Tensor)>> {
        let mut v: Vec<(String, Tensor)> =
            self.params.iter().map(|p| Ok((p.name().to_string(), p.snapshot()?))).collect::<Result<_>>()?;
        if let Some(bn) = &self.bn {
            v.extend(bn.state_dict());
        }
        Ok(v)
    }

    /// Overwrites every parameter in place (names and shapes must match exactly), and the
    /// BatchNorm statistics given.
    pub fn load_state_dict<'a>(&self, tensors: impl IntoIterator<Item = (&'a str, &'a Tensor)>) -> Result<()> {
        let (stats, params): (Vec<_>, Vec<_>) = tensors.into_iter().partition(|(n, _)| BatchNorms::is_buffer(n));
        load_params(&self.params, params, "this CLIP model")?;
        for (n, t) in stats {
            match &self.bn {
                Some(bn) => bn.load(n, t)?,
                None => return Err(Error::arg("tensors", format!("unexpected `{n}`: this CLIP has no BatchNorm"))),
            }
        }
        Ok(())
    }

    /// The device the parameters live on.
    pub fn device(&self) -> Device {
        self.params[0].var().device().clone()
    }

    fn p(&self, name: &str) -> Result<Tensor> {
        let i = self.index.get(name).ok_or_else(|| Error::arg("param", format!("no parameter `{name}`")))?;
        Ok(self.params[*i].value())
    }

    /// `logit_scale` as stored (its `exp()` multiplies the similarities).
    pub fn logit_scale(&self) -> Result<Tensor> {
        self.p("logit_scale")
    }

    /// SigLIP's `logit_bias`, when the model has one.
    pub fn logit_bias(&self) -> Result<Option<Tensor>> {
        if self.has_logit_bias() {
            Ok(Some(self.p("logit_bias")?))
        } else {
            Ok(None)
        }
    }

    /// One tower's pre-norm blocks (`ResidualAttentionBlock`), causal for the text: each one
    /// [`block::forward`] (one fused op on the CPU), or [`block::forward_packed`] over `x: [T, C]`
    /// holding sequences of `packed` lengths end to end.
    fn transformer(
        &self,
        x: &Tensor,
        prefix: &str,
        t: &TowerDims,
        causal: bool,
        packed: Option<&[usize]>,
    ) -> Result<Tensor> {
        let spec = BlockSpec { heads: t.heads, eps: t.eps, act: t.act, causal };
        let mut x = x.clone();
        for i in 0..t.layers {
            let q = |name: &str| self.p(&format!("{prefix}.resblocks.{i}.{name}"));
            let params = BlockParams {
                ln1: (q("ln_1.weight")?, q("ln_1.bias")?),
                qkv_w: q("attn.in_proj_weight")?,
                qkv_b: Some(q("attn.in_proj_bias")?),
                proj: (q("attn.out_proj.weight")?, q("attn.out_proj.bias")?),
                ls1: None,
                ln2: (q("ln_2.weight")?, q("ln_2.bias")?),
                fc1: (q("mlp.c_fc.weight")?, q("mlp.c_fc.bias")?),
                fc2: (q("mlp.c_proj.weight")?, q("mlp.c_proj.bias")?),
                ls2: None,
            };
            x = match packed {
                Some(lengths) => block::forward_packed(&x, lengths, &params, spec)?,
                None => block::forward(&x, &params, spec, None)?,
            };
        }
        Ok(x)
    }

    /// Image embeddings, not normalised.
    ///
    /// # Shapes
    /// `pixels: [B, S, S, 3]` channels-last, normalised, at the model's image size `-> [B, E]`.
    pub fn encode_image(&self, pixels: &Tensor) -> Result<Tensor> {
        let v = &self.config.vision;
        let (b, ph, pw, _) = pixels.dims4()?;
        if ph != v.image_size || pw != v.image_size {
            return Err(Error::arg("pixels", format!("{pw}x{ph} images for a model trained at {0}x{0}", v.image_size)));
        }
        if let Some(r) = &v.resnet {
            return self.encode_image_resnet(&pixels.permute((0, 3, 1, 2))?.contiguous()?, r);
        }
        let (p, c, g) = (v.patch_size, v.tower.width, v.grid());
        // conv1 (stride = kernel, no bias) as one GEMM over flattened patches.
        let patches = pixels
            .narrow(1, 0, g * p)?
            .narrow(2, 0, g * p)?
            .reshape((b, g, p, g, p, 3))?
            .permute((0, 1, 3, 2, 4, 5))?
            .reshape((b * g * g, p * p * 3))?;
        let w = self.p("visual.conv1.weight")?.permute((0, 2, 3, 1))?.reshape((c, p * p * 3))?;
        let x = linear(&patches, &w, None)?.reshape((b, g * g, c))?;
        let cls = self.p("visual.class_embedding")?.reshape((1, 1, c))?.broadcast_as((b, 1, c))?.contiguous()?;
        let x = Tensor::cat(&[cls, x], 1)?.broadcast_add(&self.p("visual.positional_embedding")?.unsqueeze(0)?)?;
        let eps = v.tower.eps;
        let x = layer_norm(&x, &self.p("visual.ln_pre.weight")?, &self.p("visual.ln_pre.bias")?, eps)?;
        let x = self.transformer(&x, "visual.transformer", &v.tower, false, None)?;
        let pooled = x.narrow(1, 0, 1)?.squeeze(1)?;
        let pooled = layer_norm(&pooled, &self.p("visual.ln_post.weight")?, &self.p("visual.ln_post.bias")?, eps)?;
        project(&pooled, &self.p("visual.proj")?)
    }

    /// Convolution `conv` (no bias), BatchNorm `bn`, ReLU when `relu`.
    fn conv_bn(
        &self,
        x: &Tensor,
        (conv, bn): (&str, &str),
        (stride, pad): (usize, usize),
        relu: bool,
    ) -> Result<Tensor> {
        let norms = self.bn.as_ref().ok_or_else(|| Error::arg("model", "no BatchNorm statistics"))?;
        let y = crate::train::conv::conv2d(x, &self.p(&format!("{conv}.weight"))?, stride, pad)?;
        let y = norms.forward(
            &y,
            bn,
            &self.p(&format!("{bn}.weight"))?,
            &self.p(&format!("{bn}.bias"))?,
            self.train_mode,
        )?;
        Ok(if relu { y.relu()? } else { y })
    }

    /// open_clip's `ModifiedResNet.forward` on NCHW pixels: the three-convolution stem and a
    /// 2×2 average pool; anti-aliased bottlenecks (a stride is an average pool after `conv2`,
    /// and before the shortcut's 1×1 convolution); the attention pool — the map's mean
    /// prepended as a token, the positional embedding added, one query (that token) against
    /// every token in `heads` heads, `c_proj`.
    fn encode_image_resnet(&self, x: &Tensor, r: &ResNetDims) -> Result<Tensor> {
        let s = |n: &str| format!("visual.{n}");
        let x = self.conv_bn(x, (&s("conv1"), &s("bn1")), (2, 1), true)?;
        let x = self.conv_bn(&x, (&s("conv2"), &s("bn2")), (1, 1), true)?;
        let x = self.conv_bn(&x, (&s("conv3"), &s("bn3")), (1, 1), true)?;
        let mut x = x.avg_pool2d(2)?;
        for (i, &blocks) in r.layers.iter().enumerate() {
            for j in 0..blocks {
                let b = |n: &str| format!("visual.layer{}.{j}.{n}", i + 1);
                let stride = if i > 0 && j == 0 { 2 } else { 1 };
                let out = self.conv_bn(&x, (&b("conv1"), &b("bn1")), (1, 0), true)?;
                let out = self.conv_bn(&out, (&b("conv2"), &b("bn2")), (1, 1), true)?;
                let out = if stride > 1 { out.avg_pool2d(stride)? } else { out };
                let out = self.conv_bn(&out, (&b("conv3"), &b("bn3")), (1, 0), false)?;
                let identity = if self.index.contains_key(&b("downsample.0.weight")) {
                    let x = if stride > 1 { x.avg_pool2d(stride)? } else { x.clone() };
                    self.conv_bn(&x, (&b("downsample.0"), &b("downsample.1")), (1, 0), false)?
                } else {
                    x.clone()
                };
                x = (out + identity)?.relu()?;
            }
        }
        // AttentionPool2d.
        let (b, c, h, w) = x.dims4()?;
        let heads = self.config.vision.tower.heads;
        let d = c / heads;
        let a = |n: &str| self.p(&format!("visual.attnpool.{n}"));
        let tokens = x.reshape((b, c, h * w))?.transpose(1, 2)?.contiguous()?;
        let x = Tensor::cat(&[tokens.mean_keepdim(1)?, tokens], 1)?;
        let l = h * w + 1;
        let x = x.broadcast_add(&a("positional_embedding")?.unsqueeze(0)?)?;
        let flat = x.reshape((b * l, c))?;
        let q = linear(&x.narrow(1, 0, 1)?.squeeze(1)?, &a("q_proj.weight")?, Some(&a("q_proj.bias")?))?;
        let k = linear(&flat, &a("k_proj.weight")?, Some(&a("k_proj.bias")?))?;
        let v = linear(&flat, &a("v_proj.weight")?, Some(&a("v_proj.bias")?))?;
        let q = (q.reshape((b, heads, 1, d))? * (d as f64).powf(-0.5))?;
        let k = k.reshape((b, l, heads, d))?.transpose(1, 2)?.contiguous()?;
        let v = v.reshape((b, l, heads, d))?.transpose(1, 2)?.contiguous()?;
        let attn = softmax_last(&q.matmul(&k.transpose(2, 3)?.contiguous()?)?)?;
        let o = attn.matmul(&v)?.reshape((b, c))?;
        linear(&o, &a("c_proj.weight")?, Some(&a("c_proj.bias")?))
    }

    /// Text embeddings, not normalised, from token ids (each `context_length` long). Each text
    /// is run only up to its pooled position: under the causal mask no position sees a later
    /// one, so the pooled features and every gradient are the same. On the CPU kernels the
    /// texts' kept tokens go end to end through [`block::forward_packed`] (a batch of captions
    /// of 5 to 26 tokens costs its Σ lengths, not 26 × B); elsewhere the batch is cut at its
    /// longest text and padded.
    ///
    /// # Shapes
    /// `-> [B, E]`
    pub fn encode_text(&self, ids: &[Vec<u32>]) -> Result<Tensor> {
        Ok(self.encode_text_rows(ids, false)?.0)
    }

    /// [`encode_text`](Self::encode_text); with `gathered`, when the token embedding is
    /// trained, its rows are gathered outside the graph into a leaf variable (returned with the
    /// token ids it holds, in order), whose gradient is the token embedding's, row by row: the
    /// trainer sums it into the few rows the batch uses instead of a dense gradient over the
    /// whole vocabulary.
    pub(super) fn encode_text_rows(&self, ids: &[Vec<u32>], gathered: bool) -> Result<(Tensor, Option<TokenRows>)> {
        let t = &self.config.text;
        let ctx = t.context_length;
        if ids.is_empty() {
            return Err(Error::arg("texts", "no texts"));
        }
        let mut pooled_at = Vec::with_capacity(ids.len());
        for (i, row) in ids.iter().enumerate() {
            if row.len() != ctx {
                return Err(Error::arg("texts", format!("text {i} has {} tokens, expected {ctx}", row.len())));
            }
            if let Some(bad) = row.iter().find(|&&id| id as usize >= t.vocab_size) {
                return Err(Error::arg("texts", format!("token id {bad} is past the vocabulary of {}", t.vocab_size)));
            }
            pooled_at.push(pool_position(row, t.pooling));
        }
        let b = ids.len();
        let device = self.device();
        let w = t.tower.width;
        let table = &self.params[*self
            .index
            .get(TOKEN_EMBEDDING)
            .ok_or_else(|| Error::arg("param", format!("no parameter `{TOKEN_EMBEDDING}`")))?];
        let fast = crate::nn::cpu::eligible(table.var().as_tensor());
        // Each text's tokens up to its pooled one (packed), or every text's up to the batch's
        // last pooled one (padded).
        let n = pooled_at.iter().max().copied().unwrap_or(0) + 1;
        let lengths: Vec<usize> = if fast { pooled_at.iter().map(|p| p + 1).collect() } else { vec![n; b] };
        let flat: Vec<u32> = ids.iter().zip(&lengths).flat_map(|(r, &len)| r[..len].iter().copied()).collect();
        let total = flat.len();
        let flat = Tensor::from_vec(flat, total, &device)?;
        let (x, rows) = if gathered && table.requires_grad() && fast {
            let leaf = candle_core::Var::from_tensor(&table.var().as_detached_tensor().index_select(&flat, 0)?)?;
            let ids = flat.to_vec1::<u32>()?;
            (leaf.as_tensor().clone(), Some(TokenRows { leaf, ids }))
        } else {
            (table.value().index_select(&flat, 0)?, None)
        };
        let positions = self.p("positional_embedding")?;
        let x = if fast {
            let at: Vec<u32> = lengths.iter().flat_map(|&len| 0..len as u32).collect();
            let x = (x + positions.index_select(&Tensor::from_vec(at, total, &device)?, 0)?)?;
            self.transformer(&x, "transformer", &t.tower, true, Some(&lengths))?
        } else {
            let x = x.reshape((b, n, w))?.broadcast_add(&positions.narrow(0, 0, n)?.unsqueeze(0)?)?;
            self.transformer(&x, "transformer", &t.tower, true, None)?.reshape((b * n, w))?
        };
        let x = layer_norm(&x, &self.p("ln_final.weight")?, &self.p("ln_final.bias")?, t.tower.eps)?;
        // Each text's pooled row: its start plus its pooled position.
        let pooled_rows: Vec<u32> = pooled_at
            .iter()
            .zip(&lengths)
            .scan(0, |start, (&p, &len)| {
                let row = *start + p;
                *start += len;
                Some(row as u32)
            })
            .collect();
        let pooled = x.index_select(&Tensor::from_vec(pooled_rows, b, &device)?, 0)?;
        Ok((project(&pooled, &self.p("text_projection")?)?, rows))
    }

    /// `F.normalize` of both embeddings, as open_clip's `CLIP.forward` returns them.
    pub fn features(&self, pixels: &Tensor, ids: &[Vec<u32>]) -> Result<(Tensor, Tensor)> {
        Ok((normalize(&self.encode_image(pixels)?, 1e-12)?, normalize(&self.encode_text(ids)?, 1e-12)?))
    }

    /// [`features`](Self::features) with the token embedding's rows gathered into a leaf
    /// variable (see [`encode_text_rows`](Self::encode_text_rows)).
    pub(super) fn features_rows(
        &self,
        pixels: &Tensor,
        ids: &[Vec<u32>],
    ) -> Result<(Tensor, Tensor, Option<TokenRows>)> {
        let image = normalize(&self.encode_image(pixels)?, 1e-12)?;
        let (text, rows) = self.encode_text_rows(ids, true)?;
        Ok((image, normalize(&text, 1e-12)?, rows))
    }
}

/// The token embedding's state-dict name.
pub(super) const TOKEN_EMBEDDING: &str = "token_embedding.weight";

/// The token embedding's rows one text forward pass read: a leaf variable `[T, width]` holding
/// them (its gradient is theirs) and the token id of each.
pub(super) struct TokenRows {
    pub leaf: candle_core::Var,
    pub ids: Vec<u32>,
}

/// open_clip's `logit_scale` / `logit_bias` initial values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LogitInit {
    /// `init_logit_scale` (`log(1/0.07)` for CLIP, `log(10)` for SigLIP).
    pub scale: f64,
    /// `init_logit_bias` (SigLIP: −10), or none.
    pub bias: Option<f64>,
}

impl LogitInit {
    /// CLIP's: `log(1 / 0.07)`, no bias.
    pub const CLIP: Self = Self { scale: INIT_LOGIT_SCALE, bias: None };
    /// SigLIP's: `log(10)` and −10.
    pub const SIGLIP: Self = Self { scale: std::f64::consts::LN_10, bias: Some(-10.0) };
}

/// Where the text summary is read: the first largest id (`text.argmax(dim=-1)`) or the first
/// end-of-text id (the last position when absent).
fn pool_position(row: &[u32], pooling: TextPooling) -> usize {
    match pooling {
        TextPooling::Argmax => {
            let mut best = 0;
            for (i, &id) in row.iter().enumerate() {
                if id > row[best] {
                    best = i;
                }
            }
            best
        }
        TextPooling::FirstEos(eos) => row.iter().position(|&id| id == eos).unwrap_or(row.len() - 1),
    }
}

/// `(conv, bn, in, out, kernel)` of a `ModifiedResNet`'s convolutions, in open_clip's parameter
/// order: the stem's three, then each bottleneck's three and its shortcut's.
fn resnet_convs(r: &ResNetDims) -> Vec<(String, String, usize, usize, usize)> {
    let w = r.width;
    let s = |n: &str| format!("visual.{n}");
    let mut v = vec![
        (s("conv1"), s("bn1"), 3, w / 2, 3),
        (s("conv2"), s("bn2"), w / 2, w / 2, 3),
        (s("conv3"), s("bn3"), w / 2, w, 3),
    ];
    let mut inplanes = w;
    for (i, &blocks) in r.layers.iter().enumerate() {
        let planes = w << i;
        for j in 0..blocks {
            let b = |n: &str| format!("visual.layer{}.{j}.{n}", i + 1);
            v.push((b("conv1"), b("bn1"), inplanes, planes, 1));
            v.push((b("conv2"), b("bn2"), planes, planes, 3));
            v.push((b("conv3"), b("bn3"), planes, planes * 4, 1));
            if j == 0 && (i > 0 || inplanes != planes * 4) {
                v.push((b("downsample.0"), b("downsample.1"), inplanes, planes * 4, 1));
            }
            inplanes = planes * 4;
        }
    }
    v
}

/// open_clip's initialisation of a `ModifiedResNet` parameter (see [`TrainClip::init`]).
fn resnet_init(name: &str, shape: &[usize], width: f64) -> Init {
    if name.starts_with("visual.attnpool.") {
        return if name.ends_with(".bias") { Init::Uniform(width.powf(-0.5)) } else { Init::Normal(width.powf(-0.5)) };
    }
    if shape.len() == 4 {
        return Init::Uniform(1.0 / ((shape[1] * shape[2] * shape[3]) as f64).sqrt());
    }
    let bottleneck_bn3 = name.starts_with("visual.layer") && name.ends_with(".bn3.weight");
    Init::Const(if name.ends_with(".weight") && !bottleneck_bn3 { 1.0 } else { 0.0 })
}

fn blocks(out: &mut Vec<(String, Vec<usize>)>, prefix: &str, t: &TowerDims) {
    let (w, m) = (t.width, t.mlp_dim);
    for i in 0..t.layers {
        let b = |n: &str| format!("{prefix}.resblocks.{i}.{n}");
        out.extend([
            (b("ln_1.weight"), vec![w]),
            (b("ln_1.bias"), vec![w]),
            (b("attn.in_proj_weight"), vec![3 * w, w]),
            (b("attn.in_proj_bias"), vec![3 * w]),
            (b("attn.out_proj.weight"), vec![w, w]),
            (b("attn.out_proj.bias"), vec![w]),
            (b("ln_2.weight"), vec![w]),
            (b("ln_2.bias"), vec![w]),
            (b("mlp.c_fc.weight"), vec![m, w]),
            (b("mlp.c_fc.bias"), vec![m]),
            (b("mlp.c_proj.weight"), vec![w, m]),
            (b("mlp.c_proj.bias"), vec![w]),
        ]);
    }
}

/// The row-wise L2 norm used by the loss (re-exported for callers of [`TrainClip::features`]).
pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    normalize(x, 1e-12)
}
