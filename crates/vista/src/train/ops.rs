//! Fused, differentiable CPU ops for training: candle's own LayerNorm and softmax record no
//! backward, and composing them from elementary ops costs a dozen tensor passes and
//! allocations each way. Each op here is one pass forward and one backward, row-parallel, with
//! its gradient written out by hand:
//!
//! * [`layer_norm`]: `y = (x − μ) / √(σ² + ε) · w + b` over the last dimension (biased
//!   variance, as torch); `dx = r (g − mean(g) − x̂ mean(g x̂))` with `g = dy·w`, `r = 1/√(σ²+ε)`,
//!   `dw = Σ dy x̂`, `db = Σ dy`.
//! * [`softmax_last`]: `dx = y (dy − Σ dy y)`.
//! * [`gelu`]: exact GELU `x Φ(x)`, `dx = dy (Φ(x) + x φ(x))`; Φ through the vectorisable
//!   Abramowitz–Stegun erf that torch's vectorised GELU uses ([`crate::nn::cpu::erf_fast`],
//!   error 6.4e-7).
//! * [`add_bias`]: `x + b` over the last dimension, `db` = column sums of `dy`.
//! * [`attention`]: `softmax(scale·q kᵀ [+ causal mask]) v` per head, the backward recomputing
//!   the probabilities (CLIP's towers and DINO's ViT train through it).
//! * [`linear`]: `x Wᵀ + b` on the packed GEMM with the bias in its output pass; `dx = dY W`,
//!   `dW = dYᵀ x`, `db` = column sums of `dY` (the DINO heads, patch embeddings, CLIP's
//!   attention pool). candle's matmul ran these on rayon's pool and its own, whose threads then
//!   competed for the two cores with the thread team's.
//!
//! Agreement with the composed ops (values and gradients) is tested in `tests/suite/train_ops.rs`.
//!
//! Device path (CUDA, or any dtype other than f32): LayerNorm and softmax run candle's fused
//! forward kernels (which record no backward) and get the same backward formulas as candle ops
//! (`Attach`); GELU, the bias add and the linear layer are candle's own differentiable ops. Nothing leaves the
//! device. `tests/suite/device_fallback.rs` checks values and gradients against the CPU kernels.

use candle_core::{CpuStorage, CudaStorage, CustomOp1, CustomOp2, CustomOp3, DType, Device, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::nn::cpu::{erf_fast, exp_fast, map, map_rows, rows_per_task, with_simd, zip_map};
use crate::nn::team::Shared;
use crate::Result;

/// What a custom op's forward gives on the CPU: the output's storage and shape.
pub(super) type CpuOut = candle_core::Result<(CpuStorage, Shape)>;
/// What a custom op's forward gives on CUDA.
type CudaOut = candle_core::Result<(CudaStorage, Shape)>;

pub(super) fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => Err(candle_core::Error::Msg("fused training op: input is not contiguous".into())),
    }
}

/// [`f32_slice`], to write.
pub(super) fn f32_slice_mut<'a>(s: &'a mut CpuStorage, l: &Layout) -> candle_core::Result<&'a mut [f32]> {
    let CpuStorage::F32(data) = s else {
        return Err(candle_core::Error::Msg("fused training op: a tensor is not f32".into()));
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&mut data[a..b]),
        None => Err(candle_core::Error::Msg("fused training op: a tensor is not contiguous".into())),
    }
}

/// The contiguous f32 values of `t`, copied out (backward passes read their saved tensors so).
pub(super) fn values(t: &Tensor) -> candle_core::Result<Vec<f32>> {
    t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()
}

/// Whether the fused CPU kernels apply: every tensor f32 on the CPU (and the fast paths on).
pub(super) fn on_cpu_kernels(ts: &[&Tensor]) -> bool {
    ts.iter().all(|t| crate::nn::cpu::eligible(t))
}

fn check_float(t: &Tensor, what: &str) -> Result<()> {
    if !t.dtype().is_float() {
        return Err(crate::Error::arg(what, format!("training ops need a float tensor, got {:?}", t.dtype())));
    }
    Ok(())
}

/// What an [`Attach`] op differentiates.
enum AttachKind {
    /// LayerNorm over the last dimension with this ε; inputs `(x, w, b)`.
    LayerNorm(f64),
    /// Softmax over the last dimension; input `x`.
    Softmax,
}

/// A forward value computed by one of candle's fused kernels (which record no backward),
/// returned as the output of a custom op whose backward is the op's gradient written with
/// candle ops: the forward costs the fused kernel and one copy, and the whole op runs on any
/// device and dtype.
struct Attach {
    y: Tensor,
    kind: AttachKind,
}

