//! Convolutions on channels-last `[B, H, W, C]` tensors.
//!
//! Vision transformers keep their tokens channels-last (`[B, H, W, C]` is `[B·H·W, C]` rows, the
//! layout every linear layer wants), so the convolutions around them (patch embeddings, SAM's
//! neck and mask up-sampling, TinyViT's MBConv) work in that layout too instead of permuting to
//! PyTorch's NCHW and back: a dense convolution is one GEMM whose rows read the input pixel
//! under each tap in place (on the CPU, [`super::packed`]; elsewhere after an im2col gather), a
//! depthwise convolution is a direct loop vectorised over channels, and a 2×2 stride-2 transposed
//! convolution is one GEMM followed by a pixel shuffle. A 3×3 stride-1 convolution on the CPU
//! (the ResNets' middle convolutions, SAM's neck) runs as Winograd's F(2×2, 3×3)
//! ([`super::winograd`]): 2.25× fewer multiply–adds. Weights arrive in PyTorch's layout and are
//! reordered (and transformed) once at load.
//!
//! The arithmetic is the reference's; only the summation order differs.

use candle_core::{Device, Tensor};

use super::packed::{self, Lhs};
use super::Linear;
use crate::Result;

/// A `torch.nn.BatchNorm2d` in eval mode, to be folded into the convolution before it.
#[derive(Debug, Clone)]
pub struct BatchNorm {
    /// Scale γ `[C]`.
    pub weight: Tensor,
    /// Shift β `[C]`.
    pub bias: Tensor,
    /// Running mean `[C]`.
    pub running_mean: Tensor,
    /// Running variance `[C]`.
    pub running_var: Tensor,
    /// Epsilon added to the variance.
    pub eps: f64,
}

impl BatchNorm {
    /// `weight`, `bias`, `running_mean`, `running_var` `[C]` below `vb`, ε 1e-5 (PyTorch's
    /// default, which every checkpoint here was trained with).
    pub fn load(vb: &crate::weights::Vb, channels: usize) -> Result<Self> {
        let get = |n: &str| vb.get(&[channels], n);
        Ok(Self {
            weight: get("weight")?,
            bias: get("bias")?,
            running_mean: get("running_mean")?,
            running_var: get("running_var")?,
            eps: 1e-5,
        })
    }
}

/// Folds an eval-mode BatchNorm into the convolution weight `[Cout, ...]` before it, as
/// TinyViT's `Conv2d_BN.fuse` does: `w' = w·γ/√(var+ε)`, `b' = β − mean·γ/√(var+ε)`.
/// Computed in f32 whatever the weights' dtype (bf16 weights are folded, then rounded once).
pub fn fold_batch_norm(weight: &Tensor, bn: &BatchNorm) -> Result<(Tensor, Tensor)> {
    let dtype = weight.dtype();
    let f = |t: &Tensor| t.to_dtype(candle_core::DType::F32);
    let scale = (f(&bn.weight)? / (f(&bn.running_var)? + bn.eps)?.sqrt()?)?;
    let mut shape = vec![weight.dim(0)?];
    shape.extend(std::iter::repeat_n(1, weight.rank() - 1));
    let w = f(weight)?.broadcast_mul(&scale.reshape(shape)?)?;
    let b = (f(&bn.bias)? - (f(&bn.running_mean)? * &scale)?)?;
    Ok((w.to_dtype(dtype)?, b.to_dtype(dtype)?))
}

fn nhwc(x: &Tensor) -> Result<(usize, usize, usize, usize)> {
    Ok(x.dims4()?)
}

fn out_size(len: usize, k: usize, stride: usize, pad: usize) -> usize {
    (len + 2 * pad - k) / stride + 1
}

/// A dense 2-D convolution (`groups = 1`), channels-last.
#[derive(Debug, Clone)]
pub struct Conv2d {
    /// Over im2col rows: `[k·k·Cin] -> [Cout]`, the taps ordered `(ky, kx, cin)`.
    linear: Linear,
    k: usize,
    stride: usize,
    pad: usize,
    cin: usize,
    /// The filters in the Winograd domain, for a 3×3 stride-1 padding-1 convolution on the CPU.
    winograd: Option<super::winograd::Winograd>,
}

