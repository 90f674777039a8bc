//! 3×3 stride-1 convolutions by Winograd's minimal filtering, F(2×2, 3×3) (Lavin & Gray, "Fast
//! Algorithms for Convolutional Neural Networks", 2016), channels-last, on the CPU.
//!
//! Each 2×2 block of outputs reads a 4×4 window of the input. In the transformed domain the
//! window (`V = Bᵀ d B`, per channel) and the filter (`U = G g Gᵀ`, per input–output channel
//! pair, once at load) meet as sixteen independent products, one per position `ξ` of the 4×4:
//! `M[ξ] = V[ξ] · U[ξ]` over the channels, a `[tiles, Cin] × [Cin, Cout]` GEMM each on the packed
//! kernel. `Y = Aᵀ M A` gives back the 2×2 outputs. Sixteen products per tile instead of the
//! direct method's thirty-six: 2.25× fewer multiply–adds, for three cheap passes of additions.
//!
//! The transforms' coefficients are 0, ±1 and ±½ (exact in binary), so the results differ from
//! the direct convolution's by rounding only: a few ulps of the sums' magnitudes.

use std::sync::Arc;

use super::packed::{self, Lhs, PackedWeight};
use super::team::Shared;
use super::Activation;
use crate::Result;

/// Channels below which a convolution stays direct (the products' depth would be too shallow
/// to pay for the transforms).
pub const MIN_CHANNELS: usize = 16;

/// Whether 3×3 stride-1 convolutions built from now on use this (unless `VISTA_NO_WINOGRAD` is
/// set, read once: to compare with the direct method on one machine).
pub fn enabled() -> bool {
    static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    !*OFF.get_or_init(|| std::env::var_os("VISTA_NO_WINOGRAD").is_some())
}

/// Positions of the transformed 4×4 tile.
const XI: usize = 16;

/// Values in one chunk's sixteen planes of the wider side: 1 Mi values, 4 MiB.
const CHUNK_VALUES: usize = 1 << 20;

/// Tiles per chunk at least (the products' rows: a few of the GEMM's row blocks).
const MIN_CHUNK: usize = 96;

/// A 3×3, stride-1, padding-1 convolution's filters in the Winograd domain.
#[derive(Debug, Clone)]
pub struct Winograd {
    /// `U[ξ]`, packed `[Cin, Cout]`.
    u: Arc<Vec<PackedWeight>>,
    cin: usize,
    cout: usize,
}

impl Winograd {
    /// From PyTorch's weight `[Cout, Cin, 3, 3]` (row-major values).
    pub fn new(weight: &[f32], (cout, cin): (usize, usize)) -> Self {
        assert_eq!(weight.len(), cout * cin * 9, "a [{cout}, {cin}, 3, 3] weight");
        let mut planes = vec![vec![0f32; cin * cout]; XI];
        for o in 0..cout {
            for i in 0..cin {
                let g = &weight[(o * cin + i) * 9..][..9];
                // G g Gᵀ with G = [1 0 0; ½ ½ ½; ½ −½ ½; 0 0 1], in f64 and rounded once.
                let g = |r: usize, c: usize| f64::from(g[r * 3 + c]);
                let rows = |c: usize| -> [f64; 4] {
                    let (a, b, d) = (g(0, c), g(1, c), g(2, c));
                    [a, 0.5 * (a + b + d), 0.5 * (a - b + d), d]
                };
                let gg = [rows(0), rows(1), rows(2)];
                for r in 0..4 {
                    let (a, b, d) = (gg[0][r], gg[1][r], gg[2][r]);
                    let u = [a, 0.5 * (a + b + d), 0.5 * (a - b + d), d];
                    for (c, v) in u.into_iter().enumerate() {
                        planes[r * 4 + c][i * cout + o] = v as f32;
                    }
                }
            }
        }
        let u = planes.iter().map(|p| PackedWeight::from_k_by_n(p, cin, cout)).collect();
        Self { u: Arc::new(u), cin, cout }
    }