impl Attach {
    fn copy_of_y<S: candle_core::backend::BackendStorage>(
        &self,
        pick: impl FnOnce(&candle_core::Storage) -> Option<&S>,
    ) -> candle_core::Result<(S, Shape)> {
        let (storage, layout) = self.y.storage_and_layout();
        if !layout.is_contiguous() || layout.start_offset() != 0 {
            return Err(candle_core::Error::Msg("attach: the fused output is not a fresh contiguous tensor".into()));
        }
        let s =
            pick(&storage).ok_or_else(|| candle_core::Error::Msg("attach: the fused output is elsewhere".into()))?;
        Ok((s.try_clone(layout)?, layout.shape().clone()))
    }

    fn cpu(&self) -> CpuOut {
        self.copy_of_y(|s| match s {
            candle_core::Storage::Cpu(c) => Some(c),
            _ => None,
        })
    }

    fn cuda(&self) -> CudaOut {
        self.copy_of_y(|s| match s {
            candle_core::Storage::Cuda(c) => Some(c),
            _ => None,
        })
    }

    /// `dx = y (dy − Σ dy y)`.
    fn softmax_bwd(y: &Tensor, dy: &Tensor) -> candle_core::Result<Tensor> {
        let yd = (dy * y)?.sum_keepdim(candle_core::D::Minus1)?;
        y * dy.broadcast_sub(&yd)?
    }

    /// `dx = r (g − mean(g) − x̂ mean(g x̂))`, `dw = Σ_rows dy x̂`, `db = Σ_rows dy` with
    /// `g = dy·w`, `x̂ = (x − μ) r`, `r = 1/√(σ² + ε)`.
    fn layer_norm_bwd(x: &Tensor, w: &Tensor, dy: &Tensor, eps: f64) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
        use candle_core::D;
        let c = x.dim(D::Minus1)?;
        let xc = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
        let r = (xc.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?.recip()?;
        let xhat = xc.broadcast_mul(&r)?;
        let g = dy.broadcast_mul(w)?;
        let mg = g.mean_keepdim(D::Minus1)?;
        let mgx = (&g * &xhat)?.mean_keepdim(D::Minus1)?;
        let dx = g.broadcast_sub(&mg)?.sub(&xhat.broadcast_mul(&mgx)?)?.broadcast_mul(&r)?;
        let rows = dy.elem_count() / c.max(1);
        let dw = (dy * &xhat)?.reshape((rows, c))?.sum(0)?;
        let db = dy.reshape((rows, c))?.sum(0)?;
        Ok((dx, dw, db))
    }
}

impl CustomOp1 for Attach {
    fn name(&self) -> &'static str {
        "vista-fused-forward"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> CpuOut {
        self.cpu()
    }

    fn cuda_fwd(&self, _: &CudaStorage, _: &Layout) -> CudaOut {
        self.cuda()
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, dy: &Tensor) -> candle_core::Result<Option<Tensor>> {
        match self.kind {
            AttachKind::Softmax => Ok(Some(Self::softmax_bwd(y, dy)?)),
            AttachKind::LayerNorm(_) => Err(candle_core::Error::Msg("attach: LayerNorm has three inputs".into())),
        }
    }
}

impl CustomOp3 for Attach {
    fn name(&self) -> &'static str {
        "vista-fused-forward"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> CpuOut {
        self.cpu()
    }

    fn cuda_fwd(
        &self,
        _: &CudaStorage,
        _: &Layout,
        _: &CudaStorage,
        _: &Layout,
        _: &CudaStorage,
        _: &Layout,
    ) -> CudaOut {
        self.cuda()
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        match self.kind {
            AttachKind::LayerNorm(eps) => {
                let (dx, dw, db) = Self::layer_norm_bwd(x, w, dy, eps)?;
                Ok((Some(dx), Some(dw), Some(db)))
            }
            AttachKind::Softmax => Err(candle_core::Error::Msg("attach: softmax has one input".into())),
        }
    }
}

struct LayerNormOp {
    eps: f32,
}

