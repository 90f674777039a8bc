//! A pre-norm transformer block (CLIP's `ResidualAttentionBlock`, DINO's `Block`) as one
//! differentiable op for training on the CPU:
//!
//! ```text
//! x₁ = x  + s₁ ⊙ γ₁ ⊙ proj(attention(qkv(LN₁(x))))
//! y  = x₁ + s₂ ⊙ γ₂ ⊙ fc₂(act(fc₁(LN₂(x₁))))
//! ```
//!
//! with `γ` DINO's LayerScale (absent: 1) and `s` the per-sample stochastic-depth scale (absent:
//! 1). Composed from candle ops, a block's step spent more time in the autograd's bookkeeping
//! than in its products: a zeroed gradient tensor allocated and added into for every node, a
//! copy for every transpose and head split, and matmuls on candle's generic GEMM. Here the
//! forward keeps what the backward reads (the normalised inputs' statistics, `qkv`, the
//! attention output and each row's softmax maximum and normaliser, the MLP activation's value
//! and derivative), and the backward is written out: every product goes through the GEMMs of
//! [`crate::nn::packed`] (`dX = dY W` on the packed weight, the activation's derivative applied
//! in its epilogue, `dW = dYᵀ X` through [`gemm_tn`]), attention recomputes its
//! probabilities from the saved row statistics, the bias and LayerNorm gradients are column
//! sums. The parallel regions run on the kernels' thread team ([`crate::nn::team`]), and sums
//! over its tasks are added in task order: the same bits on every run.
//!
//! The parameters enter as one flat vector (their concatenation, which candle differentiates
//! by splitting the flat gradient back), so the whole block is a two-input custom op.
//!
//! Elsewhere (CUDA, other dtypes, the portable paths) [`forward`] composes the same
//! computation from the fused ops of [`super::ops`]; `tests/suite/train_block.rs` checks the
//! two against each other, values and every gradient.

use std::borrow::Cow;
use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp2, Device, Layout, Tensor};
use rayon::prelude::*;

use super::ops::{
    add_in_order, attention, col_sums, dot, f32_slice, gelu, layer_norm, linear, ln_backward, ln_forward,
    on_cpu_kernels, sum, values, CpuOut, FRAC_1_SQRT_2, FRAC_1_SQRT_2PI,
};
use crate::nn::cpu::{erf_fast, exp_fast, rows_per_task, threads, with_simd};
use crate::nn::packed::{gemm, gemm_tn, Epilogue, Lhs, PackedWeight};
use crate::nn::team::Shared;
use crate::nn::Activation;
use crate::{Error, Result};

/// A block's hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlockSpec {
    /// Attention heads (the width a multiple of it).
    pub heads: usize,
    /// LayerNorm ε.
    pub eps: f64,
    /// The MLP's activation: GELU or QuickGELU.
    pub act: Activation,
    /// A causal mask (CLIP's text tower).
    pub causal: bool,
}

/// A block's parameters, in PyTorch's layouts (`C` the width, `H` the MLP's hidden width).
#[derive(Debug, Clone)]
pub struct BlockParams {
    /// `norm1` / `ln_1`: weight and bias, `[C]`.
    pub ln1: (Tensor, Tensor),
    /// The fused `q, k, v` projection, `[3C, C]`.
    pub qkv_w: Tensor,
    /// Its bias, `[3C]` (DINO's `qkv_bias=False` has none).
    pub qkv_b: Option<Tensor>,
    /// The attention's output projection, `[C, C]` and `[C]`.
    pub proj: (Tensor, Tensor),
    /// LayerScale of the attention branch, `[C]`.
    pub ls1: Option<Tensor>,
    /// `norm2` / `ln_2`, `[C]`.
    pub ln2: (Tensor, Tensor),
    /// `fc1` / `c_fc`: `[H, C]` and `[H]`.
    pub fc1: (Tensor, Tensor),
    /// `fc2` / `c_proj`: `[C, H]` and `[C]`.
    pub fc2: (Tensor, Tensor),
    /// LayerScale of the MLP branch, `[C]`.
    pub ls2: Option<Tensor>,
}

/// Stochastic depth: each sample's scale of the attention and the MLP branch (`0` dropped,
/// `1 / keep` kept), `[B]` each.
#[derive(Debug, Clone, PartialEq)]
pub struct DropPath {
    /// The attention branch's scales.
    pub attn: Vec<f32>,
    /// The MLP branch's scales.
    pub mlp: Vec<f32>,
}

/// The parameters' slots in the flat vector, in order.
#[derive(Debug, Clone, Copy)]
enum Part {
    Ln1W,
    Ln1B,
    QkvW,
    QkvB,
    ProjW,
    ProjB,
    Ls1,
    Ln2W,
    Ln2B,
    Fc1W,
    Fc1B,
    Fc2W,
    Fc2B,
    Ls2,
}
const PARTS: usize = 14;

impl BlockParams {
    fn parts(&self) -> [Option<&Tensor>; PARTS] {
        [
            Some(&self.ln1.0),
            Some(&self.ln1.1),
            Some(&self.qkv_w),
            self.qkv_b.as_ref(),
            Some(&self.proj.0),
            Some(&self.proj.1),
            self.ls1.as_ref(),
            Some(&self.ln2.0),
            Some(&self.ln2.1),
            Some(&self.fc1.0),
            Some(&self.fc1.1),
            Some(&self.fc2.0),
            Some(&self.fc2.1),
            self.ls2.as_ref(),
        ]
    }

    /// The shapes every part must have for width `c`.
    fn check(&self, c: usize) -> Result<usize> {
        let h = self.fc1.0.dim(0)?;
        let want: [&[usize]; PARTS] =
            [&[c], &[c], &[3 * c, c], &[3 * c], &[c, c], &[c], &[c], &[c], &[c], &[h, c], &[h], &[c, h], &[c], &[c]];
        for (i, (p, w)) in self.parts().iter().zip(want).enumerate() {
            if let Some(p) = p {
                if p.dims() != w {
                    return Err(Error::arg("block", format!("parameter {i} has shape {:?}, expected {w:?}", p.dims())));
                }
            }
        }
        Ok(h)
    }
}

