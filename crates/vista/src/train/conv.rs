//! Differentiable CPU ops for the convolutional towers (DINO's ResNet-50, CLIP's
//! ModifiedResNet), on candle's NCHW tensors, each one pass forward and one backward:
//!
//! * [`conv2d`]: a dense square-kernel convolution through the packed GEMM (the taps read in
//!   place, [`Lhs::Conv`]). Backward: `dW = dYᵀ · im2col(x)` ([`gemm_tn`], the im2col rows built
//!   a few images at a time), `dX = col2im(dY · W)`. candle's own backward runs a direct
//!   transposed convolution one dot product at a time, and pads the input gradient of a strided
//!   convolution by one amount on both sides (wrong when height and width differ in parity);
//!   neither holds here.
//! * [`batch_norm_train`]: BatchNorm by the batch's own statistics (biased variance) per channel,
//!   `y = (x − μ) r γ + β` with `r = 1/√(σ² + ε)`; backward
//!   `dx = γ r (dy − mean(dy) − x̂ mean(dy x̂))`, `dγ = Σ dy x̂`, `dβ = Σ dy`. The statistics are
//!   returned so the caller moves the running ones.
//!
//! The GEMM is channels-last, so the op transposes its input and output (one pass each);
//! everything else of the tower stays NCHW as torch's. Other devices and dtypes run candle's ops.
//! Tested against a direct f64 convolution and the composed candle ops in
//! `tests/suite/train_conv.rs`.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Device, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::ops::{f32_slice, on_cpu_kernels, values, CpuOut};
use crate::nn::conv::for_each_tap;
use crate::nn::cpu::{threads, with_simd};
use crate::nn::packed::{gemm, gemm_tn, Epilogue, Lhs, PackedWeight};
use crate::{Error, Result};

/// im2col values (and `dX` columns) handled per pass: 8 MB of scratch, which glibc serves from
/// its heap and reuses; at 32 MB (glibc's mmap threshold as `device::init_process` sets it)
/// each pass took fresh pages from the kernel, zeroed on first touch.
const COLS_BUDGET: usize = 2 << 20;

/// `[B, C, HW]` -> `[B, HW, C]` (or back, with `c` and `hw` swapped), one task per image.
fn transpose_planes(x: &[f32], b: usize, c: usize, hw: usize) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    if x.is_empty() {
        return out;
    }
    const T: usize = 16;
    out.par_chunks_mut(c * hw).zip(x.par_chunks(c * hw)).take(b).for_each(|(o, x)| {
        for c0 in (0..c).step_by(T) {
            for p0 in (0..hw).step_by(T) {
                for ci in c0..(c0 + T).min(c) {
                    for p in p0..(p0 + T).min(hw) {
                        o[p * c + ci] = x[ci * hw + p];
                    }
                }
            }
        }
    });
    out
}

/// A convolution's geometry: input `[B, C, H, W]`, `O` outputs, a `k × k` kernel.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    b: usize,
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    k: usize,
    stride: usize,
    pad: usize,
}

impl Geometry {
    fn out_hw(&self) -> (usize, usize) {
        let g = self;
        ((g.h + 2 * g.pad - g.k) / g.stride + 1, (g.w + 2 * g.pad - g.k) / g.stride + 1)
    }

    /// Depth of an im2col row: taps × channels, ordered `(ky, kx, c)`.
    fn depth(&self) -> usize {
        self.k * self.k * self.c
    }

    /// Whether the convolution is a plain product over pixels (1×1, stride 1, no padding).
    fn pointwise(&self) -> bool {
        self.k == 1 && self.stride == 1 && self.pad == 0
    }

    /// Images per im2col pass.
    fn images_per_pass(&self) -> usize {
        let (ho, wo) = self.out_hw();
        (COLS_BUDGET / (ho * wo * self.depth()).max(1)).clamp(1, self.b.max(1))
    }

    /// The torch weight `[O, C, k, k]` as `[O, (ky, kx, c)]`, or back with `to_torch`.
    fn permute_weight(&self, w: &[f32], to_torch: bool) -> Vec<f32> {
        let (c, k) = (self.c, self.k);
        let mut out = vec![0f32; w.len()];
        out.par_chunks_mut(self.depth()).zip(w.par_chunks(self.depth())).for_each(|(o, w)| {
            for ci in 0..c {
                for t in 0..k * k {
                    let (torch, taps) = (ci * k * k + t, t * c + ci);
                    if to_torch {
                        o[torch] = w[taps];
                    } else {
                        o[taps] = w[torch];
                    }
                }
            }
        });
        out
    }

