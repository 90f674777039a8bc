//! Exporting segmentation masks (SAM's outputs): COCO run-length encoding, COCO polygons, PNG
//! files and a colour overlay for people to look at.
//!
//! * [`Mask`]: a binary mask, row-major, with [`Mask::area`], [`Mask::bbox`], PNG I/O,
//!   [`Mask::to_polygons`] / [`Mask::from_polygons`] and [`Mask::fill_holes`].
//! * [`Rle`]: COCO RLE byte-for-byte as `pycocotools.mask` (its C core, `maskApi.c`) makes it:
//!   [`Rle::encode`] = `rleEncode`, [`Rle::to_string_counts`] = `rleToString`,
//!   [`Rle::from_string_counts`] = `rleFrString`, [`Rle::area`] = `rleArea`,
//!   [`Rle::bbox`] = `rleToBbox`; checked against pycocotools 2.0.11 on the committed cases
//!   (`tests/fixtures/rle/`, `tools/reference/gen_rle.py`). [`Mask::from_polygons`] is
//!   `frPyObjects` + `merge` on polygons (a port of `rleFrPoly`), checked the same way.
//! * [`overlay`]: masks, prompt points and boxes drawn over an image.
//!
//! Coordinates: pixel `(x, y)` is column `x`, row `y`; as a polygon vertex space, pixel `(x, y)`
//! covers the square `[x, x + 1] × [y, y + 1]` (the COCO convention: pycocotools rasterises a
//! polygon by the pixel centres inside it).

use std::path::Path;

use ::image::{DynamicImage, GrayImage, ImageDecoder, ImageError, ImageFormat, ImageReader, Rgb, RgbImage};
use serde_json::Value;

use crate::image::DEFAULT_MAX_PIXELS;
use crate::{Error, Result};

/// A binary mask: `width × height` pixels, row-major, `true` = foreground.
///
/// At most `u32::MAX` pixels, because COCO RLE run lengths are 32-bit (`uint` in `maskApi.c`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Mask {
    width: u32,
    height: u32,
    data: Vec<bool>,
}

fn check_size(width: u32, height: u32) -> Result<usize> {
    let pixels = u64::from(width) * u64::from(height);
    if pixels > u64::from(u32::MAX) {
        return Err(Error::arg(
            "mask",
            format!("{width}x{height} = {pixels} pixels, over the 2^32 - 1 COCO RLE limit"),
        ));
    }
    Ok(pixels as usize)
}

fn check_len(width: u32, height: u32, len: usize) -> Result<()> {
    let pixels = check_size(width, height)?;
    if len != pixels {
        return Err(Error::arg("data", format!("{len} values for a {width}x{height} mask ({pixels} pixels)")));
    }
    Ok(())
}

impl Mask {
    /// An all-background mask.
    ///
    /// # Panics
    /// If `width * height` exceeds `u32::MAX` (the RLE limit).
    pub fn new(width: u32, height: u32) -> Self {
        let pixels = check_size(width, height).expect("mask size");
        Self { width, height, data: vec![false; pixels] }
    }

    /// A mask from `f(x, y)`, evaluated row by row.
    ///
    /// # Panics
    /// If `width * height` exceeds `u32::MAX`.
    pub fn from_fn(width: u32, height: u32, mut f: impl FnMut(u32, u32) -> bool) -> Self {
        check_size(width, height).expect("mask size");
        let data = (0..height).flat_map(|y| (0..width).map(move |x| (x, y))).map(|(x, y)| f(x, y)).collect();
        Self { width, height, data }
    }

    /// A mask from row-major booleans; `data.len()` must be `width * height`.
    pub fn from_bools(width: u32, height: u32, data: &[bool]) -> Result<Self> {
        check_len(width, height, data.len())?;
        Ok(Self { width, height, data: data.to_vec() })
    }

    /// A mask from row-major bytes, nonzero = foreground (0/1 and 0/255 masks alike);
    /// `data.len()` must be `width * height`.
    pub fn from_u8(width: u32, height: u32, data: &[u8]) -> Result<Self> {
        check_len(width, height, data.len())?;
        Ok(Self { width, height, data: data.iter().map(|&v| v != 0).collect() })
    }

    /// Width in pixels.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// The pixels, row-major.
    pub fn data(&self) -> &[bool] {
        &self.data
    }

    /// The pixels, row-major, without a copy.
    pub fn into_data(self) -> Vec<bool> {
        self.data
    }

