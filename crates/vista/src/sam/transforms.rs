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
///
/// Separable, with the reference's arithmetic: each source row is interpolated along x once
/// (`r[x0]·wx0 + r[x1]·wx1`), then each output row is `h[y0]·wy0 + h[y1]·wy1` of two of those
/// rows — the same products and sums, in the same order, as interpolating every output pixel
/// from its four neighbours, without redoing the x pass for every output row.
/// Both passes are split over the threads by rows (nested inside a caller's own parallel loop
/// over planes, rayon shares the work out).
pub(crate) fn bilinear(src: &[f32], input: (usize, usize), out: (usize, usize), keep: (usize, usize)) -> Vec<f32> {
    let mut dst = vec![0f32; keep.0 * keep.1];
    bilinear_into(src, input, out, keep, &mut dst);
    dst
}

/// [`bilinear`] into `out[..keep_h · keep_w]`.
fn bilinear_into(src: &[f32], input: (usize, usize), out: (usize, usize), keep: (usize, usize), dst: &mut [f32]) {
    let (rows, ty, per) = x_pass(src, input, out, keep);
    let kw = keep.1;
    dst[..keep.0 * kw].par_chunks_mut((per * kw).max(1)).zip(ty.par_chunks(per)).for_each(|(chunk, ty)| {
        crate::nn::cpu::with_simd(
            #[inline(always)]
            || {
                for (o, t) in chunk.chunks_exact_mut(kw).zip(ty) {
                    along_y(&rows, kw, *t, o);
                }
            },
        )
    });
}

/// [`bilinear_into`] thresholded at 0: one byte per output pixel, `1` where the logit is
/// positive, without the f32 plane (each output row is made in a scratch row and thresholded).
fn bilinear_positive_into(
    src: &[f32],
    input: (usize, usize),
    out: (usize, usize),
    keep: (usize, usize),
    dst: &mut [u8],
) {
    let (rows, ty, per) = x_pass(src, input, out, keep);
    let kw = keep.1;
    dst[..keep.0 * kw].par_chunks_mut((per * kw).max(1)).zip(ty.par_chunks(per)).for_each(|(chunk, ty)| {
        let mut row = vec![0f32; kw];
        crate::nn::cpu::with_simd(
            #[inline(always)]
            || {
                for (o, t) in chunk.chunks_exact_mut(kw).zip(ty) {
                    along_y(&rows, kw, *t, &mut row);
                    for (o, v) in o.iter_mut().zip(&row) {
                        *o = u8::from(*v > 0.0);
                    }
                }
            },
        )
    });
}

/// The first pass of [`bilinear_into`]: every source row an output row reads, interpolated
/// along x (`[used, keep_w]`), with the y taps and the rows per parallel task.
#[allow(clippy::type_complexity)]
fn x_pass(
    src: &[f32],
    (ih, iw): (usize, usize),
    (oh, ow): (usize, usize),
    (kh, kw): (usize, usize),
) -> (Vec<f32>, Vec<(usize, usize, f32, f32)>, usize) {
    let (ty, tx) = (linear_taps(ih, oh, kh), linear_taps(iw, ow, kw));
    let used = ty.iter().map(|t| t.1 + 1).max().unwrap_or(0);
    let per = crate::nn::cpu::rows_per_task(kw);
    let mut rows = vec![0f32; used * kw];
    rows.par_chunks_mut((per * kw).max(1)).enumerate().for_each(|(i, chunk)| {
        crate::nn::cpu::with_simd(
            #[inline(always)]
            || {
                for (j, h) in chunk.chunks_exact_mut(kw).enumerate() {
                    let y = i * per + j;
                    along_x(&src[y * iw..(y + 1) * iw], &tx, h);
                }
            },
        )
    });
    (rows, ty, per)
}

/// One source row interpolated along x: `h[x] = r[x0]·wx0 + r[x1]·wx1`.
#[inline(always)]
fn along_x(r: &[f32], tx: &[(usize, usize, f32, f32)], h: &mut [f32]) {
    for (v, &(x0, x1, w0, w1)) in h.iter_mut().zip(tx) {
        *v = r[x0] * w0 + r[x1] * w1;
    }
}

/// One output row from two x-interpolated rows: `o = h[y0]·wy0 + h[y1]·wy1`.
#[inline(always)]
fn along_y(rows: &[f32], kw: usize, (y0, y1, w0, w1): (usize, usize, f32, f32), o: &mut [f32]) {
    let (a, b) = (&rows[y0 * kw..(y0 + 1) * kw], &rows[y1 * kw..(y1 + 1) * kw]);
    for ((o, a), b) in o.iter_mut().zip(a).zip(b) {
        *o = a * w0 + b * w1;
    }
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
    postprocess_planes(low_res, low_size, image_size, input_size, original_size, |padded, dst| {
        bilinear_into(padded, input_size, original_size, original_size, dst)
    })
}

