//! `vision_transformer.DINOHead` for training: `nlayers` linear layers with GELU between them
//! (with `use_bn`, a `BatchNorm1d` after each hidden linear layer, before its GELU),
//! `F.normalize(x, dim=-1, p=2)`, then the weight-normalised last layer
//! `nn.utils.weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))`.
//!
//! The head's BatchNorm runs as `main_dino.py` leaves it for student and teacher alike: in
//! training mode, each call normalised by its own rows' statistics (biased variance, ε 1e-5),
//! the running statistics moved by momentum 0.1 and kept in the state dict
//! (`mlp.<i>.running_mean` / `running_var`) though nothing in training reads them. The rows are
//! all crops of a step at once, as `MultiCropWrapper` calls the head.
//!
//! Built from plain candle ops on [`Var`]s so that every step records its backward (the inference
//! layers of [`crate::nn`] use fused CPU kernels that do not):
//!
//! * linear: `x.matmul(Wᵀ) + b` (the bias through [`crate::train::ops::add_bias`]);
//! * GELU (exact, PyTorch's default): `0.5 x (1 + erf(x / √2))`, one fused op with its
//!   backward `Φ(x) + x φ(x)` ([`crate::train::ops::gelu`]);
//! * `F.normalize`: `x / max(‖x‖₂, 1e-12)`, as `x / sqrt(max(Σx², 1e-24))` (see [`normalize`]);
//! * weight norm (`dim=0`): `W = g · v / ‖v‖` with the norm of each output row over the input
//!   dimension, `g` `[out, 1]`; no epsilon, as `torch._weight_norm`.
//!
//! With `norm_last_layer` (DINO's default) `weight_g` is 1 and frozen (`requires_grad = False`):
//! the forward pass reads it detached and it receives no gradient.
//!
//! Parameter names and order are the state dict's: `mlp.0.weight`, `mlp.0.bias`, `mlp.2.*`, …,
//! `mlp.{2(nlayers-1)}.*` (`mlp.weight` / `mlp.bias` when `nlayers == 1`), `last_layer.weight_g`,
//! `last_layer.weight_v`; with `use_bn` the `nn.Sequential` indices step by 3 (`mlp.0` linear,
//! `mlp.1` BatchNorm, `mlp.3` linear, `mlp.4` BatchNorm, …, `mlp.{3(nlayers-1)}` the last linear).

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{Device, Tensor, Var, D};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::Param;
use crate::train::batch_norm::BatchNorms;
use crate::{Error, Result};

/// `DINOHead(in_dim, out_dim, use_bn, norm_last_layer, nlayers, hidden_dim, bottleneck_dim)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DinoHeadConfig {
    /// Input width, the backbone's embedding width (`in_dim`).
    pub in_dim: usize,
    /// Output width, the number of prototypes (`out_dim`, `--out_dim`).
    pub out_dim: usize,
    /// Freeze the last layer's norm `weight_g` at 1 (`--norm_last_layer`, default true).
    pub norm_last_layer: bool,
    /// Linear layers before the normalisation (≥ 1, default 3).
    pub nlayers: usize,
    /// Width of the hidden layers (default 2048).
    pub hidden_dim: usize,
    /// Width of the normalised bottleneck (default 256).
    pub bottleneck_dim: usize,
    /// A `BatchNorm1d` after each hidden linear layer (`use_bn`, `--use_bn_in_head`, default
    /// false; no effect with one layer, as in `DINOHead`).
    pub use_bn: bool,
}

/// How a parameter starts ([`DinoHead::new`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Init {
    /// A linear layer's weight: `trunc_normal_(std=.02)`.
    TruncNormal,
    Zeros,
    Ones,
    /// The last layer's `weight_v`: `nn.Linear`'s default.
    KaimingUniform,
}

/// Positions in [`DinoHead::params`] of one linear layer's weight and bias, and of the
/// BatchNorm after it (its name, weight and bias) when there is one.
#[derive(Debug, Clone)]
struct LayerSlots {
    weight: usize,
    bias: usize,
    bn: Option<(String, usize, usize)>,
}