    /// The im2col rows of images `imgs` of the channels-last input `xh`.
    fn im2col(&self, xh: &[f32], imgs: std::ops::Range<usize>) -> Vec<f32> {
        let (ho, wo) = self.out_hw();
        let (c, depth, img) = (self.c, self.depth(), self.h * self.w * self.c);
        let mut cols = vec![0f32; imgs.len() * ho * wo * depth];
        cols.par_chunks_mut(ho * wo * depth).zip(imgs).for_each(|(cols, i)| {
            let x = &xh[i * img..(i + 1) * img];
            for oy in 0..ho {
                for ox in 0..wo {
                    let row = &mut cols[(oy * wo + ox) * depth..][..depth];
                    for_each_tap((oy, ox), (self.h, self.w), (self.k, self.stride, self.pad), |t, px| {
                        row[t * c..(t + 1) * c].copy_from_slice(&x[px * c..(px + 1) * c]);
                    });
                }
            }
        });
        cols
    }

    /// Adds the columns `dcols` of images `imgs` back onto their input pixels of `dxh`.
    fn col2im(&self, dcols: &[f32], dxh: &mut [f32], imgs: std::ops::Range<usize>) {
        let (ho, wo) = self.out_hw();
        let (c, depth, img) = (self.c, self.depth(), self.h * self.w * self.c);
        dxh[imgs.start * img..imgs.end * img].par_chunks_mut(img).zip(dcols.par_chunks(ho * wo * depth)).for_each(
            |(dx, cols)| {
                with_simd(
                    #[inline(always)]
                    || {
                        for oy in 0..ho {
                            for ox in 0..wo {
                                let row = &cols[(oy * wo + ox) * depth..][..depth];
                                for_each_tap((oy, ox), (self.h, self.w), (self.k, self.stride, self.pad), |t, px| {
                                    let dst = &mut dx[px * c..(px + 1) * c];
                                    dst.iter_mut().zip(&row[t * c..(t + 1) * c]).for_each(|(d, v)| *d += v);
                                });
                            }
                        }
                    },
                )
            },
        );
    }
}

struct Conv2dOp {
    g: Geometry,
}

impl CustomOp2 for Conv2dOp {
    fn name(&self) -> &'static str {
        "vista-conv2d"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> CpuOut {
        let g = self.g;
        let (x, w) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?);
        let xh = transpose_planes(x, g.b, g.c, g.h * g.w);
        let (ho, wo) = g.out_hw();
        let wt = transpose_planes(&g.permute_weight(w, false), 1, g.o, g.depth());
        let packed = PackedWeight::from_k_by_n(&wt, g.depth(), g.o);
        let lhs = if g.pointwise() {
            Lhs::Rows { data: &xh, m: g.b * g.h * g.w }
        } else {
            Lhs::Conv { data: &xh, input: (g.b, g.h, g.w, g.c), kernel: (g.k, g.stride, g.pad) }
        };
        let yh = gemm(lhs, &packed, None, Epilogue::default(), threads()).map_err(candle_core::Error::wrap)?;
        let y = transpose_planes(&yh, g.b, ho * wo, g.o);
        Ok((CpuStorage::F32(y), Shape::from((g.b, g.o, ho, wo))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let g = self.g;
        let (ho, wo) = g.out_hw();
        let (opx, depth) = (ho * wo, g.depth());
        let xh = transpose_planes(&values(x)?, g.b, g.c, g.h * g.w);
        let dyh = transpose_planes(&values(dy)?, g.b, g.o, opx);
        let w_taps = g.permute_weight(&values(w)?, false);
        let packed = PackedWeight::from_k_by_n(&w_taps, g.o, depth);
        let mut dw = vec![0f32; g.o * depth];
        let mut dxh = vec![0f32; xh.len()];
        let step = g.images_per_pass();
        for i0 in (0..g.b).step_by(step) {
            let imgs = i0..(i0 + step).min(g.b);
            let dy_rows = &dyh[imgs.start * opx * g.o..imgs.end * opx * g.o];
            let m = imgs.len() * opx;
            let built;
            let cols = if g.pointwise() {
                &xh[imgs.start * opx * g.c..imgs.end * opx * g.c]
            } else {
                built = g.im2col(&xh, imgs.clone());
                &built[..]
            };
            let part = gemm_tn(dy_rows, cols, m, g.o, depth, threads()).map_err(candle_core::Error::wrap)?;
            dw.iter_mut().zip(&part).for_each(|(a, b)| *a += b);
            let dcols = gemm(Lhs::Rows { data: dy_rows, m }, &packed, None, Epilogue::default(), threads())
                .map_err(candle_core::Error::wrap)?;
            if g.pointwise() {
                dxh[imgs.start * opx * g.c..imgs.end * opx * g.c].copy_from_slice(&dcols);
            } else {
                g.col2im(&dcols, &mut dxh, imgs);
            }
        }
        let dx = transpose_planes(&dxh, g.b, g.h * g.w, g.c);
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), &Device::Cpu)?),
            Some(Tensor::from_vec(g.permute_weight(&dw, true), w.shape(), &Device::Cpu)?),
        ))
    }
}

