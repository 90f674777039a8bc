//! Datasets and files, with no model knowledge: image files under the paths a user names
//! ([`files`]), labelled sets as `ImageFolder` or IDX files ([`dataset`]), NumPy `.npy` arrays
//! ([`npy`]), and [`ImageSource`], what batch extractors read images from.

pub mod captions;
pub mod dataset;
pub mod files;
pub mod npy;
pub mod source;

pub use captions::CaptionSet;
pub use dataset::{is_idx_dir, unlabelled_items, Item, ItemImage, LabelledSet, Split};
pub use files::{collect_images, has_image_extension};
pub use source::ImageSource;
