//! DINO's multi-crop data augmentation (`DataAugmentationDINO` of facebookresearch/dino's
//! `main_dino.py`), on 8-bit RGB images, seeded and reproducible.
//!
//! For every image, two global views and `n_local` local views:
//!
//! | step | global 1 | global 2 | local |
//! |---|---|---|---|
//! | `RandomResizedCrop(size, scale, ratio=(3/4, 4/3), BICUBIC)` | 224, (0.4, 1) | 224, (0.4, 1) | 96, (0.05, 0.4) |
//! | `RandomHorizontalFlip` | p 0.5 | p 0.5 | p 0.5 |
//! | `ColorJitter(0.4, 0.4, 0.2, 0.1)` | p 0.8 | p 0.8 | p 0.8 |
//! | `RandomGrayscale` | p 0.2 | p 0.2 | p 0.2 |
//! | `GaussianBlur(radius ~ U(0.1, 2))` | p 1.0 | p 0.1 | p 0.5 |
//! | `Solarization` (threshold 128) | — | p 0.2 | — |
//! | `ToTensor` + `Normalize(ImageNet)` | ✓ | ✓ | ✓ |
//!
//! Sizes, scales and probabilities are configurable ([`DinoAugmentConfig`], [`ViewConfig`]):
//! Fashion-MNIST-sized inputs work (e.g. 28 / 12 px views of a 28 × 28 image); greyscale
//! images are augmented as RGB with three equal channels (`DynamicImage::to_rgb8`, as
//! Pillow's `convert("RGB")`).
//!
//! # Randomness and reproducibility
//!
//! Sampling ([`ViewConfig::sample`] → [`ViewParams`]) is separate from applying
//! ([`ViewParams::apply`]). All randomness comes from a caller-supplied [`RngCore`]; the
//! conversion of its raw bits to numbers is done here ([`uniform`], [`below`], [`randperm4`])
//! so results do not depend on the `rand` version. [`sample_rng`] derives one ChaCha8 stream per
//! `(seed, image index, epoch)`: every sample gets the same views whichever worker thread, batch
//! or order it is processed in. The random *streams* differ from torchvision's (different
//! generator), the *distributions* are the same: the parameter sampling follows torchvision's
//! code step by step, draw for draw:
//!
//! * crop: `RandomResizedCrop.get_params` — 10 attempts of area `U(scale) · H · W` and
//!   log-uniform aspect ratio, side lengths `round()` (half to even, as Python), accepted when
//!   `0 < w <= W` and `0 < h <= H`, offsets uniform integers; then the central-crop fallback
//!   (whole image, or clamped to the nearest ratio bound). torch draws `uniform_` in float32,
//!   we draw in f64 (indistinguishable).
//! * flip when `u < 0.5`; colour jitter applied when `u <= p` (`RandomApply`); grayscale when
//!   `u < p`; blur when `u <= p` (DINO's `random.random() <= self.prob`), radius
//!   `U(0.1, 2.0)`; solarization when `u < p`.
//! * jitter: a uniformly random order of the four adjustments (`torch.randperm(4)`), then the
//!   factors `brightness ~ U(0.6, 1.4)`, `contrast ~ U(0.6, 1.4)`, `saturation ~ U(0.8, 1.2)`,
//!   `hue ~ U(-0.1, 0.1)` (float32, as torch returns them).
//!
//! # Pixel operations (Pillow-exact)
//!
//! torchvision applies every step to a PIL image, i.e. with Pillow's uint8 arithmetic. The
//! colour operations here reproduce Pillow 13's C code operation for operation, including its
//! float32 / double mix and its truncations, and agree **exactly** with Pillow on the fixtures
//! (`tests/augment.rs`):
//!
//! * brightness, contrast, saturation: `ImageEnhance` = `Image.blend(degenerate, img, f)`,
//!   `out = (u8) trunc(a + f·(b − a))` in float32, clipped to [0, 255] when `f > 1` (Pillow
//!   *truncates*, it does not round). Degenerate images: black (brightness); the mean of the
//!   `L` image rounded half up, `int(mean + 0.5)` (contrast); the `L` image (saturation).
//! * `L` (grayscale and the above): ITU-R 601-2 luma in Pillow's fixed point,
//!   `(19595 R + 38470 G + 7471 B + 0x8000) >> 16`.
//! * hue: Pillow's RGB → HSV (uint8 H, S, V, truncated), `H += int(hue · 255)` modulo 256
//!   (torchvision's `np.uint8` wrap-around), HSV → RGB (rounded). The round trip itself is lossy
//!   (uint8 HSV), exactly as in torchvision's PIL path.
//! * Gaussian blur: Pillow's `GaussianBlur(radius)` is not a true Gaussian but three passes of
//!   an extended box blur per axis (fractional box radius from Gwosdek et al., 24-bit fixed
//!   point weights, uint8 rounding after each pass, edge pixels repeated); reproduced as is.
//! * solarize: `v < 128 ? v : 255 − v`; flip: mirror; grayscale: `L` on all three channels.
//!
//! The crop is cropped then resized with [`resize_exact`] (Pillow's antialiased bicubic, within
//! ±1 level of Pillow, see [`crate::image`]); that ±1 is the only difference from torchvision on
//! identical parameters (it can grow by the later contrast / brightness factors, ≤ 1.4 each).
//! Normalisation: `(v / 255 − mean) / std` in f32, as `ToTensor` + `Normalize`; the output is
//! channels-last `[H, W, 3]` f32 ([`View`]).

