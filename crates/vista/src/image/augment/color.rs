//! Pillow's colour operations, operation for operation (see the module docs of
//! [`super`]): luma, blends (brightness, contrast, saturation), HSV hue shifts, grayscale,
//! solarisation, flips; and torchvision's `ColorJitter` on top of them.

use ::image::{imageops, RgbImage};

use super::{randperm4, uniform, RngCore};
use crate::{Error, Result};

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

/// torchvision's `ColorJitter(brightness, contrast, saturation, hue)`: the first three draw a
/// factor in `[max(0, 1 - x), 1 + x]`, hue in `[-hue, hue]`; 0 disables an adjustment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ColorJitter {
    /// Brightness jitter: the factor is drawn from `[max(0, 1 - brightness), 1 + brightness]`.
    pub brightness: f32,
    /// Contrast jitter: the factor is drawn from `[max(0, 1 - contrast), 1 + contrast]`.
    pub contrast: f32,
    /// Saturation jitter: the factor is drawn from `[max(0, 1 - saturation), 1 + saturation]`.
    pub saturation: f32,
    /// Hue jitter, in `[0, 0.5]`: the shift is drawn from `[-hue, hue]`.
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

    pub(super) fn validate(&self) -> Result<()> {
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
    /// [`adjust_brightness`].
    Brightness,
    /// [`adjust_contrast`].
    Contrast,
    /// [`adjust_saturation`].
    Saturation,
    /// [`adjust_hue`].
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
    /// The order the adjustments are applied in.
    pub order: [JitterOp; 4],
    /// Brightness factor.
    pub brightness: Option<f32>,
    /// Contrast factor.
    pub contrast: Option<f32>,
    /// Saturation factor.
    pub saturation: Option<f32>,
    /// Hue shift, as a fraction of the hue circle.
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
