//! [`ImageSource`]: anything that gives an image — a file, a dataset item, an image in memory —
//! so batch extractors take any of them.

use std::path::PathBuf;

use crate::data::dataset::{Item, ItemImage};
use crate::image::{self, DecodeOptions, Decoded, RgbImage};
use crate::Result;

/// Something that gives an image: a file, a dataset item, an image in memory.
pub trait ImageSource: Sync {
    /// Decodes (or copies) the image, transparency kept (see [`image::load_image`]).
    fn load_image(&self, decode: &DecodeOptions) -> Result<Decoded>;
    /// Names the source in errors.
    fn describe(&self) -> String;
}

impl ImageSource for PathBuf {
    fn load_image(&self, decode: &DecodeOptions) -> Result<Decoded> {
        image::load_image(self, decode)
    }
    fn describe(&self) -> String {
        self.display().to_string()
    }
}

impl ImageSource for Item {
    fn load_image(&self, decode: &DecodeOptions) -> Result<Decoded> {
        match &self.image {
            ItemImage::File(path) => image::load_image(path, decode),
            ItemImage::Gray(_) => self.load(decode).map(Decoded::Rgb),
        }
    }
    fn describe(&self) -> String {
        match &self.image {
            ItemImage::File(p) => p.display().to_string(),
            ItemImage::Gray(g) => format!("in-memory {}x{} image (label {})", g.width(), g.height(), self.label),
        }
    }
}

impl ImageSource for RgbImage {
    fn load_image(&self, _: &DecodeOptions) -> Result<Decoded> {
        Ok(Decoded::Rgb(self.clone()))
    }
    fn describe(&self) -> String {
        format!("in-memory {}x{} image", self.width(), self.height())
    }
}
