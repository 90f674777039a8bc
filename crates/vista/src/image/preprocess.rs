//! CLIP-style preprocessing: resize the shortest side, centre-crop, scale to [0, 1], normalise.

use ::image::{RgbImage, RgbaImage};
use candle_core::{Device, Tensor};
use rayon::prelude::*;

use super::decode::Decoded;
use super::resize::{resize_region_raw, shortest_side_size, Filter, Region};
use crate::{Error, Result};

/// OpenAI CLIP's normalisation mean (RGB), as shipped with the checkpoints.
pub const OPENAI_CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// OpenAI CLIP's normalisation standard deviation (RGB).
#[allow(clippy::excessive_precision)] // the published digits
pub const OPENAI_CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];
/// ImageNet normalisation mean (RGB): DINO, SAM (×255) and most torchvision models.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet normalisation standard deviation (RGB).
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Where the centre crop starts when the resized side `len` is longer than the crop `crop`
/// and `(len - crop)` is odd — the two reference implementations disagree by one pixel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CropRounding {
    /// torchvision `CenterCrop` (open_clip, OpenAI `clip`): `int(round((len - crop) / 2.0))`,
    /// Python's round-half-to-even, so 4.5 → 4 and 9.5 → 10. A crop larger than the image
    /// pads with zeros, `(crop - len) // 2` before.
    #[default]
    Torchvision,
    /// Hugging Face `CLIPImageProcessor` (`transformers.image_transforms.center_crop`):
    /// `(len - crop) // 2`, floor division, also when the crop is larger (padding
    /// `ceil((crop - len) / 2)` before).
    Floor,
}

impl CropRounding {
    /// Offset of the crop window in a side of `len` pixels; negative when the crop is larger
    /// than the side (that many zero pixels of padding come first).
    pub fn offset(self, len: u32, crop: u32) -> i64 {
        let diff = i64::from(len) - i64::from(crop);
        match self {
            CropRounding::Floor => diff.div_euclid(2),
            CropRounding::Torchvision if diff < 0 => -((-diff).div_euclid(2)),
            CropRounding::Torchvision => {
                // round(diff / 2) with ties to even: diff / 2 is exact in f64.
                let half = diff / 2;
                if diff % 2 == 1 && half % 2 == 1 {
                    half + 1
                } else {
                    half
                }
            }
        }
    }
}

/// What a checkpoint family's reference pipeline does with transparent pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AlphaRule {
    /// open_clip / OpenAI `clip`: torchvision's `Resize` on the RGBA image, where Pillow
    /// resamples with premultiplied alpha (`RGBA` → `RGBa` → resize → `RGBA`), then the
    /// centre crop and `convert("RGB")`, which drops alpha: fully transparent pixels come out
    /// black, edges take the colour of their opaque neighbours. An image the resize leaves at
    /// its size is not premultiplied (Pillow returns a copy); nor is one whose transparency is
    /// a palette entry or colour key (Pillow resizes `P` / `RGB` images as they are).
    #[default]
    Premultiplied,
    /// transformers' image processors (`convert_to_rgb`): composited onto opaque white with
    /// `PIL.Image.alpha_composite` before anything else.
    OverWhite,
    /// `convert("RGB")` at load, as DINO's and DINOv2's `ImageFolder` loaders do: the colour
    /// under each pixel, alpha ignored.
    Drop,
}

/// CLIP image preprocessing, matching torchvision's
/// `Resize(resize_shortest, BICUBIC) → CenterCrop(size) → ToTensor → Normalize(mean, std)`
/// on a PIL image (open_clip / OpenAI), or Hugging Face's `CLIPImageProcessor` with
/// [`CropRounding::Floor`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClipPreprocess {
    /// Side of the square crop (the model's input resolution).
    pub size: u32,
    /// The shortest side is resized to this first (CLIP: `size`; DINO: 256 for 224).
    pub resize_shortest: u32,
    /// Normalisation mean (RGB, in `[0, 1]` units).
    pub mean: [f32; 3],
    /// Normalisation standard deviation (RGB, in `[0, 1]` units).
    pub std: [f32; 3],
    /// How the centre crop's offset is rounded (the references differ by one pixel).
    pub crop: CropRounding,
    /// Pillow filter of the resize (CLIP: bicubic).
    pub filter: Filter,
    /// What happens to transparent pixels ([`prepare`](Self::prepare)).
    pub alpha: AlphaRule,
}