/// A dense 2-D convolution (`groups = 1`, no bias) of NCHW `x` by a torch weight, differentiable
/// in both.
///
/// # Shapes
/// `x: [B, C, H, W]`, `w: [O, C, k, k]` -> `[B, O, H', W']`, `H' = (H + 2·pad − k) / stride + 1`.
pub fn conv2d(x: &Tensor, w: &Tensor, stride: usize, pad: usize) -> Result<Tensor> {
    let (b, c, h, wd) = x.dims4()?;
    let (o, cw, k, k2) = w.dims4()?;
    if cw != c || k != k2 || stride == 0 || h + 2 * pad < k || wd + 2 * pad < k {
        return Err(Error::arg(
            "conv2d",
            format!("input {:?} against weight {:?} (stride {stride}, padding {pad})", x.dims(), w.dims()),
        ));
    }
    if !on_cpu_kernels(&[x, w]) {
        return Ok(x.conv2d(w, pad, stride, 1, 1)?);
    }
    let g = Geometry { b, c, h, w: wd, o, k, stride, pad };
    Ok(x.contiguous()?.apply_op2(&w.contiguous()?, Conv2dOp { g })?)
}

/// Per-channel statistics of NCHW `x`: `(mean, biased variance)`, each `[C]`.
fn channel_stats(x: &[f32], b: usize, c: usize, hw: usize) -> (Vec<f32>, Vec<f32>) {
    let n = (b * hw) as f64;
    (0..c)
        .into_par_iter()
        .map(|ci| {
            let plane = |i: usize| &x[(i * c + ci) * hw..][..hw];
            let mean = (0..b).map(|i| plane(i).iter().map(|&v| v as f64).sum::<f64>()).sum::<f64>() / n;
            let var = (0..b).map(|i| plane(i).iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>()).sum::<f64>() / n;
            (mean as f32, var as f32)
        })
        .unzip()
}

struct BatchNormOp {
    /// `[C]` batch means and `1/√(σ² + ε)`.
    mean: Vec<f32>,
    rstd: Vec<f32>,
    dims: (usize, usize, usize),
}

impl BatchNormOp {
    /// `f(channel, x plane, out plane)` for every image's plane of every channel.
    fn planes<'a>(&self, x: &'a [f32], out: &'a mut [f32], f: impl Fn(usize, &[f32], &mut [f32]) + Sync) {
        let (c, hw) = (self.dims.1, self.dims.2);
        out.par_chunks_mut(hw).zip(x.par_chunks(hw)).enumerate().for_each(|(i, (o, x))| f(i % c, x, o));
    }
}