    /// Pixel `(x, y)`; `false` outside the mask.
    pub fn get(&self, x: u32, y: u32) -> bool {
        x < self.width && y < self.height && self.data[y as usize * self.width as usize + x as usize]
    }

    /// Sets pixel `(x, y)`.
    ///
    /// # Panics
    /// If `(x, y)` is outside the mask.
    pub fn set(&mut self, x: u32, y: u32, value: bool) {
        assert!(x < self.width && y < self.height, "pixel ({x}, {y}) outside a {}x{} mask", self.width, self.height);
        self.data[y as usize * self.width as usize + x as usize] = value;
    }

    /// Number of foreground pixels (pycocotools' `area`).
    pub fn area(&self) -> u64 {
        self.data.iter().filter(|&&v| v).count() as u64
    }

    /// Tight bounding box of the foreground as COCO `[x, y, width, height]`, `[0, 0, 0, 0]` for
    /// an empty mask: what pycocotools' `toBbox` gives for [`Rle::encode`] of this mask (it
    /// returns the same integers as float64).
    pub fn bbox(&self) -> [u32; 4] {
        let (w, h) = (self.width as usize, self.height as usize);
        let (mut x0, mut y0, mut x1, mut y1) = (usize::MAX, usize::MAX, 0, 0);
        for y in 0..h {
            let row = &self.data[y * w..(y + 1) * w];
            let Some(first) = row.iter().position(|&v| v) else { continue };
            let last = row.iter().rposition(|&v| v).unwrap_or(first);
            (x0, x1) = (x0.min(first), x1.max(last));
            (y0, y1) = (y0.min(y), y);
        }
        if x0 == usize::MAX {
            return [0; 4];
        }
        [x0 as u32, y0 as u32, (x1 - x0 + 1) as u32, (y1 - y0 + 1) as u32]
    }

    /// The mask as an 8-bit grey image, 0 = background, 255 = foreground.
    pub fn to_gray_image(&self) -> GrayImage {
        let bytes = self.data.iter().map(|&v| if v { 255 } else { 0 }).collect();
        GrayImage::from_raw(self.width, self.height, bytes).expect("buffer length matches the size")
    }

    /// Reads a mask image (PNG, or any format the image decoders recognise from the content):
    /// a pixel is foreground when any colour channel is nonzero (alpha is ignored), so 0/1,
    /// 0/255, 16-bit and palette masks all read as expected.
    ///
    /// Errors: [`Error::Io`] when the file cannot be opened, [`Error::ImageTooLarge`] over
    /// [`DEFAULT_MAX_PIXELS`], [`Error::ImageDecode`] for undecodable data.
    pub fn from_png(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let decode_err = |e: ImageError| Error::ImageDecode { path: path.to_path_buf(), message: e.to_string() };
        let reader = ImageReader::open(path).map_err(|e| Error::io(path, e))?;
        let reader = reader.with_guessed_format().map_err(|e| Error::io(path, e))?;
        let decoder = reader.into_decoder().map_err(decode_err)?;
        let (width, height) = decoder.dimensions();
        let pixels = u64::from(width) * u64::from(height);
        if pixels > DEFAULT_MAX_PIXELS {
            return Err(Error::ImageTooLarge {
                path: path.to_path_buf(),
                width,
                height,
                pixels,
                limit: DEFAULT_MAX_PIXELS,
            });
        }
        let data = match DynamicImage::from_decoder(decoder).map_err(decode_err)? {
            DynamicImage::ImageLuma8(g) => g.into_raw().into_iter().map(|v| v != 0).collect(),
            other => other.to_rgba16().pixels().map(|p| p[0] != 0 || p[1] != 0 || p[2] != 0).collect(),
        };
        Ok(Self { width, height, data })
    }

    /// Writes the mask as an 8-bit greyscale PNG, 0 = background, 255 = foreground.
    pub fn write_png(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        if self.width == 0 || self.height == 0 {
            return Err(Error::arg("mask", format!("a PNG cannot be {}x{} pixels", self.width, self.height)));
        }
        self.to_gray_image().save_with_format(path, ImageFormat::Png).map_err(|e| match e {
            ImageError::IoError(io) => Error::io(path, io),
            other => Error::io(path, std::io::Error::other(other.to_string())),
        })
    }