impl ClipPreprocess {
    /// open_clip / OpenAI CLIP at `size`: bicubic resize to `size`, torchvision centre crop,
    /// OpenAI mean / std.
    pub fn openai(size: u32) -> Self {
        Self {
            size,
            resize_shortest: size,
            mean: OPENAI_CLIP_MEAN,
            std: OPENAI_CLIP_STD,
            crop: CropRounding::Torchvision,
            filter: Filter::Bicubic,
            alpha: AlphaRule::Premultiplied,
        }
    }

    /// Hugging Face `CLIPImageProcessor` defaults at `size` (floor centre crop, transparency
    /// composited onto white).
    pub fn hugging_face(size: u32) -> Self {
        Self { crop: CropRounding::Floor, alpha: AlphaRule::OverWhite, ..Self::openai(size) }
    }

    /// Checks the sizes and that `std` is finite and non-zero.
    pub fn validate(&self) -> Result<()> {
        if self.size == 0 {
            return Err(Error::arg("size", "the crop size must be positive"));
        }
        if self.resize_shortest == 0 {
            return Err(Error::arg("resize_shortest", "must be positive"));
        }
        if self.std.iter().any(|s| !s.is_finite() || *s == 0.0) || self.mean.iter().any(|m| !m.is_finite()) {
            return Err(Error::arg(
                "std",
                format!("mean {:?} / std {:?} must be finite, std non-zero", self.mean, self.std),
            ));
        }
        Ok(())
    }

    /// `(width, height)` after the shortest-side resize of a `width` × `height` image.
    pub fn resized_size(&self, width: u32, height: u32) -> (u32, u32) {
        shortest_side_size(width, height, self.resize_shortest)
    }

    /// `(left, top)` of the crop window in the resized image (negative: zero padding).
    pub fn crop_offset(&self, width: u32, height: u32) -> (i64, i64) {
        let (rw, rh) = self.resized_size(width, height);
        (self.crop.offset(rw, self.size), self.crop.offset(rh, self.size))
    }

    /// Resize + centre crop: the `size` × `size` uint8 image before normalisation (torchvision's
    /// `PILToTensor` of the crop, in HWC order). Only the cropped pixels are computed. An empty
    /// image gives an all-zero crop (everything is padding).
    pub fn resize_crop(&self, img: &RgbImage) -> RgbImage {
        let (w, h) = img.dimensions();
        let pixels = self.resize_crop_raw(img.as_raw(), 3, w, h);
        RgbImage::from_raw(self.size, self.size, pixels).expect("buffer size matches")
    }

    /// [`resize_crop`](Self::resize_crop) of a decoded image, its transparency treated by
    /// [`alpha`](Self::alpha) as the checkpoint family's reference treats it.
    pub fn prepare(&self, img: &Decoded) -> RgbImage {
        let (image, alpha_channel) = match img {
            Decoded::Rgb(rgb) => return self.resize_crop(rgb),
            Decoded::Rgba { image, alpha_channel } => (image, *alpha_channel),
        };
        let (w, h) = image.dimensions();
        match self.alpha {
            AlphaRule::OverWhite => self.resize_crop(&over_white(image)),
            AlphaRule::Premultiplied if alpha_channel && self.resized_size(w, h) != (w, h) => {
                let mut raw = image.as_raw().clone();
                raw.chunks_exact_mut(4).for_each(premultiply);
                let resized = self.resize_crop_raw(&raw, 4, w, h);
                let rgb = resized.chunks_exact(4).flat_map(unpremultiply_rgb).collect();
                RgbImage::from_raw(self.size, self.size, rgb).expect("buffer size matches")
            }
            AlphaRule::Premultiplied | AlphaRule::Drop => self.resize_crop(&drop_alpha(image)),
        }
    }

