//! Segment Anything's input and output transforms, as `segment_anything/utils/transforms.py`
//! (`ResizeLongestSide`), `Sam.preprocess` and `Sam.postprocess_masks` compute them.
//!
//! * The image's longest side is resized to the encoder size (1024) with Pillow's antialiased
//!   bilinear filter (the reference goes through `torchvision.transforms.functional.resize` on a
//!   PIL image), each side rounded as `int(side · scale + 0.5)`; normalised with the pixel
//!   mean/std in 0–255 units; zero-padded at the bottom and right to a square.
//! * Point and box coordinates are scaled by `new / old` per axis, in f64 as numpy does.
//! * Low-resolution mask logits are up-sampled bilinearly (`align_corners=False`) to the padded
//!   square, cropped to the resized image, and resized bilinearly to the original size;
//!   masks are `logits > 0`.

use candle_core::{Device, Tensor};
use rayon::prelude::*;

use crate::image::{resize_exact, Filter, RgbImage};
use crate::Result;

/// `ResizeLongestSide.get_preprocess_shape`: `(new_h, new_w)`. A side the reference would round
/// to 0 pixels (a strip thinner than `long / (2 · long_side)`, e.g. 1 × 5000, where the
/// reference fails) is kept at 1.
pub fn preprocess_shape(h: usize, w: usize, long_side: usize) -> (usize, usize) {
    let scale = long_side as f64 / h.max(w) as f64;
    (((h as f64 * scale + 0.5) as usize).max(1), ((w as f64 * scale + 0.5) as usize).max(1))
}

/// `ResizeLongestSide.apply_coords` for one `(x, y)`: original pixels -> encoder input frame.
pub fn apply_coords(x: f64, y: f64, original: (usize, usize), long_side: usize) -> (f32, f32) {
    let (h, w) = original;
    let (nh, nw) = preprocess_shape(h, w, long_side);
    ((x * (nw as f64 / w as f64)) as f32, (y * (nh as f64 / h as f64)) as f32)
}

/// The inverse of [`apply_coords`] (for drawing and tests).
pub fn unapply_coords(x: f32, y: f32, original: (usize, usize), long_side: usize) -> (f64, f64) {
    let (h, w) = original;
    let (nh, nw) = preprocess_shape(h, w, long_side);
    (x as f64 * (w as f64 / nw as f64), y as f64 * (h as f64 / nh as f64))
}

/// Resizes, normalises and pads an image into the encoder's input.
///
/// # Shapes
/// -> (`[1, S, S, 3]` channels-last, the resized image's `(h, w)` inside it)
pub fn pixel_input(img: &RgbImage, size: usize, mean: [f32; 3], std: [f32; 3]) -> Result<(Tensor, (usize, usize))> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let (nh, nw) = preprocess_shape(h, w, size);
    let resized;
    let img = if (nh, nw) == (h, w) {
        img
    } else {
        resized = resize_exact(img, nw as u32, nh as u32, Filter::Bilinear)?;
        &resized
    };
    let mut out = vec![0f32; size * size * 3];
    let raw = img.as_raw();
    for y in 0..nh {
        for x in 0..nw {
            for c in 0..3 {
                let v = raw[(y * nw + x) * 3 + c] as f32;
                out[(y * size + x) * 3 + c] = (v - mean[c]) / std[c];
            }
        }
    }
    Ok((Tensor::from_vec(out, (1, size, size, 3), &Device::Cpu)?, (nh, nw)))
}

/// One axis of PyTorch's bilinear interpolation (`align_corners=False`, no antialias): for each
/// output index, the two source indices and their weights, in f32 as `upsample_bilinear2d`.
pub(crate) fn linear_taps(in_len: usize, out_len: usize, count: usize) -> Vec<(usize, usize, f32, f32)> {
    (0..count)
        .map(|i| {
            if in_len == out_len {
                return (i, i, 1.0, 0.0);
            }
            let scale = in_len as f32 / out_len as f32;
            let real = (scale * (i as f32 + 0.5) - 0.5).max(0.0);
            let i0 = (real.floor() as usize).min(in_len - 1);
            let l1 = (real - i0 as f32).clamp(0.0, 1.0);
            let i1 = if i0 < in_len - 1 { i0 + 1 } else { i0 };
            (i0, i1, 1.0 - l1, l1)
        })
        .collect()
}

/// `F.interpolate(x, (out_h, out_w), mode="bilinear", align_corners=False)` of one plane,
/// computing only the top-left `keep_h × keep_w` outputs (the reference's crop that follows).
#[inline(always)]
pub(crate) fn bilinear(
    src: &[f32],
    (ih, iw): (usize, usize),
    (oh, ow): (usize, usize),
    (kh, kw): (usize, usize),
) -> Vec<f32> {
    let ty = linear_taps(ih, oh, kh);
    let tx = linear_taps(iw, ow, kw);
    let mut out = vec![0f32; kh * kw];
    for (y, &(y0, y1, wy0, wy1)) in ty.iter().enumerate() {
        let (r0, r1) = (&src[y0 * iw..(y0 + 1) * iw], &src[y1 * iw..(y1 + 1) * iw]);
        for (x, &(x0, x1, wx0, wx1)) in tx.iter().enumerate() {
            let t0 = r0[x0] * wx0 + r0[x1] * wx1;
            let t1 = r1[x0] * wx0 + r1[x1] * wx1;
            out[y * kw + x] = t0 * wy0 + t1 * wy1;
        }
    }
    out
}