    /// `act(conv(x) + bias)` over a channels-last `[B, H, W, Cin]` input: `[B, H, W, Cout]`.
    ///
    /// # Errors
    /// If `x` does not hold `B·H·W·Cin` values or `bias` not `Cout`.
    pub fn forward(
        &self,
        x: &[f32],
        (b, h, w): (usize, usize, usize),
        bias: Option<&[f32]>,
        act: Option<Activation>,
        threads: usize,
    ) -> Result<Vec<f32>> {
        let (cin, cout) = (self.cin, self.cout);
        if x.len() != b * h * w * cin || bias.is_some_and(|b| b.len() != cout) {
            return Err(crate::Error::arg(
                "input",
                format!(
                    "winograd conv: {} values for [{b}, {h}, {w}, {cin}], bias {:?} for {cout} outputs",
                    x.len(),
                    bias.map(<[f32]>::len)
                ),
            ));
        }
        // Tiles in chunks whose sixteen planes (in and out) stay near 4 MiB, in the last-level
        // cache between the three passes (one chunk for a batch-1 ResNet layer).
        let chunk = (CHUNK_VALUES / (XI * cin.max(cout))).max(MIN_CHUNK);
        self.forward_in_chunks(x, (b, h, w), bias, act, threads, chunk)
    }

    fn forward_in_chunks(
        &self,
        x: &[f32],
        (b, h, w): (usize, usize, usize),
        bias: Option<&[f32]>,
        act: Option<Activation>,
        threads: usize,
        chunk: usize,
    ) -> Result<Vec<f32>> {
        let (cin, cout) = (self.cin, self.cout);
        let (th, tw) = (h.div_ceil(2), w.div_ceil(2));
        let tiles = b * th * tw;
        // Tile `t`'s image and tile row and column.
        let place = |t: usize| (t / (th * tw), (t / tw) % th, t % tw);
        let zeros = vec![0f32; cin];
        let mut out: Vec<f32> = Vec::with_capacity(b * h * w * cout);
        let op = Shared(out.spare_capacity_mut().as_mut_ptr().cast::<f32>());
        for t0 in (0..tiles).step_by(chunk) {
            let len = chunk.min(tiles - t0);
            // Pieces of the chunk for the transforms, a few per thread.
            let pieces = (4 * threads).min(len);
            let piece = |i: usize| t0 + i * len / pieces..t0 + (i + 1) * len / pieces;
            // V[ξ] `[len, Cin]`, one plane after another.
            let mut v: Vec<f32> = Vec::with_capacity(XI * len * cin);
            let vp = Shared(v.spare_capacity_mut().as_mut_ptr().cast::<f32>());
            super::team::for_each(pieces, |i| {
                super::cpu::with_simd(
                    #[inline(always)]
                    || {
                        for t in piece(i) {
                            let (bi, ty, tx) = place(t);
                            let d: [&[f32]; XI] = std::array::from_fn(|k| {
                                let (iy, ix) = ((2 * ty + k / 4) as isize - 1, (2 * tx + k % 4) as isize - 1);
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                    &zeros[..]
                                } else {
                                    &x[((bi * h + iy as usize) * w + ix as usize) * cin..][..cin]
                                }
                            });
                            // SAFETY: tile `t`'s rows of the sixteen planes are written by this
                            // task only, and lie inside `v`'s capacity.
                            let planes: [&mut [f32]; XI] = std::array::from_fn(|k| unsafe {
                                std::slice::from_raw_parts_mut(vp.get().add((k * len + t - t0) * cin), cin)
                            });
                            input_tile(&d, planes, cin);
                        }
                    },
                )
            });
            // SAFETY: every tile of every plane was written above.
            unsafe { v.set_len(XI * len * cin) };
            let products: Vec<packed::Product> = (0..XI)
                .map(|k| packed::Product {
                    lhs: Lhs::Rows { data: &v[k * len * cin..(k + 1) * len * cin], m: len },
                    w: &self.u[k],
                    bias: None,
                    epilogue: packed::Epilogue::default(),
                })
                .collect();
            let m = packed::gemm_many(&products, threads)?;
            drop(v);
            super::team::for_each(pieces, |i| {
                super::cpu::with_simd(
                    #[inline(always)]
                    || {
                        let mut scratch = vec![0f32; 4 * cout];
                        for t in piece(i) {
                            let (bi, ty, tx) = place(t);
                            let planes: [&[f32]; XI] = std::array::from_fn(|k| &m[k][(t - t0) * cout..][..cout]);
                            let at = |dy: usize, dx: usize| {
                                let (y, x) = (2 * ty + dy, 2 * tx + dx);
                                // SAFETY: each output pixel belongs to one tile, written by one
                                // task.
                                (y < h && x < w).then(|| unsafe {
                                    std::slice::from_raw_parts_mut(op.get().add(((bi * h + y) * w + x) * cout), cout)
                                })
                            };
                            output_tile(&planes, &mut scratch, [at(0, 0), at(0, 1), at(1, 0), at(1, 1)], bias, act);
                        }
                    },
                )
            });
        }
        // SAFETY: the tiles cover every output pixel.
        unsafe { out.set_len(b * h * w * cout) };
        Ok(out)
    }
}

