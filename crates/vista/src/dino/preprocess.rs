//! DINO preprocessing ([`DinoPreprocess`]): how an image becomes a DINO backbone's input.
//!
//! * [`Mode::Eval`]: DINO's evaluation transform (`eval_knn.py`, `eval_linear.py`):
//!   `Resize(256, BICUBIC) → CenterCrop(224) → ToTensor → Normalize(IMAGENET_MEAN,
//!   IMAGENET_STD)`, the sizes configurable. The crop is [`ClipPreprocess::resize_crop`] with
//!   torchvision's rounding (Pillow-equivalent within ±1 on < 1 % of the values, see
//!   [`crate::image`]).
//! * [`Mode::Whole`]: the whole image at a multiple of the patch size, for dense features and
//!   attention maps. The target size keeps the aspect ratio with the longest side at
//!   `max_side` (`None`: the image's own size), computed as [`longest_side_size`] does
//!   (`int(side · max_side / longest + 0.5)`; up- or down-scaling); then **each side is
//!   rounded down to a multiple of the patch size** (at least one patch), and the image is
//!   resized to exactly that with Pillow's bicubic ([`resize_exact`]) — the aspect ratio moves
//!   by less than one patch per side, nothing is cropped. A side already at its target is not
//!   resampled. [`DEFAULT_MAX_SIDE`] (448) is a multiple of 8, 14 and 16, so every released
//!   patch size gets its longest side at exactly 448 pixels.
//!
//! * [`Mode::Fixed`]: resize to exactly `width` × `height`, no crop (transformers'
//!   `ViTImageProcessor`, the processor of the DINO v1 checkpoints on the hub).
//!
//! Each checkpoint family follows its own reference ([`DinoPreprocess::from_hf_processor`]):
//! official `.pth` releases DINO's torchvision transform (torchvision's crop rounding, alpha
//! dropped as the `ImageFolder` loader's `convert("RGB")` does); transformers-layout checkpoints
//! their `preprocessor_config.json` as `AutoImageProcessor` reads it (size, crop, filter,
//! statistics; the floor centre crop of `transformers.image_transforms.center_crop`;
//! transparency composited onto white by `convert_to_rgb`).
//!
//! Pixels go to the model channels-last (`[B, H, W, 3]`) normalised as torchvision's
//! `ToTensor` + `Normalize` in f32.

use candle_core::{Device, Tensor};
use rayon::prelude::*;

use std::path::Path;

use crate::image::{
    flatten_alpha, longest_side_size, resize_exact, AlphaRule, ClipPreprocess, CropRounding, Decoded, Filter, RgbImage,
    IMAGENET_MEAN, IMAGENET_STD,
};
use crate::{Error, Result};

/// Longest side of [`Mode::Whole`] when none is given: a multiple of 8, 14 and 16.
pub const DEFAULT_MAX_SIDE: u32 = 448;

/// How an image becomes the model's input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Shortest side to `resize_shortest` (bicubic), then a `crop` × `crop` centre crop
    /// (torchvision's rounding); DINO: 256 / 224.
    Eval {
        /// Target of the shortest side.
        resize_shortest: u32,
        /// Side of the centre crop.
        crop: u32,
    },
    /// The whole image, longest side at `max_side` (`None`: as it is), each side rounded down
    /// to a multiple of the patch size (see the module docs).
    Whole {
        /// Longest side after resizing (`None`: the image's own size).
        max_side: Option<u32>,
    },
    /// Resized to exactly `width` × `height` (the aspect ratio not kept), nothing cropped.
    Fixed {
        /// Output width.
        width: u32,
        /// Output height.
        height: u32,
    },
}

/// DINO preprocessing: a [`Mode`], then `(v / 255 - mean) / std`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DinoPreprocess {
    /// How the image is resized and cropped.
    pub mode: Mode,
    /// Normalisation mean (RGB, in `[0, 1]` units).
    pub mean: [f32; 3],
    /// Normalisation standard deviation (RGB, in `[0, 1]` units).
    pub std: [f32; 3],
    /// Resampling filter of the resize (DINO: bicubic).
    pub filter: Filter,
    /// How [`Mode::Eval`]'s centre crop rounds an odd margin.
    pub crop: CropRounding,
    /// What happens to transparent pixels ([`flatten`](Self::flatten)).
    pub alpha: AlphaRule,
}