    /// Resize + centre crop of packed `channels`-channel pixels: `size` × `size` × `channels`
    /// values, zero where the crop pads.
    fn resize_crop_raw(&self, raw: &[u8], channels: usize, w: u32, h: u32) -> Vec<u8> {
        let s = self.size;
        let canvas = || vec![0u8; s as usize * s as usize * channels];
        if w == 0 || h == 0 || s == 0 || self.resize_shortest == 0 {
            return canvas();
        }
        let (rw, rh) = self.resized_size(w, h);
        let (left, top) = self.crop_offset(w, h);
        // The part of the crop window inside the resized image.
        let x0 = left.max(0);
        let y0 = top.max(0);
        let x1 = (left + i64::from(s)).min(i64::from(rw));
        let y1 = (top + i64::from(s)).min(i64::from(rh));
        if x1 <= x0 || y1 <= y0 {
            return canvas();
        }
        let region = Region { x: x0 as u32, y: y0 as u32, width: (x1 - x0) as u32, height: (y1 - y0) as u32 };
        let pixels = resize_region_raw(raw, channels, w, h, rw, rh, region, self.filter);
        if region.width == s && region.height == s {
            return pixels;
        }
        // Padding: paste the visible part at its place in a black canvas.
        let mut out = canvas();
        let (dx, dy) = ((x0 - left) as usize, (y0 - top) as usize);
        let row_in = region.width as usize * channels;
        let row_out = s as usize * channels;
        for (r, src_row) in pixels.chunks_exact(row_in).enumerate() {
            let start = (dy + r) * row_out + dx * channels;
            out[start..start + row_in].copy_from_slice(src_row);
        }
        out
    }

    /// Per channel, the 256 possible outputs `(v / 255 - mean) / std`, computed in f32 in the
    /// same order of operations as torchvision's `ToTensor` + `Normalize`.
    fn lut(&self) -> [[f32; 256]; 3] {
        let mut lut = [[0f32; 256]; 3];
        for (c, table) in lut.iter_mut().enumerate() {
            for (v, out) in table.iter_mut().enumerate() {
                *out = (v as f32 / 255.0 - self.mean[c]) / self.std[c];
            }
        }
        lut
    }

    /// Writes the normalised channel-planar `[3, size, size]` float32 values of `cropped` (a
    /// `size` × `size` image, e.g. from [`resize_crop`](Self::resize_crop)) into `out`.
    pub fn normalize_into(&self, cropped: &RgbImage, out: &mut [f32]) -> Result<()> {
        let n = self.size as usize * self.size as usize;
        if cropped.dimensions() != (self.size, self.size) || out.len() != 3 * n {
            return Err(Error::arg(
                "cropped",
                format!(
                    "expected a {s}x{s} image and {} output values, got {:?} and {}",
                    3 * n,
                    cropped.dimensions(),
                    out.len(),
                    s = self.size
                ),
            ));
        }
        normalize_planar(&self.lut(), cropped.as_raw(), out);
        Ok(())
    }

    /// The batch as a normalised float32 `[B, 3, size, size]` tensor on `device`: for each
    /// image, [`resize_crop`](Self::resize_crop) then `(v / 255 - mean) / std`, images in
    /// parallel (rayon).
    pub fn to_tensor(&self, imgs: &[RgbImage], device: &Device) -> Result<Tensor> {
        self.validate()?;
        if let Some(i) = imgs.iter().position(|im| im.width() == 0 || im.height() == 0) {
            return Err(Error::arg("imgs", format!("image {i} is empty ({:?})", imgs[i].dimensions())));
        }
        let s = self.size as usize;
        let per_image = 3 * s * s;
        let lut = self.lut();
        let mut data = vec![0f32; imgs.len() * per_image];
        data.par_chunks_mut(per_image).zip(imgs.par_iter()).for_each(|(out, img)| {
            let cropped = self.resize_crop(img);
            normalize_planar(&lut, cropped.as_raw(), out);
        });
        let tensor = Tensor::from_vec(data, (imgs.len(), 3, s, s), &Device::Cpu)?;
        Ok(tensor.to_device(device)?)
    }
}

/// The RGB image `img` is before any resizing under `rule`: composited onto white
/// ([`AlphaRule::OverWhite`]) or with alpha dropped (the others; [`AlphaRule::Premultiplied`]
/// only differs inside a resize, see [`ClipPreprocess::prepare`]).
pub fn flatten_alpha(img: &Decoded, rule: AlphaRule) -> RgbImage {
    match (img, rule) {
        (Decoded::Rgb(rgb), _) => rgb.clone(),
        (Decoded::Rgba { image, .. }, AlphaRule::OverWhite) => over_white(image),
        (Decoded::Rgba { image, .. }, _) => drop_alpha(image),
    }
}

