//! Pictures of a DINO model's last-block CLS attention ([`AttentionMaps`]): DINO's
//! `visualize_attention.py` threshold masks ([`threshold_attention`]), heat maps, and one
//! picture with the image and a panel per head ([`render_attention`]).

use crate::apps::segment::overlay::mask_color;
use crate::dino::pipeline::AttentionMaps;
use crate::image::{Rgb, RgbImage};
use crate::{Error, Result};

/// [`threshold_attention`] of every head of `maps`.
pub fn threshold_masks(maps: &AttentionMaps, threshold: f32) -> Result<Vec<Vec<bool>>> {
    check_threshold(threshold)?;
    Ok((0..maps.heads).map(|i| threshold_attention(maps.head(i), threshold)).collect())
}

fn check_threshold(threshold: f32) -> Result<()> {
    if !(threshold > 0.0 && threshold <= 1.0) {
        return Err(Error::arg("threshold", format!("{threshold} is not in (0, 1]")));
    }
    Ok(())
}

/// DINO's `visualize_attention.py --threshold`: the patches holding the top `threshold` fraction
/// of a head's attention mass. Values sorted ascending, divided by their sum, cumulated; a patch
/// is kept where the cumulative value is `> 1 - threshold`. The kept mass is therefore at least
/// `threshold` of the total, and less than it without the smallest kept patch. Equal values
/// sort by position (the reference's `torch.sort` leaves their order unspecified); sums in f64.
pub fn threshold_attention(map: &[f32], threshold: f32) -> Vec<bool> {
    let mut order: Vec<usize> = (0..map.len()).collect();
    order.sort_by(|&a, &b| map[a].total_cmp(&map[b]).then(a.cmp(&b)));
    let total: f64 = map.iter().map(|&v| f64::from(v)).sum();
    let mut keep = vec![false; map.len()];
    if total <= 0.0 || !total.is_finite() {
        return keep;
    }
    let cut = 1.0 - f64::from(threshold);
    let mut cum = 0.0;
    for i in order {
        cum += f64::from(map[i]) / total;
        keep[i] = cum > cut;
    }
    keep
}

/// How a patch map is scaled to the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Upsample {
    /// Each patch a flat block (DINO's `interpolate(..., mode="nearest")`).
    #[default]
    Nearest,
    /// Bilinear between patch centres (`align_corners=False`).
    Bilinear,
}

/// Settings of [`render_attention`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RenderOptions {
    /// Draw [`threshold_attention`] masks at this threshold instead of heat maps.
    pub threshold: Option<f32>,
    /// How patch maps are scaled to the image.
    pub upsample: Upsample,
    /// Panels per row (default: `ceil(sqrt(heads + 1))`).
    pub columns: Option<usize>,
    /// White pixels between panels.
    pub gap: u32,
    /// Opacity of the heat map over the image.
    pub alpha: f32,
}

impl Default for RenderOptions {
    fn default() -> Self {
        Self { threshold: None, upsample: Upsample::Nearest, columns: None, gap: 4, alpha: 0.6 }
    }
}

/// `(columns, rows)` of a grid of `panels` panels.
pub fn panel_grid(panels: usize, columns: Option<usize>) -> (usize, usize) {
    let cols = columns.unwrap_or_else(|| (panels as f64).sqrt().ceil() as usize).clamp(1, panels.max(1));
    (cols, panels.div_ceil(cols))
}

