//! `RandomResizedCrop.get_params` of torchvision, draw for draw: the crop box of a view.

use super::{below, uniform, RngCore};

/// A crop rectangle in source pixels, `(i, j, h, w)` in torchvision's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CropBox {
    /// Top edge (`i`).
    pub top: u32,
    /// Left edge (`j`).
    pub left: u32,
    /// Height (`h`).
    pub height: u32,
    /// Width (`w`).
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
