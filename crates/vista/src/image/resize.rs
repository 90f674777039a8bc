//! Pillow-equivalent resampling of 8-bit RGB images (`Image.resize` with `BICUBIC` /
//! `BILINEAR`, i.e. Pillow's antialiased convolution resampling), on `fast_image_resize`.
//!
//! Pillow resamples in two separable passes, each rounding to uint8: horizontal first, except
//! (since Pillow 13) when the height shrinks by more than twice as many pixels as the width,
//! then vertical first. `fast_image_resize` implements the same convolution (same kernels,
//! same support scaling, same coefficient normalisation) but, for u8 pixels, always runs the
//! vertical pass first, so its intermediate rounding differs (up to ±17 levels measured on
//! hard edges). We therefore call it once per axis, in Pillow's order, which restores Pillow's
//! uint8 intermediate. What remains is `fast_image_resize`'s 16-bit fixed-point coefficients
//! (Pillow uses 22-bit ones; the precision also depends on the largest weight among the
//! computed pixels): a sum landing within ~1e-3 of a .5 boundary may round the other way, so
//! about 0.35 % of values are off by one, none by more (see `tests/preprocess_parity.rs`).
//! For the same reason [`resize_region`] may differ by one, rarely, from cropping
//! [`resize_exact`]'s output.

use ::image::RgbImage;
use fast_image_resize as fr;

use crate::{Error, Result};

/// Resampling filter, as Pillow defines it (antialiased when downscaling: the kernel is
/// stretched by the scale factor).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Filter {
    /// Pillow `Image.BICUBIC`: cubic convolution with a = -0.5 (Catmull-Rom), support 2.
    /// The CLIP / DINO reference resize.
    #[default]
    Bicubic,
    /// Pillow `Image.BILINEAR`: triangle kernel, support 1.
    Bilinear,
}

impl Filter {
    fn fir(self) -> fr::FilterType {
        match self {
            // fast_image_resize's CatmullRom is Pillow's bicubic_filter (a = -0.5) verbatim.
            Filter::Bicubic => fr::FilterType::CatmullRom,
            Filter::Bilinear => fr::FilterType::Bilinear,
        }
    }

    /// Kernel radius in source pixels at scale 1.
    fn support(self) -> f64 {
        match self {
            Filter::Bicubic => 2.0,
            Filter::Bilinear => 1.0,
        }
    }
}

/// A rectangle of output pixels: `x..x + width` × `y..y + height`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    /// Left edge.
    pub x: u32,
    /// Top edge.
    pub y: u32,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
}

/// Output size when the shortest side is resized to `size` and the aspect ratio kept, as
/// torchvision's `Resize(size)` (an int) computes it: the long side is
/// `int(size * long / short)` (truncated). Returns `(width, height)`.
pub fn shortest_side_size(width: u32, height: u32, size: u32) -> (u32, u32) {
    let (short, long) = if width <= height { (width, height) } else { (height, width) };
    if short == 0 {
        return (0, 0);
    }
    // size * long is exact in f64 (< 2^53) and the division correctly rounded, as Python's
    // int / int true division is.
    let new_long = (f64::from(size) * f64::from(long) / f64::from(short)) as u32;
    if width <= height {
        (size, new_long)
    } else {
        (new_long, size)
    }
}

/// Output size when the longest side is resized to `size`, as Segment Anything's
/// `ResizeLongestSide.get_preprocess_shape` computes it: `scale = size / max(h, w)`,
/// each side `int(side * scale + 0.5)`. Returns `(width, height)`.
pub fn longest_side_size(width: u32, height: u32, size: u32) -> (u32, u32) {
    let long = width.max(height);
    if long == 0 {
        return (0, 0);
    }
    let scale = f64::from(size) / f64::from(long);
    let w = (f64::from(width) * scale + 0.5) as u32;
    let h = (f64::from(height) * scale + 0.5) as u32;
    (w, h)
}

/// Resizes `img` to exactly `width` × `height`, as Pillow's `img.resize((width, height),
/// filter)` does (see the module docs for the agreement).
pub fn resize_exact(img: &RgbImage, width: u32, height: u32, filter: Filter) -> Result<RgbImage> {
    resize_region(img, width, height, Region { x: 0, y: 0, width, height }, filter)
}