impl CustomOp3 for BatchNormOp {
    fn name(&self) -> &'static str {
        "vista-batch-norm-train"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> CpuOut {
        let (x, gamma, beta) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?, f32_slice(s3, l3)?);
        let mut y = vec![0f32; x.len()];
        self.planes(x, &mut y, |ci, x, o| {
            let (m, s) = (self.mean[ci], self.rstd[ci] * gamma[ci]);
            let b = beta[ci];
            with_simd(
                #[inline(always)]
                || {
                    for (o, &v) in o.iter_mut().zip(x) {
                        *o = (v - m) * s + b;
                    }
                },
            )
        });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _beta: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (b, c, hw) = self.dims;
        let (xv, dyv, gv) = (values(x)?, values(dy)?, values(gamma)?);
        // Σ dy and Σ dy x̂ per channel, in f64.
        let (db, dg): (Vec<f32>, Vec<f32>) = (0..c)
            .into_par_iter()
            .map(|ci| {
                let (m, r) = (self.mean[ci] as f64, self.rstd[ci] as f64);
                let (mut s, mut sx) = (0f64, 0f64);
                for i in 0..b {
                    let at = (i * c + ci) * hw;
                    for (&d, &v) in dyv[at..at + hw].iter().zip(&xv[at..at + hw]) {
                        s += d as f64;
                        sx += d as f64 * (v as f64 - m) * r;
                    }
                }
                (s as f32, sx as f32)
            })
            .unzip();
        let n = (b * hw) as f32;
        // dx = γ r (dy − Σdy/n − x̂ Σ(dy x̂)/n), written over dy's copy plane by plane.
        let mut dx = dyv;
        self.planes(&xv, &mut dx, |ci, x, d| {
            let (m, r) = (self.mean[ci], self.rstd[ci]);
            let (mdy, mdx) = (db[ci] / n, dg[ci] / n);
            let s = gv[ci] * r;
            with_simd(
                #[inline(always)]
                || {
                    for (d, &v) in d.iter_mut().zip(x) {
                        *d = s * (*d - mdy - (v - m) * r * mdx);
                    }
                },
            )
        });
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), &Device::Cpu)?),
            Some(Tensor::from_vec(dg, gamma.shape(), &Device::Cpu)?),
            Some(Tensor::from_vec(db, gamma.shape(), &Device::Cpu)?),
        ))
    }
}

/// BatchNorm of NCHW `x` by its own batch statistics, differentiable in `x`, `gamma` and `beta`;
/// also returns the statistics used, `(mean, biased variance)` as `[C]` tensors (no gradient),
/// for the running averages.
///
/// # Shapes
/// `x: [B, C, H, W]`, `gamma, beta: [C]` -> `[B, C, H, W]`
pub fn batch_norm_train(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f64) -> Result<(Tensor, Tensor, Tensor)> {
    let (b, c, h, w) = x.dims4()?;
    if gamma.dims() != [c] || beta.dims() != [c] {
        return Err(Error::arg(
            "batch_norm",
            format!("{c} channels, weight {:?}, bias {:?}", gamma.dims(), beta.dims()),
        ));
    }
    let n = (b * h * w) as f64;
    if !on_cpu_kernels(&[x, gamma, beta]) {
        let mean = (x.sum_keepdim(0)?.sum_keepdim(2)?.sum_keepdim(3)? / n)?;
        let centered = x.broadcast_sub(&mean)?;
        let var = (centered.sqr()?.sum_keepdim(0)?.sum_keepdim(2)?.sum_keepdim(3)? / n)?;
        let shape = (1, c, 1, 1);
        let scale = (&var + eps)?.sqrt()?.recip()?.broadcast_mul(&gamma.reshape(shape)?)?;
        let y = centered.broadcast_mul(&scale)?.broadcast_add(&beta.reshape(shape)?)?;
        return Ok((y, mean.flatten_all()?.detach(), var.flatten_all()?.detach()));
    }
    let x = x.contiguous()?;
    // Read in place: the op's forward reads the same storage again, no copy needed.
    let (mean, var) = crate::nn::cpu::with_slice(&x, |xv| channel_stats(xv, b, c, h * w))?;
    let rstd = var.iter().map(|v| 1.0 / (v + eps as f32).sqrt()).collect();
    let op = BatchNormOp { mean: mean.clone(), rstd, dims: (b, c, h * w) };
    let y = x.apply_op3(&gamma.contiguous()?, &beta.contiguous()?, op)?;
    Ok((y, Tensor::from_vec(mean, c, &Device::Cpu)?, Tensor::from_vec(var, c, &Device::Cpu)?))
}