impl DinoHeadConfig {
    /// DINOHead's defaults: `norm_last_layer = true`, 3 layers, hidden 2048, bottleneck 256.
    pub fn new(in_dim: usize, out_dim: usize) -> Self {
        Self {
            in_dim,
            out_dim,
            norm_last_layer: true,
            nlayers: 3,
            hidden_dim: 2048,
            bottleneck_dim: 256,
            use_bn: false,
        }
    }

    fn nlayers(&self) -> usize {
        self.nlayers.max(1)
    }

    /// Whether the hidden layers have a BatchNorm (`use_bn` with two layers or more).
    fn has_bn(&self) -> bool {
        self.use_bn && self.nlayers() > 1
    }

    /// The `nn.Sequential` index step between linear layers: linear, (BatchNorm,) GELU.
    fn stride(&self) -> usize {
        if self.has_bn() {
            3
        } else {
            2
        }
    }

    /// `(name, shape, init)` of every parameter, in state-dict order.
    fn param_specs(&self) -> Vec<(String, Vec<usize>, Init)> {
        let n = self.nlayers();
        let mut out = Vec::with_capacity(4 * n + 2);
        for i in 0..n {
            let fan_in = if i == 0 { self.in_dim } else { self.hidden_dim };
            let fan_out = if i + 1 == n { self.bottleneck_dim } else { self.hidden_dim };
            let prefix = if n == 1 { "mlp".to_string() } else { format!("mlp.{}", self.stride() * i) };
            out.push((format!("{prefix}.weight"), vec![fan_out, fan_in], Init::TruncNormal));
            out.push((format!("{prefix}.bias"), vec![fan_out], Init::Zeros));
            if let Some(bn) = self.bn_name(i) {
                out.push((format!("{bn}.weight"), vec![fan_out], Init::Ones));
                out.push((format!("{bn}.bias"), vec![fan_out], Init::Zeros));
            }
        }
        out.push(("last_layer.weight_g".into(), vec![self.out_dim, 1], Init::Ones));
        out.push(("last_layer.weight_v".into(), vec![self.out_dim, self.bottleneck_dim], Init::KaimingUniform));
        out
    }

    /// The BatchNorm after linear layer `i`, if it has one.
    fn bn_name(&self, i: usize) -> Option<String> {
        (self.has_bn() && i + 1 < self.nlayers()).then(|| format!("mlp.{}", self.stride() * i + 1))
    }

    /// `(name, channels)` of every BatchNorm, in order.
    fn batch_norms(&self) -> Vec<(String, usize)> {
        (0..self.nlayers()).filter_map(|i| self.bn_name(i).map(|bn| (bn, self.hidden_dim))).collect()
    }

    fn slots(&self) -> Vec<LayerSlots> {
        let mut p = 0;
        (0..self.nlayers())
            .map(|i| {
                let (weight, bias) = (p, p + 1);
                p += 2;
                let bn = self.bn_name(i).map(|name| {
                    p += 2;
                    (name, p - 2, p - 1)
                });
                LayerSlots { weight, bias, bn }
            })
            .collect()
    }

    /// `(name, shape)` of every parameter, in state-dict order.
    pub fn param_shapes(&self) -> Vec<(String, Vec<usize>)> {
        self.param_specs().into_iter().map(|(n, s, _)| (n, s)).collect()
    }

    fn validate(&self) -> Result<()> {
        for (name, v) in [
            ("in_dim", self.in_dim),
            ("out_dim", self.out_dim),
            ("hidden_dim", self.hidden_dim),
            ("bottleneck_dim", self.bottleneck_dim),
        ] {
            if v == 0 {
                return Err(Error::arg(name, "must be positive"));
            }
        }
        Ok(())
    }
}