/// A `[h, w]` map at `width` × `height` pixels.
pub fn upsample_map(map: &[f32], grid: (usize, usize), width: u32, height: u32, mode: Upsample) -> Vec<f32> {
    let (gh, gw) = grid;
    let (w, h) = (width as usize, height as usize);
    let mut out = Vec::with_capacity(w * h);
    if gh == 0 || gw == 0 {
        out.resize(w * h, 0.0);
        return out;
    }
    match mode {
        Upsample::Nearest => {
            let cols: Vec<usize> = (0..w).map(|x| (x * gw / w).min(gw - 1)).collect();
            for y in 0..h {
                let row = &map[(y * gh / h).min(gh - 1) * gw..][..gw];
                out.extend(cols.iter().map(|&c| row[c]));
            }
        }
        Upsample::Bilinear => {
            // align_corners=False: source = (dst + 0.5) · in / out - 0.5, clamped to the edges.
            let axis = |n: usize, len: usize| -> Vec<(usize, usize, f32)> {
                (0..n)
                    .map(|d| {
                        let s = ((d as f64 + 0.5) * len as f64 / n as f64 - 0.5).max(0.0);
                        let i0 = (s.floor() as usize).min(len - 1);
                        let i1 = (i0 + 1).min(len - 1);
                        (i0, i1, (s - i0 as f64).clamp(0.0, 1.0) as f32)
                    })
                    .collect()
            };
            let xs = axis(w, gw);
            for &(y0, y1, fy) in &axis(h, gh) {
                for &(x0, x1, fx) in &xs {
                    let top = map[y0 * gw + x0] * (1.0 - fx) + map[y0 * gw + x1] * fx;
                    let bottom = map[y1 * gw + x0] * (1.0 - fx) + map[y1 * gw + x1] * fx;
                    out.push(top * (1.0 - fy) + bottom * fy);
                }
            }
        }
    }
    out
}

/// Matplotlib's viridis at nine evenly spaced stops.
const VIRIDIS: [[f32; 3]; 9] = [
    [68.0, 1.0, 84.0],
    [71.0, 44.0, 122.0],
    [59.0, 81.0, 139.0],
    [44.0, 113.0, 142.0],
    [33.0, 144.0, 141.0],
    [39.0, 173.0, 129.0],
    [92.0, 200.0, 99.0],
    [170.0, 220.0, 50.0],
    [253.0, 231.0, 37.0],
];

/// The viridis colour of `t` in [0, 1].
pub fn heat_color(t: f32) -> [f32; 3] {
    let t = if t.is_finite() { t.clamp(0.0, 1.0) } else { 0.0 } * (VIRIDIS.len() - 1) as f32;
    let i = (t.floor() as usize).min(VIRIDIS.len() - 2);
    let f = t - i as f32;
    let (a, b) = (VIRIDIS[i], VIRIDIS[i + 1]);
    [0, 1, 2].map(|c| a[c] + (b[c] - a[c]) * f)
}

/// A picture of attention maps: panels as large as the preprocessed image in a grid
/// ([`panel_grid`], `gap` white pixels between them, row by row): the image first, then one
/// panel per head. A head's panel is, without a threshold, its map scaled to `[0, 1]` (its own
/// minimum and maximum), upsampled and drawn in viridis over the image at opacity `alpha`; with
/// a threshold, the image with the head's [`threshold_attention`] mask blended at 50 % in
/// [`mask_color`]`(head)` and outlined in that colour darkened. Unused cells stay white.
pub fn render_attention(maps: &AttentionMaps, options: &RenderOptions) -> Result<RgbImage> {
    if let Some(t) = options.threshold {
        check_threshold(t)?;
    }
    if !(0.0..=1.0).contains(&options.alpha) {
        return Err(Error::arg("alpha", format!("{} is not in [0, 1]", options.alpha)));
    }
    let (pw, ph) = maps.image.dimensions();
    let panels = maps.heads + 1;
    let (cols, rows) = panel_grid(panels, options.columns);
    let gap = options.gap;
    let width = cols as u32 * pw + (cols as u32 - 1) * gap;
    let height = rows as u32 * ph + (rows as u32 - 1) * gap;
    let mut canvas = RgbImage::from_pixel(width, height, Rgb([255, 255, 255]));
    let masks = match options.threshold {
        Some(t) => Some(threshold_masks(maps, t)?),
        None => None,
    };
    for panel in 0..panels {
        let img = if panel == 0 {
            maps.image.clone()
        } else {
            let head = panel - 1;
            match &masks {
                Some(m) => mask_panel(maps, &m[head], head, options.upsample),
                None => heat_panel(maps, head, options),
            }
        };
        let (x0, y0) = ((panel % cols) as u32 * (pw + gap), (panel / cols) as u32 * (ph + gap));
        for (x, y, p) in img.enumerate_pixels() {
            canvas.put_pixel(x0 + x, y0 + y, *p);
        }
    }
    Ok(canvas)
}