/// One pre-norm block, differentiable: fused on the CPU in f32, composed elsewhere.
///
/// # Shapes
/// `x: [B, N, C]` -> `[B, N, C]`; `drop`'s vectors `[B]`.
pub fn forward(x: &Tensor, p: &BlockParams, spec: BlockSpec, drop: Option<&DropPath>) -> Result<Tensor> {
    let (b, n, c) = x.dims3()?;
    let hidden = check_spec(p, spec, c)?;
    if let Some(d) = drop {
        if d.attn.len() != b || d.mlp.len() != b {
            return Err(Error::arg(
                "block",
                format!("drop-path scales for {} / {} samples, batch {b}", d.attn.len(), d.mlp.len()),
            ));
        }
    }
    let seqs: Vec<usize> = (0..=b).map(|i| i * n).collect();
    match fused(x, p, spec, (seqs, hidden), drop)? {
        Some(y) => Ok(y),
        None => composed(x, p, spec, drop),
    }
}

/// One pre-norm block over sequences of different lengths laid end to end, each attending only
/// to its own tokens: what [`forward`] gives each sequence alone, without padding the shorter
/// ones (CLIP's text tower reads each caption only up to its end-of-text token, and under the
/// causal mask no position sees a later one, so the tokens after it can be left out).
///
/// # Shapes
/// `x: [T, C]` -> `[T, C]` with `T = Σ lengths`.
pub fn forward_packed(x: &Tensor, lengths: &[usize], p: &BlockParams, spec: BlockSpec) -> Result<Tensor> {
    let (t, c) = x.dims2()?;
    let hidden = check_spec(p, spec, c)?;
    if lengths.contains(&0) || lengths.iter().sum::<usize>() != t {
        return Err(Error::arg("block", format!("sequence lengths {lengths:?} do not cover {t} rows")));
    }
    let mut seqs = vec![0];
    seqs.extend(lengths.iter().scan(0, |end, &n| {
        *end += n;
        Some(*end)
    }));
    match fused(x, p, spec, (seqs, hidden), None)? {
        Some(y) => Ok(y),
        None => composed_packed(x, lengths, p, spec),
    }
}

/// [`forward_packed`] from candle ops: [`composed`] on each sequence alone.
pub fn composed_packed(x: &Tensor, lengths: &[usize], p: &BlockParams, spec: BlockSpec) -> Result<Tensor> {
    let mut start = 0;
    let mut out = Vec::with_capacity(lengths.len());
    for &n in lengths {
        out.push(composed(&x.narrow(0, start, n)?.unsqueeze(0)?, p, spec, None)?.squeeze(0)?);
        start += n;
    }
    Ok(Tensor::cat(&out, 0)?)
}

/// The activation and the heads against the width `c`, and the parameters' shapes: the MLP's
/// hidden width.
fn check_spec(p: &BlockParams, spec: BlockSpec, c: usize) -> Result<usize> {
    if spec.heads == 0 || !c.is_multiple_of(spec.heads) {
        return Err(Error::arg("block", format!("width {c} is not a multiple of {} heads", spec.heads)));
    }
    if !matches!(spec.act, Activation::Gelu | Activation::QuickGelu) {
        return Err(Error::arg("block", format!("{:?} is not a trainable MLP activation", spec.act)));
    }
    p.check(c)
}

/// The fused op over the sequences of `x`'s rows (`seqs`: their boundaries), or `None` when a
/// tensor is not on the CPU kernels' path.
fn fused(
    x: &Tensor,
    p: &BlockParams,
    spec: BlockSpec,
    (seqs, hidden): (Vec<usize>, usize),
    drop: Option<&DropPath>,
) -> Result<Option<Tensor>> {
    let parts: Vec<&Tensor> = p.parts().into_iter().flatten().collect();
    let mut all = vec![x];
    all.extend(parts.iter().copied());
    if !on_cpu_kernels(&all) {
        return Ok(None);
    }
    let flat: Vec<Tensor> = parts.iter().map(|t| t.flatten_all()).collect::<candle_core::Result<_>>()?;
    let theta = Tensor::cat(&flat, 0)?;
    let mut at = [None; PARTS];
    let mut off = 0;
    for (slot, t) in at.iter_mut().zip(p.parts()) {
        if let Some(t) = t {
            *slot = Some((off, off + t.elem_count()));
            off += t.elem_count();
        }
    }
    let c = x.dim(candle_core::D::Minus1)?;
    let rows = x.elem_count() / c.max(1);
    let op =
        BlockOp { spec, dims: (rows, c, hidden), seqs, at, total: off, drop: drop.cloned(), saved: Mutex::new(None) };
    Ok(Some(x.contiguous()?.apply_op2(&theta, op)?))
}

/// The block from candle ops (and the fused element-wise ops): the reference the fused op is
/// tested against, and the path on devices other than the CPU.
pub fn composed(x: &Tensor, p: &BlockParams, spec: BlockSpec, drop: Option<&DropPath>) -> Result<Tensor> {
    let (b, n, c) = x.dims3()?;
    let (heads, d) = (spec.heads, c / spec.heads);
    let scale = 1.0 / (d as f64).sqrt();
    let branch = |y: Tensor, gamma: Option<&Tensor>, s: Option<&Vec<f32>>| -> Result<Tensor> {
        let y = match gamma {
            Some(g) => y.broadcast_mul(g)?,
            None => y,
        };
        Ok(match s {
            Some(s) => y.broadcast_mul(&Tensor::from_slice(s, (b, 1, 1), x.device())?.to_dtype(y.dtype())?)?,
            None => y,
        })
    };
    let h = layer_norm(x, &p.ln1.0, &p.ln1.1, spec.eps)?;
    let qkv = linear(&h, &p.qkv_w, p.qkv_b.as_ref())?;
    let t = qkv.reshape((b, n, 3, heads, d))?.permute((2, 0, 3, 1, 4))?;
    // torch's SDPA scales q before the product.
    let a = attention(&t.get(0)?, &t.get(1)?, &t.get(2)?, scale, spec.causal)?.transpose(1, 2)?.reshape((b, n, c))?;
    let a = linear(&a, &p.proj.0, Some(&p.proj.1))?;
    let x = (x + branch(a, p.ls1.as_ref(), drop.map(|d| &d.attn))?)?;
    let h = layer_norm(&x, &p.ln2.0, &p.ln2.1, spec.eps)?;
    let h = activation(&linear(&h, &p.fc1.0, Some(&p.fc1.1))?, spec.act)?;
    let f = linear(&h, &p.fc2.0, Some(&p.fc2.1))?;
    Ok((&x + branch(f, p.ls2.as_ref(), drop.map(|d| &d.mlp))?)?)
}