/// Channels per step of the transforms: one vector of locals, so the arithmetic on fixed-size
/// arrays is vectorised and each slice is read and written a vector at a time.
const LANES: usize = 8;

/// `V = Bᵀ d B` for every channel of one window, `d[4·i + j]` the input pixel at row `i`,
/// column `j`, with `Bᵀ = [1 0 −1 0; 0 1 1 0; 0 −1 1 0; 0 1 0 −1]`.
#[inline(always)]
fn input_tile(d: &[&[f32]; XI], mut out: [&mut [f32]; XI], c: usize) {
    let mut ch = 0;
    while ch < c {
        if c - ch >= LANES {
            input_lanes::<LANES>(d, &mut out, ch);
            ch += LANES;
        } else {
            input_lanes::<1>(d, &mut out, ch);
            ch += 1;
        }
    }
}

#[inline(always)]
fn input_lanes<const N: usize>(d: &[&[f32]; XI], out: &mut [&mut [f32]; XI], ch: usize) {
    let mut p = [[0f32; N]; XI];
    for (p, d) in p.iter_mut().zip(d) {
        p.copy_from_slice(&d[ch..ch + N]);
    }
    // Bᵀ d: row i of the result, column j, over the lanes.
    let mut t = [[[0f32; N]; 4]; 4];
    for j in 0..4 {
        for l in 0..N {
            let (d0, d1, d2, d3) = (p[j][l], p[4 + j][l], p[8 + j][l], p[12 + j][l]);
            t[0][j][l] = d0 - d2;
            t[1][j][l] = d1 + d2;
            t[2][j][l] = d2 - d1;
            t[3][j][l] = d1 - d3;
        }
    }
    // (Bᵀ d) B, column by column.
    for (i, r) in t.iter().enumerate() {
        let mut v = [[0f32; N]; 4];
        for l in 0..N {
            v[0][l] = r[0][l] - r[2][l];
            v[1][l] = r[1][l] + r[2][l];
            v[2][l] = r[2][l] - r[1][l];
            v[3][l] = r[1][l] - r[3][l];
        }
        for (j, v) in v.iter().enumerate() {
            out[4 * i + j][ch..ch + N].copy_from_slice(v);
        }
    }
}

/// `Y = Aᵀ M A` (`Aᵀ = [1 1 1 0; 0 1 −1 −1]`) plus the bias, activated, for every output channel
/// of one tile into its (up to) four output pixels, row-major `[y00, y01, y10, y11]`; `scratch`
/// holds the outputs that fall outside the image.
#[inline(always)]
fn output_tile(
    m: &[&[f32]; XI],
    scratch: &mut [f32],
    out: [Option<&mut [f32]>; 4],
    bias: Option<&[f32]>,
    act: Option<Activation>,
) {
    let n = m[0].len();
    let inside = out.each_ref().map(Option::is_some);
    let mut spare = scratch.chunks_exact_mut(n);
    let mut y: [&mut [f32]; 4] = out.map(|o| o.unwrap_or_else(|| spare.next().expect("four scratch rows")));
    let mut ch = 0;
    while ch < n {
        if n - ch >= LANES {
            output_lanes::<LANES>(m, &mut y, bias, ch);
            ch += LANES;
        } else {
            output_lanes::<1>(m, &mut y, bias, ch);
            ch += 1;
        }
    }
    if let Some(a) = act {
        for (y, _) in y.into_iter().zip(inside).filter(|(_, inside)| *inside) {
            super::cpu::activate_slice(y, a);
        }
    }
}