    /// 8-connected foreground components: a label per pixel (0 = background, components from
    /// 1 in row-major order of their first pixel) and each component's pixel count.
    fn components(&self) -> (Vec<u32>, Vec<u64>) {
        let (w, h) = (self.width as usize, self.height as usize);
        let mut labels = vec![0u32; w * h];
        let mut areas = vec![0u64]; // index 0: background
        let mut stack = Vec::new();
        for start in 0..w * h {
            if !self.data[start] || labels[start] != 0 {
                continue;
            }
            let label = areas.len() as u32;
            let mut area = 0;
            labels[start] = label;
            stack.push(start);
            while let Some(i) = stack.pop() {
                area += 1;
                let (x, y) = (i % w, i / w);
                for ny in y.saturating_sub(1)..(y + 2).min(h) {
                    for nx in x.saturating_sub(1)..(x + 2).min(w) {
                        let j = ny * w + nx;
                        if self.data[j] && labels[j] == 0 {
                            labels[j] = label;
                            stack.push(j);
                        }
                    }
                }
            }
            areas.push(area);
        }
        (labels, areas)
    }

    /// The mask with its holes filled: every background region not 4-connected to the border
    /// (foreground is 8-connected, background 4-connected, the usual digital topology) becomes
    /// foreground. The region [`Mask::to_polygons`] outlines (with `min_area` 0).
    pub fn fill_holes(&self) -> Mask {
        let outside = outside_region(self.width as usize, self.height as usize, &self.data);
        let data = self.data.iter().zip(&outside).map(|(&v, &o)| v || !o).collect();
        Mask { width: self.width, height: self.height, data }
    }

    /// COCO polygons `[x1, y1, x2, y2, ...]` of the outer boundaries of the mask's 8-connected
    /// components, in pixel-corner coordinates (pixel `(x, y)` is the square `[x, x+1] × [y, y+1]`,
    /// so vertices are integers), clockwise on screen, one polygon per component in row-major
    /// order of the components' first pixels.
    ///
    /// **Holes are filled**: COCO polygons cannot express them (pycocotools rasterises each
    /// polygon and merges a list by *union*, so a hole polygon would add area, not remove it),
    /// so each component is exported as its outer boundary and the union of the polygons is
    /// [`Mask::fill_holes`] of the kept components. A component lying in a hole of a kept
    /// component is therefore redundant and omitted. Use [`Rle`] where holes matter.
    ///
    /// Components with fewer than [`PolygonOptions::min_area`] pixels are dropped first. With
    /// [`PolygonOptions::tolerance`] 0 the polygons are exact: they keep only the corners of
    /// the pixel boundary (a rectangle gives 4 vertices), and rasterising them again
    /// ([`Mask::from_polygons`], or pycocotools' `frPyObjects`) gives back the filled mask
    /// pixel for pixel. Polygons through pixel centres (OpenCV's `findContours`) would lose
    /// half a pixel all round: a 6×6 square comes back 5×5 from pycocotools. A boundary that
    /// touches itself diagonally (8-connected pixels) passes twice through that corner.
    pub fn to_polygons(&self, options: &PolygonOptions) -> Vec<Vec<f64>> {
        let (w, h) = (self.width as usize, self.height as usize);
        let (labels, areas) = self.components();
        let kept_label: Vec<bool> = areas.iter().enumerate().map(|(i, &a)| i > 0 && a >= options.min_area).collect();
        let kept: Vec<bool> = labels.iter().map(|&l| kept_label[l as usize]).collect();
        let outside = outside_region(w, h, &kept);
        let mut seen = vec![false; areas.len()];
        let mut polygons = Vec::new();
        for (i, &label) in labels.iter().enumerate() {
            if !kept_label[label as usize] || seen[label as usize] {
                continue;
            }
            // The first pixel of a component in row-major order: the pixels above it and to its
            // left are background, and its top edge is on the component's outer boundary.
            seen[label as usize] = true;
            let (x0, y0) = (i % w, i / w);
            if y0 > 0 && !outside[i - w] {
                continue; // inside a hole of another kept component
            }
            let inside = |x: i64, y: i64| {
                x >= 0 && y >= 0 && (x as usize) < w && (y as usize) < h && kept[y as usize * w + x as usize]
            };
            let ring = trace_outer(inside, x0 as i64, y0 as i64);
            let ring = simplify_ring(&ring, options.tolerance);
            polygons.push(ring.iter().flat_map(|&(x, y)| [x as f64, y as f64]).collect());
        }
        polygons
    }