/// The MLP's activation from differentiable candle ops.
pub fn activation(x: &Tensor, act: Activation) -> Result<Tensor> {
    match act {
        // QuickGELU: x · sigmoid(1.702 x) = x / (1 + exp(−1.702 x)).
        Activation::QuickGelu => Ok(x.broadcast_div(&(x.affine(-1.702, 0.0)?.exp()? + 1.0)?)?),
        Activation::Gelu => gelu(x),
        other => Err(Error::arg("activation", format!("{other:?} is not trainable in a transformer block"))),
    }
}

/// What the forward keeps for the backward (`T` rows).
struct Saved {
    /// `(mean, 1/σ)` of each row of `x` and of `x₁`.
    stats1: Vec<(f32, f32)>,
    stats2: Vec<(f32, f32)>,
    /// `LN₁(x)`, `[T, C]`.
    h1: Vec<f32>,
    /// `[T, 3C]`.
    qkv: Vec<f32>,
    /// Each attention row's softmax statistics, `(max, 1/Σ exp(s − max))` of its scaled scores,
    /// each sequence's `[heads, n, 2]`, end to end: `P = exp(s − max) · (1/Σ)` again (a
    /// log-sum-exp in f32 lost a few ulps of the scores, 5× the error against f64 on peaked rows).
    lse: Vec<f32>,
    /// The heads' outputs, `[T, C]`.
    o: Vec<f32>,
    /// The attention branch before its scales (LayerScale's gradient reads it).
    a: Option<Vec<f32>>,
    /// `x₁`, `[T, C]`.
    x1: Vec<f32>,
    /// `LN₂(x₁)`, `[T, C]`.
    h2: Vec<f32>,
    /// The activation's derivative at `fc₁`'s output, and its value, `[T, H]`.
    du: Vec<f32>,
    g: Vec<f32>,
    /// The MLP branch before its scales.
    f: Option<Vec<f32>>,
}

struct BlockOp {
    spec: BlockSpec,
    /// `(T, C, H)`: the rows (every sequence's tokens, end to end), the width, the MLP's width.
    dims: (usize, usize, usize),
    /// Where each sequence's rows start, then `T`: `[0, n₀, n₀ + n₁, …, T]`.
    seqs: Vec<usize>,
    /// Each part's range in the flat parameter vector.
    at: [Option<(usize, usize)>; PARTS],
    total: usize,
    drop: Option<DropPath>,
    saved: Mutex<Option<Saved>>,
}

fn msg(e: impl std::fmt::Display) -> candle_core::Error {
    candle_core::Error::Msg(format!("fused transformer block: {e}"))
}

/// `src` (`[rows, cols]`, row-major) transposed, through 16×16 tiles read and written a row
/// at a time.
fn transpose(src: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    const TILE: usize = 16;
    let mut out = vec![0f32; rows * cols];
    if rows == 0 || cols == 0 {
        return out;
    }
    // Tasks own bands of 16 output rows (source columns).
    out.par_chunks_mut(TILE * rows).enumerate().for_each(|(band, dst)| {
        with_simd(
            #[inline(always)]
            || {
                let c0 = band * TILE;
                let cw = dst.len() / rows;
                let mut tile = [[0f32; TILE]; TILE];
                for r0 in (0..rows).step_by(TILE) {
                    let rh = (rows - r0).min(TILE);
                    for (i, t) in tile.iter_mut().enumerate().take(rh) {
                        t[..cw].copy_from_slice(&src[(r0 + i) * cols + c0..(r0 + i) * cols + c0 + cw]);
                    }
                    for j in 0..cw {
                        let d = &mut dst[j * rows + r0..j * rows + r0 + rh];
                        for (i, v) in d.iter_mut().enumerate() {
                            *v = tile[i][j];
                        }
                    }
                }
            },
        )
    });
    out
}

/// A PyTorch `[out, in]` weight packed as the GEMM's `[in, out]` right-hand side.
fn pack_t(w: &[f32], out: usize, inp: usize) -> PackedWeight {
    PackedWeight::from_k_by_n(&transpose(w, out, inp), inp, out)
}

/// `x W_ᵀ + b` for `x: [t, in]` and a PyTorch `[out, in]` weight.
pub(super) fn dense(x: &[f32], t: usize, w: &[f32], out: usize, inp: usize, b: Option<&[f32]>) -> Result<Vec<f32>> {
    gemm(Lhs::Rows { data: x, m: t }, &pack_t(w, out, inp), b, Epilogue::default(), threads())
}

/// `dY W` for `dY: [t, out]` and a PyTorch `[out, in]` weight: `[t, in]`.
pub(super) fn dense_dx(dy: &[f32], t: usize, w: &[f32], out: usize, inp: usize) -> Result<Vec<f32>> {
    gemm(Lhs::Rows { data: dy, m: t }, &PackedWeight::from_k_by_n(w, out, inp), None, Epilogue::default(), threads())
}

/// `(dY W) ⊙ s` for `dY: [t, out]`, a PyTorch `[out, in]` weight and `s: [t, in]`.
fn dense_dx_scaled(dy: &[f32], t: usize, w: &[f32], out: usize, inp: usize, s: &[f32]) -> Result<Vec<f32>> {
    let w = PackedWeight::from_k_by_n(w, out, inp);
    gemm(Lhs::Rows { data: dy, m: t }, &w, None, Epilogue::scale(s), threads())
}

/// `dYᵀ X` for `dY: [t, out]`, `X: [t, in]`: the weight's gradient, `[out, in]` ([`gemm_tn`]).
pub(super) fn dense_dw(dy: &[f32], x: &[f32], t: usize, out: usize, inp: usize) -> Result<Vec<f32>> {
    gemm_tn(dy, x, t, out, inp, threads())
}

/// `x + s_row · γ ⊙ a` (the residual of a scaled branch).
fn residual(x: &[f32], a: &[f32], c: usize, n: usize, gamma: Option<&[f32]>, s: Option<&[f32]>) -> Vec<f32> {
    let mut y = vec![0f32; x.len()];
    let rows = rows_per_task(c);
    crate::nn::team::for_each_chunk(&mut y, rows * c, |i, y| {
        let (x, a) = (&x[i * rows * c..][..y.len()], &a[i * rows * c..][..y.len()]);
        with_simd(
            #[inline(always)]
            || {
                for (r, ((yr, xr), ar)) in
                    y.chunks_exact_mut(c).zip(x.chunks_exact(c)).zip(a.chunks_exact(c)).enumerate()
                {
                    let sc = s.map_or(1.0, |s| s[(i * rows + r) / n]);
                    match gamma {
                        Some(gm) => {
                            for j in 0..c {
                                yr[j] = xr[j] + sc * gm[j] * ar[j];
                            }
                        }
                        None => {
                            for j in 0..c {
                                yr[j] = xr[j] + sc * ar[j];
                            }
                        }
                    }
                }
            },
        )
    });
    y
}

