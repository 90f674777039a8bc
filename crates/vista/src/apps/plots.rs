//! The pictures of `vista fit`: learning curves, a confusion matrix and a contact sheet of the
//! most confused examples, as PNGs labelled with an 8×8 bitmap font (`font8x8`; characters it
//! lacks draw as `?`). The JSON report carries the same numbers.

use std::io::Cursor;
use std::path::Path;

use ::image::{imageops, ImageFormat, Rgb, RgbImage};
use font8x8::UnicodeFonts;

use crate::{Error, Result};

const WHITE: Rgb<u8> = Rgb([255, 255, 255]);
const BLACK: Rgb<u8> = Rgb([0, 0, 0]);
const GREY: Rgb<u8> = Rgb([110, 110, 110]);

fn save(img: &RgbImage, path: &Path) -> Result<()> {
    let mut png = Vec::new();
    img.write_to(&mut Cursor::new(&mut png), ImageFormat::Png)
        .map_err(|e| Error::io(path, std::io::Error::other(e.to_string())))?;
    crate::weights::formats::write_atomic(path, &png)
}

fn put(img: &mut RgbImage, x: i64, y: i64, color: Rgb<u8>) {
    if x >= 0 && y >= 0 && (x as u32) < img.width() && (y as u32) < img.height() {
        img.put_pixel(x as u32, y as u32, color);
    }
}

fn line(img: &mut RgbImage, (x0, y0): (f64, f64), (x1, y1): (f64, f64), color: Rgb<u8>) {
    let steps = ((x1 - x0).abs().max((y1 - y0).abs()).ceil() as usize).max(1);
    for i in 0..=steps {
        let t = i as f64 / steps as f64;
        let (x, y) = (x0 + t * (x1 - x0), y0 + t * (y1 - y0));
        for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
            put(img, x.round() as i64 + dx, y.round() as i64 + dy, color);
        }
    }
}

fn fill(img: &mut RgbImage, x: i64, y: i64, w: i64, h: i64, color: Rgb<u8>) {
    for yy in y..y + h {
        for xx in x..x + w {
            put(img, xx, yy, color);
        }
    }
}

/// Width in pixels of `s` drawn at `scale`.
fn text_width(s: &str, scale: i64) -> i64 {
    8 * scale * s.chars().count() as i64
}

/// Draws `s` with its top-left corner at `(x, y)`, each glyph pixel a `scale`² square.
fn text(img: &mut RgbImage, x: i64, y: i64, s: &str, scale: i64, color: Rgb<u8>) {
    for (k, c) in s.chars().enumerate() {
        let glyph = font8x8::BASIC_FONTS
            .get(c)
            .or_else(|| font8x8::LATIN_FONTS.get(c))
            .or_else(|| font8x8::BASIC_FONTS.get('?'))
            .unwrap_or([0; 8]);
        for (row, bits) in glyph.iter().enumerate() {
            for bit in 0..8 {
                if bits & (1 << bit) != 0 {
                    let (gx, gy) = (x + (8 * k as i64 + bit) * scale, y + row as i64 * scale);
                    fill(img, gx, gy, scale, scale, color);
                }
            }
        }
    }
}

/// `s` cut to `max` characters (an ellipsis `~` marks the cut).
fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        s.chars().take(max.saturating_sub(1)).chain(['~']).collect()
    }
}

/// `s` cut to `max` characters in its middle (a `~` marks the cut), keeping its end — a
/// legend entry's method.
fn clip_middle(s: &str, max: usize) -> String {
    let chars: Vec<char> = s.chars().collect();
    if chars.len() <= max {
        return s.to_string();
    }
    let tail = max / 2;
    let head = max.saturating_sub(tail + 1);
    chars[..head].iter().chain(['~'].iter()).chain(chars[chars.len() - tail..].iter()).collect()
}

