//! [`Mask`]: a binary mask (SAM's output), row-major, with its area, bounding box, PNG I/O and
//! hole filling. Its COCO forms are in [`super::rle`] and [`super::polygon`].
//!
//! Coordinates: pixel `(x, y)` is column `x`, row `y`; as a polygon vertex space, pixel `(x, y)`
//! covers the square `[x, x + 1] × [y, y + 1]` (the COCO convention: pycocotools rasterises a
//! polygon by the pixel centres inside it).

use std::path::Path;

use ::image::{DynamicImage, GrayImage, ImageDecoder, ImageError, ImageFormat, ImageReader};

use crate::image::DEFAULT_MAX_PIXELS;
use crate::{Error, Result};

/// A binary mask: `width × height` pixels, row-major, `true` = foreground.
///
/// At most `u32::MAX` pixels, because COCO RLE run lengths are 32-bit (`uint` in `maskApi.c`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Mask {
    pub(super) width: u32,
    pub(super) height: u32,
    pub(super) data: Vec<bool>,
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
    /// An all-background mask. Errors when `width * height` exceeds `u32::MAX` (the RLE limit).
    pub fn new(width: u32, height: u32) -> Result<Self> {
        let pixels = check_size(width, height)?;
        Ok(Self { width, height, data: vec![false; pixels] })
    }

    /// A mask from `f(x, y)`, evaluated row by row. Errors as [`Mask::new`].
    pub fn from_fn(width: u32, height: u32, mut f: impl FnMut(u32, u32) -> bool) -> Result<Self> {
        check_size(width, height)?;
        let data = (0..height).flat_map(|y| (0..width).map(move |x| (x, y))).map(|(x, y)| f(x, y)).collect();
        Ok(Self { width, height, data })
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
    /// an empty mask: what pycocotools' `toBbox` gives for
    /// [`Rle::encode`](super::rle::Rle::encode) of this mask (it returns the same integers as
    /// float64).
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
    pub(super) fn components(&self) -> (Vec<u32>, Vec<u64>) {
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
}

/// Background pixels 4-connected to the border, given the foreground.
pub(super) fn outside_region(w: usize, h: usize, fg: &[bool]) -> Vec<bool> {
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
