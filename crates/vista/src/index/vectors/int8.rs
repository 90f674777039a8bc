//! The int8 copy of a [`VectorSet`]: per-row 8-bit codes with a proven error bound, so an int8
//! scan can rule rows out exactly.

use super::*;

/// Per-row int8 codes with one scale per row (max-abs to ±127), stored offset by +128 as u8 so
/// the VNNI instruction (u8 × i8) takes them directly; the query's offset term is removed once.
pub(super) struct Quantized {
    /// Row length in codes: `dim` rounded up to [`Q8_ALIGN`]; the padding is code 128 (zero).
    pub(super) stride: usize,
    pub(super) codes: Vec<u8>,
    pub(super) meta: Vec<RowMeta>,
}

#[derive(Clone, Copy)]
pub(super) struct RowMeta {
    /// x̂ = scale · (code − 128).
    pub(super) scale: f32,
    /// ‖x − x̂‖, rounded up; infinite for a row with a non-finite value (never ruled out).
    pub(super) err: f32,
    /// ‖x‖, rounded up.
    pub(super) norm: f32,
}

impl Quantized {
    pub(super) fn build(set: &VectorSet) -> Self {
        let (dim, n) = (set.dim, set.len());
        let stride = dim.div_ceil(Q8_ALIGN) * Q8_ALIGN;
        let mut codes = vec![128u8; n * stride];
        let mut meta = vec![RowMeta { scale: 0.0, err: 0.0, norm: 0.0 }; n];
        codes.par_chunks_mut(stride).zip(meta.par_iter_mut()).enumerate().with_min_len(1024).for_each_init(
            || vec![0.0f32; dim],
            |row, (i, (codes, meta))| {
                set.f16_row(i).convert_to_f32_slice(row);
                *meta = quantize(row, codes);
            },
        );
        Quantized { stride, codes, meta }
    }

    pub(super) fn push(&mut self, row: &[f32]) {
        let start = self.codes.len();
        self.codes.resize(start + self.stride, 128);
        self.meta.push(quantize(row, &mut self.codes[start..]));
    }
}

/// Rounds `x` to `scale · code` with `scale = max|x| / 127`; writes code + 128 into `out` (its
/// tail past `x.len()` stays 128) and returns the row's metadata.
pub(super) fn quantize(x: &[f32], out: &mut [u8]) -> RowMeta {
    const L: usize = 8;
    // Lane-wise, so the loops vectorise.
    let (mut maxes, mut poison) = ([0.0f32; L], [0.0f32; L]);
    for (i, &v) in x.iter().enumerate() {
        let a = v.abs();
        maxes[i % L] = if a > maxes[i % L] { a } else { maxes[i % L] };
        poison[i % L] += v * 0.0;
    }
    let max = maxes.iter().fold(0.0f32, |m, &v| m.max(v));
    if poison.iter().any(|p| p.is_nan()) {
        // A NaN or infinite value (v · 0 is NaN exactly then): never ruled out by the int8 pass.
        return RowMeta { scale: 0.0, err: f32::INFINITY, norm: f32::INFINITY };
    }
    if max == 0.0 {
        return RowMeta { scale: 0.0, err: 0.0, norm: 0.0 };
    }
    let scale = max / 127.0;
    let inv = 127.0 / max;
    // Residuals in f64: scale · code is exact there.
    let (mut err2, mut norm2) = ([0.0f64; L], [0.0f64; L]);
    let mut lane = |l: usize, v: f32, o: &mut u8| {
        let c = round_small(v * inv).clamp(-127.0, 127.0);
        *o = (c as i32 + 128) as u8;
        let e = v as f64 - scale as f64 * c as f64;
        err2[l] += e * e;
        norm2[l] += v as f64 * v as f64;
    };
    let body = x.len() / L * L;
    let ((x_body, x_tail), (o_body, o_tail)) = (x.split_at(body), out[..x.len()].split_at_mut(body));
    for (x8, o8) in x_body.chunks_exact(L).zip(o_body.chunks_exact_mut(L)) {
        for l in 0..L {
            lane(l, x8[l], &mut o8[l]);
        }
    }
    for (l, (&v, o)) in x_tail.iter().zip(o_tail).enumerate() {
        lane(l, v, o);
    }
    let (err2, norm2): (f64, f64) = (err2.iter().sum(), norm2.iter().sum());
    RowMeta { scale, err: round_up(err2.sqrt()), norm: round_up(norm2.sqrt()) }
}

/// Rounds to the nearest integer (ties to even) for |x| < 2^22 with two additions, which
/// vectorise on baseline x86_64 (`round_ties_even` there is a libm call per value).
#[inline]
pub(super) fn round_small(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 · 2^23: x + MAGIC has no fraction bits left
    (x + MAGIC) - MAGIC
}

/// An f64 magnitude as an f32 no smaller than it.
pub(super) fn round_up(x: f64) -> f32 {
    let f = x as f32;
    if (f as f64) < x {
        f.next_up()
    } else {
        f
    }
}

/// The query quantised like a row, as i8 (for VNNI) and i16 (for the widening kernels).
pub(super) struct QueryQ8 {
    pub(super) i8: Vec<i8>,
    pub(super) i16: Vec<i16>,
    pub(super) scale: f32,
    /// 128 · Σ codes: what the rows' +128 offset adds to every raw dot product.
    pub(super) offset: i32,
    /// ‖q − q̂‖, ‖q̂‖, ‖q‖, each rounded up.
    pub(super) err: f32,
    pub(super) norm_hat: f32,
    pub(super) norm: f32,
}

impl QueryQ8 {
    /// `None` for a query with a non-finite value.
    pub(super) fn new(q: &[f32], stride: usize) -> Option<Self> {
        if !q.iter().all(|v| v.is_finite()) {
            return None;
        }
        let max = q.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let (scale, inv) = if max == 0.0 { (0.0, 0.0) } else { (max / 127.0, 127.0 / max) };
        let mut i8 = vec![0i8; stride];
        let (mut err2, mut hat2, mut norm2) = (0.0f64, 0.0f64, 0.0f64);
        for (o, &v) in i8.iter_mut().zip(q) {
            let c = round_small(v * inv).clamp(-127.0, 127.0);
            *o = c as i8;
            let hat = scale as f64 * c as f64;
            err2 += (v as f64 - hat) * (v as f64 - hat);
            hat2 += hat * hat;
            norm2 += v as f64 * v as f64;
        }
        let offset = 128 * i8.iter().map(|&c| c as i32).sum::<i32>();
        let i16 = i8.iter().map(|&c| c as i16).collect();
        Some(QueryQ8 {
            i8,
            i16,
            scale,
            offset,
            err: round_up(err2.sqrt()),
            norm_hat: round_up(hat2.sqrt()),
            norm: round_up(norm2.sqrt()),
        })
    }
}