/// One learning curve: its name (shown in the legend), colour and `(images per class,
/// accuracy)` points.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Legend text, e.g. `dino:model.safetensors / knn`.
    pub name: String,
    /// Line colour.
    pub color: [u8; 3],
    /// `(images per class, accuracy)`, in drawing order.
    pub points: Vec<(usize, f64)>,
}

/// Learning curves: accuracy (0 at the bottom, 1 at the top, grey lines every 0.1, labelled
/// every 0.2) against images per class on a log₂ axis (ticks and labels at each series'
/// points), one polyline per series in its colour, each point a 5-px square, and a legend.
pub fn write_curves_png(series: &[Series], path: &Path) -> Result<()> {
    const PLOT_W: f64 = 640.0;
    const H: u32 = 440;
    const LEFT: f64 = 56.0;
    const TOP: f64 = 36.0;
    const BOTTOM: f64 = 52.0;
    let legend = series.iter().map(|s| text_width(&clip_middle(&s.name, 48), 1)).max().unwrap_or(0) + 40;
    let w = (LEFT + PLOT_W + 20.0) as u32 + legend as u32;
    let mut img = RgbImage::from_pixel(w, H, WHITE);
    let xs: Vec<usize> = series.iter().flat_map(|s| s.points.iter().map(|q| q.0)).collect();
    let (lo, hi) =
        (xs.iter().copied().min().unwrap_or(1).max(1) as f64, xs.iter().copied().max().unwrap_or(2).max(2) as f64);
    let span = (hi.log2() - lo.log2()).max(1.0);
    let x_of = |s: usize| LEFT + PLOT_W * ((s.max(1) as f64).log2() - lo.log2()) / span;
    let y_of = |a: f64| f64::from(H) - BOTTOM - (f64::from(H) - BOTTOM - TOP) * a.clamp(0.0, 1.0);
    text(&mut img, LEFT as i64, 10, "accuracy vs labelled images per class", 2, BLACK);
    for g in 0..=10 {
        let y = y_of(g as f64 / 10.0);
        let shade = if g % 5 == 0 { 170 } else { 225 };
        line(&mut img, (LEFT, y), (LEFT + PLOT_W, y), Rgb([shade, shade, shade]));
        if g % 2 == 0 {
            let label = format!("{:.1}", g as f64 / 10.0);
            text(&mut img, LEFT as i64 - 8 - text_width(&label, 1), y as i64 - 4, &label, 1, GREY);
        }
    }
    line(&mut img, (LEFT, y_of(0.0)), (LEFT, y_of(1.0)), BLACK);
    let mut ticks = xs.clone();
    ticks.sort_unstable();
    ticks.dedup();
    for &s in &ticks {
        let x = x_of(s);
        line(&mut img, (x, y_of(0.0)), (x, y_of(0.0) + 6.0), BLACK);
        let label = s.to_string();
        text(&mut img, x as i64 - text_width(&label, 1) / 2, y_of(0.0) as i64 + 10, &label, 1, BLACK);
    }
    let caption = "labelled images per class (log scale)";
    text(&mut img, (LEFT + PLOT_W / 2.0) as i64 - text_width(caption, 1) / 2, H as i64 - 20, caption, 1, GREY);
    for s in series {
        let c = Rgb(s.color);
        for w in s.points.windows(2) {
            line(&mut img, (x_of(w[0].0), y_of(w[0].1)), (x_of(w[1].0), y_of(w[1].1)), c);
        }
        for &(n, a) in &s.points {
            let (x, y) = (x_of(n), y_of(a));
            fill(&mut img, x as i64 - 2, y as i64 - 2, 5, 5, c);
        }
    }
    let lx = (LEFT + PLOT_W + 20.0) as i64;
    for (k, s) in series.iter().enumerate() {
        let y = TOP as i64 + 16 * k as i64;
        fill(&mut img, lx, y, 24, 8, Rgb(s.color));
        text(&mut img, lx + 32, y, &clip_middle(&s.name, 48), 1, BLACK);
    }
    save(&img, path)
}

