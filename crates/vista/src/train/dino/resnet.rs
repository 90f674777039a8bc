//! DINO's ResNet as a trainable network (`main_dino.py --arch resnet50`: torchvision's
//! `resnet50` with `fc` replaced by the identity), on [`Param`]s named as torchvision names them,
//! with candle's differentiable convolutions.
//!
//! BatchNorm runs as `main_dino.py` runs it: in training mode for both the student and the
//! teacher (the script never calls `teacher.eval()`), normalising each forward call's batch by its
//! own statistics (biased variance) and updating the running statistics with momentum 0.1 (the
//! unbiased variance), which are the statistics the exported backbone is evaluated with.
//! Parameters follow the EMA; running statistics are each network's own, as in the script.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var, D};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::head::trunc_normal;
use super::Param;
use crate::train::batch_norm::BatchNorms;
use crate::train::ops::max_pool2d;
use crate::{Error, Result};

/// The stage depths and widths of a torchvision bottleneck ResNet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ResNetDims {
    /// Blocks per stage (`[3, 4, 6, 3]` for ResNet-50).
    pub layers: [usize; 4],
    /// The stem's output channels (64).
    pub stem: usize,
    /// Each stage's bottleneck width (`[64, 128, 256, 512]`); its output is 4× that.
    pub planes: [usize; 4],
}

impl ResNetDims {
    /// torchvision's `resnet50`.
    pub const RESNET50: Self = Self { layers: [3, 4, 6, 3], stem: 64, planes: [64, 128, 256, 512] };

    /// The pooled feature's width (`4 · planes[3]`, 2048).
    pub fn embed_dim(&self) -> usize {
        4 * self.planes[3]
    }
}

/// A trainable torchvision ResNet (no classifier).
pub struct TrainResNet {
    /// The architecture.
    pub dims: ResNetDims,
    params: Vec<Param>,
    index: HashMap<String, usize>,
    /// `<bn>.running_mean` / `<bn>.running_var`, updated by every training-mode forward.
    running: BatchNorms,
}

/// `(conv, bn, cin, cout, k, stride, pad)` of every convolution, in torchvision's order.
type ConvSpec = (String, String, usize, usize, usize, usize, usize);

impl TrainResNet {
    fn convs(d: &ResNetDims) -> Vec<ConvSpec> {
        let mut v = vec![("conv1".to_string(), "bn1".to_string(), 3, d.stem, 7, 2, 3)];
        let mut inplanes = d.stem;
        for (i, (&blocks, &planes)) in d.layers.iter().zip(&d.planes).enumerate() {
            for j in 0..blocks {
                let stride = if i > 0 && j == 0 { 2 } else { 1 };
                let b = format!("layer{}.{j}", i + 1);
                v.push((format!("{b}.conv1"), format!("{b}.bn1"), inplanes, planes, 1, 1, 0));
                v.push((format!("{b}.conv2"), format!("{b}.bn2"), planes, planes, 3, stride, 1));
                v.push((format!("{b}.conv3"), format!("{b}.bn3"), planes, planes * 4, 1, 1, 0));
                if j == 0 && (stride != 1 || inplanes != planes * 4) {
                    v.push((
                        format!("{b}.downsample.0"),
                        format!("{b}.downsample.1"),
                        inplanes,
                        planes * 4,
                        1,
                        stride,
                        0,
                    ));
                }
                inplanes = planes * 4;
            }
        }
        v
    }

    /// Every parameter's name and shape, in torchvision's `named_parameters` order.
    pub fn param_shapes(d: &ResNetDims) -> Vec<(String, Vec<usize>)> {
        let mut out = Vec::new();
        for (conv, bn, cin, cout, k, _, _) in Self::convs(d) {
            out.push((format!("{conv}.weight"), vec![cout, cin, k, k]));
            out.push((format!("{bn}.weight"), vec![cout]));
            out.push((format!("{bn}.bias"), vec![cout]));
        }
        out
    }

    /// From torchvision-named tensors (a state dict); running statistics are taken when present,
    /// else torch's initial 0 and 1.
    pub fn from_tensors(dims: ResNetDims, tensors: &HashMap<String, Tensor>, device: &Device) -> Result<Self> {
        let mut params = Vec::new();
        for (name, shape) in Self::param_shapes(&dims) {
            let t = tensors.get(&name).ok_or_else(|| Error::arg("tensors", format!("missing `{name}`")))?;
            if t.dims() != shape.as_slice() {
                return Err(Error::arg("tensors", format!("`{name}` has shape {:?}, expected {shape:?}", t.dims())));
            }
            params.push(Param::new(name, Var::from_tensor(&t.to_dtype(DType::F32)?.to_device(device)?)?, true));
        }
        let running = BatchNorms::new(Self::convs(&dims).into_iter().map(|s| (s.1, s.3)), tensors, device)?;
        let index = params.iter().enumerate().map(|(i, p)| (p.name().to_string(), i)).collect();
        Ok(Self { dims, params, index, running })
    }