impl Default for DinoPreprocess {
    fn default() -> Self {
        Self::eval()
    }
}

impl DinoPreprocess {
    /// DINO's evaluation transform: resize 256, centre crop 224, ImageNet statistics.
    pub fn eval() -> Self {
        Self::eval_sized(256, 224)
    }

    /// The evaluation transform at other sizes.
    pub fn eval_sized(resize_shortest: u32, crop: u32) -> Self {
        Self {
            mode: Mode::Eval { resize_shortest, crop },
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
            filter: Filter::Bicubic,
            crop: CropRounding::Torchvision,
            alpha: AlphaRule::Drop,
        }
    }

    /// transformers' `BitImageProcessor` as the DINOv2 checkpoints configure it (shortest edge
    /// 256, bicubic, 224 crop with floor rounding, ImageNet statistics, transparency onto
    /// white): for a transformers-layout checkpoint without a `preprocessor_config.json`.
    pub fn hugging_face() -> Self {
        Self { crop: CropRounding::Floor, alpha: AlphaRule::OverWhite, ..Self::eval() }
    }

    /// A transformers `preprocessor_config.json` (`BitImageProcessor` with `size.shortest_edge`
    /// and `crop_size`, `ViTImageProcessor` with `size.height` / `size.width` or an int):
    /// sizes, `resample` (2 bilinear, 3 bicubic), `image_mean` / `image_std`. Settings vista
    /// cannot follow (another filter, no resize, a crop after a fixed resize, another rescale
    /// factor) are an error naming the file rather than a silent difference.
    pub fn from_hf_processor(path: &Path) -> Result<Self> {
        let v = crate::weights::hub::read_json_config(path)?;
        let bad = |message: String| Error::Config { path: path.to_path_buf(), message };
        let flag = |key: &str, default: bool| v.get(key).and_then(|b| b.as_bool()).unwrap_or(default);
        let dim = |x: &serde_json::Value, key: &str| -> Option<u32> { x.get(key)?.as_u64().map(|n| n as u32) };
        let triple = |key: &str, default: [f32; 3]| -> Result<[f32; 3]> {
            match v.get(key) {
                None | Some(serde_json::Value::Null) => Ok(default),
                Some(x) => {
                    let a: Vec<f32> = x
                        .as_array()
                        .map(|a| a.iter().filter_map(|n| n.as_f64()).map(|n| n as f32).collect())
                        .unwrap_or_default();
                    <[f32; 3]>::try_from(a).map_err(|_| bad(format!("`{key}` is not three numbers: {x}")))
                }
            }
        };
        let filter = match v.get("resample").and_then(|r| r.as_u64()).unwrap_or(3) {
            2 => Filter::Bilinear,
            3 => Filter::Bicubic,
            r => {
                return Err(bad(format!(
                    "resample = {r} (PIL filter) is not supported; vista has bilinear (2) and bicubic (3)"
                )))
            }
        };
        if let Some(f) = v.get("rescale_factor").and_then(|f| f.as_f64()) {
            if flag("do_rescale", true) && (f - 1.0 / 255.0).abs() > 1e-12 {
                return Err(bad(format!("rescale_factor = {f}; vista scales by 1/255")));
            }
        }
        if !flag("do_resize", true) {
            return Err(bad("do_resize = false (images of any size straight to the model) is not supported".into()));
        }
        let size = v.get("size").cloned().unwrap_or(serde_json::Value::Null);
        let crop = v.get("crop_size").cloned().unwrap_or(serde_json::Value::Null);
        let crop_side =
            dim(&crop, "height").zip(dim(&crop, "width")).or_else(|| crop.as_u64().map(|c| (c as u32, c as u32)));
        let do_crop = flag("do_center_crop", false);
        let mode = if let Some(short) = dim(&size, "shortest_edge") {
            match (do_crop, crop_side) {
                (true, Some((h, w))) if h == w => Mode::Eval { resize_shortest: short, crop: h },
                (true, other) => return Err(bad(format!("crop_size {other:?} is not a square crop"))),
                (false, _) => return Err(bad("a shortest-edge resize without a centre crop is not supported".into())),
            }
        } else {
            let (height, width) = match (dim(&size, "height"), dim(&size, "width"), size.as_u64()) {
                (Some(h), Some(w), _) => (h, w),
                (_, _, Some(s)) => (s as u32, s as u32),
                _ => {
                    return Err(bad(format!(
                        "size {size} is neither {{shortest_edge}}, {{height, width}} nor a number"
                    )))
                }
            };
            if do_crop && crop_side.is_some_and(|c| c != (height, width)) {
                return Err(bad(format!("a {crop_side:?} crop after a {height}x{width} resize is not supported")));
            }
            Mode::Fixed { width, height }
        };
        let (mean, std) = if flag("do_normalize", true) {
            (triple("image_mean", IMAGENET_MEAN)?, triple("image_std", IMAGENET_STD)?)
        } else {
            ([0.0; 3], [1.0; 3])
        };
        let p = Self { mode, mean, std, filter, crop: CropRounding::Floor, alpha: AlphaRule::OverWhite };
        p.validate().map_err(|e| bad(e.to_string()))?;
        Ok(p)
    }