/// The `region` of `resize_exact(img, full_width, full_height, filter)`, computing only the
/// pixels in it (a resize followed by a crop, at the cost of the crop).
pub fn resize_region(
    img: &RgbImage,
    full_width: u32,
    full_height: u32,
    region: Region,
    filter: Filter,
) -> Result<RgbImage> {
    let (w, h) = img.dimensions();
    if w == 0 || h == 0 {
        return Err(Error::arg("img", format!("cannot resize an empty image ({w}x{h})")));
    }
    if full_width == 0 || full_height == 0 {
        return Err(Error::arg("size", format!("cannot resize to {full_width}x{full_height}")));
    }
    let fits = |start: u32, len: u32, full: u32| len > 0 && u64::from(start) + u64::from(len) <= u64::from(full);
    if !fits(region.x, region.width, full_width) || !fits(region.y, region.height, full_height) {
        return Err(Error::arg(
            "region",
            format!("{region:?} is empty or outside the {full_width}x{full_height} output"),
        ));
    }
    let buf = resize_region_raw(img.as_raw(), 3, w, h, full_width, full_height, region, filter);
    Ok(RgbImage::from_raw(region.width, region.height, buf).expect("buffer size matches"))
}

/// `num * a / b` in f64: exact product (all < 2^53), one correctly rounded division, so that
/// `a == b` gives exactly `num`.
fn ratio(num: u32, a: u32, b: u32) -> f64 {
    f64::from(num) * f64::from(a) / f64::from(b)
}

/// Pillow's choice of pass order (Pillow >= 13, python-pillow/Pillow#9549): vertical first when
/// the height shrinks by more than twice as many pixels as the width, horizontal first
/// otherwise (always, before Pillow 13). Established against Pillow 13.0 on 13k size pairs.
fn pillow_vertical_first(sw: u32, sh: u32, out_w: u32, out_h: u32) -> bool {
    out_h < sh && i64::from(sh) - i64::from(out_h) > 2 * (i64::from(sw) - i64::from(out_w))
}

/// The source pixels `[first, last)` along one axis that the second pass's taps reach, for
/// output positions whose source box is `start..end` (source size `len`, output size `out`,
/// scale `len / out`); one pixel of margin each side against float noise, clamped to the image.
fn band(start: f64, end: f64, len: u32, out: u32, filter: Filter) -> (u32, u32) {
    let scale = f64::from(len) / f64::from(out);
    let radius = filter.support() * scale.max(1.0);
    let first_center = start + 0.5 * scale;
    let last_center = end - 0.5 * scale;
    let first = ((first_center - radius).floor() - 1.0).max(0.0) as u32;
    let last = (((last_center + radius).ceil() + 1.0) as u32).min(len);
    (first, last)
}

fn options(filter: Filter, left: f64, top: f64, width: f64, height: f64) -> fr::ResizeOptions {
    // Four channels are resampled alike, as Pillow resamples an `RGBa` image (the caller
    // premultiplies); fast_image_resize would otherwise premultiply on its own.
    fr::ResizeOptions::new()
        .resize_alg(fr::ResizeAlg::Convolution(filter.fir()))
        .crop(left, top, width, height)
        .use_alpha(false)
}