/// The backward of a scaled branch `s_row · γ ⊙ a`: the gradient reaching `a` (`dy` itself,
/// borrowed, for an unscaled branch) and `dγ`.
fn branch_backward<'a>(
    dy: &'a [f32],
    a: Option<&[f32]>,
    c: usize,
    n: usize,
    gamma: Option<&[f32]>,
    s: Option<&[f32]>,
) -> (Cow<'a, [f32]>, Option<Vec<f32>>) {
    if gamma.is_none() && s.is_none() {
        return (Cow::Borrowed(dy), None);
    }
    let mut da = vec![0f32; dy.len()];
    let rows = rows_per_task(c);
    let dgamma = crate::nn::team::map_chunks(&mut da, rows * c, |i, da| {
        let dy = &dy[i * rows * c..][..da.len()];
        with_simd(
            #[inline(always)]
            || {
                let mut dg = vec![0f32; c];
                for (r, (dar, dyr)) in da.chunks_exact_mut(c).zip(dy.chunks_exact(c)).enumerate() {
                    let row = i * rows + r;
                    let sc = s.map_or(1.0, |s| s[row / n]);
                    match gamma {
                        Some(gm) => {
                            let ar = &a.expect("a kept with LayerScale")[row * c..(row + 1) * c];
                            for j in 0..c {
                                dar[j] = dyr[j] * sc * gm[j];
                                dg[j] += dyr[j] * sc * ar[j];
                            }
                        }
                        None => {
                            for j in 0..c {
                                dar[j] = dyr[j] * sc;
                            }
                        }
                    }
                }
                dg
            },
        )
    });
    (Cow::Owned(da), gamma.map(|_| add_in_order(dgamma, c)))
}

const QUICK: f32 = 1.702;

/// QuickGELU and its derivative: `u σ(1.702 u)`, `σ + 1.702 u σ (1 − σ)`.
#[inline(always)]
fn quick_gelu(u: f32) -> (f32, f32) {
    let s = 1.0 / (1.0 + exp_fast(-QUICK * u));
    (u * s, s + QUICK * u * s * (1.0 - s))
}

/// Exact GELU and its derivative: `u Φ(u)`, `Φ(u) + u φ(u)`.
#[inline(always)]
fn gelu_erf(u: f32) -> (f32, f32) {
    let cdf = 0.5 * (1.0 + erf_fast(u * FRAC_1_SQRT_2));
    (u * cdf, cdf + u * FRAC_1_SQRT_2PI * exp_fast(-0.5 * u * u))
}

/// Rows per task of [`dense_act`]: 96 rows of a 512-wide hidden layer are 192 KiB, still in L2
/// when the activation reads them.
const ACT_ROWS: usize = 96;

/// `act(x W_ᵀ + b)` and `act'` there for `x: [t, in]` and a PyTorch `[out, in]` weight (the
/// backward multiplies by the saved derivative inside its product's epilogue instead of a pass
/// of its own): the product in blocks of [`ACT_ROWS`] rows, each block's activation and
/// derivative taken while it is in cache (the whole `[t, out]` product, megabytes, would be
/// written to memory and read back). The same values as the product and then the activation.
fn dense_act(
    x: &[f32],
    t: usize,
    (w, out, inp): (&[f32], usize, usize),
    b: Option<&[f32]>,
    act: Activation,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let w = pack_t(w, out, inp);
    let len = t * out;
    let (mut g, mut du) = (Vec::with_capacity(len), Vec::with_capacity(len));
    let du_at = Shared(du.spare_capacity_mut().as_mut_ptr());
    let done = crate::nn::team::map_chunks(&mut g.spare_capacity_mut()[..len], ACT_ROWS * out, |i, g| {
        let rows = g.len() / out;
        let x = &x[i * ACT_ROWS * inp..][..rows * inp];
        let u = gemm(Lhs::Rows { data: x, m: rows }, &w, b, Epilogue::default(), 1)?;
        // SAFETY: block `i` of `du` is the same range as block `i` of `g`, disjoint from the
        // others, inside `du`'s capacity.
        let du = unsafe { std::slice::from_raw_parts_mut(du_at.get().add(i * ACT_ROWS * out), g.len()) };
        // One loop per activation (both `#[inline(always)]`), so each vectorises.
        match act {
            Activation::QuickGelu => act_into(&u, g, du, quick_gelu),
            _ => act_into(&u, g, du, gelu_erf),
        }
        Ok::<(), Error>(())
    });
    done.into_iter().collect::<Result<()>>()?;
    // SAFETY: the blocks cover all `len` values of both buffers, and each wrote its own.
    unsafe {
        g.set_len(len);
        du.set_len(len);
    }
    Ok((g, du))
}

/// `(g, du) = f(u)`, value by value, into uninitialised buffers of `u`'s length.
#[inline(always)]
fn act_into(
    u: &[f32],
    g: &mut [std::mem::MaybeUninit<f32>],
    du: &mut [std::mem::MaybeUninit<f32>],
    f: impl Fn(f32) -> (f32, f32),
) {
    with_simd(
        #[inline(always)]
        || {
            for ((g, d), &v) in g.iter_mut().zip(du.iter_mut()).zip(u) {
                let (a, da) = f(v);
                g.write(a);
                d.write(da);
            }
        },
    )
}

/// Rows per register tile of [`small_gemm`]: 6 rows × 16 columns of sums are 12 of AVX2's 16
/// registers.
const SR: usize = 6;