use ::image::{imageops, RgbImage};
pub use rand_chacha::rand_core::RngCore;
use rand_chacha::rand_core::SeedableRng;
pub use rand_chacha::ChaCha8Rng;

use super::resize::{resize_exact, Filter};
use super::{IMAGENET_MEAN, IMAGENET_STD};
use crate::{Error, Result};

// ---------------------------------------------------------------------------------------------
// Random numbers
// ---------------------------------------------------------------------------------------------

/// The random stream of one sample: a ChaCha8 generator keyed by `(seed, index, epoch)`, so that
/// a sample's views depend on nothing else (not the worker thread, the batch, the order).
pub fn sample_rng(seed: u64, index: u64, epoch: u64) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&index.to_le_bytes());
    key[16..24].copy_from_slice(&epoch.to_le_bytes());
    key[24..].copy_from_slice(b"vistaDNO");
    ChaCha8Rng::from_seed(key)
}

/// Uniform in `[0, 1)`: the top 53 bits of one `u64`.
pub fn uniform01<R: RngCore + ?Sized>(rng: &mut R) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// Uniform in `[a, b)` (`a + (b - a) u`, as torch's `uniform_`).
pub fn uniform<R: RngCore + ?Sized>(rng: &mut R, a: f64, b: f64) -> f64 {
    a + (b - a) * uniform01(rng)
}

/// Uniform integer in `[0, n)`, unbiased (Lemire's multiply-and-reject). `n` must be > 0.
pub fn below<R: RngCore + ?Sized>(rng: &mut R, n: u32) -> u32 {
    assert!(n > 0, "below(0)");
    let mut m = u64::from(rng.next_u32()) * u64::from(n);
    if (m as u32) < n {
        let threshold = n.wrapping_neg() % n;
        while (m as u32) < threshold {
            m = u64::from(rng.next_u32()) * u64::from(n);
        }
    }
    (m >> 32) as u32
}

/// A uniformly random permutation of `0..4` (Fisher-Yates), as `torch.randperm(4)`.
pub fn randperm4<R: RngCore + ?Sized>(rng: &mut R) -> [u8; 4] {
    let mut p = [0u8, 1, 2, 3];
    for i in (1..4).rev() {
        let j = below(rng, i as u32 + 1) as usize;
        p.swap(i, j);
    }
    p
}

// ---------------------------------------------------------------------------------------------
// RandomResizedCrop
// ---------------------------------------------------------------------------------------------

/// A crop rectangle in source pixels, `(i, j, h, w)` in torchvision's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CropBox {
    pub top: u32,
    pub left: u32,
    pub height: u32,
    pub width: u32,
}

/// torchvision's `RandomResizedCrop.get_params(img, scale, ratio)` for a `width` × `height`
/// image: 10 attempts, then the central-crop fallback. See the module docs.
pub fn random_resized_crop_params<R: RngCore + ?Sized>(
    width: u32,
    height: u32,
    scale: (f64, f64),
    ratio: (f64, f64),
    rng: &mut R,
) -> CropBox {
    let area = f64::from(height) * f64::from(width);
    let log_ratio = (ratio.0.ln(), ratio.1.ln());
    for _ in 0..10 {
        let target_area = area * uniform(rng, scale.0, scale.1);
        let aspect_ratio = uniform(rng, log_ratio.0, log_ratio.1).exp();
        // int(round(x)): Python rounds half to even; x >= 0 and small, so the cast is exact.
        let w = (target_area * aspect_ratio).sqrt().round_ties_even();
        let h = (target_area / aspect_ratio).sqrt().round_ties_even();
        if 0.0 < w && w <= f64::from(width) && 0.0 < h && h <= f64::from(height) {
            let (w, h) = (w as u32, h as u32);
            let top = below(rng, height - h + 1);
            let left = below(rng, width - w + 1);
            return CropBox { top, left, height: h, width: w };
        }
    }
    central_crop_fallback(width, height, ratio)
}