/// A confusion matrix as a heat map: cell `(true i, predicted j)` is a square whose darkness is
/// the share of class `i`'s images predicted as `j` (the diagonal in green, mistakes in red),
/// with its count written in when the cell is large enough; class names down the left (true)
/// and class numbers along the top (predicted, numbered as the rows).
pub fn write_confusion_png(confusion: &[Vec<u64>], classes: &[String], path: &Path) -> Result<()> {
    let n = confusion.len().max(1) as u32;
    let cell = (560 / n).clamp(6, 48);
    let name = |i: usize| format!("{i} {}", clip(classes.get(i).map_or("", String::as_str), 18));
    let left = (0..n as usize).map(|i| text_width(&name(i), 1)).max().unwrap_or(0) as u32 + 12;
    let top = 44u32;
    let mut img = RgbImage::from_pixel(left + n * cell + 8, top + n * cell + 24, WHITE);
    text(&mut img, 4, 4, "true class (rows) vs predicted (columns)", 1, BLACK);
    for (i, row) in confusion.iter().enumerate() {
        let total: u64 = row.iter().sum();
        let y0 = top + i as u32 * cell;
        text(&mut img, 4, i64::from(y0 + cell / 2) - 4, &name(i), 1, BLACK);
        for (j, &v) in row.iter().enumerate() {
            let share = if total > 0 { v as f64 / total as f64 } else { 0.0 };
            let fade = |full: u8| (255.0 - share * (255.0 - f64::from(full))).round() as u8;
            let color =
                if i == j { Rgb([fade(20), fade(150), fade(60)]) } else { Rgb([fade(200), fade(30), fade(30)]) };
            let x0 = left + j as u32 * cell;
            for y in y0..y0 + cell {
                for x in x0..x0 + cell {
                    let edge = (x - x0) == 0 || (y - y0) == 0;
                    img.put_pixel(x, y, if edge { Rgb([235, 235, 235]) } else { color });
                }
            }
            let count = v.to_string();
            if v > 0 && text_width(&count, 1) as u32 + 4 <= cell && cell >= 14 {
                let ink = if share > 0.5 { WHITE } else { BLACK };
                let tx = i64::from(x0 + cell / 2) - text_width(&count, 1) / 2;
                text(&mut img, tx, i64::from(y0 + cell / 2) - 3, &count, 1, ink);
            }
        }
    }
    for j in 0..n {
        let label = j.to_string();
        if text_width(&label, 1) as u32 <= cell || j % 5 == 0 {
            let x = i64::from(left + j * cell + cell / 2) - text_width(&label, 1) / 2;
            text(&mut img, x, i64::from(top) - 12, &label, 1, GREY);
        }
    }
    save(&img, path)
}

/// One row of a contact sheet: images of class `truth` that a classifier called `predicted`.
#[derive(Debug, Clone)]
pub struct ConfusedPair {
    /// The images' class.
    pub truth: String,
    /// What they were taken for.
    pub predicted: String,
    /// How many images of `truth` were predicted as `predicted` in all.
    pub count: u64,
    /// Some of them (drawn as thumbnails, in this order).
    pub examples: Vec<RgbImage>,
}

/// Thumbnail side of a contact sheet.
pub const THUMB: u32 = 96;