fn heat_panel(maps: &AttentionMaps, head: usize, options: &RenderOptions) -> RgbImage {
    let map = maps.head(head);
    let (lo, hi) = map.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let span = hi - lo;
    let scaled: Vec<f32> = map.iter().map(|&v| if span > 0.0 { (v - lo) / span } else { 0.0 }).collect();
    let (w, h) = maps.image.dimensions();
    let up = upsample_map(&scaled, maps.grid, w, h, options.upsample);
    let a = options.alpha;
    let mut out = maps.image.clone();
    for (p, &t) in out.pixels_mut().zip(&up) {
        let c = heat_color(t);
        for (ch, heat) in p.0.iter_mut().zip(c) {
            *ch = (f32::from(*ch) * (1.0 - a) + heat * a).round().clamp(0.0, 255.0) as u8;
        }
    }
    out
}

fn mask_panel(maps: &AttentionMaps, mask: &[bool], head: usize, upsample: Upsample) -> RgbImage {
    let (w, h) = maps.image.dimensions();
    let as_f32: Vec<f32> = mask.iter().map(|&m| if m { 1.0 } else { 0.0 }).collect();
    let up: Vec<bool> = upsample_map(&as_f32, maps.grid, w, h, upsample).into_iter().map(|v| v >= 0.5).collect();
    let color = mask_color(head);
    let dark = color.map(|c| (f32::from(c) * 0.55).round() as u8);
    let (wu, hu) = (w as usize, h as usize);
    let mut out = maps.image.clone();
    for (i, p) in out.pixels_mut().enumerate() {
        if !up[i] {
            continue;
        }
        let (x, y) = (i % wu, i / wu);
        let edge = (x > 0 && !up[i - 1])
            || (x + 1 < wu && !up[i + 1])
            || (y > 0 && !up[i - wu])
            || (y + 1 < hu && !up[i + wu]);
        if edge {
            p.0 = dark;
        } else {
            for (ch, &c) in p.0.iter_mut().zip(&color) {
                *ch = (u16::from(*ch) + u16::from(c)).div_ceil(2) as u8;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold_keeps_the_top_mass() {
        let map = [0.1, 0.4, 0.05, 0.3, 0.15];
        // sorted: .05 .1 .15 .3 .4, cumulative .05 .15 .3 .6 1.0; > 0.4 keeps .3 and .4
        assert_eq!(threshold_attention(&map, 0.6), vec![false, true, false, true, false]);
        assert_eq!(threshold_attention(&map, 1.0), vec![true; 5]);
        assert_eq!(threshold_attention(&map, 0.3), vec![false, true, false, false, false]);
    }

    #[test]
    fn panel_grid_is_near_square() {
        assert_eq!(panel_grid(5, None), (3, 2));
        assert_eq!(panel_grid(7, None), (3, 3));
        assert_eq!(panel_grid(13, None), (4, 4));
        assert_eq!(panel_grid(7, Some(7)), (7, 1));
        assert_eq!(panel_grid(3, Some(10)), (3, 1));
    }

    #[test]
    fn upsampling() {
        let map = [0.0, 1.0, 2.0, 3.0];
        let n = upsample_map(&map, (2, 2), 4, 4, Upsample::Nearest);
        assert_eq!(&n[..4], &[0.0, 0.0, 1.0, 1.0]);
        assert_eq!(&n[12..], &[2.0, 2.0, 3.0, 3.0]);
        let b = upsample_map(&map, (2, 2), 4, 4, Upsample::Bilinear);
        assert_eq!(&b[..4], &[0.0, 0.25, 0.75, 1.0]);
        assert_eq!(b[15], 3.0);
    }
}