    /// The RGB image `img` is to this preprocessing, transparency treated by
    /// [`alpha`](Self::alpha).
    pub fn flatten(&self, img: &Decoded) -> RgbImage {
        flatten_alpha(img, self.alpha)
    }

    /// The whole image, longest side at `max_side` (see [`Mode::Whole`]).
    pub fn whole(max_side: Option<u32>) -> Self {
        Self { mode: Mode::Whole { max_side }, ..Self::eval() }
    }

    /// The [`ClipPreprocess`] equal to [`Mode::Eval`] (`None` for [`Mode::Whole`]).
    pub fn clip_preprocess(&self) -> Option<ClipPreprocess> {
        match self.mode {
            Mode::Eval { resize_shortest, crop } => Some(ClipPreprocess {
                size: crop,
                resize_shortest,
                mean: self.mean,
                std: self.std,
                crop: self.crop,
                filter: self.filter,
                alpha: self.alpha,
            }),
            Mode::Whole { .. } | Mode::Fixed { .. } => None,
        }
    }

    /// Checks the sizes and the statistics.
    pub fn validate(&self) -> Result<()> {
        match self.mode {
            Mode::Eval { .. } => self.clip_preprocess().expect("eval").validate(),
            Mode::Whole { .. } | Mode::Fixed { .. } => {
                if matches!(
                    self.mode,
                    Mode::Whole { max_side: Some(0) } | Mode::Fixed { width: 0, .. } | Mode::Fixed { height: 0, .. }
                ) {
                    return Err(Error::arg("size", format!("{:?}: sizes must be positive", self.mode)));
                }
                if self.std.iter().any(|s| !s.is_finite() || *s == 0.0) || self.mean.iter().any(|m| !m.is_finite()) {
                    return Err(Error::arg(
                        "std",
                        format!("mean {:?} / std {:?} must be finite, std non-zero", self.mean, self.std),
                    ));
                }
                Ok(())
            }
        }
    }

    /// `(width, height)` of the model input for a `width` × `height` image and patch size
    /// `patch` (in [`Mode::Eval`] the crop; the model drops any remainder beyond a multiple of
    /// the patch size).
    pub fn input_size(&self, width: u32, height: u32, patch: usize) -> (u32, u32) {
        match self.mode {
            Mode::Eval { crop, .. } => (crop, crop),
            Mode::Fixed { width, height } => (width, height),
            Mode::Whole { max_side } => {
                let (w, h) = match max_side {
                    Some(m) => longest_side_size(width, height, m),
                    None => (width, height),
                };
                let p = patch.max(1) as u32;
                let round = |s: u32| (s / p).max(1) * p;
                (round(w), round(h))
            }
        }
    }

    /// The 8-bit image the model sees (before normalisation).
    pub fn prepare(&self, img: &RgbImage, patch: usize) -> Result<RgbImage> {
        let (w, h) = img.dimensions();
        if w == 0 || h == 0 {
            return Err(Error::arg("image", format!("the image is empty ({w}x{h})")));
        }
        match self.mode {
            Mode::Eval { .. } => Ok(self.clip_preprocess().expect("eval").resize_crop(img)),
            Mode::Whole { .. } | Mode::Fixed { .. } => {
                let (tw, th) = self.input_size(w, h, patch);
                if (tw, th) == (w, h) {
                    Ok(img.clone())
                } else {
                    resize_exact(img, tw, th, self.filter)
                }
            }
        }
    }