/// A contact sheet: one row per confused pair, its caption (`truth -> predicted (count)`) over
/// up to eight thumbnails, each fitted in a 96×96 square keeping its aspect.
pub fn write_contact_sheet_png(pairs: &[ConfusedPair], path: &Path) -> Result<()> {
    const PER_ROW: u32 = 8;
    const GAP: u32 = 6;
    let row_h = 20 + THUMB + GAP;
    let w = PER_ROW * (THUMB + GAP) + GAP;
    let h = 28 + pairs.len().max(1) as u32 * row_h;
    let mut img = RgbImage::from_pixel(w, h, WHITE);
    let title = if pairs.is_empty() { "no mistakes" } else { "most confused: true class -> predicted" };
    text(&mut img, i64::from(GAP), 8, title, 1, BLACK);
    for (r, pair) in pairs.iter().enumerate() {
        let y = 28 + r as u32 * row_h;
        let caption = format!("{} -> {} ({})", clip(&pair.truth, 30), clip(&pair.predicted, 30), pair.count);
        text(&mut img, i64::from(GAP), i64::from(y) + 4, &caption, 1, Rgb([160, 20, 20]));
        for (k, ex) in pair.examples.iter().take(PER_ROW as usize).enumerate() {
            let (ew, eh) = ex.dimensions();
            if ew == 0 || eh == 0 {
                continue;
            }
            let s = f64::from(THUMB) / f64::from(ew.max(eh));
            let (tw, th) = (((f64::from(ew) * s).round() as u32).max(1), ((f64::from(eh) * s).round() as u32).max(1));
            let thumb = imageops::resize(ex, tw, th, imageops::FilterType::Triangle);
            let x0 = GAP + k as u32 * (THUMB + GAP) + (THUMB - tw) / 2;
            let y0 = y + 18 + (THUMB - th) / 2;
            imageops::overlay(&mut img, &thumb, i64::from(x0), i64::from(y0));
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
        let s = Series { name: "pixels / knn".into(), color: [200, 0, 0], points: vec![(1, 0.3), (4, 0.6), (16, 0.9)] };
        write_curves_png(&[s], &p).unwrap();
        let img = ::image::open(&p).unwrap().to_rgb8();
        assert!(img.pixels().any(|px| *px == Rgb([200, 0, 0])));
        let q = dir.path().join("m.png");
        write_confusion_png(&[vec![9, 1], vec![0, 5]], &["cat".into(), "dog".into()], &q).unwrap();
        let img = ::image::open(&q).unwrap().to_rgb8();
        // The second class is always right: its diagonal cell is full green (away from the
        // count written in its middle).
        let n = 2;
        let cell = (560 / n).clamp(6, 48);
        let left = text_width("0 cat", 1) as u32 + 12;
        let (x1, y1) = (left + cell + 3, 44 + cell + 3);
        assert_eq!(*img.get_pixel(x1, y1), Rgb([20, 150, 60]));
        assert_eq!(*img.get_pixel(left + 3, y1), WHITE, "never mistaken for the first");
        // Text is drawn: the class name column has ink.
        assert!((0..left).any(|x| *img.get_pixel(x, 44 + cell / 2) == BLACK));
    }

    #[test]
    fn contact_sheet_shows_each_pair_and_its_examples() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.png");
        let red = RgbImage::from_pixel(40, 20, Rgb([250, 0, 0]));
        let pair = ConfusedPair { truth: "shirt".into(), predicted: "coat".into(), count: 7, examples: vec![red] };
        write_contact_sheet_png(&[pair.clone(), pair], &p).unwrap();
        let img = ::image::open(&p).unwrap().to_rgb8();
        assert_eq!(img.height(), 28 + 2 * (20 + THUMB + 6));
        // The 40×20 thumbnail fills the square's width and half its height, centred.
        let (cx, cy) = (6 + THUMB / 2, 28 + 18 + THUMB / 2);
        assert_eq!(*img.get_pixel(cx, cy), Rgb([250, 0, 0]));
        assert_eq!(*img.get_pixel(cx, 28 + 18 + 5), WHITE);
    }

    #[test]
    fn text_is_clipped_and_unknown_glyphs_still_draw() {
        assert_eq!(clip("abcdef", 4), "abc~");
        assert_eq!(clip("abc", 4), "abc");
        assert_eq!(clip_middle("dino:a_long_name / knn", 12), "dino:~ / knn");
        let mut img = RgbImage::from_pixel(16, 8, WHITE);
        text(&mut img, 0, 0, "\u{4e2d}", 1, BLACK);
        assert!(img.pixels().any(|p| *p == BLACK), "a question mark stands in");
    }
}
