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
//! (`tests/suite/augment.rs`):
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

mod blur;
mod color;
mod crop;

pub use blur::{gaussian_blur, pillow_box_radius};
pub use color::{
    adjust_brightness, adjust_contrast, adjust_hue, adjust_saturation, contrast_mean, hflip, hsv_to_rgb, luma,
    rgb_to_hsv, solarize, to_grayscale, ColorJitter, JitterOp, JitterParams,
};
pub use crop::{central_crop_fallback, random_resized_crop_params, CropBox};

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
    /// `ColorJitter(brightness, contrast, saturation, hue)`.
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

    /// Checks the sizes, ranges and probabilities.
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
    /// The crop, in the source image's pixels.
    pub crop: CropBox,
    /// Mirror horizontally.
    pub flip: bool,
    /// `None`: the colour jitter was not applied (`RandomApply`).
    pub jitter: Option<JitterParams>,
    /// Convert to grayscale (`L` on all three channels).
    pub grayscale: bool,
    /// `Some(radius)`: Gaussian blur with that radius.
    pub blur_radius: Option<f32>,
    /// Solarize (threshold 128).
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
    /// The first global view (`global_transfo1`).
    pub global1: ViewConfig,
    /// The second global view (`global_transfo2`).
    pub global2: ViewConfig,
    /// The local views (`local_transfo`).
    pub local: ViewConfig,
    /// Number of local views (`--local_crops_number`); 0 disables multi-crop.
    pub n_local: usize,
    /// Normalisation mean (RGB, in `[0, 1]` units).
    pub mean: [f32; 3],
    /// Normalisation standard deviation (RGB, in `[0, 1]` units).
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

    /// Checks every view and the normalisation.
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
    /// The pixels, row-major, three channels each.
    pub data: Vec<f32>,
    /// Height in pixels.
    pub height: usize,
    /// Width in pixels.
    pub width: usize,
}

/// The views of one image: 2 globals (the teacher's and the student's inputs) and the locals
/// (student only), in `DataAugmentationDINO.__call__`'s order.
#[derive(Debug, Clone, PartialEq)]
pub struct Views {
    /// The two global views.
    pub globals: Vec<View>,
    /// The local views.
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
    /// The augmentation for `cfg`; errors if `cfg` does not validate.
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

    /// Returns the configuration.
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