    /// Rasterises COCO polygons (`[x1, y1, x2, y2, ...]`) into a `width × height` mask exactly
    /// as pycocotools' `frPyObjects` + `merge` do: each polygon through `rleFrPoly` (a port of
    /// `maskApi.c`: vertices rounded to 1/5 pixel, the boundary walked at that resolution, a
    /// pixel set when its centre is inside, ties on edges broken its way), the polygons joined
    /// by union. With integer vertices and axis-aligned edges, as [`Mask::to_polygons`] gives
    /// at tolerance 0, that is "pixel `(x, y)` is inside when `(x + 0.5, y + 0.5)` is".
    ///
    /// Polygons with fewer than 3 points, an odd coordinate count, a non-finite coordinate or
    /// one beyond ±10^7 pixels are ignored (pycocotools would overflow its `int`s).
    ///
    /// # Panics
    /// If `width * height` exceeds `u32::MAX`.
    pub fn from_polygons(polygons: &[Vec<f64>], width: u32, height: u32) -> Mask {
        let mut mask = Mask::new(width, height);
        let (w, h) = (width as usize, height as usize);
        for poly in polygons {
            if poly.len() < 6 || poly.len() % 2 != 0 || poly.iter().any(|v| v.is_nan() || v.abs() > 1e7) {
                continue;
            }
            let mut pos = 0usize;
            for (i, &c) in fr_poly(poly, height, width).iter().enumerate() {
                let end = (pos + c as usize).min(w * h);
                if i % 2 == 1 {
                    for p in pos..end {
                        mask.data[(p % h) * w + p / h] = true;
                    }
                }
                pos = end;
            }
        }
        mask
    }
}

/// `rleFrPoly` of pycocotools 2.0.11 (`maskApi.c`), step for step: the run lengths (column-major,
/// background first) of one polygon. Coordinates are finite and within ±10^7, so the `int`
/// arithmetic below cannot overflow; the boundary points are streamed instead of stored.
fn fr_poly(xy: &[f64], h: u32, w: u32) -> Vec<u32> {
    const SCALE: f64 = 5.0;
    let k = xy.len() / 2;
    // (int)(scale * v + .5): truncation toward zero, as C converts.
    let x: Vec<i32> = (0..=k).map(|j| (SCALE * xy[(j % k) * 2] + 0.5) as i32).collect();
    let y: Vec<i32> = (0..=k).map(|j| (SCALE * xy[(j % k) * 2 + 1] + 0.5) as i32).collect();
    // Points on the y-boundary, as x * h + y (uint).
    let mut a: Vec<u32> = Vec::new();
    let mut prev: Option<(i32, i32)> = None;
    let mut visit = |u: i32, v: i32| {
        if let Some((pu, pv)) = prev {
            if u != pu {
                let xd = f64::from(if u < pu { u } else { u - 1 });
                let xd = (xd + 0.5) / SCALE - 0.5;
                // `w - 1` is unsigned (siz): for w = 0 it wraps and no x is out of range.
                let w_max = if w == 0 { u64::MAX as f64 } else { f64::from(w - 1) };
                if xd.floor() == xd && xd >= 0.0 && xd <= w_max {
                    let yd = (f64::from(v.min(pv)) + 0.5) / SCALE - 0.5;
                    let yd = if yd < 0.0 {
                        0.0
                    } else if yd > f64::from(h) {
                        f64::from(h)
                    } else {
                        yd
                    };
                    let (xi, yi) = (xd as i32, yd.ceil() as i32);
                    a.push(xi.wrapping_mul(h as i32).wrapping_add(yi) as u32);
                }
            }
        }
        prev = Some((u, v));
    };
    for j in 0..k {
        let (mut xs, mut xe, mut ys, mut ye) = (x[j], x[j + 1], y[j], y[j + 1]);
        let (dx, dy) = ((xe - xs).abs(), (ys - ye).abs());
        let flip = (dx >= dy && xs > xe) || (dx < dy && ys > ye);
        if flip {
            (xs, xe, ys, ye) = (xe, xs, ye, ys);
        }
        // 0 / 0 = NaN for a repeated vertex: C's cast is undefined there, but that point's u
        // equals its neighbours', so its v is never used.
        let s = if dx >= dy { f64::from(ye - ys) / f64::from(dx) } else { f64::from(xe - xs) / f64::from(dy) };
        if dx >= dy {
            for d in 0..=dx {
                let t = if flip { dx - d } else { d };
                visit(t + xs, (f64::from(ys) + s * f64::from(t) + 0.5) as i32);
            }
        } else {
            for d in 0..=dy {
                let t = if flip { dy - d } else { d };
                visit((f64::from(xs) + s * f64::from(t) + 0.5) as i32, t + ys);
            }
        }
    }
    a.push(h.wrapping_mul(w));
    a.sort_unstable();
    let mut p = 0u32;
    for v in a.iter_mut() {
        let t = *v;
        *v = v.wrapping_sub(p);
        p = t;
    }
    // Zero-length runs are dropped by joining their neighbours.
    let mut b = vec![a[0]];
    let mut j = 1;
    while j < a.len() {
        if a[j] > 0 {
            b.push(a[j]);
            j += 1;
        } else {
            j += 1;
            if j < a.len() {
                let last = b.last_mut().expect("b starts non-empty");
                *last = last.wrapping_add(a[j]);
                j += 1;
            }
        }
    }
    b
}