/// `Sam.postprocess_masks`: low-resolution logits to logits at the original image size.
///
/// # Shapes
/// `low_res: [N, lh, lw]` (flat planes) -> `[N, H, W]`
pub fn postprocess_masks(
    low_res: &[f32],
    low_size: (usize, usize),
    image_size: usize,
    input_size: (usize, usize),
    original_size: (usize, usize),
) -> Vec<f32> {
    let plane = low_size.0 * low_size.1;
    let (oh, ow) = original_size;
    let mut out = vec![0f32; low_res.len() / plane * oh * ow];
    out.par_chunks_mut(oh * ow).zip(low_res.par_chunks(plane)).for_each(|(dst, src)| {
        crate::nn::cpu::with_simd(
            #[inline(always)]
            || {
                let padded = bilinear(src, low_size, (image_size, image_size), input_size);
                dst.copy_from_slice(&bilinear(&padded, input_size, original_size, original_size));
            },
        )
    });
    out
}

/// [`postprocess_masks`] on the planes' device (the device path: two gathers and a weighted sum
/// per axis, the same products and sums as the CPU loop, so the same values), in f32.
///
/// # Shapes
/// `low_res: [N, lh, lw]` -> `[N, H, W]` f32
pub fn postprocess_masks_tensor(
    low_res: &Tensor,
    image_size: usize,
    input_size: (usize, usize),
    original_size: (usize, usize),
) -> Result<Tensor> {
    use crate::nn::portable::{gather_taps, resample_planes};
    let low_res = low_res.to_dtype(candle_core::DType::F32)?;
    let (n, lh, lw) = low_res.dims3()?;
    let (oh, ow) = original_size;
    let (kh, kw) = input_size;
    let up_rows = gather_taps(&linear_taps(lh, image_size, kh), &low_res)?;
    let up_cols = gather_taps(&linear_taps(lw, image_size, kw), &low_res)?;
    let down_rows = gather_taps(&linear_taps(kh, oh, oh), &low_res)?;
    let down_cols = gather_taps(&linear_taps(kw, ow, ow), &low_res)?;
    // Planes per pass: keep each pass's intermediates near 1 GiB of f32.
    let per_plane = 4 * (lh * kw + kh * kw + kh * ow + oh * ow);
    let chunk = ((1usize << 30) / per_plane.max(1)).clamp(1, n.max(1));
    let mut out = Vec::with_capacity(n.div_ceil(chunk));
    for start in (0..n).step_by(chunk) {
        let planes = low_res.narrow(0, start, chunk.min(n - start))?;
        let padded = resample_planes(&planes, &up_rows, &up_cols)?;
        out.push(resample_planes(&padded, &down_rows, &down_cols)?);
    }
    Ok(if out.len() == 1 { out.pop().expect("one chunk") } else { Tensor::cat(&out, 0)? })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preprocess_shape_rounds_half_up_like_the_reference() {
        assert_eq!(preprocess_shape(480, 640, 1024), (768, 1024));
        assert_eq!(preprocess_shape(37, 50, 64), (47, 64)); // 47.36 -> 47
        assert_eq!(preprocess_shape(90, 41, 64), (64, 29)); // 29.16 -> 29
        assert_eq!(preprocess_shape(1, 1000, 1024), (1, 1024));
        assert_eq!(preprocess_shape(1, 5000, 1024), (1, 1024)); // the reference: 0 rows
    }

    #[test]
    fn coordinates_round_trip() {
        for (h, w) in [(37, 50), (90, 41), (1080, 1920), (7, 7)] {
            for (x, y) in [(0.0, 0.0), (w as f64 - 1.0, h as f64 - 1.0), (3.25, 1.5)] {
                let (tx, ty) = apply_coords(x, y, (h, w), 1024);
                let (bx, by) = unapply_coords(tx, ty, (h, w), 1024);
                assert!((bx - x).abs() < 1e-3 && (by - y).abs() < 1e-3, "{x},{y} in {w}x{h}: {bx},{by}");
            }
        }
    }

    #[test]
    fn bilinear_identity_and_constant() {
        let src: Vec<f32> = (0..12).map(|i| i as f32).collect();
        assert_eq!(bilinear(&src, (3, 4), (3, 4), (3, 4)), src);
        let ones = vec![2.5f32; 6];
        assert!(bilinear(&ones, (2, 3), (7, 5), (7, 5)).iter().all(|v| (*v - 2.5).abs() < 1e-6));
    }
}
