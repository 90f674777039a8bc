//! Fused CPU kernels for the inference hot path, on plain `f32` slices with the `gemm` crate.
//!
//! candle runs `x·Wᵀ`, `+ b` and an activation as separate passes, each allocating a tensor the
//! size of the output, and runs batched attention as one small multithreaded GEMM per (batch, head)
//! with a softmax pass over the whole `[B, H, N, N]` score tensor in between. Here a linear layer
//! is one GEMM accumulating onto the bias rows with the activation applied in place, and attention
//! is one parallel loop over (batch, head) reading q, k and v straight out of the fused projection
//! by stride and writing each head's output into its columns of `[B, N, C]` — no permutes, no
//! copies. The math is the reference's; only the summation order differs (parity tests hold).
//!
//! These record no backward op: inference only. Callers fall back to candle ops for other devices
//! and dtypes (see [`super::Linear`], [`super::FusedQkvAttention`]).

use super::gemm::{matmul, MatMut, MatRef, Parallelism};
use candle_core::{DType, Device, Layout, Storage, Tensor};

use super::team::Shared;
use super::Activation;
use crate::Result;

/// Runs `f` compiled for AVX-512 (or AVX2 + FMA) when the CPU has it, so the element-wise loops
/// inside it vectorise 16 (8) lanes wide; the crate itself is built for baseline x86-64 (SSE2)
/// so that one binary runs everywhere. Call it inside each parallel task: rayon's closures
/// run elsewhere and do not inherit the features. Write the loops inside as `for` loops: an
/// iterator's `for_each` / `fold` is a generic function the compiler may keep out of line, and
/// then it runs without the features (the training GELU backward did, scalar). The results are
/// bit-identical (no FMA contraction happens without fast-math).
#[inline(always)]
pub fn with_simd<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")]
        unsafe fn avx512<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the features were just detected.
            return unsafe { avx512(f) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: as above.
            return unsafe { avx2(f) };
        }
    }
    f()
}

/// True when `t` can take the fast path: an f32 tensor on the CPU (and the fast paths are not
/// switched off on this thread, see [`with_portable_paths`]).
pub fn eligible(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32 && FAST_PATHS.with(|f| f.get())
}

thread_local! {
    static FAST_PATHS: std::cell::Cell<bool> = const { std::cell::Cell::new(true) };
}

/// Runs `f` with this thread's fast CPU kernels switched off, so every layer takes its device
/// path ([`super::portable`]: candle ops, what runs on CUDA and for bf16/f16) even on f32 CPU
/// tensors. For tests and diagnosis: it is how the device paths are checked against the CPU
/// kernels on a machine without a GPU (`tests/suite/device_fallback.rs`). Nests; restores the previous
/// setting when `f` returns or panics.
pub fn with_portable_paths<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            FAST_PATHS.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(FAST_PATHS.with(|c| c.replace(false)));
    f()
}

/// Runs `f` on the contiguous f32 data of `t`.
pub(crate) fn with_slice<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        return Err(candle_core::Error::Msg("fast path needs a CPU tensor".into()).into());
    };
    let data = cpu.as_slice::<f32>()?;
    Ok(f(slice_of(data, layout)))
}

fn slice_of<'a>(data: &'a [f32], layout: &Layout) -> &'a [f32] {
    let start = layout.start_offset();
    &data[start..start + layout.shape().elem_count()]
}

/// Threads the kernels split over: candle's thread count.
pub(crate) fn threads() -> usize {
    candle_core::utils::get_num_threads()
}

/// One activation value, as the references define it (GELU through [`erf_fast`]).
#[inline(always)]
pub fn activate(v: f32, act: Activation) -> f32 {
    match act {
        Activation::QuickGelu => v * (1.0 / (1.0 + exp_fast(-1.702 * v))),
        Activation::Gelu => 0.5 * v * (1.0 + erf_fast(v * std::f32::consts::FRAC_1_SQRT_2)),
        Activation::GeluTanh => {
            0.5 * v * (1.0 + ((2.0 / std::f32::consts::PI).sqrt() * (v + 0.044715 * v * v * v)).tanh())
        }
        Activation::Relu => v.max(0.0),
    }
}

/// Runs `$body` with `$f` bound to `|v| activate(v, A)` for the constant activation `A` that
/// `$act` holds: one copy of `$body` per activation, so a loop over `$f` in it is inlined and
/// vectorises. A loop calling [`activate`] with an activation known only at run time does not:
/// it costs a scalar call per value (a tenth of TinyViT's time went there).
macro_rules! with_activation {
    ($act:expr, |$f:ident| $body:expr) => {
        $crate::nn::cpu::with_activation!(@each $act, $f, $body, QuickGelu Gelu GeluTanh Relu)
    };
    (@each $act:expr, $f:ident, $body:expr, $($a:ident)*) => {{
        match $act {
            $($crate::nn::Activation::$a => {
                #[inline(always)]
                fn $f(v: f32) -> f32 {
                    $crate::nn::cpu::activate(v, $crate::nn::Activation::$a)
                }
                $body
            })*
        }
    }};
}
pub(crate) use with_activation;

/// In-place activation of a slice on this thread, vectorised when inlined into a [`with_simd`]
/// region (see [`with_activation`]).
#[inline(always)]
pub fn activate_slice(xs: &mut [f32], act: Activation) {
    with_activation!(act, |f| xs.iter_mut().for_each(|v| *v = f(*v)))
}

/// In-place activation, chunked over threads.
pub fn apply_activation(xs: &mut [f32], act: Activation) {
    const CHUNK: usize = 16 * 1024;
    super::team::for_each_chunk(xs, CHUNK, |_, c| {
        with_simd(
            #[inline(always)]
            || activate_slice(c, act),
        )
    });
}

/// `act(x)` into a new tensor, one parallel pass.
pub fn activated(x: &Tensor, act: Activation) -> Result<Tensor> {
    let out = with_activation!(act, |f| with_slice(x, |v| map(v, f))?);
    Ok(Tensor::from_vec(out, x.shape(), &Device::Cpu)?)
}