/// The deterministic fallback of `RandomResizedCrop.get_params` after 10 failed attempts: the
/// whole image when its aspect ratio is within `ratio`, else the largest central crop at the
/// nearest bound.
pub fn central_crop_fallback(width: u32, height: u32, ratio: (f64, f64)) -> CropBox {
    let in_ratio = f64::from(width) / f64::from(height);
    let (rmin, rmax) = (ratio.0.min(ratio.1), ratio.0.max(ratio.1));
    let (w, h) = if in_ratio < rmin {
        (width, (f64::from(width) / rmin).round_ties_even() as u32)
    } else if in_ratio > rmax {
        ((f64::from(height) * rmax).round_ties_even() as u32, height)
    } else {
        (width, height)
    };
    // Never empty nor larger than the image (only reachable with extreme ratios).
    let (w, h) = (w.clamp(1, width), h.clamp(1, height));
    CropBox { top: (height - h) / 2, left: (width - w) / 2, height: h, width: w }
}

// ---------------------------------------------------------------------------------------------
// Pixel operations (Pillow-exact, see the module docs)
// ---------------------------------------------------------------------------------------------

/// Pillow's `L` (ITU-R 601-2 luma, fixed point): `convert("L")`.
#[inline]
pub fn luma(r: u8, g: u8, b: u8) -> u8 {
    ((u32::from(r) * 19595 + u32::from(g) * 38470 + u32::from(b) * 7471 + 0x8000) >> 16) as u8
}

/// One value of Pillow's `ImagingBlend(a, b, alpha)`: `a + alpha (b - a)` in float32, truncated,
/// clipped when extrapolating.
#[inline]
fn blend_value(a: u8, b: u8, alpha: f32) -> u8 {
    let v = f32::from(a) + alpha * (i32::from(b) - i32::from(a)) as f32;
    if (0.0..=1.0).contains(&alpha) {
        v as u8
    } else if v <= 0.0 {
        0
    } else if v >= 255.0 {
        255
    } else {
        v as u8
    }
}

/// `PIL.ImageEnhance.Brightness(img).enhance(factor)` (torchvision `adjust_brightness`).
pub fn adjust_brightness(img: &mut RgbImage, factor: f32) {
    for v in img.iter_mut() {
        *v = blend_value(0, *v, factor);
    }
}

/// The mean Pillow's `ImageEnhance.Contrast` blends with: `int(mean(L) + 0.5)`.
pub fn contrast_mean(img: &RgbImage) -> u8 {
    let n = img.width() as u64 * img.height() as u64;
    if n == 0 {
        return 0;
    }
    let sum: u64 = img.pixels().map(|p| u64::from(luma(p[0], p[1], p[2]))).sum();
    (sum as f64 / n as f64 + 0.5) as u8
}

/// `PIL.ImageEnhance.Contrast(img).enhance(factor)` (torchvision `adjust_contrast`).
pub fn adjust_contrast(img: &mut RgbImage, factor: f32) {
    let mean = contrast_mean(img);
    for v in img.iter_mut() {
        *v = blend_value(mean, *v, factor);
    }
}

/// `PIL.ImageEnhance.Color(img).enhance(factor)` (torchvision `adjust_saturation`).
pub fn adjust_saturation(img: &mut RgbImage, factor: f32) {
    for p in img.pixels_mut() {
        let l = luma(p[0], p[1], p[2]);
        for v in p.0.iter_mut() {
            *v = blend_value(l, *v, factor);
        }
    }
}

/// Pillow's `rgb2hsv_row` (uint8 H, S, V).
#[inline]
pub fn rgb_to_hsv(r: u8, g: u8, b: u8) -> [u8; 3] {
    let maxc = r.max(g).max(b);
    let minc = r.min(g).min(b);
    if minc == maxc {
        return [0, 0, maxc];
    }
    // float (f32) variables, double (f64) constants: Pillow's C expression types.
    let cr = f32::from(maxc - minc);
    let s: f32 = cr / f32::from(maxc);
    let rc: f32 = f32::from(maxc - r) / cr;
    let gc: f32 = f32::from(maxc - g) / cr;
    let bc: f32 = f32::from(maxc - b) / cr;
    let h: f32 = if r == maxc {
        bc - gc
    } else if g == maxc {
        (2.0 + f64::from(rc) - f64::from(bc)) as f32
    } else {
        (4.0 + f64::from(gc) - f64::from(rc)) as f32
    };
    let h = ((f64::from(h) / 6.0 + 1.0) % 1.0) as f32;
    let clip8 = |x: f64| (x as i32).clamp(0, 255) as u8;
    [clip8(f64::from(h) * 255.0), clip8(f64::from(s) * 255.0), maxc]
}

