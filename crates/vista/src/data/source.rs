//! [`ImageSource`]: anything that gives an image — a file, a dataset item, an image in memory —
//! so batch extractors take any of them.

use std::path::PathBuf;

use crate::data::dataset::{Item, ItemImage};
use crate::image::{self, DecodeOptions, RgbImage};
use crate::Result;

/// Something that gives an image: a file, a dataset item, an image in memory.
pub trait ImageSource: Sync {
    /// Decodes (or copies) the image.
    fn load_image(&self, decode: &DecodeOptions) -> Result<RgbImage>;
    /// Names the source in errors.
    fn describe(&self) -> String;
}

impl ImageSource for PathBuf {
    fn load_image(&self, decode: &DecodeOptions) -> Result<RgbImage> {
        image::load_rgb(self, decode)
    }
    fn describe(&self) -> String {
        self.display().to_string()
    }
}

impl ImageSource for Item {
    fn load_image(&self, decode: &DecodeOptions) -> Result<RgbImage> {
        self.load(decode)
    }
    fn describe(&self) -> String {
        match &self.image {
            ItemImage::File(p) => p.display().to_string(),
            ItemImage::Gray(g) => format!("in-memory {}x{} image (label {})", g.width(), g.height(), self.label),
        }
    }
}

impl ImageSource for RgbImage {
    fn load_image(&self, _: &DecodeOptions) -> Result<RgbImage> {
        Ok(self.clone())
    }
    fn describe(&self) -> String {
        format!("in-memory {}x{} image", self.width(), self.height())
    }
}