/// Pillow's `(a * b + 128) / 255` in integers (`MULDIV255`).
fn muldiv255(a: u32, b: u32) -> u8 {
    let t = a * b + 128;
    (((t >> 8) + t) >> 8) as u8
}

/// Pillow's `RGBA` → `RGBa` conversion (`rgbA2rgba`): colour times alpha / 255, rounded.
fn premultiply(px: &mut [u8]) {
    let a = u32::from(px[3]);
    for c in &mut px[..3] {
        *c = muldiv255(u32::from(*c), a);
    }
}

/// Pillow's `RGBa` → `RGBA` conversion (`rgba2rgbA`), alpha then dropped: colour × 255 / alpha,
/// truncated and clipped; kept as is where alpha is 0 or 255.
fn unpremultiply_rgb(px: &[u8]) -> [u8; 3] {
    let a = u32::from(px[3]);
    let un = |c: u8| if a == 0 || a == 255 { c } else { (255 * u32::from(c) / a).min(255) as u8 };
    [un(px[0]), un(px[1]), un(px[2])]
}

/// `convert("RGB")`: alpha dropped.
fn drop_alpha(img: &RgbaImage) -> RgbImage {
    let raw = img.as_raw().chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]]).collect();
    RgbImage::from_raw(img.width(), img.height(), raw).expect("buffer size matches")
}

/// `Image.alpha_composite(white, img).convert("RGB")` as Pillow computes it (`AlphaComposite.c`,
/// 7 extra bits of precision, divisions by 255 rounded): over an opaque background the
/// source's weight is exactly `alpha * 128 / (255 * 128)`.
fn over_white(img: &RgbaImage) -> RgbImage {
    const PRECISION_BITS: u32 = 7;
    let shift_div255 = |x: u32| ((x >> 8) + x) >> 8;
    let raw = img
        .as_raw()
        .chunks_exact(4)
        .flat_map(|p| {
            let a = u32::from(p[3]);
            if a == 0 {
                return [255; 3];
            }
            // blend = 255 * (255 - a); outa255 = a * 255 + blend = 255 * 255.
            let coef1 = a * 255 * 255 * (1 << PRECISION_BITS) / (255 * 255);
            let coef2 = 255 * (1 << PRECISION_BITS) - coef1;
            let mix = |c: u8| {
                let t = u32::from(c) * coef1 + 255 * coef2;
                (shift_div255(t + (0x80 << PRECISION_BITS)) >> PRECISION_BITS) as u8
            };
            [mix(p[0]), mix(p[1]), mix(p[2])]
        })
        .collect();
    RgbImage::from_raw(img.width(), img.height(), raw).expect("buffer size matches")
}

/// Packed RGB8 (HWC) → three normalised planes (CHW).
fn normalize_planar(lut: &[[f32; 256]; 3], rgb: &[u8], out: &mut [f32]) {
    let n = rgb.len() / 3;
    let (r, rest) = out.split_at_mut(n);
    let (g, b) = rest.split_at_mut(n);
    for (((px, r), g), b) in rgb.chunks_exact(3).zip(r).zip(g).zip(b) {
        *r = lut[0][px[0] as usize];
        *g = lut[1][px[1] as usize];
        *b = lut[2][px[2] as usize];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torchvision_rounding_is_half_even() {
        let t = CropRounding::Torchvision;
        // (len - crop) / 2 = 4.5 -> 4, 9.5 -> 10, 32.5 -> 32, 81.5 -> 82
        assert_eq!(t.offset(25, 16), 4);
        assert_eq!(t.offset(51, 32), 10);
        assert_eq!(t.offset(193, 128), 32);
        assert_eq!(t.offset(387, 224), 82);
        assert_eq!(t.offset(224, 224), 0);
        assert_eq!(t.offset(20, 25), -2);
        let f = CropRounding::Floor;
        assert_eq!(f.offset(51, 32), 9);
        assert_eq!(f.offset(387, 224), 81);
        assert_eq!(f.offset(20, 25), -3);
    }

    #[test]
    fn shortest_side() {
        assert_eq!(shortest_side_size(301, 199, 224), (338, 224));
        assert_eq!(shortest_side_size(23, 37, 32), (32, 51));
        assert_eq!(shortest_side_size(512, 512, 224), (224, 224));
    }
}