    /// Per channel, the 256 possible outputs `(v / 255 - mean) / std` in f32, in torchvision's
    /// order of operations.
    fn lut(&self) -> [[f32; 256]; 3] {
        let mut lut = [[0f32; 256]; 3];
        for (c, table) in lut.iter_mut().enumerate() {
            for (v, out) in table.iter_mut().enumerate() {
                *out = (v as f32 / 255.0 - self.mean[c]) / self.std[c];
            }
        }
        lut
    }

    /// Normalised channels-last values of `img` (`[H, W, 3]`, `out.len() == 3·W·H`).
    pub fn normalize_into(&self, img: &RgbImage, out: &mut [f32]) -> Result<()> {
        if out.len() != img.as_raw().len() {
            return Err(Error::arg("out", format!("{} values for a {:?} image", out.len(), img.dimensions())));
        }
        normalize_hwc(&self.lut(), img.as_raw(), out);
        Ok(())
    }

    /// Normalised channels-last pixels `[B, H, W, 3]` of prepared images, all of one size.
    pub fn pixels(&self, imgs: &[&RgbImage]) -> Result<Tensor> {
        let Some(first) = imgs.first() else {
            return Err(Error::arg("imgs", "no image"));
        };
        let (w, h) = first.dimensions();
        if let Some(i) = imgs.iter().position(|im| im.dimensions() != (w, h)) {
            return Err(Error::arg(
                "imgs",
                format!("image {i} is {:?}, image 0 {:?}: a batch needs one size", imgs[i].dimensions(), (w, h)),
            ));
        }
        let per = 3 * w as usize * h as usize;
        let lut = self.lut();
        let mut data = vec![0f32; imgs.len() * per];
        data.par_chunks_mut(per).zip(imgs.par_iter()).for_each(|(out, img)| normalize_hwc(&lut, img.as_raw(), out));
        Ok(Tensor::from_vec(data, (imgs.len(), h as usize, w as usize, 3), &Device::Cpu)?)
    }

    /// A stable description, for cache keys.
    pub fn describe(&self) -> String {
        let mode = match self.mode {
            Mode::Eval { resize_shortest, crop } => format!("eval:{resize_shortest}:{crop}"),
            Mode::Whole { max_side } => format!("whole:{}", max_side.map_or("native".to_string(), |m| m.to_string())),
            Mode::Fixed { width, height } => format!("fixed:{width}x{height}"),
        };
        let mut d = format!("{mode} mean={:?} std={:?} filter={:?}", self.mean, self.std, self.filter);
        // Appended only when not DINO's defaults, so that existing cache keys stay valid.
        if self.crop != CropRounding::Torchvision {
            d.push_str(&format!(" crop={:?}", self.crop));
        }
        if self.alpha != AlphaRule::Drop {
            d.push_str(&format!(" alpha={:?}", self.alpha));
        }
        d
    }
}

fn normalize_hwc(lut: &[[f32; 256]; 3], rgb: &[u8], out: &mut [f32]) {
    for (px, o) in rgb.chunks_exact(3).zip(out.chunks_exact_mut(3)) {
        o[0] = lut[0][px[0] as usize];
        o[1] = lut[1][px[1] as usize];
        o[2] = lut[2][px[2] as usize];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_rounds_each_side_down_to_the_patch() {
        let p = DinoPreprocess::whole(Some(448));
        assert_eq!(p.input_size(640, 480, 14), (448, 336));
        // 448 · 300 / 1000 = 134.4 -> 134 -> 126 (9 patches of 14)
        assert_eq!(p.input_size(1000, 300, 14), (448, 126));
        assert_eq!(p.input_size(28, 28, 14), (448, 448));
        assert_eq!(p.input_size(2000, 10, 16), (448, 16));
        let native = DinoPreprocess::whole(None);
        assert_eq!(native.input_size(301, 199, 16), (288, 192));
        assert_eq!(native.input_size(5, 5, 8), (8, 8));
        assert_eq!(DinoPreprocess::eval().input_size(640, 480, 14), (224, 224));
    }
}