/// `Σ a_i b_i` with 16 independent partial sums, so that the loop vectorises (a single running
/// sum is a serial dependency chain the compiler may not reorder). No closures: inside
/// [`with_simd`] only `#[inline(always)]` code gets the wide instructions.
#[inline(always)]
pub(super) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..16 {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `Σ a_i` with 16 partial sums (see [`dot`]).
#[inline(always)]
pub(super) fn sum(a: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let ca = a.chunks_exact(16);
    let tail: f32 = ca.remainder().iter().sum();
    for x in ca {
        for l in 0..16 {
            acc[l] += x[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `Σ (a_i − m)²` with 16 partial sums.
#[inline(always)]
fn sq_dev(a: &[f32], m: f32) -> f32 {
    let mut acc = [0f32; 16];
    let ca = a.chunks_exact(16);
    let tail: f32 = ca.remainder().iter().map(|x| (x - m) * (x - m)).sum();
    for x in ca {
        for l in 0..16 {
            acc[l] += (x[l] - m) * (x[l] - m);
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[inline(always)]
pub(super) fn row_stats(x: &[f32], eps: f32) -> (f32, f32) {
    let n = x.len() as f32;
    let mean = sum(x) / n;
    let var = sq_dev(x, mean) / n;
    (mean, 1.0 / (var + eps).sqrt())
}

/// LayerNorm rows of `x`: the output and each row's `(mean, 1/σ)`.
pub(super) fn ln_forward(x: &[f32], c: usize, w: &[f32], b: &[f32], eps: f32) -> (Vec<f32>, Vec<(f32, f32)>) {
    let t = x.len() / c;
    let mut y = vec![0f32; x.len()];
    let mut stats = vec![(0f32, 0f32); t];
    let rows = rows_per_task(c);
    let stats_at = Shared(stats.as_mut_ptr());
    crate::nn::team::for_each_chunk(&mut y, rows * c, |i, y| {
        let x = &x[i * rows * c..][..y.len()];
        // SAFETY: piece `i`'s rows of `stats`, disjoint from every other piece's.
        let s = unsafe { std::slice::from_raw_parts_mut(stats_at.get().add(i * rows), y.len() / c) };
        with_simd(
            #[inline(always)]
            || {
                for ((yr, st), xr) in y.chunks_exact_mut(c).zip(s.iter_mut()).zip(x.chunks_exact(c)) {
                    let (m, r) = row_stats(xr, eps);
                    *st = (m, r);
                    for (((o, v), wi), bi) in yr.iter_mut().zip(xr).zip(w).zip(b) {
                        *o = (v - m) * r * wi + bi;
                    }
                }
            },
        )
    });
    (y, stats)
}

/// LayerNorm's backward: adds `dx` into `dx_acc` and returns `(dw, db)`.
pub(super) fn ln_backward(
    dy: &[f32],
    x: &[f32],
    stats: &[(f32, f32)],
    w: &[f32],
    dx_acc: &mut [f32],
) -> (Vec<f32>, Vec<f32>) {
    let c = w.len();
    let rows = rows_per_task(c);
    let parts: Vec<(Vec<f32>, Vec<f32>)> = crate::nn::team::map_chunks(dx_acc, rows * c, |i, dx| {
        let (dy, x) = (&dy[i * rows * c..][..dx.len()], &x[i * rows * c..][..dx.len()]);
        let st = &stats[i * rows..][..dx.len() / c];
        with_simd(
            #[inline(always)]
            || {
                let (mut dw, mut db) = (vec![0f32; c], vec![0f32; c]);
                let mut g = vec![0f32; c];
                let mut xh = vec![0f32; c];
                for (((dxr, dyr), xr), &(m, r)) in
                    dx.chunks_exact_mut(c).zip(dy.chunks_exact(c)).zip(x.chunks_exact(c)).zip(st)
                {
                    // Element-wise first (vectorised), the row's two sums in sixteen lanes
                    // after ([`sum`], [`dot`]): a running sum in the same loop kept it scalar.
                    for j in 0..c {
                        xh[j] = (xr[j] - m) * r;
                        g[j] = dyr[j] * w[j];
                        dw[j] += dyr[j] * xh[j];
                        db[j] += dyr[j];
                    }
                    let (sg, sgx) = (sum(&g), dot(&g, &xh));
                    let (mg, mgx) = (sg / c as f32, sgx / c as f32);
                    for j in 0..c {
                        dxr[j] += r * (g[j] - mg - xh[j] * mgx);
                    }
                }
                (dw, db)
            },
        )
    });
    let (dw, db): (Vec<_>, Vec<_>) = parts.into_iter().unzip();
    (add_in_order(dw, c), add_in_order(db, c))
}

/// The tasks' partial sums (each `width` long) added in task order: the same bits on every run
/// (rayon's `reduce` associates them as work stealing falls).
pub(super) fn add_in_order(parts: Vec<Vec<f32>>, width: usize) -> Vec<f32> {
    parts.into_iter().fold(vec![0f32; width], |mut a, b| {
        for (x, y) in a.iter_mut().zip(&b) {
            *x += y;
        }
        a
    })
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "vista-layer-norm"
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
        let (x, w, b) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?, f32_slice(s3, l3)?);
        let out = ln_forward(x, w.len(), w, b, self.eps).0;
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (xv, wv, dyv) = (values(x)?, values(w)?, values(dy)?);
        let c = wv.len();
        let eps = self.eps;
        let rows = rows_per_task(c);
        let mut stats = vec![(0f32, 0f32); xv.len() / c.max(1)];
        stats.par_chunks_mut(rows).zip(xv.par_chunks(rows * c)).for_each(|(s, x)| {
            with_simd(
                #[inline(always)]
                || {
                    for (s, x) in s.iter_mut().zip(x.chunks_exact(c)) {
                        *s = row_stats(x, eps);
                    }
                },
            )
        });
        let mut dx = vec![0f32; xv.len()];
        let (dw, db) = ln_backward(&dyv, &xv, &stats, &wv, &mut dx);
        let dev = &Device::Cpu;
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), dev)?),
            Some(Tensor::from_vec(dw, w.shape(), dev)?),
            Some(Tensor::from_vec(db, c, dev)?),
        ))
    }
}

/// LayerNorm over the last dimension, differentiable in `x`, `w` and `b`.
///
/// # Shapes
/// `x: [..., C]`, `w, b: [C]` -> `[..., C]`
pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
    check_float(x, "x")?;
    let c = x.dim(candle_core::D::Minus1)?;
    if w.dims() != [c] || b.dims() != [c] {
        return Err(crate::Error::arg(
            "w",
            format!("LayerNorm of width {c} with weight {:?} and bias {:?}", w.dims(), b.dims()),
        ));
    }
    let (x, w, b) = (x.contiguous()?, w.contiguous()?, b.contiguous()?);
    if on_cpu_kernels(&[&x, &w, &b]) {
        return Ok(x.apply_op3(&w, &b, LayerNormOp { eps: eps as f32 })?);
    }
    let y = candle_nn::ops::layer_norm(&x, &w, &b, eps as f32)?.contiguous()?;
    Ok(x.apply_op3(&w, &b, Attach { y, kind: AttachKind::LayerNorm(eps) })?)
}