impl Conv2d {
    /// From a PyTorch weight `[Cout, Cin, k, k]` and optional bias `[Cout]`.
    pub fn new(weight: &Tensor, bias: Option<Tensor>, stride: usize, pad: usize) -> Result<Self> {
        let (cout, cin, k, k2) = weight.dims4()?;
        if k != k2 {
            return Err(candle_core::Error::Msg(format!("conv: non-square kernel {k}x{k2}")).into());
        }
        let winograd = if (k, stride, pad) == (3, 1, 1)
            && cin.min(cout) >= super::winograd::MIN_CHANNELS
            && super::cpu::eligible(weight)
            && super::winograd::enabled()
        {
            Some(super::winograd::Winograd::new(&weight.flatten_all()?.to_vec1::<f32>()?, (cout, cin)))
        } else {
            None
        };
        let w = weight.permute((0, 2, 3, 1))?.reshape((cout, k * k * cin))?;
        Ok(Self { linear: Linear::new(w, bias)?, k, stride, pad, cin, winograd })
    }

    /// `Cout`.
    pub fn out_channels(&self) -> Result<usize> {
        self.linear.out_dim()
    }

    /// # Shapes
    /// `[B, H, W, Cin] -> [B, H', W', Cout]`
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_act(x, None)
    }

    /// `act(conv(x))`, the activation applied in the GEMM's output pass.
    pub fn forward_act(&self, x: &Tensor, act: Option<super::Activation>) -> Result<Tensor> {
        self.forward_residual(x, None, act)
    }

    /// `act(conv(x) + residual)`, the residual (shaped as the output) added in the GEMM's output
    /// pass on the CPU: a ResNet block's last convolution, shortcut and ReLU in one sweep.
    pub fn forward_residual(
        &self,
        x: &Tensor,
        residual: Option<&Tensor>,
        act: Option<super::Activation>,
    ) -> Result<Tensor> {
        let (b, h, w, cin) = nhwc(x)?;
        if cin != self.cin {
            return Err(candle_core::Error::Msg(format!("conv: input has {cin} channels, weight {}", self.cin)).into());
        }
        let (k, s, p) = (self.k, self.stride, self.pad);
        if h + 2 * p < k || w + 2 * p < k {
            return Err(
                candle_core::Error::Msg(format!("conv: a {h}x{w} input is smaller than the {k}x{k} kernel")).into()
            );
        }
        let (ho, wo) = (out_size(h, k, s, p), out_size(w, k, s, p));
        let rows = b * ho * wo;
        if let Some(r) = residual {
            let want = [b, ho, wo, self.linear.out_dim()?];
            if r.dims() != want {
                return Err(candle_core::Error::Msg(format!("conv: residual {:?}, output {want:?}", r.dims())).into());
            }
        }
        let fast = super::cpu::eligible(x) && residual.is_none_or(super::cpu::eligible);
        if let (Some(wino), Some((_, bias)), true, None) = (&self.winograd, self.linear.packed(), fast, residual) {
            // The bias is the direct weight's (one copy).
            let out =
                super::cpu::with_slice(x, |data| wino.forward(data, (b, h, w), bias, act, super::cpu::threads()))??;
            return Ok(Tensor::from_vec(out, (b, ho, wo, self.linear.out_dim()?), &Device::Cpu)?);
        }
        if let (Some((weight, bias)), true) = (self.linear.packed(), fast) {
            // The CPU GEMM reads the taps in place: no im2col matrix.
            let run = |data: &[f32], residual: Option<&[f32]>| {
                let lhs = if k == 1 && s == 1 && p == 0 {
                    Lhs::Rows { data, m: rows }
                } else {
                    Lhs::Conv { data, input: (b, h, w, cin), kernel: (k, s, p) }
                };
                packed::gemm(lhs, weight, bias, packed::Epilogue { residual, act, scale: None }, super::cpu::threads())
            };
            let out = super::cpu::with_slice(x, |data| match residual {
                Some(r) => super::cpu::with_slice(r, |r| run(data, Some(r)))?,
                None => run(data, None),
            })??;
            return Ok(Tensor::from_vec(out, (b, ho, wo, weight.n()), &Device::Cpu)?);
        }
        if let Some(r) = residual {
            let y = self.forward_residual(x, None, None)?;
            return match act {
                Some(act) => super::add_act(&y, r, act),
                None => Ok((y + r)?),
            };
        }
        let cols = if k == 1 && s == 1 && p == 0 {
            x.clone()
        } else if k == s && p == 0 && h % k == 0 && w % k == 0 {
            // Non-overlapping patches: a reshape, no gather.
            x.reshape((b, ho, k, wo, k, cin))?.permute((0, 1, 3, 2, 4, 5))?.contiguous()?
        } else {
            super::portable::im2col(x, k, s, p)?
        };
        let y = self.linear.forward_act(&cols.reshape((rows, k * k * cin))?, act)?;
        Ok(y.reshape((b, ho, wo, ()))?)
    }
}