/// The DINO projection head, trainable (see the module documentation).
#[derive(Debug, Clone)]
pub struct DinoHead {
    cfg: DinoHeadConfig,
    /// State-dict order: (weight, bias) per linear layer (and its BatchNorm's), then weight_g,
    /// weight_v.
    params: Vec<Param>,
    slots: Vec<LayerSlots>,
    /// The BatchNorms' running statistics (`use_bn`); shared by clones, as the parameters are.
    running: Option<Arc<BatchNorms>>,
}

impl DinoHead {
    /// DINO's initialisation, float32 on `device`, from a seeded ChaCha8 stream: linear weights
    /// `trunc_normal_(std=.02)` (DINO's `utils.trunc_normal_`, bounds ±2 absolute), biases 0;
    /// last layer `weight_v` as `nn.Linear`'s default (kaiming uniform, a = √5:
    /// U(−1/√bottleneck, 1/√bottleneck)), `weight_g` 1.
    pub fn new(cfg: DinoHeadConfig, seed: u64, device: &Device) -> Result<Self> {
        cfg.validate()?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut tensors = Vec::new();
        for (name, shape, init) in cfg.param_specs() {
            let numel: usize = shape.iter().product();
            let data: Vec<f32> = match init {
                Init::TruncNormal => (0..numel).map(|_| trunc_normal(&mut rng, 0.0, 0.02, -2.0, 2.0) as f32).collect(),
                Init::Zeros => vec![0.0; numel],
                Init::Ones => vec![1.0; numel],
                Init::KaimingUniform => {
                    let bound = 1.0 / (cfg.bottleneck_dim as f64).sqrt();
                    (0..numel).map(|_| (-bound + 2.0 * bound * uniform01(&mut rng)) as f32).collect()
                }
            };
            tensors.push((name, Tensor::from_vec(data, shape, device)?));
        }
        Self::build(cfg, tensors, &HashMap::new())
    }

    /// From tensors named as DINO's state dict (e.g. a checkpoint's `head.*` with the prefix
    /// removed). The tensors are copied; extra names are an error, as is a missing one or a
    /// wrong shape. All must share one float dtype and device. A BatchNorm's running statistics
    /// are taken when present (torch's initial 0 and 1 otherwise); `num_batches_tracked` is read
    /// past.
    pub fn from_tensors(cfg: DinoHeadConfig, tensors: &HashMap<String, Tensor>) -> Result<Self> {
        cfg.validate()?;
        let shapes = cfg.param_shapes();
        let bns = cfg.batch_norms();
        let known = |k: &str| {
            shapes.iter().any(|(n, _)| n == k)
                || (BatchNorms::is_buffer(k)
                    && bns.iter().any(|(bn, _)| k.strip_prefix(bn.as_str()).is_some_and(|r| r.starts_with('.'))))
        };
        if let Some(extra) = tensors.keys().find(|k| !known(k)) {
            return Err(Error::arg("tensors", format!("unexpected tensor `{extra}` for a DINO head")));
        }
        let mut list = Vec::with_capacity(shapes.len());
        for (name, shape) in shapes {
            let t = tensors
                .get(&name)
                .ok_or_else(|| Error::arg("tensors", format!("missing tensor `{name}` for a DINO head")))?;
            if t.dims() != shape.as_slice() {
                return Err(Error::arg("tensors", format!("`{name}` has shape {:?}, expected {shape:?}", t.dims())));
            }
            list.push((name, t.copy()?));
        }
        Self::build(cfg, list, tensors)
    }