    /// torchvision's initialisation (`ResNet.__init__`), f32, from a seeded ChaCha8 stream:
    /// convolutions `kaiming_normal_(mode="fan_out", nonlinearity="relu")`, `N(0, 2 / (Cout·k²))`;
    /// BatchNorm weight 1, bias 0 (`zero_init_residual=False`).
    pub fn init(dims: ResNetDims, seed: u64, device: &Device) -> Result<Self> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut tensors = HashMap::new();
        for (name, shape) in Self::param_shapes(&dims) {
            let numel: usize = shape.iter().product();
            let data: Vec<f32> = if shape.len() == 4 {
                let std = (2.0 / (shape[0] * shape[2] * shape[3]) as f64).sqrt();
                (0..numel).map(|_| trunc_normal(&mut rng, 0.0, std, f64::NEG_INFINITY, f64::INFINITY) as f32).collect()
            } else if name.ends_with(".weight") {
                vec![1.0; numel]
            } else {
                vec![0.0; numel]
            };
            tensors.insert(name, Tensor::from_vec(data, shape, &Device::Cpu)?);
        }
        Self::from_tensors(dims, &tensors, device)
    }

    /// The parameters, in torchvision's order.
    pub fn params(&self) -> &[Param] {
        &self.params
    }

    /// `requires_grad` of every parameter (false for the teacher).
    pub fn set_requires_grad(&mut self, requires_grad: bool) {
        for p in &mut self.params {
            p.set_requires_grad(requires_grad);
        }
    }

    fn p(&self, name: &str) -> Result<Tensor> {
        let i = self.index.get(name).ok_or_else(|| Error::arg("param", format!("no parameter `{name}`")))?;
        Ok(self.params[*i].value())
    }

    /// Copies of the parameters and running statistics, torchvision names (a state dict).
    pub fn state_dict(&self) -> Result<Vec<(String, Tensor)>> {
        let mut v: Vec<(String, Tensor)> =
            self.params.iter().map(|p| Ok((p.name().to_string(), p.snapshot()?))).collect::<Result<_>>()?;
        v.extend(self.running.state_dict());
        Ok(v)
    }

    /// The running statistics now (tensors are shared, so this is cheap): what a failed step
    /// restores with [`set_running_stats`](Self::set_running_stats).
    pub fn running_stats(&self) -> HashMap<String, Tensor> {
        self.running.snapshot()
    }

    /// Puts back running statistics taken with [`running_stats`](Self::running_stats).
    pub fn set_running_stats(&self, stats: HashMap<String, Tensor>) {
        self.running.restore(stats)
    }

    /// Overwrites every parameter in place, and the running statistics given.
    pub fn load_state_dict<'a>(&self, tensors: impl IntoIterator<Item = (&'a str, &'a Tensor)>) -> Result<()> {
        let (stats, params): (Vec<_>, Vec<_>) = tensors.into_iter().partition(|(n, _)| BatchNorms::is_buffer(n));
        super::load_params(&self.params, params, "this backbone")?;
        for (n, t) in stats {
            self.running.load(n, t)?;
        }
        Ok(())
    }

    /// BatchNorm `bn` of `x` `[B, C, H, W]`: with `train`, by the batch's statistics, updating
    /// the running ones; otherwise by the running ones.
    fn batch_norm(&self, x: &Tensor, bn: &str, train: bool) -> Result<Tensor> {
        let (gamma, beta) = (self.p(&format!("{bn}.weight"))?, self.p(&format!("{bn}.bias"))?);
        self.running.forward(x, bn, &gamma, &beta, train)
    }

    fn conv_bn(&self, x: &Tensor, spec: &ConvSpec, train: bool, relu: bool) -> Result<Tensor> {
        let (conv, bn, _, _, _, stride, pad) = spec;
        let y = crate::train::conv::conv2d(x, &self.p(&format!("{conv}.weight"))?, *stride, *pad)?;
        let y = self.batch_norm(&y, bn, train)?;
        Ok(if relu { y.relu()? } else { y })
    }

    /// The pooled features `[B, 4·planes[3]]` of normalised pixels `[B, 3, H, W]` (NCHW), with
    /// BatchNorm in training mode when `train`.
    ///
    /// Crops must be square (DINO's are): off the CPU kernels the convolution is candle's, whose
    /// backward pads the input gradient of a strided convolution by one amount for both sides,
    /// which is wrong when the height and width differ in parity ([`crate::train::conv`]).
    pub fn forward(&self, pixels: &Tensor, train: bool) -> Result<Tensor> {
        let (_, c, h, w) = pixels.dims4()?;
        if c != 3 || h != w {
            return Err(Error::arg("crops", format!("{w}x{h} with {c} channels: training needs square RGB crops")));
        }
        let specs = Self::convs(&self.dims);
        let x = self.conv_bn(pixels, &specs[0], train, true)?;
        let mut x = max_pool2d(&x, 3, 2, 1)?;
        let mut i = 1;
        for &blocks in &self.dims.layers {
            for j in 0..blocks {
                let identity = x.clone();
                let out = self.conv_bn(&x, &specs[i], train, true)?;
                let out = self.conv_bn(&out, &specs[i + 1], train, true)?;
                let out = self.conv_bn(&out, &specs[i + 2], train, false)?;
                i += 3;
                let shortcut = if j == 0 && specs.get(i).is_some_and(|s| s.0.ends_with("downsample.0")) {
                    let s = self.conv_bn(&identity, &specs[i], train, false)?;
                    i += 1;
                    s
                } else {
                    identity
                };
                x = (out + shortcut)?.relu()?;
            }
        }
        Ok(x.mean(D::Minus1)?.mean(D::Minus1)?)
    }
}