/// Calls `f(tap, pixel)` for every tap `(ky, kx)` of a `k × k` kernel (`tap = ky·k + kx`) at the
/// output pixel `(oy, ox)` (stride `s`, zero padding `p`) that falls inside the `h × w` input,
/// `pixel = iy·w + ix` being the input pixel under it.
#[inline(always)]
pub(crate) fn for_each_tap(
    (oy, ox): (usize, usize),
    (h, w): (usize, usize),
    (k, s, p): (usize, usize, usize),
    mut f: impl FnMut(usize, usize),
) {
    for ky in 0..k {
        let iy = (oy * s + ky) as isize - p as isize;
        if iy < 0 || iy >= h as isize {
            continue;
        }
        for kx in 0..k {
            let ix = (ox * s + kx) as isize - p as isize;
            if ix < 0 || ix >= w as isize {
                continue;
            }
            f(ky * k + kx, iy as usize * w + ix as usize);
        }
    }
}

/// A depthwise 2-D convolution (`groups = C`), channels-last.
#[derive(Debug, Clone)]
pub struct DepthwiseConv2d {
    /// `[k·k, C]`, tap-major, so one tap is a contiguous channel vector (the CPU kernel's copy).
    weight: Vec<f32>,
    bias: Vec<f32>,
    /// The same on the weights' device and dtype, for the device path.
    weight_t: Tensor,
    bias_t: Tensor,
    k: usize,
    stride: usize,
    pad: usize,
}

impl DepthwiseConv2d {
    /// From a PyTorch weight `[C, 1, k, k]` and optional bias `[C]`.
    pub fn new(weight: &Tensor, bias: Option<&Tensor>, stride: usize, pad: usize) -> Result<Self> {
        let (c, one, k, _) = weight.dims4()?;
        if one != 1 {
            return Err(candle_core::Error::Msg(format!("depthwise conv: weight has {one} inputs per group")).into());
        }
        let weight_t = weight.reshape((c, k * k))?.t()?.contiguous()?;
        let bias_t = match bias {
            Some(b) => b.clone(),
            None => weight_t.zeros_like()?.narrow(0, 0, 1)?.squeeze(0)?,
        };
        let host = |t: &Tensor| -> Result<Vec<f32>> {
            Ok(t.to_device(&Device::Cpu)?.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
        };
        Ok(Self { weight: host(&weight_t)?, bias: host(&bias_t)?, weight_t, bias_t, k, stride, pad })
    }

    /// `act(conv(x))`, the activation applied as each output row is finished.
    ///
    /// # Shapes
    /// `[B, H, W, C] -> [B, H', W', C]`
    pub fn forward(&self, x: &Tensor, act: Option<super::Activation>) -> Result<Tensor> {
        let (b, h, w, c) = nhwc(x)?;
        let (k, s, p) = (self.k, self.stride, self.pad);
        if c != self.bias.len() {
            return Err(
                candle_core::Error::Msg(format!("depthwise conv: {c} channels, weight {}", self.bias.len())).into()
            );
        }
        if !super::cpu::eligible(x) {
            return super::portable::depthwise_conv(x, &self.weight_t, &self.bias_t, (k, s, p), act);
        }
        let (ho, wo) = (out_size(h, k, s, p), out_size(w, k, s, p));
        let mut out = vec![0f32; b * ho * wo * c];
        super::cpu::map_pixels(
            x,
            &mut out,
            (ho, wo, c),
            #[inline(always)]
            |src, (bi, oy, ox), o| {
                o.copy_from_slice(&self.bias);
                for_each_tap(
                    (oy, ox),
                    (h, w),
                    (k, s, p),
                    #[inline(always)]
                    |tap, pixel| {
                        let from = (bi * h * w + pixel) * c;
                        let tap = &self.weight[tap * c..(tap + 1) * c];
                        for ((o, xv), wv) in o.iter_mut().zip(&src[from..from + c]).zip(tap) {
                            *o += xv * wv;
                        }
                    },
                );
            },
            #[inline(always)]
            |row| {
                if let Some(act) = act {
                    super::cpu::activate_slice(row, act);
                }
            },
        )?;
        Ok(Tensor::from_vec(out, (b, ho, wo, c), &Device::Cpu)?)
    }
}

/// `torch.nn.ConvTranspose2d(Cin, Cout, kernel_size=2, stride=2)`, channels-last: every input
/// pixel becomes a 2×2 block, so it is one GEMM to `[.., (dy, dx, Cout)]` and a pixel shuffle.
#[derive(Debug, Clone)]
pub struct ConvTranspose2x2 {
    linear: Linear,
    cout: usize,
}

impl ConvTranspose2x2 {
    /// From a PyTorch weight `[Cin, Cout, 2, 2]` and bias `[Cout]`.
    pub fn new(weight: &Tensor, bias: &Tensor) -> Result<Self> {
        let (cin, cout, kh, kw) = weight.dims4()?;
        if (kh, kw) != (2, 2) {
            return Err(candle_core::Error::Msg(format!("transposed conv: kernel {kh}x{kw}, expected 2x2")).into());
        }
        let w = weight.permute((2, 3, 1, 0))?.reshape((4 * cout, cin))?;
        let b = bias.unsqueeze(0)?.repeat((4, 1))?.flatten_all()?;
        Ok(Self { linear: Linear::new(w, Some(b))?, cout })
    }