/// Pillow's `hsv2rgb`.
#[inline]
pub fn hsv_to_rgb(h: u8, s: u8, v: u8) -> [u8; 3] {
    if s == 0 {
        return [v, v, v];
    }
    let hh = f64::from(h) * 6.0 / 255.0;
    let i = hh.floor() as i32;
    let f = (hh - f64::from(i)) as f32;
    let fs = (f64::from(s) / 255.0) as f32;
    let vf = f64::from(v);
    let clip8 = |x: f64| (x.round() as i32).clamp(0, 255) as u8;
    let p = clip8(vf * (1.0 - f64::from(fs)));
    let q = clip8(vf * (1.0 - f64::from(fs * f)));
    let t = clip8(vf * (1.0 - f64::from(fs) * (1.0 - f64::from(f))));
    match i % 6 {
        0 => [v, t, p],
        1 => [q, v, p],
        2 => [p, v, t],
        3 => [p, q, v],
        4 => [t, p, v],
        _ => [v, p, q],
    }
}

/// torchvision's `adjust_hue` on a PIL image: RGB → HSV, `H += int(hue_factor · 255)` (mod 256),
/// HSV → RGB. `hue_factor` in `[-0.5, 0.5]`.
pub fn adjust_hue(img: &mut RgbImage, hue_factor: f32) {
    // np.int32(hue_factor * 255).astype(np.uint8): truncation toward zero, then wrap-around.
    let shift = (f64::from(hue_factor) * 255.0) as i32 as u8;
    for p in img.pixels_mut() {
        let [h, s, v] = rgb_to_hsv(p[0], p[1], p[2]);
        p.0 = hsv_to_rgb(h.wrapping_add(shift), s, v);
    }
}

/// `F.rgb_to_grayscale(img, 3)` on PIL: `convert("L")` replicated to three channels.
pub fn to_grayscale(img: &mut RgbImage) {
    for p in img.pixels_mut() {
        let l = luma(p[0], p[1], p[2]);
        p.0 = [l, l, l];
    }
}

/// `PIL.ImageOps.solarize(img, threshold)`: values `>= threshold` are inverted.
pub fn solarize(img: &mut RgbImage, threshold: u8) {
    for v in img.iter_mut() {
        if *v >= threshold {
            *v = 255 - *v;
        }
    }
}

/// Horizontal flip in place (`Image.transpose(FLIP_LEFT_RIGHT)`).
pub fn hflip(img: &mut RgbImage) {
    imageops::flip_horizontal_in_place(img);
}

/// Pillow's `_gaussian_blur_radius`: the fractional box radius whose `passes`-fold box blur has
/// the variance of a Gaussian of standard deviation `radius` (float32, as Pillow).
pub fn pillow_box_radius(radius: f32, passes: u32) -> f32 {
    let sigma2: f32 = radius * radius / passes as f32;
    let big_l = (12.0 * f64::from(sigma2) + 1.0).sqrt() as f32;
    let l = ((f64::from(big_l) - 1.0) / 2.0).floor() as f32;
    let mut a: f32 = (2.0 * l + 1.0) * (l * (l + 1.0) - 3.0 * sigma2);
    a /= 6.0 * (sigma2 - (l + 1.0) * (l + 1.0));
    l + a
}

/// One line of Pillow's `ImagingLineBoxBlur32`, three channels, u32 fixed point.
#[allow(clippy::too_many_arguments)]
fn box_blur_line(
    line_in: &[[u8; 3]],
    line_out: &mut [[u8; 3]],
    radius: usize,
    edge_a: usize,
    edge_b: usize,
    ww: u32,
    fw: u32,
) {
    let lastx = line_in.len() - 1;
    let px = |x: usize| line_in[x].map(u32::from);
    let mut acc = px(0).map(|v| v * (radius as u32 + 1));
    for x in 0..edge_a.saturating_sub(1) {
        let p = px(x);
        for c in 0..3 {
            acc[c] = acc[c].wrapping_add(p[c]);
        }
    }
    let last = px(lastx);
    for c in 0..3 {
        acc[c] = acc[c].wrapping_add(last[c].wrapping_mul((radius + 1 - edge_a) as u32));
    }
    let mut step = |x: usize, sub: usize, add: usize, left: usize, right: usize, acc: &mut [u32; 3]| {
        let (a, s, l, r) = (px(add), px(sub), px(left), px(right));
        let mut o = [0u8; 3];
        for c in 0..3 {
            acc[c] = acc[c].wrapping_add(a[c].wrapping_sub(s[c]));
            let bulk = acc[c].wrapping_mul(ww).wrapping_add((l[c] + r[c]).wrapping_mul(fw));
            o[c] = (bulk.wrapping_add(1 << 23) >> 24) as u8;
        }
        line_out[x] = o;
    };
    if edge_a <= edge_b {
        for x in 0..edge_a {
            step(x, 0, x + radius, 0, x + radius + 1, &mut acc);
        }
        for x in edge_a..edge_b {
            step(x, x - radius - 1, x + radius, x - radius - 1, x + radius + 1, &mut acc);
        }
        for x in edge_b..=lastx {
            step(x, x - radius - 1, lastx, x - radius - 1, lastx, &mut acc);
        }
    } else {
        for x in 0..edge_b {
            step(x, 0, x + radius, 0, x + radius + 1, &mut acc);
        }
        for x in edge_b..edge_a {
            step(x, 0, lastx, 0, lastx, &mut acc);
        }
        for x in edge_a..=lastx {
            step(x, x - radius - 1, lastx, x - radius - 1, lastx, &mut acc);
        }
    }
}