    /// The head from its parameters, in state-dict order, and whatever running statistics
    /// `stats` holds.
    fn build(cfg: DinoHeadConfig, tensors: Vec<(String, Tensor)>, stats: &HashMap<String, Tensor>) -> Result<Self> {
        let dtype = tensors[0].1.dtype();
        let device = tensors[0].1.device().clone();
        if !dtype.is_float() {
            return Err(Error::arg("tensors", format!("DINO head parameters must be float, got {dtype:?}")));
        }
        let mut params = Vec::with_capacity(tensors.len());
        for (name, t) in tensors {
            if t.dtype() != dtype || !t.device().same_device(&device) {
                return Err(Error::arg("tensors", format!("`{name}`: all parameters must share dtype and device")));
            }
            let requires_grad = !(cfg.norm_last_layer && name == "last_layer.weight_g");
            params.push(Param::new(name, Var::from_tensor(&t)?, requires_grad));
        }
        let running = match cfg.has_bn() {
            true => Some(Arc::new(BatchNorms::new(cfg.batch_norms(), stats, &device)?)),
            false => None,
        };
        Ok(Self { slots: cfg.slots(), cfg, params, running })
    }

    /// Returns the configuration.
    pub fn config(&self) -> &DinoHeadConfig {
        &self.cfg
    }

    /// Every parameter (`named_parameters()` order), frozen ones included.
    pub fn params(&self) -> &[Param] {
        &self.params
    }

    /// The parameters with `requires_grad`.
    pub fn trainable_params(&self) -> impl Iterator<Item = &Param> {
        self.params.iter().filter(|p| p.requires_grad())
    }

    /// The parameter named `name`, if there is one.
    pub fn param(&self, name: &str) -> Option<&Param> {
        self.params.iter().find(|p| p.name() == name)
    }

    /// `requires_grad` of every parameter: `false` for a teacher (`p.requires_grad = False` in
    /// `main_dino.py`); `true` leaves `weight_g` frozen when `norm_last_layer`.
    pub fn set_requires_grad(&mut self, requires_grad: bool) {
        let frozen_g = self.cfg.norm_last_layer;
        for p in &mut self.params {
            let frozen = frozen_g && p.name() == "last_layer.weight_g";
            p.set_requires_grad(requires_grad && !frozen);
        }
    }

    /// Copies of the current values, in state-dict order, then the BatchNorms' running
    /// statistics (by name) when the head has them.
    pub fn state_dict(&self) -> Result<Vec<(String, Tensor)>> {
        let mut v =
            self.params.iter().map(|p| Ok((p.name().to_string(), p.snapshot()?))).collect::<Result<Vec<_>>>()?;
        if let Some(r) = &self.running {
            v.extend(r.state_dict());
        }
        Ok(v)
    }