/// `softmax(x)` of one row into `out`; returns the row's maximum and `Σ e^(x − max)` (so that
/// `log softmax = x − max − ln Σ`).
#[inline(always)]
pub(super) fn softmax_row(x: &[f32], out: &mut [f32]) -> (f32, f32) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for (o, v) in out.iter_mut().zip(x) {
        *o = exp_fast(v - max);
    }
    let total = sum(out);
    let inv = 1.0 / total;
    for o in out.iter_mut() {
        *o *= inv;
    }
    (max, total)
}

struct SoftmaxOp;

impl CustomOp1 for SoftmaxOp {
    fn name(&self) -> &'static str {
        "vista-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> CpuOut {
        let x = f32_slice(s, l)?;
        let c = l.dims().last().copied().unwrap_or(1).max(1);
        let out = map_rows(
            x,
            c,
            #[inline(always)]
            |x, o| {
                softmax_row(x, o);
            },
        );
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, dy: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let (yv, dyv) = (values(y)?, values(dy)?);
        let c = y.dims().last().copied().unwrap_or(1).max(1);
        let mut dx = vec![0f32; yv.len()];
        let rows = rows_per_task(c);
        dx.par_chunks_mut(rows * c).zip(yv.par_chunks(rows * c).zip(dyv.par_chunks(rows * c))).for_each(
            |(dx, (y, dy))| {
                with_simd(
                    #[inline(always)]
                    || {
                        for ((dx, y), dy) in dx.chunks_exact_mut(c).zip(y.chunks_exact(c)).zip(dy.chunks_exact(c)) {
                            let yd = dot(y, dy);
                            for ((d, y), g) in dx.iter_mut().zip(y).zip(dy) {
                                *d = y * (g - yd);
                            }
                        }
                    },
                )
            },
        );
        Ok(Some(Tensor::from_vec(dx, y.shape(), &Device::Cpu)?))
    }
}

/// Softmax over the last dimension, differentiable.
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    check_float(x, "x")?;
    let x = x.contiguous()?;
    if on_cpu_kernels(&[&x]) {
        return Ok(x.apply_op1(SoftmaxOp)?);
    }
    let y = candle_nn::ops::softmax_last_dim(&x)?.contiguous()?;
    Ok(x.apply_op1(Attach { y, kind: AttachKind::Softmax })?)
}

struct GeluOp;

