//! The scan kernels, each chosen once per search by runtime CPU feature detection, with a portable
//! fallback (any target) that the SIMD versions are tested against.

use half::f16;
use half::slice::HalfFloatSliceExt;

use super::int8::QueryQ8;

/// `out[r] = rows[r] · query` for the `out.len()` consecutive rows of `rows`, f16 widened to f32.
#[derive(Clone, Copy)]
pub(super) struct DotF16(unsafe fn(&[f32], &[f16], &mut [f32]));

impl DotF16 {
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f") {
                return DotF16(x86::dot_f16_avx512);
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c") {
                return DotF16(x86::dot_f16_avx2);
            }
        }
        Self::portable()
    }

    pub fn portable() -> Self {
        DotF16(dot_f16_portable)
    }

    #[cfg(all(test, target_arch = "x86_64"))]
    pub fn all_available() -> Vec<(&'static str, Self)> {
        let mut v = vec![("portable", Self::portable())];
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c") {
            v.push(("avx2", DotF16(x86::dot_f16_avx2)));
        }
        if is_x86_feature_detected!("avx512f") {
            v.push(("avx512", DotF16(x86::dot_f16_avx512)));
        }
        v
    }

    #[inline]
    pub fn run(self, query: &[f32], rows: &[f16], out: &mut [f32]) {
        assert_eq!(rows.len(), query.len() * out.len());
        // SAFETY: the kernel was chosen after checking its CPU features; lengths match.
        unsafe { (self.0)(query, rows, out) }
    }
}

/// `out[r] = Σ codes[r]·query` (u8 codes with their +128 offset, i8 query codes) for the
/// `out.len()` consecutive rows of `codes`, each `query.i8.len()` long (a multiple of 64).
#[derive(Clone, Copy)]
pub(super) struct DotU8(unsafe fn(&QueryQ8, &[u8], &mut [i32]));

impl DotU8 {
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vnni")
            {
                return DotU8(x86::dot_u8_vnni);
            }
            if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw") {
                return DotU8(x86::dot_u8_avx512bw);
            }
            if is_x86_feature_detected!("avx2") {
                return DotU8(x86::dot_u8_avx2);
            }
        }
        DotU8(dot_u8_portable)
    }

    #[cfg(all(test, target_arch = "x86_64"))]
    pub fn all_available() -> Vec<(&'static str, Self)> {
        let mut v = vec![("portable", DotU8(dot_u8_portable))];
        if is_x86_feature_detected!("avx2") {
            v.push(("avx2", DotU8(x86::dot_u8_avx2)));
        }
        if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw") {
            v.push(("avx512bw", DotU8(x86::dot_u8_avx512bw)));
            if is_x86_feature_detected!("avx512vnni") {
                v.push(("vnni", DotU8(x86::dot_u8_vnni)));
            }
        }
        v
    }

    #[inline]
    pub fn run(self, query: &QueryQ8, codes: &[u8], out: &mut [i32]) {
        let stride = query.i8.len();
        assert!(stride.is_multiple_of(64) && query.i16.len() == stride && codes.len() == stride * out.len());
        // SAFETY: the kernel was chosen after checking its CPU features; lengths match.
        unsafe { (self.0)(query, codes, out) }
    }
}

unsafe fn dot_f16_portable(query: &[f32], rows: &[f16], out: &mut [f32]) {
    const W: usize = 64;
    let dim = query.len();
    let mut buf = [0.0f32; W];
    for (o, row) in out.iter_mut().zip(rows.chunks_exact(dim)) {
        let mut acc = [0.0f32; 8];
        for (xs, qs) in row.chunks(W).zip(query.chunks(W)) {
            let buf = &mut buf[..xs.len()];
            xs.convert_to_f32_slice(buf);
            let mut lanes_x = buf.chunks_exact(8);
            let mut lanes_q = qs.chunks_exact(8);
            for (x8, q8) in (&mut lanes_x).zip(&mut lanes_q) {
                for l in 0..8 {
                    acc[l] = x8[l].mul_add(q8[l], acc[l]);
                }
            }
            for (l, (x, q)) in lanes_x.remainder().iter().zip(lanes_q.remainder()).enumerate() {
                acc[l] = x.mul_add(*q, acc[l]);
            }
        }
        *o = acc.iter().sum();
    }
}