/// Background pixels 4-connected to the border, given the foreground.
fn outside_region(w: usize, h: usize, fg: &[bool]) -> Vec<bool> {
    let mut outside = vec![false; w * h];
    if outside.is_empty() {
        return outside;
    }
    let border = (0..w).flat_map(|x| [x, (h - 1) * w + x]).chain((0..h).flat_map(|y| [y * w, y * w + w - 1]));
    let mut stack: Vec<usize> = border.filter(|&i| !fg[i]).collect();
    for &i in &stack {
        outside[i] = true;
    }
    while let Some(i) = stack.pop() {
        let (x, y) = (i % w, i / w);
        let left = (x > 0).then(|| i - 1);
        let right = (x + 1 < w).then_some(i + 1);
        let up = (y > 0).then(|| i - w);
        let down = (y + 1 < h).then_some(i + w);
        for j in [left, right, up, down].into_iter().flatten() {
            if !fg[j] && !outside[j] {
                outside[j] = true;
                stack.push(j);
            }
        }
    }
    outside
}

/// The outer boundary of the 8-connected component whose first pixel (row-major) is
/// `(x0, y0)`, walked along pixel edges with the foreground on the right (clockwise on screen),
/// as the corners where the direction changes, starting at `(x0, y0)`.
fn trace_outer(inside: impl Fn(i64, i64) -> bool, x0: i64, y0: i64) -> Vec<(i64, i64)> {
    // Directions east, south, west, north (y down): +1 turns right, +3 turns left.
    const STEP: [(i64, i64); 4] = [(1, 0), (0, 1), (-1, 0), (0, -1)];
    let start = (x0, y0);
    let mut corners = vec![start];
    let (mut pos, mut dir) = ((x0 + 1, y0), 0usize);
    while pos != start {
        let (vx, vy) = pos;
        // The two pixels ahead of vertex `pos` when moving in `dir`: ahead-left, ahead-right.
        let (ahead_left, ahead_right) = match dir {
            0 => ((vx, vy - 1), (vx, vy)),
            1 => ((vx, vy), (vx - 1, vy)),
            2 => ((vx - 1, vy), (vx - 1, vy - 1)),
            _ => ((vx - 1, vy - 1), (vx, vy - 1)),
        };
        // Ahead-left foreground: turn left (also across a diagonal, 8-connectivity); else
        // ahead-right foreground: straight on; else turn right.
        let next = if inside(ahead_left.0, ahead_left.1) {
            (dir + 3) % 4
        } else if inside(ahead_right.0, ahead_right.1) {
            dir
        } else {
            (dir + 1) % 4
        };
        if next != dir {
            corners.push(pos);
            dir = next;
        }
        pos = (vx + STEP[dir].0, vy + STEP[dir].1);
    }
    corners
}