pub(super) const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
/// 1 / √(2π).
pub(super) const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;

impl CustomOp1 for GeluOp {
    fn name(&self) -> &'static str {
        "vista-gelu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> CpuOut {
        let out = map(
            f32_slice(s, l)?,
            #[inline(always)]
            |v| 0.5 * v * (1.0 + erf_fast(v * FRAC_1_SQRT_2)),
        );
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let dx = zip_map(
            &values(x)?,
            &values(dy)?,
            #[inline(always)]
            |v, g| {
                let cdf = 0.5 * (1.0 + erf_fast(v * FRAC_1_SQRT_2));
                let pdf = FRAC_1_SQRT_2PI * exp_fast(-0.5 * v * v);
                g * (cdf + v * pdf)
            },
        );
        Ok(Some(Tensor::from_vec(dx, x.shape(), &Device::Cpu)?))
    }
}

/// Exact (erf) GELU, differentiable.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    check_float(x, "x")?;
    if !on_cpu_kernels(&[x]) {
        // candle's exact GELU records its own backward (erf-based, as this op's).
        return Ok(x.gelu_erf()?);
    }
    Ok(x.contiguous()?.apply_op1(GeluOp)?)
}

struct AddBiasOp;

/// Column sums of a row-major `[rows, width]` matrix (a bias's gradient).
pub(super) fn col_sums(x: &[f32], width: usize) -> Vec<f32> {
    let rows = rows_per_task(width) * 4;
    let chunks: Vec<&[f32]> = x.chunks(rows * width).collect();
    let sums = crate::nn::team::map(chunks.len(), |i| {
        with_simd(
            #[inline(always)]
            || {
                let mut acc = vec![0f32; width];
                for row in chunks[i].chunks_exact(width) {
                    for (a, v) in acc.iter_mut().zip(row) {
                        *a += v;
                    }
                }
                acc
            },
        )
    });
    add_in_order(sums, width)
}

impl CustomOp2 for AddBiasOp {
    fn name(&self) -> &'static str {
        "vista-add-bias"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> CpuOut {
        let (x, b) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?);
        let out = map_rows(
            x,
            b.len().max(1),
            #[inline(always)]
            |x, o| {
                for ((o, v), bi) in o.iter_mut().zip(x).zip(b) {
                    *o = v + bi;
                }
            },
        );
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let dyv = values(dy)?;
        let db = col_sums(&dyv, b.elem_count().max(1));
        Ok((Some(dy.clone()), Some(Tensor::from_vec(db, b.shape(), &Device::Cpu)?)))
    }
}

/// `x + b` with `b` broadcast over the last dimension, differentiable.
///
/// # Shapes
/// `x: [..., C]`, `b: [C]` -> `[..., C]`
pub fn add_bias(x: &Tensor, b: &Tensor) -> Result<Tensor> {
    check_float(x, "x")?;
    let c = x.dim(candle_core::D::Minus1)?;
    if b.dims() != [c] {
        return Err(crate::Error::arg("b", format!("bias {:?} for rows of width {c}", b.dims())));
    }
    if !on_cpu_kernels(&[x, b]) {
        return Ok(x.broadcast_add(b)?);
    }
    Ok(x.contiguous()?.apply_op2(&b.contiguous()?, AddBiasOp)?)
}

/// Fused attention for training: per head, `softmax(scale·q kᵀ [+ causal mask]) v` in one pass,
/// and its backward recomputing the probabilities (as flash attention does) instead of keeping
/// them: `dv = Pᵀ do`, `dP = do vᵀ`, `dS = P ⊙ (dP − rowsum(dP ⊙ P))`, `dq = scale·dS k`,
/// `dk = dSᵀ (scale·q)`. One task per (batch, head); the composed version ran each of its six
/// batched products as one small GEMM call per head.
struct AttentionOp {
    scale: f32,
    causal: bool,
}

impl AttentionOp {
    /// The attention probabilities of one head's rows (`p`: `n × n`, zero where masked).
    #[inline(always)]
    fn probs(&self, q: &[f32], k: &[f32], (n, d): (usize, usize), p: &mut [f32], qs: &mut [f32]) {
        let (scale, causal) = (self.scale, self.causal);
        for i in 0..n {
            let qi = &q[i * d..(i + 1) * d];
            for (s, x) in qs.iter_mut().zip(qi) {
                *s = x * scale;
            }
            let lim = if causal { i + 1 } else { n };
            let row = &mut p[i * n..(i + 1) * n];
            let mut max = f32::NEG_INFINITY;
            for j in 0..lim {
                let s = dot(qs, &k[j * d..(j + 1) * d]);
                row[j] = s;
                max = max.max(s);
            }
            let mut sum = 0.0;
            for r in row[..lim].iter_mut() {
                *r = exp_fast(*r - max);
                sum += *r;
            }
            let inv = 1.0 / sum;
            for r in row[..lim].iter_mut() {
                *r *= inv;
            }
            row[lim..].iter_mut().for_each(|r| *r = 0.0);
        }
    }
}