/// `passes` horizontal box-blur passes over `rows` × `cols` pixels (Pillow's
/// `ImagingHorizontalBoxBlur`, in place line by line).
fn box_blur_rows(buf: &mut [[u8; 3]], cols: usize, box_radius: f32, passes: u32) {
    let radius = box_radius as usize;
    let ww = (16_777_216.0f32 / (box_radius * 2.0 + 1.0)) as u32;
    let fw = 16_777_216u32.wrapping_sub((radius as u32 * 2 + 1).wrapping_mul(ww)) / 2;
    let edge_a = (radius + 1).min(cols);
    let edge_b = cols.saturating_sub(radius + 1);
    let mut line = vec![[0u8; 3]; cols];
    for row in buf.chunks_exact_mut(cols) {
        for _ in 0..passes {
            box_blur_line(row, &mut line, radius, edge_a, edge_b, ww, fw);
            row.copy_from_slice(&line);
        }
    }
}

fn transpose(src: &[[u8; 3]], rows: usize, cols: usize) -> Vec<[u8; 3]> {
    let mut out = vec![[0u8; 3]; src.len()];
    for (r, row) in src.chunks_exact(cols).enumerate() {
        for (c, p) in row.iter().enumerate() {
            out[c * rows + r] = *p;
        }
    }
    out
}

/// `img.filter(PIL.ImageFilter.GaussianBlur(radius))`: three extended-box-blur passes along x,
/// then three along y (Pillow's approximation of a Gaussian of standard deviation `radius`).
pub fn gaussian_blur(img: &mut RgbImage, radius: f32) {
    const PASSES: u32 = 3;
    let (w, h) = (img.width() as usize, img.height() as usize);
    if radius == 0.0 || w == 0 || h == 0 {
        return;
    }
    let box_radius = pillow_box_radius(radius, PASSES);
    if box_radius == 0.0 {
        return;
    }
    let mut px: Vec<[u8; 3]> = img.as_raw().chunks_exact(3).map(|p| [p[0], p[1], p[2]]).collect();
    box_blur_rows(&mut px, w, box_radius, PASSES);
    let mut t = transpose(&px, h, w);
    box_blur_rows(&mut t, h, box_radius, PASSES);
    let px = transpose(&t, w, h);
    for (dst, p) in img.chunks_exact_mut(3).zip(&px) {
        dst.copy_from_slice(p);
    }
}

// ---------------------------------------------------------------------------------------------
// Configuration and sampled parameters
// ---------------------------------------------------------------------------------------------

/// torchvision's `ColorJitter(brightness, contrast, saturation, hue)`: the first three draw a
/// factor in `[max(0, 1 - x), 1 + x]`, hue in `[-hue, hue]`; 0 disables an adjustment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ColorJitter {
    pub brightness: f32,
    pub contrast: f32,
    pub saturation: f32,
    pub hue: f32,
}

impl ColorJitter {
    /// DINO's `ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)`.
    pub const DINO: ColorJitter = ColorJitter { brightness: 0.4, contrast: 0.4, saturation: 0.2, hue: 0.1 };

    fn factor_range(x: f32) -> Option<(f64, f64)> {
        (x != 0.0).then(|| ((1.0 - f64::from(x)).max(0.0), 1.0 + f64::from(x)))
    }

    fn hue_range(&self) -> Option<(f64, f64)> {
        (self.hue != 0.0).then(|| (-f64::from(self.hue), f64::from(self.hue)))
    }

    /// `ColorJitter.get_params`: a random order, then each enabled factor (float32).
    pub fn sample<R: RngCore + ?Sized>(&self, rng: &mut R) -> JitterParams {
        let perm = randperm4(rng);
        let mut draw = |r: Option<(f64, f64)>| r.map(|(a, b)| uniform(rng, a, b) as f32);
        let brightness = draw(Self::factor_range(self.brightness));
        let contrast = draw(Self::factor_range(self.contrast));
        let saturation = draw(Self::factor_range(self.saturation));
        let hue = draw(self.hue_range());
        JitterParams { order: perm.map(JitterOp::from_index), brightness, contrast, saturation, hue }
    }