/// `c[r][j] = Σ_k a(r, k) · b[k][j]` for `r < m`, `k < kd`, `j < nb` (a multiple of 16), `b` and
/// `c` row-major with leading dimensions `ldb`, `ldc`; `a(r, k)` is `a[r·lda + k]`, or with
/// `a_t` `a[k·lda + r]` (`Pᵀ dO`, `dSᵀ q` without transposing `P`, `dS`). Each tile of six rows
/// of `a` is first copied depth-major into `pack` (the six values of one depth step side by
/// side), then run against the columns sixteen at a time, each step a fused multiply–add
/// (`mul_add`: one instruction inside [`with_simd`]). The attention's per-head products, too
/// small for the packed GEMM's blocking.
#[inline(always)]
fn small_gemm(
    (a, lda, a_t): (&[f32], usize, bool),
    m: usize,
    kd: usize,
    (b, ldb): (&[f32], usize),
    nb: usize,
    (c, ldc): (&mut [f32], usize),
    pack: &mut Vec<f32>,
) {
    pack.resize(kd * SR, 0.0);
    for r in (0..m).step_by(SR) {
        // Rows past the end repeat the last one (branch-free), and are not stored.
        for q in 0..SR {
            let row = (r + q).min(m - 1);
            if a_t {
                for (k, v) in pack.chunks_exact_mut(SR).enumerate() {
                    v[q] = a[k * lda + row];
                }
            } else {
                for (v, &x) in pack.chunks_exact_mut(SR).zip(&a[row * lda..row * lda + kd]) {
                    v[q] = x;
                }
            }
        }
        for j0 in (0..nb).step_by(16) {
            let mut acc = [[0f32; 16]; SR];
            for (k, av) in pack[..kd * SR].chunks_exact(SR).enumerate() {
                let bv: &[f32; 16] = b[k * ldb + j0..k * ldb + j0 + 16].try_into().expect("16 values");
                for q in 0..SR {
                    for l in 0..16 {
                        acc[q][l] = av[q].mul_add(bv[l], acc[q][l]);
                    }
                }
            }
            for (q, acc) in acc.iter().enumerate().take((m - r).min(SR)) {
                c[(r + q) * ldc + j0..(r + q) * ldc + j0 + 16].copy_from_slice(acc);
            }
        }
    }
}

/// The largest of `v` (not empty), sixteen lanes at a time (the maximum is exact in any order).
#[inline(always)]
fn lane_max(v: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 16];
    let mut chunks = v.chunks_exact(16);
    for ch in &mut chunks {
        for l in 0..16 {
            lanes[l] = lanes[l].max(ch[l]);
        }
    }
    let tail = chunks.remainder().iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    lanes.iter().fold(tail, |m, &x| m.max(x))
}

/// `dst[j·ldd + i] = src[i·lds + j]` for `i < rows`, `j < cols`: in 8 × 8 blocks, so each block's
/// reads and writes stay on eight lines each.
#[inline(always)]
fn transpose_into(src: &[f32], lds: usize, rows: usize, cols: usize, dst: &mut [f32], ldd: usize) {
    for i0 in (0..rows).step_by(8) {
        for j0 in (0..cols).step_by(8) {
            for j in j0..(j0 + 8).min(cols) {
                for i in i0..(i0 + 8).min(rows) {
                    dst[j * ldd + i] = src[i * lds + j];
                }
            }
        }
    }
}

/// One head's operands, padded with zeros to multiples of 16 (`np ≥ N` keys, `dp ≥ d` channels).
struct HeadBufs {
    n: usize,
    d: usize,
    np: usize,
    dp: usize,
    /// `scale · q`, `[N, dp]`.
    qs: Vec<f32>,
    /// `k`, `[np, dp]`; `kᵀ`, `[d, np]`.
    k: Vec<f32>,
    kt: Vec<f32>,
    /// `v`, `[np, dp]`; `vᵀ`, `[d, np]`.
    v: Vec<f32>,
    vt: Vec<f32>,
}

impl HeadBufs {
    fn new(n: usize, d: usize) -> Self {
        let (np, dp) = (n.next_multiple_of(16), d.next_multiple_of(16));
        Self {
            n,
            d,
            np,
            dp,
            qs: vec![0f32; n * dp],
            k: vec![0f32; np * dp],
            kt: vec![0f32; d * np],
            v: vec![0f32; np * dp],
            vt: vec![0f32; d * np],
        }
    }

    /// Gathers head `h` of one sample's `qkv` rows (`[N, 3C]`): `scale·q` and `kᵀ` always, `v`
    /// for the forward, `k` and `vᵀ` for the backward.
    #[inline(always)]
    fn gather(&mut self, qkv: &[f32], c: usize, h: usize, scale: f32, backward: bool) {
        let (n, d, np, dp) = (self.n, self.d, self.np, self.dp);
        for i in 0..n {
            let row = &qkv[i * 3 * c..(i + 1) * 3 * c];
            let (q, k, v) =
                (&row[h * d..(h + 1) * d], &row[c + h * d..c + (h + 1) * d], &row[2 * c + h * d..2 * c + (h + 1) * d]);
            for (s, &x) in self.qs[i * dp..i * dp + d].iter_mut().zip(q) {
                *s = x * scale;
            }
            if backward {
                self.k[i * dp..i * dp + d].copy_from_slice(k);
            } else {
                self.v[i * dp..i * dp + d].copy_from_slice(v);
            }
        }
        transpose_into(&qkv[c + h * d..], 3 * c, n, d, &mut self.kt, np);
        if backward {
            transpose_into(&qkv[2 * c + h * d..], 3 * c, n, d, &mut self.vt, np);
        }
    }

    /// The scaled scores `[N, np]` (`scale·q kᵀ`; the padding columns 0).
    #[inline(always)]
    fn scores(&self, s: &mut [f32], pack: &mut Vec<f32>) {
        small_gemm((&self.qs, self.dp, false), self.n, self.d, (&self.kt, self.np), self.np, (s, self.np), pack);
    }
}