impl CustomOp3 for AttentionOp {
    fn name(&self) -> &'static str {
        "vista-attention"
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
        let (q, k, v) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?, f32_slice(s3, l3)?);
        let dims = l1.dims();
        let (n, d) = (dims[dims.len() - 2], dims[dims.len() - 1]);
        let mut out = vec![0f32; q.len()];
        let hd = n * d;
        out.par_chunks_mut(hd).zip(q.par_chunks(hd).zip(k.par_chunks(hd).zip(v.par_chunks(hd)))).for_each(
            |(o, (q, (k, v)))| {
                with_simd(
                    #[inline(always)]
                    || {
                        let (mut p, mut qs) = (vec![0f32; n * n], vec![0f32; d]);
                        self.probs(q, k, (n, d), &mut p, &mut qs);
                        for i in 0..n {
                            let oi = &mut o[i * d..(i + 1) * d];
                            for j in 0..n {
                                let pij = p[i * n + j];
                                if pij != 0.0 {
                                    for (x, vj) in oi.iter_mut().zip(&v[j * d..(j + 1) * d]) {
                                        *x += pij * vj;
                                    }
                                }
                            }
                        }
                    },
                )
            },
        );
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        dout: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (qv, kv, vv, dov) = (values(q)?, values(k)?, values(v)?, values(dout)?);
        let dims = q.dims();
        let (n, d) = (dims[dims.len() - 2], dims[dims.len() - 1]);
        let (scale, causal) = (self.scale, self.causal);
        let hd = n * d;
        let (mut dq, mut dk, mut dv) = (vec![0f32; qv.len()], vec![0f32; qv.len()], vec![0f32; qv.len()]);
        dq.par_chunks_mut(hd)
            .zip(dk.par_chunks_mut(hd).zip(dv.par_chunks_mut(hd)))
            .zip(qv.par_chunks(hd).zip(kv.par_chunks(hd).zip(vv.par_chunks(hd).zip(dov.par_chunks(hd)))))
            .for_each(|((dq, (dk, dv)), (q, (k, (v, go))))| {
                with_simd(
                    #[inline(always)]
                    || {
                        let (mut p, mut qs) = (vec![0f32; n * n], vec![0f32; d]);
                        self.probs(q, k, (n, d), &mut p, &mut qs);
                        let mut ds = vec![0f32; n];
                        for i in 0..n {
                            let lim = if causal { i + 1 } else { n };
                            let gi = &go[i * d..(i + 1) * d];
                            let row = &p[i * n..(i + 1) * n];
                            let mut rs = 0.0;
                            for j in 0..lim {
                                // dv_j += P_ij · do_i; dP_ij = do_i · v_j.
                                for (x, g) in dv[j * d..(j + 1) * d].iter_mut().zip(gi) {
                                    *x += row[j] * g;
                                }
                                ds[j] = dot(gi, &v[j * d..(j + 1) * d]);
                                rs += row[j] * ds[j];
                            }
                            for j in 0..lim {
                                ds[j] = row[j] * (ds[j] - rs);
                            }
                            // dq_i = scale Σ_j dS_ij k_j; dk_j += dS_ij · scale·q_i.
                            let dqi = &mut dq[i * d..(i + 1) * d];
                            for j in 0..lim {
                                for (x, kj) in dqi.iter_mut().zip(&k[j * d..(j + 1) * d]) {
                                    *x += ds[j] * kj;
                                }
                            }
                            dqi.iter_mut().for_each(|x| *x *= scale);
                            let qi = &q[i * d..(i + 1) * d];
                            for j in 0..lim {
                                let c = ds[j] * scale;
                                for (x, qv) in dk[j * d..(j + 1) * d].iter_mut().zip(qi) {
                                    *x += c * qv;
                                }
                            }
                        }
                    },
                )
            });
        let dev = &Device::Cpu;
        Ok((
            Some(Tensor::from_vec(dq, q.shape(), dev)?),
            Some(Tensor::from_vec(dk, k.shape(), dev)?),
            Some(Tensor::from_vec(dv, v.shape(), dev)?),
        ))
    }
}