    /// Overwrites every parameter in place, and the running statistics given
    /// (`load_state_dict(strict=True)` but for the statistics): `main_dino.py` initialises the
    /// teacher so, from the student's state dict.
    pub fn load_state_dict<'a>(&self, tensors: impl IntoIterator<Item = (&'a str, &'a Tensor)>) -> Result<()> {
        let (stats, params): (Vec<_>, Vec<_>) = tensors.into_iter().partition(|(n, _)| BatchNorms::is_buffer(n));
        super::load_params(&self.params, params, "a DINO head")?;
        for (n, t) in stats {
            match &self.running {
                Some(r) => r.load(n, t)?,
                None => return Err(Error::arg("state_dict", format!("unexpected tensor `{n}` for a DINO head"))),
            }
        }
        Ok(())
    }

    /// The BatchNorms' running statistics now, if the head has BatchNorms: what a failed step
    /// puts back with [`set_running_stats`](Self::set_running_stats).
    pub fn running_stats(&self) -> Option<HashMap<String, Tensor>> {
        self.running.as_ref().map(|r| r.snapshot())
    }

    /// Puts back statistics taken with [`running_stats`](Self::running_stats).
    pub fn set_running_stats(&self, stats: Option<HashMap<String, Tensor>>) {
        if let (Some(r), Some(s)) = (&self.running, stats) {
            r.restore(s);
        }
    }

    /// The effective last-layer weight `g · v / ‖v‖` (`[out_dim, bottleneck_dim]`).
    pub fn last_layer_weight(&self) -> Result<Tensor> {
        let n = self.params.len();
        let g = self.params[n - 2].value();
        let v = self.params[n - 1].value();
        let norm = v.sqr()?.sum_keepdim(1)?.sqrt()?;
        Ok(v.broadcast_mul(&g.broadcast_div(&norm)?)?)
    }

    /// The MLP and normalisation, before the last layer: `[..., in_dim] -> [..., bottleneck_dim]`,
    /// unit L2 norm.
    pub fn bottleneck(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims();
        let Some((&in_dim, lead)) = dims.split_last() else {
            return Err(Error::arg("x", "a DINO head input needs at least one dimension"));
        };
        if in_dim != self.cfg.in_dim {
            return Err(Error::arg("x", format!("last dimension {in_dim}, the head expects {}", self.cfg.in_dim)));
        }
        let rows: usize = lead.iter().product();
        let mut h = x.reshape((rows, in_dim))?;
        let n = self.cfg.nlayers();
        for (i, slot) in self.slots.iter().enumerate() {
            let w = self.params[slot.weight].value();
            let b = self.params[slot.bias].value();
            h = crate::train::ops::linear(&h, &w, Some(&b))?;
            if let (Some((bn, gamma, beta)), Some(running)) = (&slot.bn, &self.running) {
                if rows < 2 {
                    return Err(Error::arg("x", "the head's BatchNorm needs more than one row (training mode)"));
                }
                let c = self.cfg.hidden_dim;
                let (gamma, beta) = (self.params[*gamma].value(), self.params[*beta].value());
                h = running.forward(&h.reshape((rows, c, 1, 1))?, bn, &gamma, &beta, true)?.reshape((rows, c))?;
            }
            if i + 1 < n {
                h = gelu(&h)?;
            }
        }
        let h = normalize(&h, 1e-12)?;
        let mut out_dims = lead.to_vec();
        out_dims.push(self.cfg.bottleneck_dim);
        Ok(h.reshape(out_dims)?)
    }

    /// `DINOHead.forward`: `[..., in_dim] -> [..., out_dim]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.bottleneck(x)?;
        let lead = h.dims()[..h.rank() - 1].to_vec();
        let rows: usize = lead.iter().product();
        let w = self.last_layer_weight()?;
        let y = crate::train::ops::linear(&h.reshape((rows, self.cfg.bottleneck_dim))?, &w, None)?;
        let mut out_dims = lead;
        out_dims.push(self.cfg.out_dim);
        Ok(y.reshape(out_dims)?)
    }
}

/// Exact GELU, `0.5 x (1 + erf(x / √2))`, differentiable ([`crate::train::ops::gelu`]).
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    crate::train::ops::gelu(x)
}

/// `F.normalize(x, dim=-1, p=2, eps)`: `x / max(‖x‖₂, eps)`, differentiable.
///
/// The clamp is applied to the squared norm, `sqrt(max(Σx², eps²))` (the same value), so that a
/// zero row gets PyTorch's finite gradient `1/eps` rather than the `0 · ∞` of `sqrt`'s backward
/// at 0.
pub fn normalize(x: &Tensor, eps: f64) -> Result<Tensor> {
    let denom = x.sqr()?.sum_keepdim(D::Minus1)?.maximum(eps * eps)?.sqrt()?;
    Ok(x.broadcast_div(&denom)?)
}

/// Uniform in `[0, 1)` from the top 53 bits of one `u64`.
pub(crate) fn uniform01(rng: &mut ChaCha8Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// A normal draw (Box–Muller) restricted to `[a, b]` by rejection: the distribution of DINO's
/// `trunc_normal_(tensor, mean, std, a, b)`.
pub(crate) fn trunc_normal(rng: &mut ChaCha8Rng, mean: f64, std: f64, a: f64, b: f64) -> f64 {
    loop {
        let u1 = 1.0 - uniform01(rng); // (0, 1]
        let u2 = uniform01(rng);
        let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
        let x = mean + std * z;
        if (a..=b).contains(&x) {
            return x;
        }
    }
}