/// `act(x + y)`, elementwise, same shapes.
pub fn add_act(x: &Tensor, y: &Tensor, act: Activation) -> Result<Tensor> {
    with_activation!(act, |f| zip_tensors(
        x,
        y,
        #[inline(always)]
        |a, b| f(a + b),
    ))
}

/// `f(x_i, y_i)` for every pair of two tensors of one shape, into a new tensor (see [`zip_map`]).
#[inline(always)]
fn zip_tensors(x: &Tensor, y: &Tensor, f: impl Fn(f32, f32) -> f32 + Sync) -> Result<Tensor> {
    if x.shape() != y.shape() {
        return Err(candle_core::Error::Msg(format!("add: shapes {:?} and {:?}", x.dims(), y.dims())).into());
    }
    let out = with_slice(x, |xs| with_slice(y, |ys| zip_map(xs, ys, &f)))??;
    Ok(Tensor::from_vec(out, x.shape(), &Device::Cpu)?)
}

/// Values per parallel task of the element-wise kernels.
const ELEMENTS_PER_TASK: usize = 16 * 1024;

/// `f(x_i)` for every value, into a new buffer: one parallel task per 16 Ki values, each
/// compiled under [`with_simd`] (with `f` `#[inline(always)]`, its body is too).
#[inline(always)]
pub fn map(x: &[f32], f: impl Fn(f32) -> f32 + Sync) -> Vec<f32> {
    // Written once, never zeroed first (a zeroing pass costs as much as a cheap `f`).
    let mut out = Vec::with_capacity(x.len());
    super::team::for_each_chunk(&mut out.spare_capacity_mut()[..x.len()], ELEMENTS_PER_TASK, |i, o| {
        let x = &x[i * ELEMENTS_PER_TASK..][..o.len()];
        with_simd(
            #[inline(always)]
            || {
                for (o, &v) in o.iter_mut().zip(x) {
                    o.write(f(v));
                }
            },
        )
    });
    // SAFETY: the chunks cover all `x.len()` elements and each was written above.
    unsafe { out.set_len(x.len()) };
    out
}

/// `f(x_i, y_i)` for every pair of values of two slices of one length, into a new buffer, as
/// [`map`].
#[inline(always)]
pub fn zip_map(x: &[f32], y: &[f32], f: impl Fn(f32, f32) -> f32 + Sync) -> Vec<f32> {
    assert_eq!(x.len(), y.len(), "zip_map over slices of different lengths");
    let mut out = Vec::with_capacity(x.len());
    super::team::for_each_chunk(&mut out.spare_capacity_mut()[..x.len()], ELEMENTS_PER_TASK, |i, o| {
        let (x, y) = (&x[i * ELEMENTS_PER_TASK..][..o.len()], &y[i * ELEMENTS_PER_TASK..][..o.len()]);
        with_simd(
            #[inline(always)]
            || {
                for (o, (&a, &b)) in o.iter_mut().zip(x.iter().zip(y)) {
                    o.write(f(a, b));
                }
            },
        )
    });
    // SAFETY: the chunks cover all `x.len()` elements (`y` is as long) and each was written.
    unsafe { out.set_len(x.len()) };
    out
}

/// `f(row of x, row of the output)` for every row of `width` values, into a new buffer: one
/// parallel task per [`rows_per_task`] rows, each compiled under [`with_simd`] (with `f`
/// `#[inline(always)]`, its body is too).
#[inline(always)]
pub fn map_rows(x: &[f32], width: usize, f: impl Fn(&[f32], &mut [f32]) + Sync) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    let chunk = rows_per_task(width) * width;
    super::team::for_each_chunk(&mut out, chunk, |i, o| {
        let x = &x[i * chunk..][..o.len()];
        with_simd(
            #[inline(always)]
            || {
                for (o, x) in o.chunks_exact_mut(width).zip(x.chunks_exact(width)) {
                    f(x, o);
                }
            },
        )
    });
    out
}

/// `pixel(src, (image, oy, ox), out)` for every pixel of a channels-last `[B, Ho, Wo, C]` output
/// `out` computed from `x` (read in place as `src`), then `row(out_row)` once a row is done: the
/// output rows split over the team, each under [`with_simd`] (pass `#[inline(always)]` closures
/// so their channel loops vectorise). The direct loops of pooling and depthwise convolution.
#[inline(always)]
pub(crate) fn map_pixels(
    x: &Tensor,
    out: &mut [f32],
    (ho, wo, c): (usize, usize, usize),
    pixel: impl Fn(&[f32], (usize, usize, usize), &mut [f32]) + Sync + Send,
    row: impl Fn(&mut [f32]) + Sync + Send,
) -> Result<()> {
    with_slice(x, |src| {
        super::team::for_each_chunk(out, wo * c, |r, dst| {
            with_simd(
                #[inline(always)]
                || {
                    let (bi, oy) = (r / ho, r % ho);
                    for (ox, o) in dst.chunks_exact_mut(c).enumerate() {
                        pixel(src, (bi, oy, ox), o);
                    }
                    row(dst);
                },
            )
        })
    })
}

