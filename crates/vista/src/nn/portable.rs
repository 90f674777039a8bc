//! Device paths: the computations of the fused CPU kernels ([`super::cpu`]) and of the slice loops
//! of [`super::conv`] and [`super::window`], written as candle tensor ops so that they run on any
//! device and float dtype (CUDA, bf16, f16) without leaving it.
//!
//! Callers take the CPU kernel for f32 CPU tensors ([`super::cpu::eligible`]) and these otherwise.
//! Every function here also runs on the CPU, which is how `tests/suite/device_fallback.rs` checks each one
//! against its CPU kernel on the committed fixtures.
//!
//! The arithmetic is the CPU kernels': the same products and sums, in the same order where the
//! result is elementwise (window partition, im2col, depthwise convolution, bilinear resampling are
//! bit-identical on the CPU), and through cuBLAS / candle's matmul where the CPU kernel runs a GEMM
//! (attention), which only changes the summation order.

use candle_core::{DType, Tensor, D};

use super::Activation;
use crate::Result;

/// What is added to the scaled attention scores before the softmax ([`super::cpu::ScoreBias`] as
/// tensors on the scores' device and dtype).
#[derive(Clone, Copy)]
pub enum Bias<'a> {
    /// Nothing added.
    None,
    /// `[N, N]`, the same for every head (CLIP's causal mask).
    Shared(&'a Tensor),
    /// `[H, N, N]`, one table per head (TinyViT's gathered `attention_biases`).
    PerHead(&'a Tensor),
    /// Segment Anything's decomposed relative positions on a `gh × gw` token grid:
    /// `q·rel_h[y, ky] + q·rel_w[x, kx]` with the unscaled query; `rel_h: [gh, gh, D]`,
    /// `rel_w: [gw, gw, D]`.
    DecomposedRelPos {
        /// The token grid `(gh, gw)`.
        grid: (usize, usize),
        /// Relative positions along the rows, `[gh, gh, D]`.
        rel_h: &'a Tensor,
        /// Relative positions along the columns, `[gw, gw, D]`.
        rel_w: &'a Tensor,
    },
}

/// Multi-head self-attention from a fused projection: `softmax(scale · q kᵀ + bias) v`.
///
/// # Shapes
/// `qkv: [B, N, 3C]` laid out `[B, N, 3, H, D]` -> `[B, N, C]`
pub fn attention(qkv: &Tensor, heads: usize, scale: f64, bias: Bias<'_>) -> Result<Tensor> {
    let (b, n, c3) = qkv.dims3()?;
    let c = c3 / 3;
    let d = c / heads;
    // [B, N, 3, H, D] -> [3, B, H, N, D]
    let t = qkv.reshape((b, n, 3, heads, d))?.permute((2, 0, 3, 1, 4))?;
    let q = t.get(0)?.contiguous()?;
    let k = t.get(1)?.contiguous()?;
    let v = t.get(2)?.contiguous()?;
    let s = (q.matmul(&k.t()?)? * scale)?; // [B, H, N, N]
    let s = match bias {
        Bias::None => s,
        Bias::Shared(m) => s.broadcast_add(m)?,
        Bias::PerHead(t) => s.broadcast_add(&t.unsqueeze(0)?)?,
        Bias::DecomposedRelPos { grid: (gh, gw), rel_h, rel_w } => {
            if gh * gw != n {
                return Err(crate::Error::arg("grid", format!("a {gh}x{gw} grid does not hold {n} tokens")));
            }
            let bh = b * heads;
            let rq = q.reshape((bh, gh, gw, d))?;
            // rel_h[i, y, x, ky] = Σ_d q[i, y, x, d] · Rh[y, ky, d]: one product per row y.
            let qh = rq.transpose(0, 1)?.contiguous()?.reshape((gh, bh * gw, d))?;
            let rh =
                qh.matmul(&rel_h.transpose(1, 2)?.contiguous()?)?.reshape((gh, bh, gw, gh))?.permute((1, 0, 2, 3))?;
            // rel_w[i, y, x, kx] = Σ_d q[i, y, x, d] · Rw[x, kx, d]: one product per column x.
            let qw = rq.permute((2, 0, 1, 3))?.contiguous()?.reshape((gw, bh * gh, d))?;
            let rw =
                qw.matmul(&rel_w.transpose(1, 2)?.contiguous()?)?.reshape((gw, bh, gh, gw))?.permute((1, 2, 0, 3))?;
            // The reference's order: (attn + rel_h) + rel_w.
            let s = s.reshape((bh, gh, gw, gh, gw))?;
            let s = s.broadcast_add(&rh.unsqueeze(4)?)?.broadcast_add(&rw.unsqueeze(3)?)?;
            s.reshape((b, heads, n, n))?
        }
    };
    let p = candle_nn::ops::softmax_last_dim(&s)?;
    // [B, H, N, D] -> [B, N, H, D] -> [B, N, C]
    Ok(p.matmul(&v)?.transpose(1, 2)?.reshape((b, n, c))?)
}

/// [`super::window::window_partition`]: pads `x: [B, H, W, C]` at the bottom and right with
/// `pad_row: [C]` to multiples of `ws` and regroups it into windows `[B·nH·nW, ws·ws, C]`;
/// returns the windows and `(nH, nW)`.
pub fn window_partition(x: &Tensor, ws: usize, pad_row: &Tensor) -> Result<(Tensor, (usize, usize))> {
    let (b, h, w, c) = x.dims4()?;
    let (nh, nw) = (h.div_ceil(ws), w.div_ceil(ws));
    let (ph, pw) = (nh * ws - h, nw * ws - w);
    let row = pad_row.reshape((1, 1, 1, c))?;
    let mut x = x.clone();
    if pw > 0 {
        x = Tensor::cat(&[&x, &row.broadcast_as((b, h, pw, c))?.contiguous()?], 2)?;
    }
    if ph > 0 {
        x = Tensor::cat(&[&x, &row.broadcast_as((b, ph, nw * ws, c))?.contiguous()?], 1)?;
    }
    let wins = x.reshape((b, nh, ws, nw, ws, c))?.permute((0, 1, 3, 2, 4, 5))?.contiguous()?.reshape((
        b * nh * nw,
        ws * ws,
        c,
    ))?;
    Ok((wins, (nh, nw)))
}

/// [`super::window::window_unpartition`]: `[B·nH·nW, ws·ws, C] -> [B, H, W, C]`, dropping the
/// padding.
pub fn window_unpartition(windows: &Tensor, (b, h, w): (usize, usize, usize), ws: usize) -> Result<Tensor> {
    let (nh, nw) = (h.div_ceil(ws), w.div_ceil(ws));
    let c = windows.dim(D::Minus1)?;
    let x = windows.reshape((b, nh, nw, ws, ws, c))?.permute((0, 1, 3, 2, 4, 5))?.contiguous()?.reshape((
        b,
        nh * ws,
        nw * ws,
        c,
    ))?;
    if (nh * ws, nw * ws) == (h, w) {
        return Ok(x);
    }
    Ok(x.narrow(1, 0, h)?.narrow(2, 0, w)?.contiguous()?)
}

fn out_size(len: usize, k: usize, stride: usize, pad: usize) -> usize {
    (len + 2 * pad - k) / stride + 1
}

/// `x: [B, H, W, C]` zero-padded by `pad` on every side, plus what the strided taps of
/// [`tap`] need at the bottom and right.
fn pad_for_taps(x: &Tensor, k: usize, s: usize, pad: usize) -> Result<(Tensor, (usize, usize))> {
    let (_, h, w, _) = x.dims4()?;
    let (ho, wo) = (out_size(h, k, s, pad), out_size(w, k, s, pad));
    // Tap `ky` reads rows `ky + s·oy`, `oy < ho`; `tap` takes `s·ho` rows from `ky` on.
    let extra_h = (k - 1 + s * ho).saturating_sub(h + 2 * pad);
    let extra_w = (k - 1 + s * wo).saturating_sub(w + 2 * pad);
    let mut x = x.clone();
    if pad + extra_h > 0 {
        x = x.pad_with_zeros(1, pad, pad + extra_h)?;
    }
    if pad + extra_w > 0 {
        x = x.pad_with_zeros(2, pad, pad + extra_w)?;
    }
    Ok((x, (ho, wo)))
}

/// The input pixels under kernel tap `(ky, kx)` for every output position: `[B, ho, wo, C]`.
fn tap(xp: &Tensor, (ky, kx): (usize, usize), s: usize, (ho, wo): (usize, usize)) -> Result<Tensor> {
    let (b, _, wp, c) = xp.dims4()?;
    let rows = xp.narrow(1, ky, s * ho)?;
    let rows = if s == 1 { rows } else { rows.reshape((b, ho, s, wp, c))?.narrow(2, 0, 1)?.squeeze(2)? };
    let cols = rows.narrow(2, kx, s * wo)?;
    Ok(if s == 1 { cols } else { cols.reshape((b, ho, wo, s, c))?.narrow(3, 0, 1)?.squeeze(3)? })
}

/// The im2col gather of [`super::conv::Conv2d`]: `[B, H, W, C] -> [B·H'·W', k·k·C]`, zero
/// padding, taps ordered `(ky, kx, c)`.
pub fn im2col(x: &Tensor, k: usize, s: usize, pad: usize) -> Result<Tensor> {
    let (b, _, _, c) = x.dims4()?;
    let (xp, (ho, wo)) = pad_for_taps(x, k, s, pad)?;
    let taps = (0..k * k).map(|i| tap(&xp, (i / k, i % k), s, (ho, wo))).collect::<Result<Vec<_>>>()?;
    Ok(Tensor::cat(&taps, 3)?.reshape((b * ho * wo, k * k * c))?)
}

/// [`super::conv::DepthwiseConv2d`]: `act(bias + Σ_taps x·w)`, the taps added in `(ky, kx)` order
/// onto the bias as the CPU loop adds them.
///
/// # Shapes
/// `x: [B, H, W, C]`, `weight: [k·k, C]` (tap-major), `bias: [C]` -> `[B, H', W', C]`
pub fn depthwise_conv(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    (k, s, pad): (usize, usize, usize),
    act: Option<Activation>,
) -> Result<Tensor> {
    let c = x.dim(3)?;
    // The k² products are summed in f32 for bf16/f16 inputs, as cuDNN accumulates a convolution.
    let dtype = x.dtype();
    let (x, weight, bias) = (x.to_dtype(DType::F32)?, weight.to_dtype(DType::F32)?, bias.to_dtype(DType::F32)?);
    let (xp, out) = pad_for_taps(&x, k, s, pad)?;
    let mut acc = bias.reshape((1, 1, 1, c))?;
    for i in 0..k * k {
        let w = weight.narrow(0, i, 1)?.reshape((1, 1, 1, c))?;
        acc = acc.broadcast_add(&tap(&xp, (i / k, i % k), s, out)?.broadcast_mul(&w)?)?;
    }
    let acc = match act {
        Some(a) => candle_core::Module::forward(&a, &acc)?,
        None => acc,
    };
    Ok(acc.to_dtype(dtype)?)
}

/// One axis of a bilinear resampling as gather indices and weights: `(i0, i1, w0, w1)` tensors of
/// `count` entries on `like`'s device (`u32` indices, weights in `like`'s dtype).
pub fn gather_taps(taps: &[(usize, usize, f32, f32)], like: &Tensor) -> Result<(Tensor, Tensor, Tensor, Tensor)> {
    let dev = like.device();
    let i0: Vec<u32> = taps.iter().map(|t| t.0 as u32).collect();
    let i1: Vec<u32> = taps.iter().map(|t| t.1 as u32).collect();
    let w0: Vec<f32> = taps.iter().map(|t| t.2).collect();
    let w1: Vec<f32> = taps.iter().map(|t| t.3).collect();
    let n = taps.len();
    Ok((
        Tensor::from_vec(i0, n, dev)?,
        Tensor::from_vec(i1, n, dev)?,
        Tensor::from_vec(w0, n, dev)?.to_dtype(like.dtype())?,
        Tensor::from_vec(w1, n, dev)?.to_dtype(like.dtype())?,
    ))
}

/// Separable two-tap resampling of planes `x: [N, ih, iw]`: columns first
/// (`t = x[.., x0]·wx0 + x[.., x1]·wx1`), then rows (`t[y0]·wy0 + t[y1]·wy1`), the order of the CPU
/// loop of `sam::transforms`; `rows`/`cols` as [`gather_taps`] returns them. -> `[N, rows, cols]`
pub fn resample_planes(
    x: &Tensor,
    rows: &(Tensor, Tensor, Tensor, Tensor),
    cols: &(Tensor, Tensor, Tensor, Tensor),
) -> Result<Tensor> {
    let (x0, x1, wx0, wx1) = cols;
    let t = (x.index_select(x0, 2)?.broadcast_mul(&wx0.reshape((1, 1, ()))?)?
        + x.index_select(x1, 2)?.broadcast_mul(&wx1.reshape((1, 1, ()))?)?)?;
    let (y0, y1, wy0, wy1) = rows;
    Ok((t.index_select(y0, 1)?.broadcast_mul(&wy0.reshape((1, (), 1))?)?
        + t.index_select(y1, 1)?.broadcast_mul(&wy1.reshape((1, (), 1))?)?)?)
}

/// `x + y` (same shapes): the fused CPU kernel for f32 CPU tensors, a candle add otherwise.
pub fn add(x: &Tensor, y: &Tensor) -> Result<Tensor> {
    if super::cpu::eligible(x) && super::cpu::eligible(y) && x.shape() == y.shape() {
        return super::cpu::add(x, y);
    }
    Ok(x.broadcast_add(y)?)
}

/// `act(x + y)` (same shapes): the fused CPU kernel for f32 CPU tensors, candle ops otherwise.
pub fn add_act(x: &Tensor, y: &Tensor, act: Activation) -> Result<Tensor> {
    if super::cpu::eligible(x) && super::cpu::eligible(y) && x.shape() == y.shape() {
        return super::cpu::add_act(x, y, act);
    }
    Ok(candle_core::Module::forward(&act, &(x + y)?)?)
}

/// A host-side `f32` table as a tensor of `shape` on `like`'s device and dtype (weights the CPU
/// kernels keep as slices: window padding rows, gathered bias tables, relative positions).
pub fn upload(values: &[f32], shape: &[usize], like: (&candle_core::Device, DType)) -> Result<Tensor> {
    Ok(Tensor::from_slice(values, shape, like.0)?.to_dtype(like.1)?)
}