    /// The GEMM's packed weight `[Cin, 4·Cout]` (output columns ordered `(dy, dx, Cout)`) and its
    /// bias, when the layer is on the CPU kernels' path.
    pub(crate) fn packed(&self) -> Option<(&super::packed::PackedWeight, Option<&[f32]>)> {
        self.linear.packed()
    }

    /// `act(convT(x))`, the activation fused into the GEMM's output pass.
    ///
    /// # Shapes
    /// `[B, H, W, Cin] -> [B, 2H, 2W, Cout]`
    pub fn forward(&self, x: &Tensor, act: Option<super::Activation>) -> Result<Tensor> {
        let (b, h, w, _) = nhwc(x)?;
        let y = self.linear.forward_act(x, act)?; // [B, H, W, 4·Cout]
        let y = y.reshape((b, h, w, 2, 2, self.cout))?.permute((0, 1, 3, 2, 4, 5))?.contiguous()?;
        Ok(y.reshape((b, 2 * h, 2 * w, self.cout))?)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Tensor;

    use super::*;
    use crate::nn::testing::{max_diff, randn};

    fn to_nhwc(x: &Tensor) -> Tensor {
        x.permute((0, 2, 3, 1)).unwrap().contiguous().unwrap()
    }

    #[test]
    fn dense_convolutions_equal_candle_for_every_shape_class() {
        let x = randn(1, 0f32, 1., (2, 5, 9, 7));
        for (k, s, p) in [(1, 1, 0), (3, 1, 1), (3, 2, 1), (2, 2, 0), (3, 3, 0)] {
            let w = randn(2, 0f32, 1., (6, 5, k, k));
            let b = randn(3, 0f32, 1., 6);
            let want = x.conv2d(&w, p, s, 1, 1).unwrap().broadcast_add(&b.reshape((1, 6, 1, 1)).unwrap()).unwrap();
            let conv = Conv2d::new(&w, Some(b.clone()), s, p).unwrap();
            let ours = conv.forward(&to_nhwc(&x)).unwrap();
            assert!(max_diff(&ours, &to_nhwc(&want)) < 1e-4, "k{k} s{s} p{p}");
        }
    }

    #[test]
    fn winograd_convolutions_equal_candle() {
        // 3×3, stride 1, padding 1, 16 channels or more: Winograd's F(2×2, 3×3); odd sizes leave
        // half tiles at the right and bottom edges.
        let x = randn(6, 0f32, 1., (2, 24, 9, 13));
        let w = randn(7, 0f32, 0.2, (40, 24, 3, 3));
        let b = randn(8, 0f32, 1., 40);
        let want = x.conv2d(&w, 1, 1, 1, 1).unwrap().broadcast_add(&b.reshape((1, 40, 1, 1)).unwrap()).unwrap();
        let conv = Conv2d::new(&w, Some(b.clone()), 1, 1).unwrap();
        assert!(conv.winograd.is_some(), "a 24 -> 40 3x3 stride-1 convolution runs as Winograd's");
        let ours = conv.forward_act(&to_nhwc(&x), Some(crate::nn::Activation::Relu)).unwrap();
        assert!(max_diff(&ours, &to_nhwc(&want.relu().unwrap())) < 1e-4);
        // The same layer through the device path (im2col + one GEMM) agrees too.
        let portable = crate::nn::cpu::with_portable_paths(|| conv.forward(&to_nhwc(&x)).unwrap());
        assert!(max_diff(&portable, &to_nhwc(&want)) < 1e-4);
    }

    #[test]
    fn convolutions_of_many_rows_equal_candle() {
        // Many row blocks, the last partial; ReLU applied as the tiles finish.
        let x = randn(16, 0f32, 1., (1, 5, 97, 91));
        for (k, s, p) in [(1, 1, 0), (3, 1, 1), (3, 2, 1)] {
            let w = randn(17, 0f32, 1., (6, 5, k, k));
            let b = randn(18, 0f32, 1., 6);
            let want = x.conv2d(&w, p, s, 1, 1).unwrap().broadcast_add(&b.reshape((1, 6, 1, 1)).unwrap()).unwrap();
            let conv = Conv2d::new(&w, Some(b.clone()), s, p).unwrap();
            let ours = conv.forward_act(&to_nhwc(&x), Some(crate::nn::Activation::Relu)).unwrap();
            assert!(max_diff(&ours, &to_nhwc(&want.relu().unwrap())) < 1e-4, "k{k} s{s} p{p}");
        }
    }

    #[test]
    fn depthwise_convolution_equals_grouped_candle_conv() {
        let x = randn(4, 0f32, 1., (2, 4, 7, 6));
        for (s, p) in [(1, 1), (2, 1)] {
            let w = randn(5, 0f32, 1., (4, 1, 3, 3));
            let b = randn(6, 0f32, 1., 4);
            let want = x.conv2d(&w, p, s, 1, 4).unwrap().broadcast_add(&b.reshape((1, 4, 1, 1)).unwrap()).unwrap();
            let ours = DepthwiseConv2d::new(&w, Some(&b), s, p).unwrap().forward(&to_nhwc(&x), None).unwrap();
            assert!(max_diff(&ours, &to_nhwc(&want)) < 1e-5, "s{s}");
        }
    }

    #[test]
    fn transposed_convolution_equals_candle() {
        let x = randn(7, 0f32, 1., (2, 5, 3, 4));
        let w = randn(8, 0f32, 1., (5, 3, 2, 2));
        let b = randn(9, 0f32, 1., 3);
        let want =
            x.conv_transpose2d(&w, 0, 0, 2, 1).unwrap().broadcast_add(&b.reshape((1, 3, 1, 1)).unwrap()).unwrap();
        let ours = ConvTranspose2x2::new(&w, &b).unwrap().forward(&to_nhwc(&x), None).unwrap();
        assert!(max_diff(&ours, &to_nhwc(&want)) < 1e-5);
    }

    #[test]
    fn folding_batch_norm_equals_applying_it() {
        let x = randn(10, 0f32, 1., (1, 3, 5, 5));
        let w = randn(11, 0f32, 1., (4, 3, 3, 3));
        let bn = BatchNorm {
            weight: randn(12, 1f32, 0.2, 4),
            bias: randn(13, 0f32, 0.2, 4),
            running_mean: randn(14, 0f32, 0.5, 4),
            running_var: randn(15, 0f32, 1., 4).abs().unwrap(),
            eps: 1e-5,
        };
        let y = x.conv2d(&w, 1, 1, 1, 1).unwrap();
        let r = |t: &Tensor| t.reshape((1, 4, 1, 1)).unwrap();
        let want = y
            .broadcast_sub(&r(&bn.running_mean))
            .unwrap()
            .broadcast_div(&r(&(&bn.running_var + 1e-5).unwrap().sqrt().unwrap()))
            .unwrap()
            .broadcast_mul(&r(&bn.weight))
            .unwrap()
            .broadcast_add(&r(&bn.bias))
            .unwrap();
        let (fw, fb) = fold_batch_norm(&w, &bn).unwrap();
        let ours = Conv2d::new(&fw, Some(fb), 1, 1).unwrap().forward(&to_nhwc(&x)).unwrap();
        assert!(max_diff(&ours, &to_nhwc(&want)) < 1e-4);
    }
}
