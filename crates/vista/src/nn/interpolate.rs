//! PyTorch's `F.interpolate(mode="bicubic")` on a grid of vectors, as position-embedding
//! resampling uses it: without antialiasing (Keys' cubic, `A = -0.75`, border-clamped taps,
//! `align_corners=False`) and with it (`antialias=True`: Pillow's separable convolution, cubic
//! `a = -0.5`, support scaled when downsampling, weights normalised per output).
//!
//! The grid is channels-last: `[H, W, D]` rows in, `[OH, OW, D]` rows out. Weights are computed
//! per axis in f32 the way ATen computes them; the sum runs over the height taps outside and the
//! width taps inside, as ATen's separable kernels do.

/// How the output size relates to the input size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Resample {
    /// `size=(oh, ow)`: the source scale is `in / out`.
    Size(usize, usize),
    /// `scale_factor=(sh, sw)`: the output is `floor(in · s)` and the source scale is `1 / s`
    /// (PyTorch keeps the given factor rather than recomputing it from the sizes).
    ScaleFactor(f64, f64),
}

impl Resample {
    fn axes(self, h: usize, w: usize) -> ((usize, f32), (usize, f32)) {
        match self {
            Resample::Size(oh, ow) => ((oh, h as f32 / oh as f32), (ow, w as f32 / ow as f32)),
            Resample::ScaleFactor(sh, sw) => (
                ((h as f64 * sh).floor() as usize, (1.0 / sh) as f32),
                ((w as f64 * sw).floor() as usize, (1.0 / sw) as f32),
            ),
        }
    }
}

/// Taps of one output index: `(first source index, weights)` (indices already clamped for the
/// non-antialiased kernel, so `first` is unused there and the pairs carry their own index).
type Taps = Vec<Vec<(usize, f32)>>;

fn cubic_coefficients(t: f32) -> [f32; 4] {
    // ATen's get_cubic_upsample_coefficients, A = -0.75.
    const A: f32 = -0.75;
    let c1 = |x: f32| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
    let c2 = |x: f32| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A;
    let x1 = t;
    let x2 = 1.0 - t;
    [c2(x1 + 1.0), c1(x1), c1(x2), c2(x2 + 1.0)]
}

fn keys_taps(in_len: usize, out_len: usize, scale: f32) -> Taps {
    (0..out_len)
        .map(|i| {
            if in_len == out_len && scale == 1.0 {
                return vec![(i, 1.0)];
            }
            let real = scale * (i as f32 + 0.5) - 0.5;
            let idx = real.floor();
            let t = real - idx;
            let c = cubic_coefficients(t);
            (0..4)
                .map(|k| {
                    let j = (idx as i64 - 1 + k as i64).clamp(0, in_len as i64 - 1) as usize;
                    (j, c[k])
                })
                .collect()
        })
        .collect()
}

fn aa_cubic(x: f64) -> f64 {
    // Pillow's / ATen's antialiased bicubic filter, a = -0.5.
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

fn aa_taps(in_len: usize, out_len: usize, scale: f32) -> Taps {
    // ATen's HelperInterpCubic::aa_filter path (_compute_indices_min_size_weights_aa), in f32
    // for the centre and support as ATen computes them for a float tensor.
    let support = if scale >= 1.0 { 2.0 * scale } else { 2.0 };
    let invscale = if scale >= 1.0 { 1.0 / scale } else { 1.0 };
    (0..out_len)
        .map(|i| {
            let center = scale * (i as f32 + 0.5);
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_len as i64) as usize;
            let mut w: Vec<f32> =
                (xmin..xmax).map(|j| aa_cubic(((j as f32 - center + 0.5) * invscale) as f64) as f32).collect();
            let total: f32 = w.iter().sum();
            if total != 0.0 {
                w.iter_mut().for_each(|v| *v /= total);
            }
            (xmin..xmax).zip(w).collect()
        })
        .collect()
}

/// Bicubic resampling of a channels-last grid `[h, w, d]`; returns `[oh, ow, d]` and `(oh, ow)`.
pub fn bicubic(
    src: &[f32],
    (h, w): (usize, usize),
    d: usize,
    how: Resample,
    antialias: bool,
) -> (Vec<f32>, (usize, usize)) {
    let ((oh, sh), (ow, sw)) = how.axes(h, w);
    let (ty, tx) =
        if antialias { (aa_taps(h, oh, sh), aa_taps(w, ow, sw)) } else { (keys_taps(h, oh, sh), keys_taps(w, ow, sw)) };
    let mut out = vec![0f32; oh * ow * d];
    let mut row = vec![0f32; d];
    for (y, wy) in ty.iter().enumerate() {
        for (x, wx) in tx.iter().enumerate() {
            let o = &mut out[(y * ow + x) * d..(y * ow + x + 1) * d];
            for &(sy, cy) in wy {
                row.iter_mut().for_each(|v| *v = 0.0);
                for &(sx, cx) in wx {
                    let s = &src[(sy * w + sx) * d..(sy * w + sx + 1) * d];
                    row.iter_mut().zip(s).for_each(|(r, v)| *r += v * cx);
                }
                o.iter_mut().zip(&row).for_each(|(o, r)| *o += r * cy);
            }
        }
    }
    (out, (oh, ow))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_size_is_exact_and_constants_stay_constant() {
        let src: Vec<f32> = (0..4 * 5 * 3).map(|i| i as f32 * 0.5).collect();
        let (out, size) = bicubic(&src, (4, 5), 3, Resample::Size(4, 5), false);
        assert_eq!(size, (4, 5));
        assert!(out.iter().zip(&src).all(|(a, b)| (a - b).abs() < 1e-5));
        let ones = vec![1.5f32; 4 * 4 * 2];
        for aa in [false, true] {
            let (out, size) = bicubic(&ones, (4, 4), 2, Resample::ScaleFactor(7.1 / 4.0, 3.1 / 4.0), aa);
            assert_eq!(size, (7, 3));
            assert!(out.iter().all(|v| (v - 1.5).abs() < 1e-5), "aa {aa}");
        }
    }
}