#[inline(always)]
fn output_lanes<const N: usize>(m: &[&[f32]; XI], y: &mut [&mut [f32]; 4], bias: Option<&[f32]>, ch: usize) {
    let mut p = [[0f32; N]; XI];
    for (p, m) in p.iter_mut().zip(m) {
        p.copy_from_slice(&m[ch..ch + N]);
    }
    let mut b = [0f32; N];
    if let Some(bias) = bias {
        b.copy_from_slice(&bias[ch..ch + N]);
    }
    // Aᵀ M: two rows of four.
    let mut s = [[[0f32; N]; 4]; 2];
    for j in 0..4 {
        for l in 0..N {
            s[0][j][l] = p[j][l] + p[4 + j][l] + p[8 + j][l];
            s[1][j][l] = p[4 + j][l] - p[8 + j][l] - p[12 + j][l];
        }
    }
    let mut v = [[0f32; N]; 4];
    for l in 0..N {
        v[0][l] = s[0][0][l] + s[0][1][l] + s[0][2][l] + b[l];
        v[1][l] = s[0][1][l] - s[0][2][l] - s[0][3][l] + b[l];
        v[2][l] = s[1][0][l] + s[1][1][l] + s[1][2][l] + b[l];
        v[3][l] = s[1][1][l] - s[1][2][l] - s[1][3][l] + b[l];
    }
    for (dst, v) in y.iter_mut().zip(&v) {
        dst[ch..ch + N].copy_from_slice(v);
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::*;
    use crate::nn::testing::randn;

    /// Against candle's direct convolution, every size parity and a batch.
    #[test]
    fn equals_the_direct_convolution() {
        for (i, &(b, h, w, cin, cout)) in
            [(1, 8, 8, 16, 32), (2, 7, 5, 3, 17), (1, 1, 1, 4, 4), (1, 14, 14, 64, 40), (3, 2, 9, 33, 8)]
                .iter()
                .enumerate()
        {
            let x = randn(10 + i as u64, 0.0, 1.0, (b, cin, h, w));
            let wt = randn(20 + i as u64, 0.0, 0.2, (cout, cin, 3, 3));
            let bias = randn(30 + i as u64, 0.0, 0.5, cout);
            let want =
                x.conv2d(&wt, 1, 1, 1, 1).unwrap().broadcast_add(&bias.reshape((1, cout, 1, 1)).unwrap()).unwrap();
            let want = want.relu().unwrap().permute((0, 2, 3, 1)).unwrap().contiguous().unwrap();
            let wino = Winograd::new(&wt.flatten_all().unwrap().to_vec1::<f32>().unwrap(), (cout, cin));
            let bias = bias.to_vec1::<f32>().unwrap();
            let xs = x.permute((0, 2, 3, 1)).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            for (threads, chunk) in [(1, usize::MAX), (2, usize::MAX), (2, 7), (1, 1)] {
                let got = wino
                    .forward_in_chunks(&xs, (b, h, w), Some(&bias), Some(Activation::Relu), threads, chunk)
                    .unwrap();
                let got = Tensor::from_vec(got, (b, h, w, cout), &Device::Cpu).unwrap();
                let diff: f32 =
                    (&got - &want).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap();
                let scale: f32 = want.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap();
                assert!(
                    diff <= 1e-5 * scale.max(1.0),
                    "case {i}, {threads} threads, chunks of {chunk}: max |diff| {diff} (scale {scale})"
                );
            }
        }
    }
}