    fn validate(&self) -> Result<()> {
        for (name, v) in [("brightness", self.brightness), ("contrast", self.contrast), ("saturation", self.saturation)]
        {
            if !(v.is_finite() && v >= 0.0) {
                return Err(Error::arg(name, format!("jitter must be finite and >= 0, got {v}")));
            }
        }
        if !(0.0..=0.5).contains(&self.hue) {
            return Err(Error::arg("hue", format!("hue jitter must be in [0, 0.5], got {}", self.hue)));
        }
        Ok(())
    }
}

/// One of the four colour-jitter adjustments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JitterOp {
    Brightness,
    Contrast,
    Saturation,
    Hue,
}

impl JitterOp {
    /// torchvision's `fn_id`: 0 brightness, 1 contrast, 2 saturation, 3 hue.
    pub fn from_index(i: u8) -> Self {
        match i {
            0 => JitterOp::Brightness,
            1 => JitterOp::Contrast,
            2 => JitterOp::Saturation,
            _ => JitterOp::Hue,
        }
    }
}

/// Sampled colour-jitter parameters: the order of the adjustments and their factors (`None`:
/// that adjustment is disabled).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct JitterParams {
    pub order: [JitterOp; 4],
    pub brightness: Option<f32>,
    pub contrast: Option<f32>,
    pub saturation: Option<f32>,
    pub hue: Option<f32>,
}

impl JitterParams {
    /// `ColorJitter.forward` with these parameters.
    pub fn apply(&self, img: &mut RgbImage) {
        for op in self.order {
            match (op, self.factor(op)) {
                (JitterOp::Brightness, Some(f)) => adjust_brightness(img, f),
                (JitterOp::Contrast, Some(f)) => adjust_contrast(img, f),
                (JitterOp::Saturation, Some(f)) => adjust_saturation(img, f),
                (JitterOp::Hue, Some(f)) => adjust_hue(img, f),
                (_, None) => {}
            }
        }
    }

    /// The factor of one adjustment (`None`: disabled).
    pub fn factor(&self, op: JitterOp) -> Option<f32> {
        match op {
            JitterOp::Brightness => self.brightness,
            JitterOp::Contrast => self.contrast,
            JitterOp::Saturation => self.saturation,
            JitterOp::Hue => self.hue,
        }
    }
}

/// The transform of one kind of view (`global_transfo1`, `global_transfo2`, `local_transfo`).
#[derive(Debug, Clone, PartialEq)]
pub struct ViewConfig {
    /// Output side (square views), `RandomResizedCrop(size)`.
    pub size: u32,
    /// Crop area range as a fraction of the image area.
    pub scale: (f64, f64),
    /// Crop aspect-ratio (width / height) range, sampled log-uniformly.
    pub ratio: (f64, f64),
    /// `RandomHorizontalFlip(p)`.
    pub flip_p: f64,
    pub jitter: ColorJitter,
    /// `RandomApply([ColorJitter], p)`.
    pub jitter_p: f64,
    /// `RandomGrayscale(p)`.
    pub grayscale_p: f64,
    /// DINO's `GaussianBlur(p)`.
    pub blur_p: f64,
    /// Blur radius (Pillow's standard deviation) range, uniform.
    pub blur_radius: (f64, f64),
    /// DINO's `Solarization(p)` (threshold 128); 0 for no solarization step.
    pub solarize_p: f64,
}

/// RandomResizedCrop's default ratio range, `(3/4, 4/3)`.
pub const DEFAULT_RATIO: (f64, f64) = (3.0 / 4.0, 4.0 / 3.0);

impl ViewConfig {
    fn dino(size: u32, scale: (f64, f64), blur_p: f64, solarize_p: f64) -> Self {
        Self {
            size,
            scale,
            ratio: DEFAULT_RATIO,
            flip_p: 0.5,
            jitter: ColorJitter::DINO,
            jitter_p: 0.8,
            grayscale_p: 0.2,
            blur_p,
            blur_radius: (0.1, 2.0),
            solarize_p,
        }
    }

    /// DINO's first global view: blur always, no solarization.
    pub fn dino_global1(size: u32, scale: (f64, f64)) -> Self {
        Self::dino(size, scale, 1.0, 0.0)
    }

    /// DINO's second global view: blur p 0.1, solarization p 0.2.
    pub fn dino_global2(size: u32, scale: (f64, f64)) -> Self {
        Self::dino(size, scale, 0.1, 0.2)
    }

    /// DINO's local view: blur p 0.5, no solarization.
    pub fn dino_local(size: u32, scale: (f64, f64)) -> Self {
        Self::dino(size, scale, 0.5, 0.0)
    }