/// `e^x` in f32 without a libm call, so loops over it vectorise: `2^n · p(r)` with
/// `x = n·ln 2 + r`, `|r| ≤ ln 2 / 2`, `p` the degree-6 Taylor polynomial (relative error
/// < 2e-7 over the range; inputs are clamped to the finite range of f32). Below −87 (where
/// `e^x` nears the subnormal range) the result is exactly 0: a masked score (`−∞`) gives 0 as
/// libm's `exp` does, not `e^−87`, whose quotients in a softmax are subnormal numbers that stall
/// every GEMM they reach (a CLIP training step with 4 + 4 blocks took 1.9 s before this, 1.0 s after).
#[inline(always)]
pub fn exp_fast(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let underflow = x < -87.0;
    let x = x.clamp(-87.0, 88.0);
    // Round to nearest with the 1.5·2²³ trick: no libm `floorf` call and no saturating
    // float-to-int conversion, so the loop vectorises. `shifted`'s low mantissa bits hold n.
    const MAGIC: f32 = 12_582_912.0;
    let shifted = x * std::f32::consts::LOG2_E + MAGIC;
    let n = shifted - MAGIC;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // 2^n: n + 127 into the exponent field (|n| ≤ 127 after the clamp).
    let biased = shifted.to_bits().wrapping_sub(MAGIC.to_bits()).wrapping_add(127);
    let y = p * f32::from_bits(biased << 23);
    if underflow {
        0.0
    } else {
        y
    }
}

/// erf in f32 as PyTorch's vectorised CPU kernels compute it (`Vectorized<float>::erf`,
/// Abramowitz & Stegun 7.1.26: `1 − (a₁t + … + a₅t⁵)·e^{−x²}`, `t = 1/(1 + p|x|)`, absolute
/// error < 1.5e-7 in exact arithmetic, 6.4e-7 measured in f32 against glibc's `erf`): what
/// torch's `nn.GELU()` uses on contiguous float tensors, and branch-free.
#[inline(always)]
pub fn erf_fast(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let r = (((1.061_405_4 * t - 1.453_152_1) * t + 1.421_413_7) * t - 0.284_496_74) * t + 0.254_829_6;
    let y = 1.0 - r * t * exp_fast(-a * a);
    y.copysign(x)
}

/// Rows per parallel task for row-wise kernels (about 16 Ki values): enough work to amortise a
/// task.
pub fn rows_per_task(width: usize) -> usize {
    (16 * 1024 / width.max(1)).max(1)
}

/// `Σ f(x_i)` in sixteen partial sums: a single running sum is one chain of dependent adds
/// (four cycles each) that cannot be vectorised; sixteen fill two vector registers.
#[inline(always)]
pub(crate) fn lane_sum(x: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0f32; 16];
    let mut chunks = x.chunks_exact(16);
    for c in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += f(v);
        }
    }
    acc.iter().sum::<f32>() + chunks.remainder().iter().map(|&v| f(v)).sum::<f32>()
}

/// LayerNorm of one row into `out` (two-pass mean and variance, biased, as torch).
#[inline(always)]
pub(crate) fn layer_norm_row(x: &[f32], w: &[f32], b: &[f32], eps: f32, out: &mut [f32]) {
    let n = x.len() as f32;
    let mean = lane_sum(x, |v| v) / n;
    let var = lane_sum(x, |v| (v - mean) * (v - mean)) / n;
    let inv = 1.0 / (var + eps).sqrt();
    for (((o, v), wi), bi) in out.iter_mut().zip(x).zip(w).zip(b) {
        *o = (v - mean) * inv * wi + bi;
    }
}

/// `LayerNorm(x)` over the last dimension.
///
/// # Shapes
/// `x: [..., C]`, `w, b: [C]` -> `[..., C]`
pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f32) -> Result<Tensor> {
    let c = x.dim(candle_core::D::Minus1)?;
    let out = with_slice(w, |w| {
        with_slice(b, |b| {
            with_slice(x, |xs| {
                map_rows(
                    xs,
                    c,
                    #[inline(always)]
                    |x, o| layer_norm_row(x, w, b, eps, o),
                )
            })
        })
    })???;
    Ok(Tensor::from_vec(out, x.shape(), &Device::Cpu)?)
}

/// The pre-norm residual step: `s = x + y` and `LayerNorm(s)`, in one pass.
///
/// # Shapes
/// `x, y: [..., C]` -> (`[..., C]`, `[..., C]`)
pub fn add_layer_norm(x: &Tensor, y: &Tensor, w: &Tensor, b: &Tensor, eps: f32) -> Result<(Tensor, Tensor)> {
    let c = x.dim(candle_core::D::Minus1)?;
    if x.shape() != y.shape() {
        return Err(candle_core::Error::Msg(format!("add: shapes {:?} and {:?}", x.dims(), y.dims())).into());
    }
    let mut sum = vec![0f32; x.elem_count()];
    let mut out = vec![0f32; x.elem_count()];
    with_slice(w, |w| {
        with_slice(b, |b| {
            with_slice(x, |xs| {
                with_slice(y, |ys| {
                    let rows = rows_per_task(c) * c;
                    let out = Shared(out.as_mut_ptr());
                    super::team::for_each_chunk(&mut sum, rows, |i, s| {
                        let at = i * rows;
                        // SAFETY: the same disjoint piece of `out` as `s` is of `sum`.
                        let o = unsafe { std::slice::from_raw_parts_mut(out.get().add(at), s.len()) };
                        let (x, y) = (&xs[at..at + s.len()], &ys[at..at + s.len()]);
                        for (si, (xi, yi)) in s.iter_mut().zip(x.iter().zip(y)) {
                            *si = xi + yi;
                        }
                        with_simd(
                            #[inline(always)]
                            || {
                                for (s, o) in s.chunks_exact(c).zip(o.chunks_exact_mut(c)) {
                                    layer_norm_row(s, w, b, eps, o);
                                }
                            },
                        )
                    });
                })
            })
        })
    })????;
    Ok((Tensor::from_vec(sum, x.shape(), &Device::Cpu)?, Tensor::from_vec(out, x.shape(), &Device::Cpu)?))
}

/// `x + y`, elementwise, same shapes.
pub fn add(x: &Tensor, y: &Tensor) -> Result<Tensor> {
    zip_tensors(
        x,
        y,
        #[inline(always)]
        |a, b| a + b,
    )
}

