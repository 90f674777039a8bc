//! Near-duplicate detection over an index: the default threshold per model, and the
//! distribution of each image's nearest-neighbour similarity (`vista dupes --stats`) from which
//! a user can see where their own collection's duplicates separate.

use std::io::Cursor;
use std::path::Path;

use ::image::{ImageFormat, Rgb, RgbImage};

use crate::clip::ClipConfig;
use crate::weights::formats::write_atomic;
use crate::{Error, Result};

/// The near-duplicate threshold (cosine similarity) for CLIP ViT-B/32, from an anchor:
/// Immich, a photo library running the same model family (`ViT-B-32__openai`), ships
/// `duplicateDetection.maxDistance = 0.01` in cosine distance, i.e. similarity >= 0.99
/// (immich-app/immich, `server/src/config.ts`, machine-learning defaults).
pub const VIT_B_32_THRESHOLD: f32 = 0.99;

/// A default threshold and where it comes from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DefaultThreshold {
    /// Cosine similarity from which two images are near-duplicates.
    pub value: f32,
    /// Its anchor, or that it has none.
    pub source: &'static str,
}

/// The default near-duplicate threshold for a CLIP model: [`VIT_B_32_THRESHOLD`] for ViT-B/32
/// (the architecture Immich's value was set on); for other models there is no published anchor,
/// and the B/32 value is used as it is (their near-duplicate similarities sit as close to 1,
/// but not measured: `--stats` shows the collection's own distribution).
pub fn default_threshold(config: &ClipConfig) -> DefaultThreshold {
    let v = &config.vision;
    let b32 = v.patch_size == 32 && v.image_size == 224 && v.tower.width == 768 && v.tower.layers == 12;
    if b32 {
        DefaultThreshold {
            value: VIT_B_32_THRESHOLD,
            source:
                "CLIP ViT-B/32: Immich's duplicateDetection.maxDistance = 0.01 (cosine distance) for ViT-B-32__openai",
        }
    } else {
        DefaultThreshold {
            value: VIT_B_32_THRESHOLD,
            source: "no anchor for this model: the ViT-B/32 value (check with --stats)",
        }
    }
}

/// Quantiles of each image's nearest-neighbour similarity.
#[derive(Debug, Clone, PartialEq)]
pub struct SimilarityStats {
    /// Images with a neighbour (all, when there are two or more).
    pub count: usize,
    /// `(q, value)` for q in 0, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 1 (nearest rank).
    pub quantiles: Vec<(f32, f32)>,
    /// Images whose nearest neighbour is at or above the threshold.
    pub at_or_above: usize,
}

/// [`SimilarityStats`] of `nearest` (from [`crate::index::vectors::nearest_neighbour_similarities`])
/// against `threshold`. Non-finite values (an image without a neighbour) are left out.
pub fn similarity_stats(nearest: &[f32], threshold: f32) -> SimilarityStats {
    let mut v: Vec<f32> = nearest.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(f32::total_cmp);
    let qs = [0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 1.0];
    let quantiles = if v.is_empty() {
        Vec::new()
    } else {
        qs.iter().map(|&q| (q, v[((q * (v.len() - 1) as f32).round() as usize).min(v.len() - 1)])).collect()
    };
    let at_or_above = v.iter().filter(|&&x| x >= threshold).count();
    SimilarityStats { count: v.len(), quantiles, at_or_above }
}

/// Draws the histogram of `nearest` as a PNG at `path` (written atomically): 100 bins from the
/// lowest value (at most `threshold - 0.05`) to 1, bars in grey, the threshold as a red line,
/// ticks every 0.01 below the axis (longer every 0.05 and 0.1).
pub fn write_histogram_png(nearest: &[f32], threshold: f32, path: &Path) -> Result<()> {
    const W: u32 = 800;
    const H: u32 = 300;
    const BINS: usize = 100;
    const AXIS: u32 = 20;
    let v: Vec<f32> = nearest.iter().copied().filter(|x| x.is_finite()).collect();
    let lo = v.iter().copied().fold(threshold - 0.05, f32::min).max(-1.0);
    let lo = (lo * 100.0).floor() / 100.0;
    let span = (1.0 - lo).max(1e-3);
    let mut counts = [0usize; BINS];
    for &x in &v {
        let b = (((x - lo) / span) * BINS as f32).floor().clamp(0.0, (BINS - 1) as f32) as usize;
        counts[b] += 1;
    }
    let peak = counts.iter().copied().max().unwrap_or(0).max(1);
    let mut img = RgbImage::from_pixel(W, H, Rgb([255, 255, 255]));
    let plot_h = H - AXIS;
    let x_of = |value: f32| (((value - lo) / span) * (W - 1) as f32).round().clamp(0.0, (W - 1) as f32) as u32;
    for (b, &c) in counts.iter().enumerate() {
        let (x0, x1) = ((b as u32 * W) / BINS as u32, ((b as u32 + 1) * W) / BINS as u32);
        let bar = ((c as f64 / peak as f64) * f64::from(plot_h - 10)).round() as u32;
        for x in x0..x1.saturating_sub(1).max(x0 + 1).min(W) {
            for y in plot_h - bar..plot_h {
                img.put_pixel(x, y, Rgb([90, 90, 90]));
            }
        }
    }
    for x in 0..W {
        img.put_pixel(x, plot_h, Rgb([0, 0, 0]));
    }
    let mut t = (lo * 100.0).ceil() as i32;
    while t <= 100 {
        let len = if t % 10 == 0 {
            12
        } else if t % 5 == 0 {
            8
        } else {
            4
        };
        let x = x_of(t as f32 / 100.0);
        for y in plot_h..(plot_h + len).min(H) {
            img.put_pixel(x, y, Rgb([0, 0, 0]));
        }
        t += 1;
    }
    let xt = x_of(threshold);
    for y in 0..plot_h {
        img.put_pixel(xt, y, Rgb([220, 30, 30]));
    }
    let mut png = Vec::new();
    img.write_to(&mut Cursor::new(&mut png), ImageFormat::Png)
        .map_err(|e| Error::io(path, std::io::Error::other(e.to_string())))?;
    write_atomic(path, &png)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vit_b_32_gets_the_anchored_default() {
        let b32 = ClipConfig::preset("ViT-B-32").unwrap();
        let d = default_threshold(&b32);
        assert_eq!(d.value, 0.99);
        assert!(d.source.contains("Immich"));
        let l14 = ClipConfig::preset("ViT-L-14").unwrap();
        assert!(default_threshold(&l14).source.contains("no anchor"));
    }

    #[test]
    fn stats_count_and_quantiles() {
        let s = similarity_stats(&[0.5, 0.99, 0.995, f32::NEG_INFINITY, 0.7], 0.99);
        assert_eq!((s.count, s.at_or_above), (4, 2));
        assert_eq!(s.quantiles.first(), Some(&(0.0, 0.5)));
        assert_eq!(s.quantiles.last(), Some(&(1.0, 0.995)));
        assert!(similarity_stats(&[], 0.9).quantiles.is_empty());
    }

    #[test]
    fn histogram_is_a_png_with_the_threshold_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("h.png");
        write_histogram_png(&[0.8, 0.9, 0.95, 0.99, 0.999, 1.0], 0.97, &p).unwrap();
        let img = ::image::open(&p).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (800, 300));
        assert!(img.pixels().any(|p| *p == Rgb([220, 30, 30])));
        assert!(img.pixels().any(|p| *p == Rgb([90, 90, 90])));
    }
}
