//! Pictures for people: masks, prompt points and boxes drawn over an image ([`overlay`]), in
//! well-separated colours ([`mask_color`]).

use ::image::{Rgb, RgbImage};

use super::mask::Mask;

/// Mask colours of [`overlay`]: eight well-separated colours (the Tableau palette without its
/// green and red, which mark positive and negative points), then hues a golden angle apart with
/// saturation and value cycling, so that the first 24 differ by at least 50 in summed RGB.
pub fn mask_color(index: usize) -> [u8; 3] {
    const PALETTE: [[u8; 3]; 8] = [
        [31, 119, 180],  // blue
        [255, 127, 14],  // orange
        [148, 103, 189], // purple
        [23, 190, 207],  // cyan
        [227, 119, 194], // pink
        [188, 189, 34],  // olive
        [140, 86, 75],   // brown
        [127, 127, 127], // grey
    ];
    if let Some(c) = PALETTE.get(index) {
        return *c;
    }
    let k = index - PALETTE.len();
    let hue = (k as f64 * 137.507_764 + 200.0) % 360.0;
    hsv_to_rgb(hue, [0.8, 0.5][k % 2], [0.95, 0.7, 0.85][k % 3])
}

fn hsv_to_rgb(hue: f64, s: f64, v: f64) -> [u8; 3] {
    let c = v * s;
    let hp = hue / 60.0;
    let x = c * (1.0 - (hp % 2.0 - 1.0).abs());
    let (r, g, b) = match hp as u32 {
        0 => (c, x, 0.0),
        1 => (x, c, 0.0),
        2 => (0.0, c, x),
        3 => (0.0, x, c),
        4 => (x, 0.0, c),
        _ => (c, 0.0, x),
    };
    let m = v - c;
    [r, g, b].map(|u| ((u + m) * 255.0).round() as u8)
}

const POSITIVE_POINT: Rgb<u8> = Rgb([30, 200, 60]);
const NEGATIVE_POINT: Rgb<u8> = Rgb([230, 30, 30]);
const RIM: Rgb<u8> = Rgb([255, 255, 255]);
const BOX: Rgb<u8> = Rgb([255, 215, 0]);

/// Draws SAM results over `image` for people to look at:
///
/// * each mask blended at 50 % in [`mask_color`]`(i)`, with an opaque outline of the same
///   colour darkened (1 px, 2 px on images of 512 px or more); outlines go over all fills. A
///   mask of another size than the image (SAM's 256×256 low-res logits) is scaled to it,
///   nearest neighbour;
/// * prompt boxes `[x0, y0, x1, y1]` as 2-px gold rectangles;
/// * prompt points `(x, y, positive)` on top: filled circles, green for positive and red for
///   negative, with a white rim, radius 1/80 of the shorter side (≥ 5 px).
///
/// Point and box coordinates are in image pixels, pixel `(x, y)` centred on `(x, y)` as SAM's
/// prompts are; anything off the image is clipped, non-finite coordinates are skipped.
pub fn overlay(image: &RgbImage, masks: &[Mask], points: &[(f32, f32, bool)], boxes: &[[f32; 4]]) -> RgbImage {
    let mut out = image.clone();
    let (iw, ih) = (image.width() as usize, image.height() as usize);
    if iw == 0 || ih == 0 {
        return out;
    }
    let thickness = if iw.max(ih) >= 512 { 2 } else { 1 };
    let mut outlines = Vec::with_capacity(masks.len());
    for (i, mask) in masks.iter().enumerate() {
        let (mw, mh) = (mask.width as usize, mask.height as usize);
        if mw == 0 || mh == 0 {
            continue;
        }
        let scaled: Vec<bool> = if (mw, mh) == (iw, ih) {
            mask.data.clone()
        } else {
            let cols: Vec<usize> = (0..iw).map(|x| x * mw / iw).collect();
            (0..ih).flat_map(|y| cols.iter().map(move |&sx| (y * mh / ih) * mw + sx)).map(|j| mask.data[j]).collect()
        };
        let color = mask_color(i);
        for (pixel, _) in out.pixels_mut().zip(&scaled).filter(|(_, &v)| v) {
            for (channel, &c) in pixel.0.iter_mut().zip(&color) {
                *channel = (u16::from(*channel) + u16::from(c)).div_ceil(2) as u8;
            }
        }
        let dark = Rgb(color.map(|c| (f32::from(c) * 0.55).round() as u8));
        outlines.push((outline(&scaled, iw, ih, thickness), dark));
    }
    for (edge, color) in outlines {
        for (pixel, _) in out.pixels_mut().zip(&edge).filter(|(_, &v)| v) {
            *pixel = color;
        }
    }
    for b in boxes {
        draw_box(&mut out, b, 2);
    }
    let radius = (iw.min(ih) as f32 / 80.0).max(5.0);
    let rim = (radius / 4.0).max(1.5);
    for &(x, y, positive) in points {
        if x.is_finite() && y.is_finite() {
            fill_disk(&mut out, x, y, radius + rim, RIM);
            fill_disk(&mut out, x, y, radius, if positive { POSITIVE_POINT } else { NEGATIVE_POINT });
        }
    }
    out
}

/// Foreground pixels within `thickness` 4-neighbour steps of the background (the image border
/// does not count as background).
fn outline(fg: &[bool], w: usize, h: usize, thickness: usize) -> Vec<bool> {
    let mut core = fg.to_vec();
    for _ in 0..thickness {
        let prev = core.clone();
        for y in 0..h {
            for x in 0..w {
                let i = y * w + x;
                if prev[i]
                    && ((x > 0 && !prev[i - 1])
                        || (x + 1 < w && !prev[i + 1])
                        || (y > 0 && !prev[i - w])
                        || (y + 1 < h && !prev[i + w]))
                {
                    core[i] = false;
                }
            }
        }
    }
    fg.iter().zip(&core).map(|(&f, &c)| f && !c).collect()
}

fn fill_disk(img: &mut RgbImage, cx: f32, cy: f32, r: f32, color: Rgb<u8>) {
    let (w, h) = (img.width() as f32, img.height() as f32);
    let (x0, x1) = ((cx - r).floor().max(0.0), (cx + r).ceil().min(w - 1.0));
    let (y0, y1) = ((cy - r).floor().max(0.0), (cy + r).ceil().min(h - 1.0));
    if x0 > x1 || y0 > y1 {
        return;
    }
    for y in y0 as u32..=y1 as u32 {
        for x in x0 as u32..=x1 as u32 {
            if (x as f32 - cx).powi(2) + (y as f32 - cy).powi(2) <= r * r {
                img.put_pixel(x, y, color);
            }
        }
    }
}

fn draw_box(img: &mut RgbImage, b: &[f32; 4], thickness: i64) {
    if b.iter().any(|v| !v.is_finite()) {
        return;
    }
    let (w, h) = (i64::from(img.width()), i64::from(img.height()));
    let (x0, x1) = (b[0].min(b[2]).round() as i64, b[0].max(b[2]).round() as i64);
    let (y0, y1) = (b[1].min(b[3]).round() as i64, b[1].max(b[3]).round() as i64);
    for y in y0.max(0)..=y1.min(h - 1) {
        for x in x0.max(0)..=x1.min(w - 1) {
            let edge = x < x0 + thickness || x > x1 - thickness || y < y0 + thickness || y > y1 - thickness;
            if edge {
                img.put_pixel(x as u32, y as u32, BOX);
            }
        }
    }
}