/// Scaled dot-product attention, differentiable: `softmax(scale·q kᵀ + mask) v` with `mask` the
/// causal one (−∞ above the diagonal) when `causal`. Fused on the CPU in f32 ([`AttentionOp`]);
/// elsewhere the same computation from candle ops.
///
/// # Shapes
/// `q, k, v: [B, H, N, D]` -> `[B, H, N, D]`
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64, causal: bool) -> Result<Tensor> {
    let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
    if q.rank() == 4 && q.dims() == k.dims() && q.dims() == v.dims() && on_cpu_kernels(&[&q, &k, &v]) {
        return Ok(q.apply_op3(&k, &v, AttentionOp { scale: scale as f32, causal })?);
    }
    let scores = (q * scale)?.matmul(&k.t()?)?;
    let scores = if causal {
        let n = scores.dim(candle_core::D::Minus1)?;
        let mask: Vec<f32> = (0..n * n).map(|x| if x % n > x / n { f32::NEG_INFINITY } else { 0.0 }).collect();
        scores.broadcast_add(&Tensor::from_vec(mask, (n, n), scores.device())?.to_dtype(scores.dtype())?)?
    } else {
        scores
    };
    Ok(softmax_last(&scores)?.matmul(&v)?)
}

/// A linear layer on the packed GEMM and the thread team: `y = x Wᵀ (+ b)` for `x: [T, in]` and
/// a PyTorch `[out, in]` weight, the bias added by the GEMM; backward `dx = dY W`,
/// `dW = dYᵀ x` ([`gemm_tn`](crate::nn::packed::gemm_tn)), `db` = column sums of `dY`.
struct LinearOp {
    rows: usize,
    out: usize,
    inp: usize,
}

impl LinearOp {
    fn msg(e: impl std::fmt::Display) -> candle_core::Error {
        candle_core::Error::Msg(format!("linear: {e}"))
    }

    fn forward(&self, x: &[f32], w: &[f32], b: Option<&[f32]>) -> CpuOut {
        let y = super::block::dense(x, self.rows, w, self.out, self.inp, b).map_err(Self::msg)?;
        Ok((CpuStorage::F32(y), Shape::from((self.rows, self.out))))
    }

    /// `(dx, dW)`.
    fn backward(&self, x: &Tensor, w: &Tensor, dy: &Tensor) -> candle_core::Result<(Tensor, Tensor, Vec<f32>)> {
        let (xv, wv, dyv) = (values(x)?, values(w)?, values(dy)?);
        let dx = super::block::dense_dx(&dyv, self.rows, &wv, self.out, self.inp).map_err(Self::msg)?;
        let dw = super::block::dense_dw(&dyv, &xv, self.rows, self.out, self.inp).map_err(Self::msg)?;
        Ok((Tensor::from_vec(dx, x.shape(), &Device::Cpu)?, Tensor::from_vec(dw, w.shape(), &Device::Cpu)?, dyv))
    }
}

impl CustomOp2 for LinearOp {
    fn name(&self) -> &'static str {
        "vista-linear"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> CpuOut {
        self.forward(f32_slice(s1, l1)?, f32_slice(s2, l2)?, None)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, _) = self.backward(x, w, dy)?;
        Ok((Some(dx), Some(dw)))
    }
}

impl CustomOp3 for LinearOp {
    fn name(&self) -> &'static str {
        "vista-linear-bias"
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
        self.forward(f32_slice(s1, l1)?, f32_slice(s2, l2)?, Some(f32_slice(s3, l3)?))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, dyv) = self.backward(x, w, dy)?;
        let db = Tensor::from_vec(col_sums(&dyv, self.out.max(1)), b.shape(), &Device::Cpu)?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

/// A linear layer, `x Wᵀ + b` over the last dimension of `x: [..., in]` with `w: [out, in]`
/// (PyTorch's layout), one GEMM over the flattened leading dimensions. On the CPU in f32 it is
/// one fused op on the packed GEMM and the thread team (forward and backward); elsewhere
/// candle's matmul and bias add.
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    check_float(x, "x")?;
    let dims = x.dims().to_vec();
    let Some((&inp, lead)) = dims.split_last() else {
        return Err(crate::Error::arg("x", "a linear layer's input needs at least one dimension"));
    };
    let rows: usize = lead.iter().product();
    let (out, w_in) =
        w.dims2().map_err(|_| crate::Error::arg("w", format!("weight {:?} is not [out, in]", w.dims())))?;
    if w_in != inp {
        return Err(crate::Error::arg("w", format!("weight [{out}, {w_in}] for rows of width {inp}")));
    }
    if let Some(b) = b {
        if b.dims() != [out] {
            return Err(crate::Error::arg("b", format!("bias {:?} for a weight of {out} rows", b.dims())));
        }
    }
    let x2 = x.reshape((rows, inp))?;
    let tensors: Vec<&Tensor> = [Some(x), Some(w), b].into_iter().flatten().collect();
    let y = if on_cpu_kernels(&tensors) {
        let op = LinearOp { rows, out, inp };
        let (x2, w) = (x2.contiguous()?, w.contiguous()?);
        match b {
            Some(b) => x2.apply_op3(&w, &b.contiguous()?, op)?,
            None => x2.apply_op2(&w, op)?,
        }
    } else {
        let y = x2.matmul(&w.t()?)?;
        match b {
            Some(b) => add_bias(&y, b)?,
            None => y,
        }
    };
    let mut out_dims = dims;
    *out_dims.last_mut().expect("non-empty") = out;
    Ok(y.reshape(out_dims)?)
}