    pub fn validate(&self) -> Result<()> {
        if self.size == 0 {
            return Err(Error::arg("size", "view size must be > 0"));
        }
        let (s0, s1) = self.scale;
        if !(s0 > 0.0 && s0 <= s1 && s1.is_finite()) {
            return Err(Error::arg("scale", format!("need 0 < min <= max, got {:?}", self.scale)));
        }
        let (r0, r1) = self.ratio;
        if !(r0 > 0.0 && r0 <= r1 && r1.is_finite()) {
            return Err(Error::arg("ratio", format!("need 0 < min <= max, got {:?}", self.ratio)));
        }
        let (b0, b1) = self.blur_radius;
        if !(b0 >= 0.0 && b0 <= b1 && b1.is_finite()) {
            return Err(Error::arg("blur_radius", format!("need 0 <= min <= max, got {:?}", self.blur_radius)));
        }
        for (name, p) in [
            ("flip_p", self.flip_p),
            ("jitter_p", self.jitter_p),
            ("grayscale_p", self.grayscale_p),
            ("blur_p", self.blur_p),
            ("solarize_p", self.solarize_p),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return Err(Error::arg(name, format!("probability must be in [0, 1], got {p}")));
            }
        }
        self.jitter.validate()
    }

    /// Draws this view's parameters for a `width` × `height` image, in torchvision's order
    /// (crop, flip, jitter, grayscale, blur, solarization).
    pub fn sample<R: RngCore + ?Sized>(&self, width: u32, height: u32, rng: &mut R) -> ViewParams {
        let crop = random_resized_crop_params(width, height, self.scale, self.ratio, rng);
        let flip = uniform01(rng) < self.flip_p;
        // RandomApply: skipped when p < rand.
        let jitter = (uniform01(rng) <= self.jitter_p).then(|| self.jitter.sample(rng));
        let grayscale = uniform01(rng) < self.grayscale_p;
        let blur_radius =
            (uniform01(rng) <= self.blur_p).then(|| uniform(rng, self.blur_radius.0, self.blur_radius.1) as f32);
        // DINO has no solarization step in global 1 and the locals (p = 0 here, never true);
        // drawing anyway keeps the stream layout the same for every view kind.
        let solarize = uniform01(rng) < self.solarize_p;
        ViewParams { size: self.size, crop, flip, jitter, grayscale, blur_radius, solarize }
    }
}

/// Everything random about one view; [`apply`](Self::apply) is deterministic.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ViewParams {
    /// Output side.
    pub size: u32,
    pub crop: CropBox,
    pub flip: bool,
    /// `None`: the colour jitter was not applied (`RandomApply`).
    pub jitter: Option<JitterParams>,
    pub grayscale: bool,
    /// `Some(radius)`: Gaussian blur with that radius.
    pub blur_radius: Option<f32>,
    pub solarize: bool,
}

impl ViewParams {
    /// The view as uint8 RGB, before normalisation: crop, bicubic resize to `size` × `size`,
    /// flip, colour jitter, grayscale, blur, solarization.
    pub fn apply(&self, img: &RgbImage) -> Result<RgbImage> {
        let CropBox { top, left, height, width } = self.crop;
        let fits = |start: u32, len: u32, full: u32| len > 0 && u64::from(start) + u64::from(len) <= u64::from(full);
        if !fits(left, width, img.width()) || !fits(top, height, img.height()) {
            return Err(Error::arg(
                "crop",
                format!("{:?} is empty or outside the {}x{} image", self.crop, img.width(), img.height()),
            ));
        }
        let cropped = imageops::crop_imm(img, left, top, width, height).to_image();
        let mut out = resize_exact(&cropped, self.size, self.size, Filter::Bicubic)?;
        self.apply_pixel_ops(&mut out);
        Ok(out)
    }

    /// The steps after the resized crop, in place: flip, colour jitter, grayscale, blur,
    /// solarization.
    pub fn apply_pixel_ops(&self, img: &mut RgbImage) {
        if self.flip {
            hflip(img);
        }
        if let Some(j) = &self.jitter {
            j.apply(img);
        }
        if self.grayscale {
            to_grayscale(img);
        }
        if let Some(r) = self.blur_radius {
            gaussian_blur(img, r);
        }
        if self.solarize {
            solarize(img, 128);
        }
    }
}

