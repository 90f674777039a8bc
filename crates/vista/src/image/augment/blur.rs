//! Pillow's `GaussianBlur(radius)`: three passes of an extended box blur per axis, reproduced as
//! Pillow computes it (fractional box radius, 24-bit fixed-point weights, uint8 rounding after
//! each pass, edge pixels repeated).

use ::image::RgbImage;

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