/// Douglas–Peucker on a closed ring: split at vertex 0 and the vertex farthest from it, simplify
/// both chains (distance to the chord segment), and never return fewer than 3 vertices.
fn simplify_ring(ring: &[(i64, i64)], tolerance: f64) -> Vec<(i64, i64)> {
    let n = ring.len();
    if tolerance.is_nan() || tolerance <= 0.0 || n <= 3 {
        return ring.to_vec();
    }
    let at = |i: usize| {
        let (x, y) = ring[i % n];
        (x as f64, y as f64)
    };
    let (x0, y0) = at(0);
    let far = (1..n).max_by(|&a, &b| dist2(at(a), (x0, y0)).total_cmp(&dist2(at(b), (x0, y0))).then(b.cmp(&a)));
    let far = far.expect("ring has vertices");
    let mut keep = vec![false; n];
    keep[0] = true;
    keep[far] = true;
    let mut stack = vec![(0, far), (far, n)];
    while let Some((a, b)) = stack.pop() {
        let (pa, pb) = (at(a), at(b));
        let worst = (a + 1..b).map(|i| (i, segment_distance(at(i), pa, pb))).max_by(|x, y| x.1.total_cmp(&y.1));
        if let Some((i, d)) = worst {
            if d > tolerance {
                keep[i] = true;
                stack.push((a, i));
                stack.push((i, b));
            }
        }
    }
    if keep.iter().filter(|&&k| k).count() < 3 {
        // Everything within the tolerance of the chord: keep a triangle, the third vertex the
        // one farthest from it.
        let (pa, pb) = (at(0), at(far));
        let third = (1..n).filter(|&i| i != far).max_by(|&a, &b| {
            segment_distance(at(a), pa, pb).total_cmp(&segment_distance(at(b), pa, pb)).then(b.cmp(&a))
        });
        keep[third.expect("a ring has at least 4 vertices")] = true;
    }
    ring.iter().zip(&keep).filter(|(_, &k)| k).map(|(&p, _)| p).collect()
}

fn dist2(a: (f64, f64), b: (f64, f64)) -> f64 {
    (a.0 - b.0).powi(2) + (a.1 - b.1).powi(2)
}

/// Distance from `p` to the segment `a`–`b`.
fn segment_distance(p: (f64, f64), a: (f64, f64), b: (f64, f64)) -> f64 {
    let len2 = dist2(a, b);
    if len2 == 0.0 {
        return dist2(p, a).sqrt();
    }
    let t = (((p.0 - a.0) * (b.0 - a.0) + (p.1 - a.1) * (b.1 - a.1)) / len2).clamp(0.0, 1.0);
    dist2(p, (a.0 + t * (b.0 - a.0), a.1 + t * (b.1 - a.1))).sqrt()
}

/// Options for [`Mask::to_polygons`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PolygonOptions {
    /// Douglas–Peucker tolerance in pixels: vertices within this distance of the simplified
    /// outline are dropped. 0 (the default) keeps the exact pixel outline (its corners only).
    /// 1.0 suits SAM masks: a disk of radius 40 keeps 20 of its 196 corners at IoU 0.99 with
    /// the mask (radius 10: 8 of 52, IoU 0.95).
    pub tolerance: f64,
    /// Components (8-connected) with fewer pixels than this are dropped (default 0: none).
    pub min_area: u64,
}

impl Default for PolygonOptions {
    fn default() -> Self {
        Self { tolerance: 0.0, min_area: 0 }
    }
}

/// A COCO run-length encoding: `counts` are run lengths over the pixels in **column-major**
/// order (down the first column, then the next), alternating background and foreground and
/// starting with background, so `counts[0]` is 0 when the first pixel is set (`maskApi.c`,
/// `rleEncode`). `sum(counts) == height * width` always holds.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Rle {
    height: u32,
    width: u32,
    counts: Vec<u32>,
}

impl Rle {
    /// An RLE from its parts. Errors when the counts do not add up to `height * width` or the
    /// size exceeds `u32::MAX` pixels. pycocotools checks less: its `decode` refuses counts
    /// that run past the end ("Invalid RLE mask representation") but leaves the pixels after
    /// counts that stop short uninitialised (garbage). Zero-length runs are accepted, as
    /// pycocotools accepts them.
    pub fn new(height: u32, width: u32, counts: Vec<u32>) -> Result<Self> {
        let pixels = u64::from(height) * u64::from(width);
        if pixels > u64::from(u32::MAX) {
            return Err(Error::arg("size", format!("{height}x{width} = {pixels} pixels, over 2^32 - 1")));
        }
        let sum: u64 = counts.iter().map(|&c| u64::from(c)).sum();
        if sum != pixels {
            return Err(Error::arg(
                "counts",
                format!("runs add up to {sum} pixels, the {height}x{width} size has {pixels}"),
            ));
        }
        Ok(Self { height, width, counts })
    }