/// DINO's full multi-crop configuration. [`Default`]: `main_dino.py`'s (224 / 96 px, global
/// scale (0.4, 1), local scale (0.05, 0.4), 8 local crops, ImageNet normalisation).
#[derive(Debug, Clone, PartialEq)]
pub struct DinoAugmentConfig {
    pub global1: ViewConfig,
    pub global2: ViewConfig,
    pub local: ViewConfig,
    /// Number of local views (`--local_crops_number`); 0 disables multi-crop.
    pub n_local: usize,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl DinoAugmentConfig {
    /// DINO's transforms with the given sizes and scales (`--global_crops_scale`,
    /// `--local_crops_scale`, `--local_crops_number`).
    pub fn dino(
        global_size: u32,
        local_size: u32,
        global_scale: (f64, f64),
        local_scale: (f64, f64),
        n_local: usize,
    ) -> Self {
        Self {
            global1: ViewConfig::dino_global1(global_size, global_scale),
            global2: ViewConfig::dino_global2(global_size, global_scale),
            local: ViewConfig::dino_local(local_size, local_scale),
            n_local,
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
        }
    }

    pub fn validate(&self) -> Result<()> {
        self.global1.validate()?;
        self.global2.validate()?;
        self.local.validate()?;
        if self.std.iter().any(|s| !(s.is_finite() && *s != 0.0)) || self.mean.iter().any(|m| !m.is_finite()) {
            return Err(Error::arg(
                "std",
                format!("mean {:?} / std {:?} must be finite, std != 0", self.mean, self.std),
            ));
        }
        Ok(())
    }
}

impl Default for DinoAugmentConfig {
    fn default() -> Self {
        Self::dino(224, 96, (0.4, 1.0), (0.05, 0.4), 8)
    }
}

/// One normalised view: channels-last `[height, width, 3]` f32.
#[derive(Debug, Clone, PartialEq)]
pub struct View {
    pub data: Vec<f32>,
    pub height: usize,
    pub width: usize,
}

/// The views of one image: 2 globals (the teacher's and the student's inputs) and the locals
/// (student only), in `DataAugmentationDINO.__call__`'s order.
#[derive(Debug, Clone, PartialEq)]
pub struct Views {
    pub globals: Vec<View>,
    pub locals: Vec<View>,
}

/// `DataAugmentationDINO`: samples and applies the views, normalises them.
#[derive(Debug, Clone)]
pub struct DataAugmentationDino {
    cfg: DinoAugmentConfig,
    /// Per channel, the 256 possible `(v / 255 - mean) / std`.
    lut: [[f32; 256]; 3],
}

impl DataAugmentationDino {
    pub fn new(cfg: DinoAugmentConfig) -> Result<Self> {
        cfg.validate()?;
        let mut lut = [[0f32; 256]; 3];
        for (c, table) in lut.iter_mut().enumerate() {
            for (v, out) in table.iter_mut().enumerate() {
                *out = (v as f32 / 255.0 - cfg.mean[c]) / cfg.std[c];
            }
        }
        Ok(Self { cfg, lut })
    }

    pub fn config(&self) -> &DinoAugmentConfig {
        &self.cfg
    }

    /// The parameters of all views of a `width` × `height` image: global 1, global 2, then the
    /// locals.
    pub fn sample_params<R: RngCore + ?Sized>(&self, width: u32, height: u32, rng: &mut R) -> Vec<ViewParams> {
        let mut v = Vec::with_capacity(2 + self.cfg.n_local);
        v.push(self.cfg.global1.sample(width, height, rng));
        v.push(self.cfg.global2.sample(width, height, rng));
        for _ in 0..self.cfg.n_local {
            v.push(self.cfg.local.sample(width, height, rng));
        }
        v
    }

    /// The views as uint8 images (before normalisation): `(globals, locals)`.
    pub fn augment_images<R: RngCore + ?Sized>(
        &self,
        img: &RgbImage,
        rng: &mut R,
    ) -> Result<(Vec<RgbImage>, Vec<RgbImage>)> {
        let (w, h) = img.dimensions();
        if w == 0 || h == 0 {
            return Err(Error::arg("img", format!("cannot augment an empty image ({w}x{h})")));
        }
        let params = self.sample_params(w, h, rng);
        let mut views = params.iter().map(|p| p.apply(img)).collect::<Result<Vec<_>>>()?;
        let locals = views.split_off(2);
        Ok((views, locals))
    }

    /// The normalised views of `img` (`DataAugmentationDINO.__call__`).
    pub fn augment<R: RngCore + ?Sized>(&self, img: &RgbImage, rng: &mut R) -> Result<Views> {
        let (globals, locals) = self.augment_images(img, rng)?;
        Ok(Views {
            globals: globals.iter().map(|v| self.normalize(v)).collect(),
            locals: locals.iter().map(|v| self.normalize(v)).collect(),
        })
    }

    /// [`augment`](Self::augment) with the sample's own stream, [`sample_rng`]`(seed, index,
    /// epoch)`: reproducible whatever thread or order the samples are processed in.
    pub fn augment_sample(&self, img: &RgbImage, seed: u64, index: u64, epoch: u64) -> Result<Views> {
        self.augment(img, &mut sample_rng(seed, index, epoch))
    }

    /// `ToTensor` + `Normalize(mean, std)`, channels-last.
    pub fn normalize(&self, img: &RgbImage) -> View {
        let data = img.as_raw().chunks_exact(3).flat_map(|p| [0, 1, 2].map(|c| self.lut[c][p[c] as usize])).collect();
        View { data, height: img.height() as usize, width: img.width() as usize }
    }
}