impl BlockOp {
    fn part<'a>(&self, th: &'a [f32], p: Part) -> Option<&'a [f32]> {
        self.at[p as usize].map(|(a, b)| &th[a..b])
    }

    fn req<'a>(&self, th: &'a [f32], p: Part) -> &'a [f32] {
        self.part(th, p).expect("a required block parameter")
    }

    fn scale(&self) -> f32 {
        let (_, c, _) = self.dims;
        1.0 / ((c / self.spec.heads) as f32).sqrt()
    }

    fn limit(&self, i: usize, n: usize) -> usize {
        if self.spec.causal {
            i + 1
        } else {
            n
        }
    }

    /// The sequences' boundaries scaled by `per_row` values (a buffer's spans).
    fn spans(&self, per_row: usize) -> Vec<usize> {
        self.seqs.iter().map(|r| r * per_row).collect()
    }

    /// Attention over every sequence and head: the heads' outputs `[T, C]` and the rows'
    /// softmax statistics.
    fn attention_forward(&self, qkv: &[f32]) -> (Vec<f32>, Vec<f32>) {
        let (t, c, _) = self.dims;
        let heads = self.spec.heads;
        let d = c / heads;
        let scale = self.scale();
        let mut o = vec![0f32; t * c];
        let mut lse = vec![0f32; t * heads * 2];
        // On the kernels' thread team, as the GEMMs around it (a rayon region here left the
        // team's helper spinning beside rayon's two threads on two cores).
        let lse_at = Shared(lse.as_mut_ptr());
        crate::nn::team::for_each_span(&mut o, &self.spans(c), |i, o| {
            let (r0, n) = (self.seqs[i], self.seqs[i + 1] - self.seqs[i]);
            let qkv = &qkv[r0 * 3 * c..(r0 + n) * 3 * c];
            // SAFETY: sequence `i`'s statistics, disjoint from every other task's; `lse` outlives
            // the region.
            let lse = unsafe { std::slice::from_raw_parts_mut(lse_at.get().add(r0 * heads * 2), heads * n * 2) };
            with_simd(
                #[inline(always)]
                || {
                    let mut hb = HeadBufs::new(n, d);
                    let (np, dp) = (hb.np, hb.dp);
                    let (mut p, mut out) = (vec![0f32; n * np], vec![0f32; n * dp]);
                    let mut pack = Vec::new();
                    for h in 0..heads {
                        hb.gather(qkv, c, h, scale, false);
                        hb.scores(&mut p, &mut pack);
                        for i in 0..n {
                            let lim = self.limit(i, n);
                            let row = &mut p[i * np..(i + 1) * np];
                            let max = lane_max(&row[..lim]);
                            for v in row[..lim].iter_mut() {
                                *v = exp_fast(*v - max);
                            }
                            let inv = 1.0 / sum(&row[..lim]);
                            lse[(h * n + i) * 2] = max;
                            lse[(h * n + i) * 2 + 1] = inv;
                            for v in row[..lim].iter_mut() {
                                *v *= inv;
                            }
                            row[lim..].fill(0.0);
                        }
                        // O = P v (the padding columns of P are 0: the depth stops at N).
                        small_gemm((&p, np, false), n, n, (&hb.v, dp), dp, (&mut out, dp), &mut pack);
                        for i in 0..n {
                            o[i * c + h * d..i * c + (h + 1) * d].copy_from_slice(&out[i * dp..i * dp + d]);
                        }
                    }
                },
            )
        });
        (o, lse)
    }

    /// Attention's backward: `dqkv`, `[T, 3C]`, from the heads' output gradient `[T, C]`:
    /// `P` again from the saved row statistics, `dP = dO vᵀ`, `dS = P ⊙ (dP − rowsum(dP ⊙ P))`,
    /// `dq = scale·dS k`, `dk = dSᵀ (scale·q)`, `dv = Pᵀ dO`.
    fn attention_backward(&self, qkv: &[f32], lse: &[f32], dout: &[f32]) -> Vec<f32> {
        let (t, c, _) = self.dims;
        let heads = self.spec.heads;
        let d = c / heads;
        let scale = self.scale();
        let mut dqkv = vec![0f32; t * 3 * c];
        // On the thread team, as the forward.
        crate::nn::team::for_each_span(&mut dqkv, &self.spans(3 * c), |i, dqkv| {
            let (r0, n) = (self.seqs[i], self.seqs[i + 1] - self.seqs[i]);
            let qkv = &qkv[r0 * 3 * c..(r0 + n) * 3 * c];
            let lse = &lse[r0 * heads * 2..(r0 + n) * heads * 2];
            let dout = &dout[r0 * c..(r0 + n) * c];
            with_simd(
                #[inline(always)]
                || {
                    let mut hb = HeadBufs::new(n, d);
                    let (np, dp) = (hb.np, hb.dp);
                    let (mut p, mut ds) = (vec![0f32; n * np], vec![0f32; n * np]);
                    let mut go = vec![0f32; n * dp];
                    let mut out = vec![0f32; np * dp];
                    let mut pack = Vec::new();
                    for h in 0..heads {
                        hb.gather(qkv, c, h, scale, true);
                        for i in 0..n {
                            go[i * dp..i * dp + d].copy_from_slice(&dout[i * c + h * d..i * c + (h + 1) * d]);
                        }
                        hb.scores(&mut p, &mut pack);
                        // dP = dO vᵀ (into `ds`).
                        small_gemm((&go, dp, false), n, d, (&hb.vt, np), np, (&mut ds, np), &mut pack);
                        for i in 0..n {
                            let lim = self.limit(i, n);
                            let (max, inv) = (lse[(h * n + i) * 2], lse[(h * n + i) * 2 + 1]);
                            let (pr, dr) = (&mut p[i * np..(i + 1) * np], &mut ds[i * np..(i + 1) * np]);
                            for v in pr[..lim].iter_mut() {
                                *v = exp_fast(*v - max) * inv;
                            }
                            pr[lim..].fill(0.0);
                            let delta = dot(&pr[..lim], &dr[..lim]);
                            for (g, &pv) in dr[..lim].iter_mut().zip(pr[..lim].iter()) {
                                *g = pv * (*g - delta);
                            }
                            dr[lim..].fill(0.0);
                        }
                        // dq = scale · dS k (over the N keys; dS's padding columns are 0).
                        small_gemm((&ds, np, false), n, n, (&hb.k, dp), dp, (&mut out, dp), &mut pack);
                        for i in 0..n {
                            let base = i * 3 * c + h * d;
                            for (o, v) in dqkv[base..base + d].iter_mut().zip(&out[i * dp..i * dp + d]) {
                                *o = v * scale;
                            }
                        }
                        // dk = dSᵀ (scale·q).
                        small_gemm((&ds, np, true), n, n, (&hb.qs, dp), dp, (&mut out, dp), &mut pack);
                        for j in 0..n {
                            let base = j * 3 * c + c + h * d;
                            dqkv[base..base + d].copy_from_slice(&out[j * dp..j * dp + d]);
                        }
                        // dv = Pᵀ dO.
                        small_gemm((&p, np, true), n, n, (&go, dp), dp, (&mut out, dp), &mut pack);
                        for j in 0..n {
                            let base = j * 3 * c + 2 * c + h * d;
                            dqkv[base..base + d].copy_from_slice(&out[j * dp..j * dp + d]);
                        }
                    }
                },
            )
        });
        dqkv
    }

    /// The rows of each sample, for the per-sample drop-path scales (whose sequences are all
    /// one length).
    fn sample_rows(&self) -> usize {
        self.seqs.get(1).copied().unwrap_or(1).max(1)
    }

    fn forward_values(&self, x: &[f32], th: &[f32]) -> Result<(Vec<f32>, Saved)> {
        let (t, c, hid) = self.dims;
        let n = self.sample_rows();
        let eps = self.spec.eps as f32;
        let (s1, s2) = (self.drop.as_ref().map(|d| d.attn.as_slice()), self.drop.as_ref().map(|d| d.mlp.as_slice()));
        let (h1, stats1) = ln_forward(x, c, self.req(th, Part::Ln1W), self.req(th, Part::Ln1B), eps);
        let qkv = dense(&h1, t, self.req(th, Part::QkvW), 3 * c, c, self.part(th, Part::QkvB))?;
        let (o, lse) = self.attention_forward(&qkv);
        let a = dense(&o, t, self.req(th, Part::ProjW), c, c, self.part(th, Part::ProjB))?;
        let ls1 = self.part(th, Part::Ls1);
        let x1 = residual(x, &a, c, n, ls1, s1);
        let (h2, stats2) = ln_forward(&x1, c, self.req(th, Part::Ln2W), self.req(th, Part::Ln2B), eps);
        let (g, du) = dense_act(&h2, t, (self.req(th, Part::Fc1W), hid, c), self.part(th, Part::Fc1B), self.spec.act)?;
        let f = dense(&g, t, self.req(th, Part::Fc2W), c, hid, self.part(th, Part::Fc2B))?;
        let ls2 = self.part(th, Part::Ls2);
        let y = residual(&x1, &f, c, n, ls2, s2);
        let saved = Saved { stats1, stats2, h1, qkv, lse, o, a: ls1.map(|_| a), x1, h2, du, g, f: ls2.map(|_| f) };
        Ok((y, saved))
    }

    fn backward_values(&self, x: &[f32], th: &[f32], sv: &Saved, dy: &[f32]) -> Result<(Vec<f32>, Vec<f32>)> {
        let (t, c, hid) = self.dims;
        let n = self.sample_rows();
        let (s1, s2) = (self.drop.as_ref().map(|d| d.attn.as_slice()), self.drop.as_ref().map(|d| d.mlp.as_slice()));
        let mut dth = vec![0f32; self.total];
        let mut put = |p: Part, g: &[f32]| {
            if let Some((a, z)) = self.at[p as usize] {
                dth[a..z].copy_from_slice(g);
            }
        };
        // MLP branch.
        let (df, dls2) = branch_backward(dy, sv.f.as_deref(), c, n, self.part(th, Part::Ls2), s2);
        if let Some(g) = dls2 {
            put(Part::Ls2, &g);
        }
        // dL/du = (dF W₂) ⊙ act'(u), the factor applied in the product's epilogue.
        let dg = dense_dx_scaled(&df, t, self.req(th, Part::Fc2W), c, hid, &sv.du)?;
        put(Part::Fc2W, &dense_dw(&df, &sv.g, t, c, hid)?);
        put(Part::Fc2B, &col_sums(&df, c));
        drop(df);
        let du = dg;
        let dh2 = dense_dx(&du, t, self.req(th, Part::Fc1W), hid, c)?;
        put(Part::Fc1W, &dense_dw(&du, &sv.h2, t, hid, c)?);
        put(Part::Fc1B, &col_sums(&du, hid));
        drop(du);
        let mut dx1 = dy.to_vec();
        let (dw, db) = ln_backward(&dh2, &sv.x1, &sv.stats2, self.req(th, Part::Ln2W), &mut dx1);
        put(Part::Ln2W, &dw);
        put(Part::Ln2B, &db);
        // Attention branch.
        let (da, dls1) = branch_backward(&dx1, sv.a.as_deref(), c, n, self.part(th, Part::Ls1), s1);
        if let Some(g) = dls1 {
            put(Part::Ls1, &g);
        }
        let dout = dense_dx(&da, t, self.req(th, Part::ProjW), c, c)?;
        put(Part::ProjW, &dense_dw(&da, &sv.o, t, c, c)?);
        put(Part::ProjB, &col_sums(&da, c));
        drop(da);
        let dqkv = self.attention_backward(&sv.qkv, &sv.lse, &dout);
        let dh1 = dense_dx(&dqkv, t, self.req(th, Part::QkvW), 3 * c, c)?;
        put(Part::QkvW, &dense_dw(&dqkv, &sv.h1, t, 3 * c, c)?);
        if self.at[Part::QkvB as usize].is_some() {
            put(Part::QkvB, &col_sums(&dqkv, 3 * c));
        }
        let mut dx = dx1;
        let (dw, db) = ln_backward(&dh1, x, &sv.stats1, self.req(th, Part::Ln1W), &mut dx);
        put(Part::Ln1W, &dw);
        put(Part::Ln1B, &db);
        Ok((dx, dth))
    }
}