/// `MaxPool2d(k, stride=s, padding=p)` on NCHW with its backward: each output's gradient goes to
/// the first maximum of its window in scan order (ATen's `max_pool2d_with_indices` keeps that
/// index), padding never winning. candle's max pool has no backward for kernel ≠ stride.
struct MaxPoolOp {
    k: usize,
    s: usize,
    p: usize,
}

impl MaxPoolOp {
    fn out_size(&self, len: usize) -> usize {
        (len + 2 * self.p - self.k) / self.s + 1
    }

    /// For each output of plane `[h, w]`, the flat index of its window's first maximum.
    fn argmax(&self, plane: &[f32], (h, w): (usize, usize)) -> Vec<usize> {
        let (ho, wo) = (self.out_size(h), self.out_size(w));
        let mut out = Vec::with_capacity(ho * wo);
        for oy in 0..ho {
            for ox in 0..wo {
                let (mut best, mut at) = (f32::NEG_INFINITY, usize::MAX);
                for ky in 0..self.k {
                    let iy = (oy * self.s + ky) as isize - self.p as isize;
                    if iy < 0 || iy >= h as isize {
                        continue;
                    }
                    for kx in 0..self.k {
                        let ix = (ox * self.s + kx) as isize - self.p as isize;
                        if ix < 0 || ix >= w as isize {
                            continue;
                        }
                        let i = iy as usize * w + ix as usize;
                        if plane[i] > best || plane[i].is_nan() || at == usize::MAX {
                            best = plane[i];
                            at = i;
                        }
                    }
                }
                out.push(at);
            }
        }
        out
    }
}

impl CustomOp1 for MaxPoolOp {
    fn name(&self) -> &'static str {
        "vista-max-pool"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> CpuOut {
        let (n, c, h, w) = l.shape().dims4()?;
        let x = f32_slice(s, l)?;
        let (ho, wo) = (self.out_size(h), self.out_size(w));
        let out: Vec<f32> = x
            .par_chunks(h * w)
            .flat_map_iter(|plane| self.argmax(plane, (h, w)).into_iter().map(move |i| plane[i]))
            .collect();
        Ok((CpuStorage::F32(out), candle_core::Shape::from((n, c, ho, wo))))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let (_, _, h, w) = x.dims4()?;
        let (xs, gs) = (values(x)?, values(dy)?);
        let per_out = self.out_size(h) * self.out_size(w);
        let mut dx = vec![0f32; xs.len()];
        dx.par_chunks_mut(h * w).zip(xs.par_chunks(h * w)).zip(gs.par_chunks(per_out)).for_each(|((d, plane), g)| {
            for (i, gi) in self.argmax(plane, (h, w)).into_iter().zip(g) {
                d[i] += gi;
            }
        });
        Ok(Some(Tensor::from_vec(dx, x.shape(), &Device::Cpu)?))
    }
}

/// `F.max_pool2d(x, k, s, p)` on NCHW, differentiable (CPU f32; other devices refuse).
pub fn max_pool2d(x: &Tensor, k: usize, s: usize, p: usize) -> Result<Tensor> {
    check_float(x, "x")?;
    let (_, _, h, w) = x.dims4()?;
    if h + 2 * p < k || w + 2 * p < k || p * 2 > k {
        return Err(crate::Error::arg("x", format!("max pool {k}x{k} (padding {p}) of a {h}x{w} map")));
    }
    if !on_cpu_kernels(&[x]) {
        return Err(crate::Error::arg("device", "the trainable max pool runs on the CPU only (for now)"));
    }
    Ok(x.contiguous()?.apply_op1(MaxPoolOp { k, s, p })?)
}