/// [`postprocess_masks`] thresholded at 0 (`logits > 0`, the masks), one byte per pixel,
/// without the full-size f32 logits.
pub fn postprocess_masks_positive(
    low_res: &[f32],
    low_size: (usize, usize),
    image_size: usize,
    input_size: (usize, usize),
    original_size: (usize, usize),
) -> Vec<u8> {
    postprocess_planes(low_res, low_size, image_size, input_size, original_size, |padded, dst| {
        bilinear_positive_into(padded, input_size, original_size, original_size, dst)
    })
}

/// Each plane up-sampled to the padded input square (cropped to `input_size`), then `last`
/// takes it to the original size in its output type.
fn postprocess_planes<T: Copy + Default + Send>(
    low_res: &[f32],
    low_size: (usize, usize),
    image_size: usize,
    input_size: (usize, usize),
    (oh, ow): (usize, usize),
    last: impl Fn(&[f32], &mut [T]) + Sync,
) -> Vec<T> {
    let plane = low_size.0 * low_size.1;
    let mut out = vec![T::default(); low_res.len() / plane.max(1) * oh * ow];
    // One plane per task, each plane's rows split again: a batch of prompts and one prompt's
    // three planes both keep every thread busy.
    out.par_chunks_mut((oh * ow).max(1))
        .zip(low_res.par_chunks(plane.max(1)))
        .for_each(|(dst, src)| last(&bilinear(src, low_size, (image_size, image_size), input_size), dst));
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

    /// The masks made without the f32 logits are those logits thresholded, pixel for pixel.
    #[test]
    fn positive_masks_are_the_thresholded_logits() {
        let low = (16, 16);
        let planes: Vec<f32> = (0..3 * 256).map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0).collect();
        for (input, orig) in [((64, 43), (90, 61)), ((37, 64), (37, 64)), ((64, 64), (20, 20))] {
            let logits = postprocess_masks(&planes, low, 64, input, orig);
            let want: Vec<u8> = logits.iter().map(|v| u8::from(*v > 0.0)).collect();
            assert_eq!(postprocess_masks_positive(&planes, low, 64, input, orig), want, "{input:?} -> {orig:?}");
        }
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

    /// Every output pixel from its four neighbours, as `upsample_bilinear2d` writes it: the
    /// separable kernels must give these values bit for bit.
    fn bilinear_per_pixel(
        src: &[f32],
        (ih, iw): (usize, usize),
        out: (usize, usize),
        keep: (usize, usize),
    ) -> Vec<f32> {
        let (ty, tx) = (linear_taps(ih, out.0, keep.0), linear_taps(iw, out.1, keep.1));
        let mut o = Vec::new();
        for &(y0, y1, wy0, wy1) in &ty {
            for &(x0, x1, wx0, wx1) in &tx {
                let t0 = src[y0 * iw + x0] * wx0 + src[y0 * iw + x1] * wx1;
                let t1 = src[y1 * iw + x0] * wx0 + src[y1 * iw + x1] * wx1;
                o.push(t0 * wy0 + t1 * wy1);
            }
        }
        o
    }

    #[test]
    fn separable_bilinear_equals_the_per_pixel_formula_bit_for_bit() {
        let (ih, iw) = (37, 53);
        let src: Vec<f32> = (0..ih * iw).map(|i| ((i * 7919) % 1013) as f32 / 97.0 - 5.0).collect();
        // Up-sampling with a crop (the first resize), down- and up-sampling per axis (the second).
        for (out, keep) in [((256, 256), (256, 170)), ((20, 90), (20, 90)), ((111, 31), (111, 31))] {
            let want = bilinear_per_pixel(&src, (ih, iw), out, keep);
            assert_eq!(bilinear(&src, (ih, iw), out, keep), want, "{out:?} {keep:?}");
        }
        // One prompt's planes and a batch's agree (each plane on its own).
        let planes: Vec<f32> = (0..8 * 16 * 16).map(|i| ((i * 31) % 257) as f32 / 13.0 - 9.0).collect();
        let few = postprocess_masks(&planes[..2 * 256], (16, 16), 64, (64, 43), (90, 60));
        let many = postprocess_masks(&planes, (16, 16), 64, (64, 43), (90, 60));
        assert_eq!(few[..], many[..2 * 90 * 60]);
    }

    #[test]
    fn bilinear_identity_and_constant() {
        let src: Vec<f32> = (0..12).map(|i| i as f32).collect();
        assert_eq!(bilinear(&src, (3, 4), (3, 4), (3, 4)), src);
        let ones = vec![2.5f32; 6];
        assert!(bilinear(&ones, (2, 3), (7, 5), (7, 5)).iter().all(|v| (*v - 2.5).abs() < 1e-6));
    }
}