unsafe fn dot_u8_portable(query: &QueryQ8, codes: &[u8], out: &mut [i32]) {
    let stride = query.i16.len();
    for (o, row) in out.iter_mut().zip(codes.chunks_exact(stride)) {
        *o = row.iter().zip(&query.i16).map(|(&c, &q)| c as i32 * q as i32).sum();
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use half::f16;

    use super::super::int8::QueryQ8;

    /// Scalar tail of an f16 dot product (dims not a multiple of the vector width).
    #[inline]
    fn tail(query: &[f32], row: &[f16], from: usize) -> f32 {
        row[from..].iter().zip(&query[from..]).map(|(x, q)| x.to_f32() * q).sum()
    }

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn dot_f16_avx512(query: &[f32], rows: &[f16], out: &mut [f32]) {
        let dim = query.len();
        let q = query.as_ptr();
        for (r, o) in out.iter_mut().enumerate() {
            let row = &rows[r * dim..(r + 1) * dim];
            let x = row.as_ptr() as *const u16;
            let (mut a0, mut a1, mut a2, mut a3) =
                (_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps());
            let mut j = 0;
            while j + 64 <= dim {
                let x0 = _mm512_cvtph_ps(_mm256_loadu_si256(x.add(j) as *const __m256i));
                let x1 = _mm512_cvtph_ps(_mm256_loadu_si256(x.add(j + 16) as *const __m256i));
                let x2 = _mm512_cvtph_ps(_mm256_loadu_si256(x.add(j + 32) as *const __m256i));
                let x3 = _mm512_cvtph_ps(_mm256_loadu_si256(x.add(j + 48) as *const __m256i));
                a0 = _mm512_fmadd_ps(x0, _mm512_loadu_ps(q.add(j)), a0);
                a1 = _mm512_fmadd_ps(x1, _mm512_loadu_ps(q.add(j + 16)), a1);
                a2 = _mm512_fmadd_ps(x2, _mm512_loadu_ps(q.add(j + 32)), a2);
                a3 = _mm512_fmadd_ps(x3, _mm512_loadu_ps(q.add(j + 48)), a3);
                j += 64;
            }
            while j + 16 <= dim {
                let x0 = _mm512_cvtph_ps(_mm256_loadu_si256(x.add(j) as *const __m256i));
                a0 = _mm512_fmadd_ps(x0, _mm512_loadu_ps(q.add(j)), a0);
                j += 16;
            }
            let acc = _mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3));
            *o = _mm512_reduce_add_ps(acc) + tail(query, row, j);
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_f16_avx2(query: &[f32], rows: &[f16], out: &mut [f32]) {
        let dim = query.len();
        let q = query.as_ptr();
        for (r, o) in out.iter_mut().enumerate() {
            let row = &rows[r * dim..(r + 1) * dim];
            let x = row.as_ptr() as *const u16;
            let (mut a0, mut a1, mut a2, mut a3) =
                (_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps());
            let mut j = 0;
            while j + 32 <= dim {
                let x0 = _mm256_cvtph_ps(_mm_loadu_si128(x.add(j) as *const __m128i));
                let x1 = _mm256_cvtph_ps(_mm_loadu_si128(x.add(j + 8) as *const __m128i));
                let x2 = _mm256_cvtph_ps(_mm_loadu_si128(x.add(j + 16) as *const __m128i));
                let x3 = _mm256_cvtph_ps(_mm_loadu_si128(x.add(j + 24) as *const __m128i));
                a0 = _mm256_fmadd_ps(x0, _mm256_loadu_ps(q.add(j)), a0);
                a1 = _mm256_fmadd_ps(x1, _mm256_loadu_ps(q.add(j + 8)), a1);
                a2 = _mm256_fmadd_ps(x2, _mm256_loadu_ps(q.add(j + 16)), a2);
                a3 = _mm256_fmadd_ps(x3, _mm256_loadu_ps(q.add(j + 24)), a3);
                j += 32;
            }
            while j + 8 <= dim {
                let x0 = _mm256_cvtph_ps(_mm_loadu_si128(x.add(j) as *const __m128i));
                a0 = _mm256_fmadd_ps(x0, _mm256_loadu_ps(q.add(j)), a0);
                j += 8;
            }
            let acc = _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3));
            // [8] -> [4] -> [2] -> [1]
            let s4 = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps::<1>(acc));
            let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
            let s1 = _mm_add_ss(s2, _mm_shuffle_ps::<0b01>(s2, s2));
            *o = _mm_cvtss_f32(s1) + tail(query, row, j);
        }
    }

    /// u8 × i8 → i32 in one instruction (`vpdpbusd`), 64 codes per step.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn dot_u8_vnni(query: &QueryQ8, codes: &[u8], out: &mut [i32]) {
        let stride = query.i8.len();
        let q = query.i8.as_ptr();
        for (r, o) in out.iter_mut().enumerate() {
            let x = codes.as_ptr().add(r * stride);
            let (mut a0, mut a1) = (_mm512_setzero_si512(), _mm512_setzero_si512());
            let mut j = 0;
            while j + 128 <= stride {
                let x0 = _mm512_loadu_si512(x.add(j) as *const _);
                let x1 = _mm512_loadu_si512(x.add(j + 64) as *const _);
                a0 = _mm512_dpbusd_epi32(a0, x0, _mm512_loadu_si512(q.add(j) as *const _));
                a1 = _mm512_dpbusd_epi32(a1, x1, _mm512_loadu_si512(q.add(j + 64) as *const _));
                j += 128;
            }
            if j < stride {
                let x0 = _mm512_loadu_si512(x.add(j) as *const _);
                a0 = _mm512_dpbusd_epi32(a0, x0, _mm512_loadu_si512(q.add(j) as *const _));
            }
            *o = _mm512_reduce_add_epi32(_mm512_add_epi32(a0, a1));
        }
    }

    /// Codes widened to i16 and multiplied pairwise (`vpmaddwd`), 32 codes per step.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn dot_u8_avx512bw(query: &QueryQ8, codes: &[u8], out: &mut [i32]) {
        let stride = query.i16.len();
        let q = query.i16.as_ptr();
        for (r, o) in out.iter_mut().enumerate() {
            let x = codes.as_ptr().add(r * stride);
            let (mut a0, mut a1) = (_mm512_setzero_si512(), _mm512_setzero_si512());
            let mut j = 0;
            while j + 64 <= stride {
                let x0 = _mm512_cvtepu8_epi16(_mm256_loadu_si256(x.add(j) as *const __m256i));
                let x1 = _mm512_cvtepu8_epi16(_mm256_loadu_si256(x.add(j + 32) as *const __m256i));
                a0 = _mm512_add_epi32(a0, _mm512_madd_epi16(x0, _mm512_loadu_si512(q.add(j) as *const _)));
                a1 = _mm512_add_epi32(a1, _mm512_madd_epi16(x1, _mm512_loadu_si512(q.add(j + 32) as *const _)));
                j += 64;
            }
            *o = _mm512_reduce_add_epi32(_mm512_add_epi32(a0, a1));
        }
    }

    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn dot_u8_avx2(query: &QueryQ8, codes: &[u8], out: &mut [i32]) {
        let stride = query.i16.len();
        let q = query.i16.as_ptr();
        for (r, o) in out.iter_mut().enumerate() {
            let x = codes.as_ptr().add(r * stride);
            let (mut a0, mut a1) = (_mm256_setzero_si256(), _mm256_setzero_si256());
            let mut j = 0;
            while j + 32 <= stride {
                let x0 = _mm256_cvtepu8_epi16(_mm_loadu_si128(x.add(j) as *const __m128i));
                let x1 = _mm256_cvtepu8_epi16(_mm_loadu_si128(x.add(j + 16) as *const __m128i));
                a0 = _mm256_add_epi32(a0, _mm256_madd_epi16(x0, _mm256_loadu_si256(q.add(j) as *const __m256i)));
                a1 = _mm256_add_epi32(a1, _mm256_madd_epi16(x1, _mm256_loadu_si256(q.add(j + 16) as *const __m256i)));
                j += 32;
            }
            let acc = _mm256_add_epi32(a0, a1);
            // [8] -> [4] -> [1]
            let s4 = _mm_add_epi32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256::<1>(acc));
            let s2 = _mm_add_epi32(s4, _mm_shuffle_epi32::<0b01_00_11_10>(s4));
            let s1 = _mm_add_epi32(s2, _mm_shuffle_epi32::<0b10_11_00_01>(s2));
            *o = _mm_cvtsi128_si32(s1);
        }
    }
}