impl CustomOp2 for BlockOp {
    fn name(&self) -> &'static str {
        "vista-transformer-block"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> CpuOut {
        let (x, th) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?);
        if th.len() != self.total || x.len() != self.dims.0 * self.dims.1 {
            return Err(msg(format!("{} values and {} parameters for {:?}", x.len(), th.len(), self.dims)));
        }
        let (y, saved) = self.forward_values(x, th).map_err(msg)?;
        *self.saved.lock().map_err(msg)? = Some(saved);
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        theta: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (xv, th, dyv) = (values(x)?, values(theta)?, values(dy)?);
        let saved = self.saved.lock().map_err(msg)?.take();
        let saved = match saved {
            Some(s) => s,
            // A second backward through the same graph: recompute what the first one used.
            None => self.forward_values(&xv, &th).map_err(msg)?.1,
        };
        let (dx, dth) = self.backward_values(&xv, &th, &saved, &dyv).map_err(msg)?;
        let dev = &Device::Cpu;
        Ok((Some(Tensor::from_vec(dx, x.shape(), dev)?), Some(Tensor::from_vec(dth, theta.shape(), dev)?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(n: usize, seed: f64) -> Vec<f32> {
        (0..n).map(|i| ((i as f64 * 0.7137 + seed * 1.31).sin() * 1.7).sin() as f32).collect()
    }

    /// Attention and its backward in f64, straight from the definitions.
    fn naive(
        qkv: &[f32],
        dout: &[f32],
        (b, n, c, heads): (usize, usize, usize, usize),
        causal: bool,
    ) -> (Vec<f64>, Vec<f64>) {
        let d = c / heads;
        let scale = 1.0 / (d as f64).sqrt();
        let at = |bi: usize, i: usize, part: usize, h: usize, j: usize| {
            qkv[(bi * n + i) * 3 * c + part * c + h * d + j] as f64
        };
        let mut o = vec![0f64; b * n * c];
        let mut g = vec![0f64; b * n * 3 * c];
        for bi in 0..b {
            for h in 0..heads {
                let mut p = vec![vec![0f64; n]; n];
                for i in 0..n {
                    let lim = if causal { i + 1 } else { n };
                    let s: Vec<f64> = (0..lim)
                        .map(|j| (0..d).map(|e| at(bi, i, 0, h, e) * at(bi, j, 1, h, e)).sum::<f64>() * scale)
                        .collect();
                    let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let z: f64 = s.iter().map(|v| (v - m).exp()).sum();
                    for j in 0..lim {
                        p[i][j] = (s[j] - m).exp() / z;
                    }
                    for e in 0..d {
                        o[(bi * n + i) * c + h * d + e] = (0..lim).map(|j| p[i][j] * at(bi, j, 2, h, e)).sum();
                    }
                }
                let go = |i: usize, e: usize| dout[(bi * n + i) * c + h * d + e] as f64;
                for i in 0..n {
                    let dp: Vec<f64> = (0..n).map(|j| (0..d).map(|e| go(i, e) * at(bi, j, 2, h, e)).sum()).collect();
                    let delta: f64 = (0..n).map(|j| p[i][j] * dp[j]).sum();
                    for j in 0..n {
                        let ds = p[i][j] * (dp[j] - delta);
                        for e in 0..d {
                            g[(bi * n + i) * 3 * c + h * d + e] += scale * ds * at(bi, j, 1, h, e);
                            g[(bi * n + j) * 3 * c + c + h * d + e] += scale * ds * at(bi, i, 0, h, e);
                            g[(bi * n + j) * 3 * c + 2 * c + h * d + e] += p[i][j] * go(i, e);
                        }
                    }
                }
            }
        }
        (o, g)
    }

    fn op((b, n, c, hidden): (usize, usize, usize, usize), heads: usize, causal: bool) -> BlockOp {
        BlockOp {
            spec: BlockSpec { heads, eps: 1e-5, act: Activation::Gelu, causal },
            dims: (b * n, c, hidden),
            seqs: (0..=b).map(|i| i * n).collect(),
            at: [None; PARTS],
            total: 0,
            drop: None,
            saved: Mutex::new(None),
        }
    }

    #[test]
    fn blocked_product_and_activation_equal_the_product_then_the_activation() {
        // 250 rows: two whole blocks of `ACT_ROWS` and a short one.
        let (t, out, inp) = (250, 70, 33);
        let (x, w, b) = (pattern(t * inp, 1.0), pattern(out * inp, 2.0), pattern(out, 3.0));
        let u = dense(&x, t, &w, out, inp, Some(&b)).unwrap();
        for (act, f) in [(Activation::QuickGelu, quick_gelu as fn(f32) -> (f32, f32)), (Activation::Gelu, gelu_erf)] {
            let (g, du) = dense_act(&x, t, (&w, out, inp), Some(&b), act).unwrap();
            let (eg, edu): (Vec<f32>, Vec<f32>) = u.iter().map(|&v| f(v)).unzip();
            assert_eq!((g, du), (eg, edu), "{act:?}");
        }
    }

    #[test]
    fn transposes_and_packs_of_ragged_and_large_matrices_are_exact() {
        for (r, c) in [(1, 1), (37, 50), (16, 16), (700, 33), (5, 1000)] {
            let m = pattern(r * c, 3.0);
            let t = transpose(&m, r, c);
            for i in 0..r {
                for j in 0..c {
                    assert_eq!(t[j * r + i], m[i * c + j], "{r}x{c} at ({i}, {j})");
                }
            }
            // Packing as the GEMM's right-hand side (one task per panel from 2^18 values) and back.
            assert_eq!(PackedWeight::from_k_by_n(&m, r, c).to_k_by_n(), m, "{r}x{c} packed");
        }
        let big = pattern(600 * 500, 4.0);
        assert_eq!(PackedWeight::from_k_by_n(&big, 600, 500).to_k_by_n(), big);
    }

    #[test]
    fn attention_and_its_backward_match_the_definitions_in_f64_as_ops_attention_does() {
        for (causal, (b, n, c, heads)) in
            [false, true].into_iter().flat_map(|k| [(k, (2, 9, 24, 3)), (k, (1, 37, 128, 2))])
        {
            let op = op((b, n, c, 4 * c), heads, causal);
            let qkv: Vec<f32> = pattern(b * n * 3 * c, 1.0).iter().map(|v| 2.0 * v).collect();
            let dout = pattern(b * n * c, 2.0);
            let (o, lse) = op.attention_forward(&qkv);
            let g = op.attention_backward(&qkv, &lse, &dout);
            let (o64, g64) = naive(&qkv, &dout, (b, n, c, heads), causal);
            let err = |a: &[f32], r: &[f64]| {
                let m = r.iter().fold(0f64, |m, v| m.max(v.abs()));
                a.iter().zip(r).fold(0f64, |e, (a, r)| e.max((*a as f64 - r).abs())) / m
            };
            assert!(err(&o, &o64) < 5e-6, "causal {causal}: output off by {}", err(&o, &o64));
            assert!(err(&g, &g64) < 5e-6, "causal {causal}: gradient off by {}", err(&g, &g64));
            // The composed path's attention (`ops::attention`, [B, H, N, D]) against the same truth.
            let d = c / heads;
            let t = Tensor::from_vec(qkv.clone(), (b, n, 3, heads, d), &Device::Cpu)
                .unwrap()
                .permute((2, 0, 3, 1, 4))
                .unwrap();
            let vars: Vec<candle_core::Var> = (0..3)
                .map(|i| candle_core::Var::from_tensor(&t.get(i).unwrap().contiguous().unwrap()).unwrap())
                .collect();
            let y = crate::train::ops::attention(
                vars[0].as_tensor(),
                vars[1].as_tensor(),
                vars[2].as_tensor(),
                1.0 / (d as f64).sqrt(),
                causal,
            )
            .unwrap();
            let w = Tensor::from_vec(dout.clone(), (b, n, heads, d), &Device::Cpu).unwrap().transpose(1, 2).unwrap();
            let gr = (y * w).unwrap().sum_all().unwrap().backward().unwrap();
            let gs: Vec<Tensor> = vars.iter().map(|v| gr.get(v.as_tensor()).unwrap().clone()).collect();
            let g2 = Tensor::stack(&gs, 0)
                .unwrap()
                .permute((1, 3, 0, 2, 4))
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            assert!(err(&g2, &g64) < 5e-6, "causal {causal}: ops::attention's gradient off by {}", err(&g2, &g64));
        }
    }
}