thread_local! {
    /// Per-thread scratch of the attention kernels (scores, relative-position terms), kept
    /// between calls.
    static SCRATCH: std::cell::RefCell<(Vec<f32>, Vec<f32>)> = const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// `f(scores, rel)` on this thread's scratch, `scores` at least `len` long.
fn with_scratch<R>(len: usize, f: impl FnOnce(&mut Vec<f32>, &mut Vec<f32>) -> R) -> R {
    SCRATCH.with(|s| match s.try_borrow_mut() {
        Ok(mut s) => {
            let (scores, rel) = &mut *s;
            if scores.len() < len {
                scores.resize(len, 0.0);
            }
            f(scores, rel)
        }
        // Re-entered (a task run while another waits on this thread): fresh buffers.
        Err(_) => f(&mut vec![0f32; len], &mut Vec::new()),
    })
}

/// Multi-head self-attention from a fused projection: [`attention_biased`] with an optional
/// additive `[N, N]` mask shared by every head.
///
/// # Shapes
/// `qkv: [B, N, 3C]` laid out `[B, N, 3, H, D]` (q, k, v; heads inside) -> `[B, N, C]`,
/// `mask: [N, N]` added to the scaled scores.
pub fn attention(qkv: &Tensor, heads: usize, scale: f32, mask: Option<&Tensor>) -> Result<Tensor> {
    match mask {
        Some(m) => with_slice(m, |m| attention_biased(qkv, heads, scale, ScoreBias::Shared(m)))?,
        None => attention_biased(qkv, heads, scale, ScoreBias::None),
    }
}

/// What is added to the scaled attention scores before the softmax, per head.
#[derive(Clone, Copy)]
pub enum ScoreBias<'a> {
    /// Nothing is added.
    None,
    /// One `[N, N]` table for every head (CLIP's causal mask).
    Shared(&'a [f32]),
    /// A learned table per head, `[H, N, N]` (TinyViT's gathered `attention_biases`).
    PerHead(&'a [f32]),
    /// Segment Anything's decomposed relative positions (`add_decomposed_rel_pos`): the `N`
    /// tokens form a `gh × gw` grid (row-major) and query `(y, x)` attending to key `(ky, kx)`
    /// gets `q·rel_h[y, ky] + q·rel_w[x, kx]` with the **unscaled** query;
    /// `rel_h: [gh, gh, D]`, `rel_w: [gw, gw, D]`.
    DecomposedRelPos {
        /// The token grid `(gh, gw)`.
        grid: (usize, usize),
        /// `[gh, gh, D]`, row-major.
        rel_h: &'a [f32],
        /// `[gw, gw, D]`, row-major.
        rel_w: &'a [f32],
    },
}

/// Query rows per attention task: bounds the score buffer (`rows × N`) and gives the threads
/// work when there are few (batch, head) pairs, as in a global-attention block.
const ATTENTION_ROW_BLOCK: usize = 256;

/// `Σ a_i b_i`.
#[inline(always)]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight partial sums: vectorises and keeps the rounding error of long sums small.
    let mut acc = [0f32; 8];
    let (ca, ra) = a.split_at(a.len() / 8 * 8);
    let (cb, rb) = b.split_at(ca.len());
    for (x, y) in ca.chunks_exact(8).zip(cb.chunks_exact(8)) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s = acc.iter().sum::<f32>();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// Multi-head self-attention from a fused projection with an additive score bias:
/// `softmax(scale · q kᵀ + bias) v`.
///
/// # Shapes
/// `qkv: [B, N, 3C]` laid out `[B, N, 3, H, D]` -> `[B, N, C]`
pub fn attention_biased(qkv: &Tensor, heads: usize, scale: f32, bias: ScoreBias<'_>) -> Result<Tensor> {
    let (b, n, c3) = qkv.dims3()?;
    let c = c3 / 3;
    let d = c / heads;
    let bad = |m: String| -> Result<Tensor> { Err(candle_core::Error::Msg(m).into()) };
    match bias {
        ScoreBias::None => {}
        ScoreBias::Shared(t) if t.len() != n * n => {
            return bad(format!("attention mask has {} values for {n}x{n}", t.len()))
        }
        ScoreBias::Shared(_) => {}
        ScoreBias::PerHead(t) if t.len() != heads * n * n => {
            return bad(format!("attention bias has {} values for {heads}x{n}x{n}", t.len()))
        }
        ScoreBias::PerHead(_) => {}
        ScoreBias::DecomposedRelPos { grid: (gh, gw), rel_h, rel_w } => {
            if gh * gw != n || rel_h.len() != gh * gh * d || rel_w.len() != gw * gw * d {
                return bad(format!("relative positions for a {gh}x{gw} grid do not fit {n} tokens of {d} per head"));
            }
        }
    }
    let blocks = n.div_ceil(ATTENTION_ROW_BLOCK);
    let mut out = vec![0f32; b * n * c];
    let out_ptr = Shared(out.as_mut_ptr());
    with_slice(qkv, |src| {
        super::team::for_each(b * heads * blocks, |task| {
            with_scratch(ATTENTION_ROW_BLOCK.min(n) * n, |scores, rel| {
                let (bh, blk) = (task / blocks, task % blocks);
                let (bi, h) = (bh / heads, bh % heads);
                let r0 = blk * ATTENTION_ROW_BLOCK;
                let rows = ATTENTION_ROW_BLOCK.min(n - r0);
                let scores = &mut scores[..rows * n];
                let base = bi * n * c3 + h * d;
                // q, k and v rows are `3C` apart within this batch item: scores = scale · q·kᵀ.
                matmul(
                    MatMut::row_major(scores, rows, n),
                    MatRef::strided(&src[base + r0 * c3..], rows, d, c3, 1),
                    MatRef::strided(&src[base + c..], n, d, c3, 1).t(),
                    scale,
                    false,
                    Parallelism::None,
                );
                with_simd(
                    #[inline(always)]
                    || {
                        for (ri, row) in scores.chunks_exact_mut(n).enumerate() {
                            let i = r0 + ri;
                            match bias {
                                ScoreBias::None => {}
                                ScoreBias::Shared(t) => {
                                    let t = &t[i * n..(i + 1) * n];
                                    row.iter_mut().zip(t).for_each(|(s, v)| *s += v);
                                }
                                ScoreBias::PerHead(t) => {
                                    let t = &t[(h * n + i) * n..(h * n + i + 1) * n];
                                    row.iter_mut().zip(t).for_each(|(s, v)| *s += v);
                                }
                                ScoreBias::DecomposedRelPos { grid: (gh, gw), rel_h, rel_w } => {
                                    let q = &src[base + i * c3..base + i * c3 + d];
                                    let (y, x) = (i / gw, i % gw);
                                    rel.clear();
                                    rel.extend(
                                        (0..gh).map(|ky| dot(q, &rel_h[(y * gh + ky) * d..(y * gh + ky + 1) * d])),
                                    );
                                    rel.extend(
                                        (0..gw).map(|kx| dot(q, &rel_w[(x * gw + kx) * d..(x * gw + kx + 1) * d])),
                                    );
                                    let (rh, rw) = rel.split_at(gh);
                                    // The reference's order: (attn + rel_h) + rel_w.
                                    for (ky, srow) in row.chunks_exact_mut(gw).enumerate() {
                                        for (s, w) in srow.iter_mut().zip(rw) {
                                            *s = (*s + rh[ky]) + w;
                                        }
                                    }
                                }
                            }
                            softmax_in_place(row);
                        }
                    },
                );
                let o = out_ptr.get();
                // SAFETY: the output block [bi, r0..r0 + rows, h·d..(h + 1)·d] lies in `out` and is written
                // by this task only.
                let dst = unsafe { MatMut::from_raw(o.add((bi * n + r0) * c + h * d), rows, d, c, 1) };
                matmul(
                    dst,
                    MatRef::row_major(scores, rows, n),
                    MatRef::strided(&src[base + 2 * c..], n, d, c3, 1),
                    1.0,
                    false,
                    Parallelism::None,
                );
            })
        });
    })?;
    Ok(Tensor::from_vec(out, (b, n, c), &Device::Cpu)?)
}

/// Multi-head attention of separate query and key/value sequences (SAM's two-way transformer:
/// a few prompt tokens against thousands of image tokens, and back): `softmax(scale · q kᵀ) v`
/// per head, the heads side by side in the channels, no transposes.
///
/// Either side may have batch 1 and is then shared by every item of the other (the image tokens
/// of a batch of prompts before the first image update).
///
/// # Shapes
/// `q: [Bq, Nq, C]`, `k, v: [Bk, Nk, C]` -> `[max(Bq, Bk), Nq, C]`, each of `Bq`, `Bk` 1 or the other
pub fn cross_attention(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize, scale: f32) -> Result<Tensor> {
    let (bq, nq, c) = q.dims3()?;
    let (bk, nk, ck) = k.dims3()?;
    let b = bq.max(bk);
    let batches_fit = (bq == b || bq == 1) && (bk == b || bk == 1);
    if !batches_fit || ck != c || v.dims() != k.dims() || heads == 0 || c % heads != 0 || nk == 0 {
        return Err(candle_core::Error::Msg(format!(
            "cross attention: q {:?}, k {:?}, v {:?}, {heads} heads",
            q.dims(),
            k.dims(),
            v.dims()
        ))
        .into());
    }
    let d = c / heads;
    let blocks = nq.div_ceil(ATTENTION_ROW_BLOCK).max(1);
    let mut out = vec![0f32; b * nq * c];
    let out_ptr = Shared(out.as_mut_ptr());
    with_slice(q, |qs| {
        with_slice(k, |ks| {
            with_slice(v, |vs| {
                super::team::for_each(b * heads * blocks, |task| {
                    with_scratch(ATTENTION_ROW_BLOCK.min(nq) * nk, |scores, _| {
                        let (bh, blk) = (task / blocks, task % blocks);
                        let (bi, h) = (bh / heads, bh % heads);
                        let r0 = blk * ATTENTION_ROW_BLOCK;
                        let rows = ATTENTION_ROW_BLOCK.min(nq - r0);
                        let scores = &mut scores[..rows * nk];
                        let (qi, ki) = (if bq == 1 { 0 } else { bi }, if bk == 1 { 0 } else { bi });
                        let (qb, kb) = ((qi * nq + r0) * c + h * d, ki * nk * c + h * d);
                        let ob = (bi * nq + r0) * c + h * d;
                        matmul(
                            MatMut::row_major(scores, rows, nk),
                            MatRef::strided(&qs[qb..], rows, d, c, 1),
                            MatRef::strided(&ks[kb..], nk, d, c, 1).t(),
                            scale,
                            false,
                            Parallelism::None,
                        );
                        with_simd(
                            #[inline(always)]
                            || {
                                for row in scores.chunks_exact_mut(nk) {
                                    softmax_in_place(row);
                                }
                            },
                        );
                        // SAFETY: the block [bi, r0..r0 + rows, h·d..(h + 1)·d] lies in `out` and
                        // is written by this task only.
                        let dst = unsafe { MatMut::from_raw(out_ptr.get().add(ob), rows, d, c, 1) };
                        matmul(
                            dst,
                            MatRef::row_major(scores, rows, nk),
                            MatRef::strided(&vs[kb..], nk, d, c, 1),
                            1.0,
                            false,
                            Parallelism::None,
                        );
                    })
                });
            })
        })
    })???;
    Ok(Tensor::from_vec(out, (b, nq, c), &Device::Cpu)?)
}

/// `aᵀ` of a row-major `[R, C]` matrix as the GEMM's packed `[C, R]` weight (a few query rows
/// as the right-hand side of a product with many rows).
fn packed_transposed(a: &[f32], r: usize, c: usize) -> super::packed::PackedWeight {
    let mut a_t = vec![0f32; c * r];
    for (i, row) in a.chunks_exact(c).enumerate() {
        for (j, &val) in row.iter().enumerate() {
            a_t[j * r + i] = val;
        }
    }
    super::packed::PackedWeight::from_k_by_n(&a_t, c, r)
}

/// `softmax(a · xᵀ) · v` for a few query rows against many keys, `a: [R, C]`, `x, v: [N, C]`
/// -> `[R, C]` (scale already in `a`): the scores as `x · aᵀ` (`[N, R]`, `aᵀ` packed as the
/// GEMM's weight), a softmax down each column, and `Pᵀ`'s product with `v`
/// ([`packed::gemm_tn`]); each output row divided by its column's sum at the end. Rows of `a`
/// are independent queries, so several heads or sets go in one call.
///
/// # Errors
/// If the slices do not hold `[R, C]` and `[N, C]`.
pub fn attend_to_many(a: &[f32], x: &[f32], v: &[f32], (r, n, c): (usize, usize, usize)) -> Result<Vec<f32>> {
    use super::packed::{self, Epilogue, Lhs};
    if a.len() != r * c || x.len() != n * c || v.len() != n * c || n == 0 {
        return Err(candle_core::Error::Msg(format!(
            "attention: {} query values for [{r}, {c}], {} key and {} value values for [{n}, {c}]",
            a.len(),
            x.len(),
            v.len()
        ))
        .into());
    }
    let w = packed_transposed(a, r, c);
    let mut scores = packed::gemm(Lhs::Rows { data: x, m: n }, &w, None, Epilogue::default(), threads())?;
    let mut sum = vec![0f32; r];
    with_simd(
        #[inline(always)]
        || {
            let mut max = vec![f32::NEG_INFINITY; r];
            for row in scores.chunks_exact(r) {
                for (m, &s) in max.iter_mut().zip(row) {
                    *m = m.max(s);
                }
            }
            for row in scores.chunks_exact_mut(r) {
                for ((s, m), acc) in row.iter_mut().zip(&max).zip(sum.iter_mut()) {
                    *s = exp_fast(*s - m);
                    *acc += *s;
                }
            }
        },
    );
    let mut out = packed::gemm_tn(&scores, v, n, r, c, threads())?;
    scores.clear();
    for (row, s) in out.chunks_exact_mut(c).zip(&sum) {
        let inv = 1.0 / s;
        row.iter_mut().for_each(|o| *o *= inv);
    }
    Ok(out)
}

/// Many query rows against a few keys in `groups` heads: `softmax_per_group(x · gᵀ + bias) · u +
/// out_bias`, `x: [N, C]`, `g: [G·T, C]`, `bias: [G·T]`, `u: [G·T, C_out]` -> `[N, C_out]`; each row's scores are
/// `G` groups of `T`, each normalised on its own (one head's keys), and `u` holds each head's
/// values already through its share of the output projection, so the heads' sum is one product.
///
/// # Errors
/// If the slices disagree with the shapes.
pub fn attend_to_few(
    x: &[f32],
    g: &[f32],
    bias: &[f32],
    u: &[f32],
    out_bias: Option<&[f32]>,
    groups: usize,
    (n, c): (usize, usize),
) -> Result<Vec<f32>> {
    use super::packed::{self, Epilogue, Lhs, PackedWeight};
    let r = bias.len();
    let c_out = u.len() / r.max(1);
    if groups == 0
        || r == 0
        || !r.is_multiple_of(groups)
        || g.len() != r * c
        || u.len() != r * c_out
        || x.len() != n * c
    {
        return Err(candle_core::Error::Msg(format!(
            "attention: {} values for [{n}, {c}], {} and {} for [{r}, {c}] in {groups} groups",
            x.len(),
            g.len(),
            u.len()
        ))
        .into());
    }
    let w = packed_transposed(g, r, c);
    let scores = packed::gemm(Lhs::Rows { data: x, m: n }, &w, Some(bias), Epilogue::default(), threads())?;
    let t = r / groups;
    let probs = map_rows(
        &scores,
        r,
        #[inline(always)]
        |s, p| {
            // Each head's maximum off its scores, one exponential pass over the whole row (it
            // vectorises; `T` alone is too short), then each head's sum.
            for (p, s) in p.chunks_exact_mut(t).zip(s.chunks_exact(t)) {
                let mut max = f32::NEG_INFINITY;
                for &v in s {
                    max = max.max(v);
                }
                for (p, &v) in p.iter_mut().zip(s) {
                    *p = v - max;
                }
            }
            for p in p.iter_mut() {
                *p = exp_fast(*p);
            }
            for p in p.chunks_exact_mut(t) {
                let mut sum = 0.0;
                for &v in p.iter() {
                    sum += v;
                }
                let inv = 1.0 / sum;
                for v in p.iter_mut() {
                    *v *= inv;
                }
            }
        },
    );
    let u = PackedWeight::from_k_by_n(u, r, c_out);
    packed::gemm(Lhs::Rows { data: &probs, m: n }, &u, out_bias, Epilogue::default(), threads())
}

#[inline(always)]
fn softmax_in_place(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    row.iter_mut().for_each(|s| *s = exp_fast(*s - max));
    // Sixteen partial sums: vectorises (a single running sum cannot be reordered).
    let mut acc = [0f32; 16];
    let mut chunks = row.chunks_exact(16);
    for c in &mut chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += v;
        }
    }
    let sum = acc.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>();
    let inv = 1.0 / sum;
    row.iter_mut().for_each(|s| *s *= inv);
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor, D};

    use super::*;
    use crate::nn::testing::{max_diff, randn};

    #[test]
    fn attention_to_many_keys_equals_the_softmax_product() {
        let (r, n, c) = (21, 300, 24); // rows and widths off the GEMM's tile sizes
        let a = randn(1, 0f32, 0.5, (r, c));
        let x = randn(2, 0f32, 1., (n, c));
        let v = randn(3, 0f32, 1., (n, c));
        let want = candle_nn::ops::softmax_last_dim(&a.matmul(&x.t().unwrap()).unwrap()).unwrap().matmul(&v).unwrap();
        let got = attend_to_many(
            &a.flatten_all().unwrap().to_vec1().unwrap(),
            &x.flatten_all().unwrap().to_vec1().unwrap(),
            &v.flatten_all().unwrap().to_vec1().unwrap(),
            (r, n, c),
        )
        .unwrap();
        let got = Tensor::from_vec(got, (r, c), &Device::Cpu).unwrap();
        assert!(max_diff(&got, &want) < 1e-5, "{}", max_diff(&got, &want));
        assert!(attend_to_many(&[0.0; 4], &[0.0; 8], &[0.0; 8], (2, 3, 2)).is_err());
    }

    #[test]
    fn attention_to_few_keys_normalises_each_group() {
        let (n, c, groups, t) = (333, 20, 3, 5);
        let x = randn(4, 0f32, 1., (n, c));
        let g = randn(5, 0f32, 0.5, (groups * t, c));
        let u = randn(6, 0f32, 1., (groups * t, c));
        let bias = randn(7, 0f32, 1., groups * t);
        let out_bias = randn(8, 0f32, 1., c);
        let scores = x.matmul(&g.t().unwrap()).unwrap().broadcast_add(&bias).unwrap();
        let probs = candle_nn::ops::softmax_last_dim(&scores.reshape((n, groups, t)).unwrap()).unwrap();
        let want = probs.reshape((n, groups * t)).unwrap().matmul(&u).unwrap().broadcast_add(&out_bias).unwrap();
        let flat = |t: &Tensor| -> Vec<f32> { t.flatten_all().unwrap().to_vec1().unwrap() };
        let got = attend_to_few(&flat(&x), &flat(&g), &flat(&bias), &flat(&u), Some(&flat(&out_bias)), groups, (n, c))
            .unwrap();
        let got = Tensor::from_vec(got, (n, c), &Device::Cpu).unwrap();
        assert!(max_diff(&got, &want) < 1e-5, "{}", max_diff(&got, &want));
        assert!(attend_to_few(&flat(&x), &flat(&g), &flat(&bias), &flat(&u), None, 4, (n, c)).is_err());
    }

    #[test]
    fn cross_attention_equals_the_textbook_formula() {
        // Few queries against many keys (SAM's token-to-image) and many against few (image-to-
        // token), past one row block of queries.
        for (b, nq, nk, h, d) in [(2, 7, 300, 8, 4), (1, ATTENTION_ROW_BLOCK + 37, 7, 4, 5)] {
            let c = h * d;
            let q = randn(5, 0f32, 1., (b, nq, c));
            let k = randn(6, 0f32, 1., (b, nk, c));
            let v = randn(7, 0f32, 1., (b, nk, c));
            let scale = 1.0 / (d as f32).sqrt();
            let ours = cross_attention(&q, &k, &v, h, scale).unwrap();
            let heads =
                |x: &Tensor, n: usize| x.reshape((b, n, h, d)).unwrap().transpose(1, 2).unwrap().contiguous().unwrap();
            let (qh, kh, vh) = (heads(&q, nq), heads(&k, nk), heads(&v, nk));
            let s = (qh.matmul(&kh.t().unwrap()).unwrap() * scale as f64).unwrap();
            let p = candle_nn::ops::softmax(&s, D::Minus1).unwrap();
            let want = p.matmul(&vh).unwrap().transpose(1, 2).unwrap().reshape((b, nq, c)).unwrap();
            assert!(max_diff(&ours, &want) < 1e-5, "{nq} queries, {nk} keys: {}", max_diff(&ours, &want));
        }
        // A batch of queries against one shared key/value set, and one query set against a batch.
        let (h, d) = (2, 3);
        let q3 = randn(10, 0f32, 1., (3, 5, h * d));
        let kv1 = randn(11, 0f32, 1., (1, 9, h * d));
        let q1 = randn(12, 0f32, 1., (1, 5, h * d));
        let kv3 = randn(13, 0f32, 1., (3, 9, h * d));
        let spread = |t: &Tensor| t.broadcast_as((3, t.dim(1).unwrap(), h * d)).unwrap().contiguous().unwrap();
        for (q, kv) in [(&q3, &kv1), (&q1, &kv3)] {
            let ours = cross_attention(q, kv, kv, h, 0.5).unwrap();
            let want = cross_attention(&spread(q), &spread(kv), &spread(kv), h, 0.5).unwrap();
            assert_eq!(ours.dims(), [3, 5, h * d]);
            assert!(max_diff(&ours, &want) == 0.0, "shared batch: {}", max_diff(&ours, &want));
        }
        let bad = randn(8, 0f32, 1., (1, 7, 6));
        let q = randn(9, 0f32, 1., (1, 3, 8));
        let err = cross_attention(&q, &bad, &bad, 2, 1.0).unwrap_err().to_string();
        assert!(err.contains("cross attention"), "{err}");
    }

    #[test]
    fn fused_attention_equals_the_textbook_formula_with_and_without_mask() {
        let dev = Device::Cpu;
        let (b, n, h, d) = (3, 9, 4, 5);
        let c = h * d;
        let qkv = randn(4, 0f32, 1., (b, n, 3 * c));
        let scale = 1.0 / (d as f32).sqrt();
        let mask: Vec<f32> = (0..n * n).map(|i| if i % n > i / n { f32::NEG_INFINITY } else { 0.0 }).collect();
        let mask = Tensor::from_vec(mask, (n, n), &dev).unwrap();
        for m in [None, Some(&mask)] {
            let ours = attention(&qkv, h, scale, m).unwrap();
            // [B, N, 3, H, D] -> [3, B, H, N, D]
            let t = qkv.reshape((b, n, 3, h, d)).unwrap().permute((2, 0, 3, 1, 4)).unwrap();
            let (q, k, v) = (t.get(0).unwrap(), t.get(1).unwrap(), t.get(2).unwrap());
            let s = (q.contiguous().unwrap().matmul(&k.contiguous().unwrap().t().unwrap()).unwrap() * scale as f64)
                .unwrap();
            let s = match m {
                Some(m) => s.broadcast_add(m).unwrap(),
                None => s,
            };
            let p = candle_nn::ops::softmax(&s, D::Minus1).unwrap();
            let want = p.matmul(&v.contiguous().unwrap()).unwrap().transpose(1, 2).unwrap().reshape((b, n, c)).unwrap();
            assert!(max_diff(&ours, &want) < 1e-5, "mask {}", m.is_some());
        }
    }

    #[test]
    fn fast_erf_and_exp_are_accurate() {
        extern "C" {
            fn erf(x: f64) -> f64;
        }
        let mut worst = 0f64;
        for i in -80000..=80000 {
            let x = i as f32 * 1e-4;
            // SAFETY: a pure libm function.
            let want = unsafe { erf(x as f64) };
            worst = worst.max((erf_fast(x) as f64 - want).abs());
        }
        // A&S 7.1.26 is within 1.5e-7 in exact arithmetic; evaluated in f32, 6.4e-7 measured.
        assert!(worst < 7e-7, "erf error {worst}");
        assert_eq!(exp_fast(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_fast(-87.5), 0.0);
        for i in -869..=880 {
            let x = i as f32 * 0.1;
            let (got, want) = (exp_fast(x) as f64, (x as f64).exp());
            assert!(((got - want) / want).abs() < 3e-7, "exp({x}) = {got}, want {want}");
        }
    }

    #[test]
    fn biased_attention_equals_the_reference_formulas() {
        // 300 tokens: more than one row block.
        let (b, gh, gw, h, d) = (2, 15, 20, 3, 4);
        let n = gh * gw;
        let c = h * d;
        let qkv = randn(5, 0f32, 1., (b, n, 3 * c));
        let scale = 0.37;
        let t = qkv.reshape((b, n, 3, h, d)).unwrap().permute((2, 0, 3, 1, 4)).unwrap();
        let (q, k, v) = (t.get(0).unwrap().contiguous().unwrap(), t.get(1).unwrap(), t.get(2).unwrap());
        let s = (q.matmul(&k.contiguous().unwrap().t().unwrap()).unwrap() * scale as f64).unwrap();
        let finish = |s: Tensor| {
            let p = candle_nn::ops::softmax(&s, D::Minus1).unwrap();
            p.matmul(&v.contiguous().unwrap()).unwrap().transpose(1, 2).unwrap().reshape((b, n, c)).unwrap()
        };
        // Per-head table.
        let table = randn(6, 0f32, 1., (h, n, n));
        let tv: Vec<f32> = table.flatten_all().unwrap().to_vec1().unwrap();
        let ours = attention_biased(&qkv, h, scale, ScoreBias::PerHead(&tv)).unwrap();
        assert!(max_diff(&ours, &finish(s.broadcast_add(&table).unwrap())) < 1e-5);
        // Decomposed relative positions: q·Rh[y, ky] + q·Rw[x, kx] with the unscaled q.
        let rh = randn(7, 0f32, 1., (gh, gh, d));
        let rw = randn(8, 0f32, 1., (gw, gw, d));
        let rq = q.reshape((b, h, gh, gw, d)).unwrap();
        // rel_h[b,h,y,x,ky] = sum_d q[b,h,y,x,d] rh[y,ky,d]
        let rel_h =
            rq.unsqueeze(4).unwrap().broadcast_mul(&rh.reshape((1, 1, gh, 1, gh, d)).unwrap()).unwrap().sum(5).unwrap();
        let rel_w =
            rq.unsqueeze(4).unwrap().broadcast_mul(&rw.reshape((1, 1, 1, gw, gw, d)).unwrap()).unwrap().sum(5).unwrap();
        let s5 = s.reshape((b, h, gh, gw, gh, gw)).unwrap();
        let s5 = s5
            .broadcast_add(&rel_h.unsqueeze(5).unwrap())
            .unwrap()
            .broadcast_add(&rel_w.unsqueeze(4).unwrap())
            .unwrap()
            .reshape((b, h, n, n))
            .unwrap();
        let (rhv, rwv): (Vec<f32>, Vec<f32>) =
            (rh.flatten_all().unwrap().to_vec1().unwrap(), rw.flatten_all().unwrap().to_vec1().unwrap());
        let bias = ScoreBias::DecomposedRelPos { grid: (gh, gw), rel_h: &rhv, rel_w: &rwv };
        let ours = attention_biased(&qkv, h, scale, bias).unwrap();
        assert!(max_diff(&ours, &finish(s5)) < 1e-5);
        let plain = attention_biased(&qkv, h, scale, ScoreBias::None).unwrap();
        assert!(max_diff(&plain, &finish(s)) < 1e-5);
    }

    #[test]
    fn fused_add_and_layer_norm_equal_candle() {
        let x = randn(9, 0f32, 1., (2, 37, 24));
        let y = randn(10, 0f32, 1., (2, 37, 24));
        let w = randn(11, 1f32, 0.1, 24);
        let b = randn(12, 0f32, 0.1, 24);
        let s = (&x + &y).unwrap();
        let want = candle_nn::ops::layer_norm_slow(&s, &w, &b, 1e-5).unwrap();
        let (sum, normed) = add_layer_norm(&x, &y, &w, &b, 1e-5).unwrap();
        assert_eq!(max_diff(&sum, &s), 0.0);
        assert!(max_diff(&normed, &want) < 1e-5);
        assert!(max_diff(&layer_norm(&s, &w, &b, 1e-5).unwrap(), &want) < 1e-5);
        assert_eq!(max_diff(&add(&x, &y).unwrap(), &s), 0.0);
    }
}