    /// Encodes a mask as pycocotools' `encode(np.asfortranarray(mask))` does. A mask with no
    /// pixels gives counts `[0]`, as `rleEncode` does.
    pub fn encode(mask: &Mask) -> Self {
        let (w, h) = (mask.width as usize, mask.height as usize);
        let mut counts = Vec::new();
        let (mut current, mut run) = (false, 0u32);
        for x in 0..w {
            for y in 0..h {
                let v = mask.data[y * w + x];
                if v != current {
                    counts.push(run);
                    (current, run) = (v, 0);
                }
                run += 1;
            }
        }
        counts.push(run);
        Self { height: mask.height, width: mask.width, counts }
    }

    /// Height (`size[0]`).
    pub fn height(&self) -> u32 {
        self.height
    }

    /// Width (`size[1]`).
    pub fn width(&self) -> u32 {
        self.width
    }

    /// The run lengths, column-major, background first.
    pub fn counts(&self) -> &[u32] {
        &self.counts
    }

    /// The mask (pycocotools' `decode`).
    pub fn decode(&self) -> Mask {
        let (w, h) = (self.width as usize, self.height as usize);
        let mut mask = Mask::new(self.width, self.height);
        let mut pos = 0usize;
        for (i, &c) in self.counts.iter().enumerate() {
            if i % 2 == 1 {
                for p in pos..pos + c as usize {
                    mask.data[(p % h) * w + p / h] = true;
                }
            }
            pos += c as usize;
        }
        mask
    }

    /// Number of foreground pixels: the sum of the odd-indexed counts (`rleArea`).
    pub fn area(&self) -> u64 {
        self.counts.iter().skip(1).step_by(2).map(|&c| u64::from(c)).sum()
    }

    /// COCO `[x, y, width, height]` as `rleToBbox` computes it (pycocotools' `toBbox`, which
    /// returns these integers as float64), ported step for step from pycocotools 2.0.11's
    /// `maskApi.c` in its 32-bit arithmetic: a trailing background run is dropped
    /// (`m = m / 2 * 2`), `[0, 0, 0, 0]` when no run is left, foreground runs of length 0 are
    /// skipped, and a foreground run spanning columns takes the full height. For canonical
    /// counts (what [`Rle::encode`] gives) this is the tight box, [`Mask::bbox`]. Quirk kept
    /// for non-canonical counts whose foreground runs are all empty (e.g. `[1, 0, 3]`):
    /// pycocotools returns `[w, h, 1 - w, 1 - h]` wrapped to 32 bits, and so does this.
    pub fn bbox(&self) -> [u32; 4] {
        let (h, w) = (self.height, self.width);
        let m = self.counts.len() / 2 * 2;
        if m == 0 {
            return [0; 4];
        }
        let (mut xs, mut ys, mut xe, mut ye, mut cc) = (w, h, 0u32, 0u32, 0u32);
        for (j, &count) in self.counts[..m].iter().enumerate() {
            let start = cc;
            cc = cc.wrapping_add(count);
            if j % 2 == 0 || count == 0 {
                continue;
            }
            // A nonzero foreground run means h > 0 (the counts add up to h * w).
            let (y_start, y_end) = (start % h, (cc - 1) % h);
            let (x_start, x_end) = ((start - y_start) / h, (cc - 1 - y_end) / h);
            xs = xs.min(x_start);
            xe = xe.max(x_end);
            if x_start < x_end {
                (ys, ye) = (0, h - 1);
            } else {
                (ys, ye) = (ys.min(y_start), ye.max(y_end));
            }
        }
        [xs, ys, xe.wrapping_sub(xs).wrapping_add(1), ye.wrapping_sub(ys).wrapping_add(1)]
    }

    /// pycocotools' compressed counts string (`rleToString`): each count, from the fourth on
    /// replaced by its difference with the count two before (`i > 2` in `maskApi.c`, so
    /// `counts[2]` is stored as is), is written as signed 5-bit groups, least significant
    /// first, one character each: `48 + group`, plus 32 when more groups follow. Characters
    /// are `'0'..='o'`, backslash included (JSON escapes it).
    pub fn to_string_counts(&self) -> String {
        let mut s = String::with_capacity(self.counts.len() * 2);
        for (i, &c) in self.counts.iter().enumerate() {
            let mut x = i64::from(c);
            if i > 2 {
                x -= i64::from(self.counts[i - 2]);
            }
            loop {
                let mut group = (x & 0x1f) as u8;
                x >>= 5;
                let more = if group & 0x10 != 0 { x != -1 } else { x != 0 };
                if more {
                    group |= 0x20;
                }
                s.push(char::from(group + 48));
                if !more {
                    break;
                }
            }
        }
        s
    }

