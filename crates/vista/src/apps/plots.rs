//! The pictures of `vista fit`: learning curves and a confusion matrix, as PNGs without text
//! (the JSON report carries the numbers and each series' colour).

use std::io::Cursor;
use std::path::Path;

use ::image::{ImageFormat, Rgb, RgbImage};

use crate::{Error, Result};

fn save(img: &RgbImage, path: &Path) -> Result<()> {
    let mut png = Vec::new();
    img.write_to(&mut Cursor::new(&mut png), ImageFormat::Png)
        .map_err(|e| Error::io(path, std::io::Error::other(e.to_string())))?;
    crate::weights::formats::write_atomic(path, &png)
}

fn line(img: &mut RgbImage, (x0, y0): (f64, f64), (x1, y1): (f64, f64), color: Rgb<u8>) {
    let steps = ((x1 - x0).abs().max((y1 - y0).abs()).ceil() as usize).max(1);
    for i in 0..=steps {
        let t = i as f64 / steps as f64;
        let (x, y) = (x0 + t * (x1 - x0), y0 + t * (y1 - y0));
        for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
            let (px, py) = (x.round() as i64 + dx, y.round() as i64 + dy);
            if px >= 0 && py >= 0 && (px as u32) < img.width() && (py as u32) < img.height() {
                img.put_pixel(px as u32, py as u32, color);
            }
        }
    }
}

/// One learning curve: its colour and its `(images per class, accuracy)` points.
pub type Series = ([u8; 3], Vec<(usize, f64)>);

/// Learning curves: accuracy (0 at the bottom, 1 at the top, grey lines every 0.1) against
/// images per class on a log₂ axis (ticks at each series' points), one polyline per series in
/// its colour, each point a 5-px square.
pub fn write_curves_png(series: &[Series], path: &Path) -> Result<()> {
    const W: u32 = 720;
    const H: u32 = 420;
    const M: f64 = 30.0;
    let mut img = RgbImage::from_pixel(W, H, Rgb([255, 255, 255]));
    let xs: Vec<usize> = series.iter().flat_map(|(_, p)| p.iter().map(|q| q.0)).collect();
    let (lo, hi) =
        (xs.iter().copied().min().unwrap_or(1).max(1) as f64, xs.iter().copied().max().unwrap_or(2).max(2) as f64);
    let span = (hi.log2() - lo.log2()).max(1.0);
    let x_of = |s: usize| M + (f64::from(W) - 2.0 * M) * ((s.max(1) as f64).log2() - lo.log2()) / span;
    let y_of = |a: f64| f64::from(H) - M - (f64::from(H) - 2.0 * M) * a.clamp(0.0, 1.0);
    for g in 0..=10 {
        let y = y_of(g as f64 / 10.0);
        let shade = if g % 5 == 0 { 170 } else { 225 };
        line(&mut img, (M, y), (f64::from(W) - M, y), Rgb([shade, shade, shade]));
    }
    line(&mut img, (M, y_of(0.0)), (M, y_of(1.0)), Rgb([0, 0, 0]));
    for &s in &xs {
        let x = x_of(s);
        line(&mut img, (x, y_of(0.0)), (x, y_of(0.0) + 6.0), Rgb([0, 0, 0]));
    }
    for (color, points) in series {
        let c = Rgb(*color);
        for w in points.windows(2) {
            line(&mut img, (x_of(w[0].0), y_of(w[0].1)), (x_of(w[1].0), y_of(w[1].1)), c);
        }
        for &(s, a) in points {
            let (x, y) = (x_of(s), y_of(a));
            for dy in -2..=2 {
                line(&mut img, (x - 2.0, y + f64::from(dy)), (x + 2.0, y + f64::from(dy)), c);
            }
        }
    }
    save(&img, path)
}

/// A confusion matrix as a heat map: cell `(true i, predicted j)` is a square whose darkness is
/// the share of class `i`'s images predicted as `j` (the diagonal in green, mistakes in red).
pub fn write_confusion_png(confusion: &[Vec<u64>], path: &Path) -> Result<()> {
    let n = confusion.len().max(1) as u32;
    let cell = (480 / n).clamp(4, 40);
    let mut img = RgbImage::from_pixel(n * cell, n * cell, Rgb([255, 255, 255]));
    for (i, row) in confusion.iter().enumerate() {
        let total: u64 = row.iter().sum();
        for (j, &v) in row.iter().enumerate() {
            let share = if total > 0 { v as f64 / total as f64 } else { 0.0 };
            let fade = |full: u8| (255.0 - share * (255.0 - f64::from(full))).round() as u8;
            let color =
                if i == j { Rgb([fade(20), fade(150), fade(60)]) } else { Rgb([fade(200), fade(30), fade(30)]) };
            for y in i as u32 * cell..(i as u32 + 1) * cell {
                for x in j as u32 * cell..(j as u32 + 1) * cell {
                    let edge = x % cell == 0 || y % cell == 0;
                    img.put_pixel(x, y, if edge { Rgb([235, 235, 235]) } else { color });
                }
            }
        }
    }
    save(&img, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pictures_are_pngs_showing_the_data() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.png");
        write_curves_png(&[([200, 0, 0], vec![(1, 0.3), (4, 0.6), (16, 0.9)])], &p).unwrap();
        let img = ::image::open(&p).unwrap().to_rgb8();
        assert!(img.pixels().any(|px| *px == Rgb([200, 0, 0])));
        let q = dir.path().join("m.png");
        write_confusion_png(&[vec![9, 1], vec![0, 5]], &q).unwrap();
        let img = ::image::open(&q).unwrap().to_rgb8();
        // The second class is always right: its diagonal cell is full green.
        let c = img.width() / 2;
        assert_eq!(*img.get_pixel(c + c / 2, c + c / 2), Rgb([20, 150, 60]));
        assert_eq!(*img.get_pixel(c / 2, c + c / 2), Rgb([255, 255, 255]), "never mistaken for the first");
    }
}