/// The worker behind [`resize_region`]; arguments already validated. `src` is packed 8-bit
/// pixels of `channels` (3 or 4) channels, `sw` × `sh`; returns the packed region. Every channel
/// is resampled independently.
#[allow(clippy::too_many_arguments)]
pub(crate) fn resize_region_raw(
    src: &[u8],
    channels: usize,
    sw: u32,
    sh: u32,
    full_w: u32,
    full_h: u32,
    region: Region,
    filter: Filter,
) -> Vec<u8> {
    let pt = if channels == 4 { fr::PixelType::U8x4 } else { fr::PixelType::U8x3 };
    let ch = if channels == 4 { 4 } else { 3 };
    let Region { x, y, width: ow, height: oh } = region;
    let mut out = vec![0u8; ow as usize * oh as usize * ch];
    let src_view = fr::images::ImageRef::new(sw, sh, src, pt).expect("source buffer");

    // Source box of the region along each axis (Pillow: center = (i + 0.5) * in / out).
    let (left, right) = (ratio(sw, x, full_w), ratio(sw, x + ow, full_w));
    let (top, bottom) = (ratio(sh, y, full_h), ratio(sh, y + oh, full_h));
    // As Pillow: a pass runs only when that axis changes size.
    let need_h = sw != full_w;
    let need_v = sh != full_h;
    let mut resizer = fr::Resizer::new();
    let resize_err = |e: fr::ResizeError| -> ! { panic!("internal error in resize_region: {e}") };

    match (need_h, need_v) {
        (false, false) => {
            // Pure crop.
            let row = sw as usize * ch;
            for (r, dst) in out.chunks_exact_mut(ow as usize * ch).enumerate() {
                let start = (y as usize + r) * row + x as usize * ch;
                dst.copy_from_slice(&src[start..start + ow as usize * ch]);
            }
        }
        (true, false) => {
            // Horizontal only; rows y..y+oh of the source.
            let mut dst = fr::images::Image::from_slice_u8(ow, oh, &mut out, pt).expect("dst");
            let opts = options(filter, left, f64::from(y), right - left, f64::from(oh));
            resizer.resize(&src_view, &mut dst, &opts).unwrap_or_else(|e| resize_err(e));
        }
        (false, true) => {
            // Vertical only; columns x..x+ow of the source.
            let mut dst = fr::images::Image::from_slice_u8(ow, oh, &mut out, pt).expect("dst");
            let opts = options(filter, f64::from(x), top, f64::from(ow), bottom - top);
            resizer.resize(&src_view, &mut dst, &opts).unwrap_or_else(|e| resize_err(e));
        }
        (true, true) if pillow_vertical_first(sw, sh, full_w, full_h) => {
            // Pass 1, vertical, over the band of source columns the horizontal taps reach.
            let (band_left, band_right) = band(left, right, sw, full_w, filter);
            let band_w = band_right - band_left;
            let mut tmp = vec![0u8; band_w as usize * oh as usize * ch];
            {
                let mut dst = fr::images::Image::from_slice_u8(band_w, oh, &mut tmp, pt).expect("tmp");
                let opts = options(filter, f64::from(band_left), top, f64::from(band_w), bottom - top);
                resizer.resize(&src_view, &mut dst, &opts).unwrap_or_else(|e| resize_err(e));
            }
            // Pass 2, horizontal.
            let tmp_view = fr::images::ImageRef::new(band_w, oh, &tmp, pt).expect("tmp");
            let mut dst = fr::images::Image::from_slice_u8(ow, oh, &mut out, pt).expect("dst");
            let left_in_band = left - f64::from(band_left);
            let width = (right - left).min(f64::from(band_w) - left_in_band);
            let opts = options(filter, left_in_band, 0.0, width, f64::from(oh));
            resizer.resize(&tmp_view, &mut dst, &opts).unwrap_or_else(|e| resize_err(e));
        }
        (true, true) => {
            // Pass 1, horizontal, over the band of source rows the vertical taps reach
            // (Pillow restricts its first pass the same way), rounded to u8 like Pillow's.
            let (band_top, band_bottom) = band(top, bottom, sh, full_h, filter);
            let band_h = band_bottom - band_top;
            let mut tmp = vec![0u8; ow as usize * band_h as usize * ch];
            {
                let mut dst = fr::images::Image::from_slice_u8(ow, band_h, &mut tmp, pt).expect("tmp");
                let opts = options(filter, left, f64::from(band_top), right - left, f64::from(band_h));
                resizer.resize(&src_view, &mut dst, &opts).unwrap_or_else(|e| resize_err(e));
            }
            // Pass 2, vertical.
            let tmp_view = fr::images::ImageRef::new(ow, band_h, &tmp, pt).expect("tmp");
            let mut dst = fr::images::Image::from_slice_u8(ow, oh, &mut out, pt).expect("dst");
            let top_in_band = top - f64::from(band_top);
            let height = (bottom - top).min(f64::from(band_h) - top_in_band);
            let opts = options(filter, 0.0, top_in_band, f64::from(ow), height);
            resizer.resize(&tmp_view, &mut dst, &opts).unwrap_or_else(|e| resize_err(e));
        }
    }
    out
}
