//! Pooling over channels-last `[B, H, W, C]` maps, as `torch.nn.AvgPool2d(k)` (kernel = stride,
//! no padding, the remainder that does not fill a window dropped), `torch.nn.MaxPool2d(k, s, p)`
//! (padding never wins a max) and the global average of `AdaptiveAvgPool2d(1)`.
//!
//! Each window's values are summed, then divided, as ATen's CPU kernels do; the CPU paths are
//! direct loops over contiguous channel vectors, other devices compose candle ops.

use candle_core::{Device, Tensor, D};

use crate::Result;

fn dims(x: &Tensor) -> Result<(usize, usize, usize, usize)> {
    Ok(x.dims4()?)
}

/// `AvgPool2d(k)`: `[B, H, W, C] -> [B, H/k, W/k, C]` (floor).
pub fn avg_pool(x: &Tensor, k: usize) -> Result<Tensor> {
    let (b, h, w, c) = dims(x)?;
    let (ho, wo) = (h / k, w / k);
    if ho == 0 || wo == 0 {
        return Err(candle_core::Error::Msg(format!("avg pool {k}: input {h}x{w} is smaller than a window")).into());
    }
    if k == 1 {
        return Ok(x.clone());
    }
    if !super::cpu::eligible(x) {
        let x = x.narrow(1, 0, ho * k)?.narrow(2, 0, wo * k)?;
        let x = x.reshape((b, ho, k, wo, k, c))?.sum(4)?.sum(2)?;
        return Ok((x / (k * k) as f64)?);
    }
    let mut out = vec![0f32; b * ho * wo * c];
    let inv = (k * k) as f32;
    super::cpu::map_pixels(
        x,
        &mut out,
        (ho, wo, c),
        #[inline(always)]
        |src, (bi, oy, ox), o| {
            for ky in 0..k {
                for kx in 0..k {
                    let from = ((bi * h + oy * k + ky) * w + ox * k + kx) * c;
                    o.iter_mut().zip(&src[from..from + c]).for_each(|(o, v)| *o += v);
                }
            }
            o.iter_mut().for_each(|v| *v /= inv);
        },
        |_| {},
    )?;
    Ok(Tensor::from_vec(out, (b, ho, wo, c), &Device::Cpu)?)
}

/// `MaxPool2d(k, stride=s, padding=p)`: `[B, H, W, C] -> [B, H', W', C]`.
pub fn max_pool(x: &Tensor, k: usize, s: usize, p: usize) -> Result<Tensor> {
    let (b, h, w, c) = dims(x)?;
    if h + 2 * p < k || w + 2 * p < k {
        return Err(candle_core::Error::Msg(format!("max pool {k}: input {h}x{w} is smaller than a window")).into());
    }
    let (ho, wo) = ((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1);
    if !super::cpu::eligible(x) {
        // Pad with −∞ (never the maximum), then candle's NCHW pooling.
        let pad = |t: Tensor, dim: usize| -> Result<Tensor> {
            if p == 0 {
                return Ok(t);
            }
            let mut shape = t.dims().to_vec();
            shape[dim] = p;
            let edge = Tensor::full(f32::NEG_INFINITY, shape, t.device())?.to_dtype(t.dtype())?;
            Ok(Tensor::cat(&[&edge, &t, &edge], dim)?)
        };
        let x = pad(pad(x.clone(), 1)?, 2)?.permute((0, 3, 1, 2))?.contiguous()?;
        let y = x.max_pool2d_with_stride(k, s)?;
        return Ok(y.narrow(2, 0, ho)?.narrow(3, 0, wo)?.permute((0, 2, 3, 1))?.contiguous()?);
    }
    let mut out = vec![f32::NEG_INFINITY; b * ho * wo * c];
    super::cpu::map_pixels(
        x,
        &mut out,
        (ho, wo, c),
        #[inline(always)]
        |src, (bi, oy, ox), o| {
            super::conv::for_each_tap(
                (oy, ox),
                (h, w),
                (k, s, p),
                #[inline(always)]
                |_, pixel| {
                    let from = (bi * h * w + pixel) * c;
                    // NaN propagates as in ATen (`val > max || isnan(val)`).
                    o.iter_mut().zip(&src[from..from + c]).for_each(|(o, &v)| {
                        if v > *o || v.is_nan() {
                            *o = v
                        }
                    });
                },
            )
        },
        |_| {},
    )?;
    Ok(Tensor::from_vec(out, (b, ho, wo, c), &Device::Cpu)?)
}

/// The mean over every position, `AdaptiveAvgPool2d(1)` + flatten: `[B, H, W, C] -> [B, C]`.
pub fn global_avg(x: &Tensor) -> Result<Tensor> {
    let (b, h, w, c) = dims(x)?;
    Ok((x.reshape((b, h * w, c))?.sum(1)? / (h * w) as f64)?)
}

/// The mean over the token axis of `[B, N, C]`, kept: `[B, 1, C]`.
pub fn token_mean(x: &Tensor) -> Result<Tensor> {
    let n = x.dim(D::Minus2)?;
    Ok((x.sum_keepdim(1)? / n as f64)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::testing::{max_diff, randn};

    fn nchw(x: &Tensor) -> Tensor {
        x.permute((0, 3, 1, 2)).unwrap().contiguous().unwrap()
    }

    #[test]
    fn average_pooling_drops_the_remainder_and_equals_candle() {
        let x = randn(1, 0., 1., (2, 7, 9, 5));
        for k in [2, 3] {
            let want = nchw(&x).avg_pool2d(k).unwrap();
            let ours = avg_pool(&x, k).unwrap();
            assert_eq!(ours.dims(), &[2, 7 / k, 9 / k, 5]);
            assert!(max_diff(&nchw(&ours), &want) < 1e-6, "k{k}");
            let portable = crate::nn::cpu::with_portable_paths(|| avg_pool(&x, k).unwrap());
            assert!(max_diff(&portable, &ours) < 1e-6);
        }
    }

    #[test]
    fn max_pooling_with_padding_equals_the_reference_loop() {
        // Negative values everywhere: zero padding would win; −∞ padding must not.
        let x = (randn(2, 0., 1., (1, 6, 7, 3)).abs().unwrap() * -1.0).unwrap();
        let ours = max_pool(&x, 3, 2, 1).unwrap();
        assert_eq!(ours.dims(), &[1, 3, 4, 3]);
        let src = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let got = ours.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for oy in 0..3usize {
            for ox in 0..4usize {
                for ch in 0..3 {
                    let mut m = f32::NEG_INFINITY;
                    for iy in (2 * oy).saturating_sub(1)..(2 * oy + 2).min(6) {
                        for ix in (2 * ox).saturating_sub(1)..(2 * ox + 2).min(7) {
                            m = m.max(src[(iy * 7 + ix) * 3 + ch]);
                        }
                    }
                    assert_eq!(got[(oy * 4 + ox) * 3 + ch], m);
                }
            }
        }
        let portable = crate::nn::cpu::with_portable_paths(|| max_pool(&x, 3, 2, 1).unwrap());
        assert_eq!(max_diff(&portable, &ours), 0.0);
    }
}