    /// Parses pycocotools' compressed counts string (`rleFrString`) for a `height × width`
    /// mask. Unlike pycocotools, which reads any bytes and trusts the result, it errors on a
    /// character outside `'0'..='o'`, a truncated last count, a count over 7 characters, a
    /// negative or over-32-bit count, or counts not adding up to `height * width`.
    pub fn from_string_counts(s: &str, height: u32, width: u32) -> Result<Self> {
        let bad = |message: String| Error::arg("counts", message);
        let bytes = s.as_bytes();
        let mut counts: Vec<u32> = Vec::new();
        let mut p = 0;
        while p < bytes.len() {
            let (mut x, mut k) = (0i64, 0u32);
            loop {
                let Some(&b) = bytes.get(p) else {
                    return Err(bad(format!("string ends inside a count (after {} counts)", counts.len())));
                };
                if !(48..=111).contains(&b) {
                    return Err(bad(format!("byte {b:#04x} at {p} is not an RLE character ('0'..='o')")));
                }
                if k == 7 {
                    return Err(bad(format!("count at byte {p} is longer than 7 characters")));
                }
                let c = i64::from(b - 48);
                x |= (c & 0x1f) << (5 * k);
                p += 1;
                k += 1;
                if c & 0x20 == 0 {
                    if c & 0x10 != 0 {
                        x |= -1i64 << (5 * k);
                    }
                    break;
                }
            }
            let m = counts.len();
            if m > 2 {
                x += i64::from(counts[m - 2]);
            }
            let count = u32::try_from(x).map_err(|_| bad(format!("count {m} decodes to {x}")))?;
            counts.push(count);
        }
        Self::new(height, width, counts)
    }

    /// `{"size": [h, w], "counts": "<string>"}`: pycocotools' `encode` output with the counts
    /// bytes decoded to `str`, as COCO result files store it.
    pub fn to_json(&self) -> Value {
        serde_json::json!({"size": [self.height, self.width], "counts": self.to_string_counts()})
    }

    /// [`Rle::to_json`] as text, byte for byte what Python's `json.dumps` writes for the
    /// pycocotools dict (`size` first, `", "` and `": "` separators); `serde_json::Value`
    /// itself does not keep key order.
    pub fn to_json_string(&self) -> String {
        let counts = Value::String(self.to_string_counts()).to_string();
        format!("{{\"size\": [{}, {}], \"counts\": {counts}}}", self.height, self.width)
    }

    /// The uncompressed form, `{"size": [h, w], "counts": [runs...]}` (COCO's `iscrowd`
    /// annotations).
    pub fn to_json_uncompressed(&self) -> Value {
        serde_json::json!({"size": [self.height, self.width], "counts": self.counts})
    }

    /// Reads `{"size": [h, w], "counts": ...}` with the counts either pycocotools' string or
    /// the uncompressed list of run lengths (what `frPyObjects` accepts).
    pub fn from_json(value: &Value) -> Result<Self> {
        let bad = |message: &str| Error::arg("rle", message.to_string());
        let size = value.get("size").and_then(Value::as_array).ok_or_else(|| bad("no \"size\": [h, w] array"))?;
        let dim = |v: &Value| v.as_u64().and_then(|v| u32::try_from(v).ok());
        let (height, width) = match size.as_slice() {
            [h, w] => (dim(h), dim(w)),
            _ => (None, None),
        };
        let (Some(height), Some(width)) = (height, width) else {
            return Err(bad("\"size\" must be [height, width], two non-negative 32-bit integers"));
        };
        match value.get("counts") {
            Some(Value::String(s)) => Self::from_string_counts(s, height, width),
            Some(Value::Array(list)) => {
                let counts = list.iter().map(dim).collect::<Option<Vec<u32>>>();
                let counts = counts.ok_or_else(|| bad("\"counts\" list must hold non-negative 32-bit integers"))?;
                Self::new(height, width, counts)
            }
            _ => Err(bad("no \"counts\" string or list")),
        }
    }
}

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
