//! Image decoding and Pillow-equivalent preprocessing.
//!
//! # Decoding ([`load_rgb`], [`decode_rgb`])
//!
//! JPEG, PNG, WebP, GIF (first frame), BMP and TIFF through the `image` crate, the format
//! recognised from the content. The result is always 8-bit RGB ([`RgbImage`]), as Pillow's
//! `Image.open(p).convert("RGB")` gives the Python reference pipelines:
//!
//! * greyscale is replicated to three channels;
//! * alpha is **dropped, not composited** (Pillow's `convert("RGB")` on RGBA / LA / transparent
//!   palettes keeps the colour under a transparent pixel too). [`load_image`] keeps it instead
//!   ([`Decoded`]), for the preprocessing to treat as the checkpoint family's reference does
//!   ([`AlphaRule`]: transformers composites onto white before resizing, open_clip resizes
//!   with premultiplied alpha and then drops it);
//! * 16-bit samples are scaled to 8 bits with rounding, `round(v / 257)`. Pillow differs here:
//!   16-bit RGB PNGs keep the high byte (`v >> 8`, so ±1 against us), and 16-bit greyscale
//!   (`I;16`) is *clipped* to 255 by `convert("RGB")`, which turns most of the image white —
//!   a Pillow quirk we do not reproduce;
//! * CMYK (JPEG, TIFF) is converted to RGB by the decoder;
//! * **EXIF orientation is applied**, as `PIL.ImageOps.exif_transpose` would (JPEG, PNG eXIf,
//!   WebP, TIFF): phone photos come out upright, which is what users expect of an embedding
//!   or a mask. Note that the reference CLIP preprocessing (open_clip, OpenAI `clip`, Hugging
//!   Face) does *not* transpose, so for a photo tagged with a rotation vista embeds the upright
//!   image while the reference embeds the sensor-oriented one. Set
//!   [`DecodeOptions::exif_orientation`] to `false` to feed the models what the reference
//!   pipelines feed them.
//!
//! A decompression-bomb guard refuses, from the header and before any pixel is decoded,
//! images with more than [`DecodeOptions::max_pixels`] pixels ([`DEFAULT_MAX_PIXELS`], Pillow's
//! own error threshold) with [`crate::Error::ImageTooLarge`]; the `image` crate's allocation
//! limit is set from it as well. Truncated or corrupt data, unknown formats and (should one
//! happen) a decoder panic are [`crate::Error::ImageDecode`]; every error names the file.
//!
//! JPEG: the `image` crate decodes with zune-jpeg, Pillow with libjpeg-turbo; their IDCT and
//! chroma upsampling round differently, so JPEG pixels agree with Pillow's within a few levels
//! (a real 4:2:0 photo: max 3, mean 0.3; 4:4:4 / greyscale / CMYK: max 2; see
//! `tests/suite/image_decode.rs`). PNG, GIF, BMP, TIFF and WebP (lossless, and lossy on our
//! fixtures) agree exactly. A JPEG that ends before its end-of-image marker is refused as
//! truncated, as Pillow does (zune-jpeg alone would fill the rest with grey).
//!
//! # Resizing ([`resize_exact`], [`resize_region`])
//!
//! Pillow's antialiased convolution resampling (`Image.resize` with `BICUBIC` or `BILINEAR`),
//! ported value for value (22-bit fixed-point weights, uint8 rounding after each pass, Pillow
//! 13's pass order; details in [`resize`]). Measured against Pillow 13.0 / torchvision 0.29
//! (`tests/suite/preprocess_parity.rs`): every uint8 value of every fixture case is identical; the
//! normalisation after it is bit-identical to torchvision's and HF's.
//!
//! Speed (one core, release): 512×512 → 224 resize + crop ≈ 0.3 ms, + normalisation ≈ 0.45 ms;
//! a 12 MP photo → 224 ≈ 60 ms (Pillow's scalar integer arithmetic, kept for exactness).
//!
//! # CLIP preprocessing ([`ClipPreprocess`])
//!
//! torchvision `Resize(resize_shortest, BICUBIC)` (shortest side to `resize_shortest`, long side
//! `int(resize_shortest * long / short)`) → `CenterCrop(size)` → `ToTensor` → `Normalize`.
//! The centre-crop offset differs between torchvision and Hugging Face when the margin is odd:
//! [`CropRounding`] picks one. Only the cropped pixels are resampled.
//!
//! Later models reuse the pieces: DINO is `resize_shortest: 256, size: 224` with ImageNet
//! statistics; SAM resizes the longest side ([`longest_side_size`]) with [`resize_exact`] and
//! pads.

pub mod augment;
mod decode;
mod preprocess;
pub mod resize;

pub use ::image::RgbaImage;
pub use ::image::{Rgb, RgbImage};
pub use decode::{decode_image, decode_rgb, load_image, load_rgb, DecodeOptions, Decoded, DEFAULT_MAX_PIXELS};
pub use preprocess::{
    flatten_alpha, AlphaRule, ClipPreprocess, CropRounding, IMAGENET_MEAN, IMAGENET_STD, OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
};
pub use resize::{longest_side_size, resize_exact, resize_region, shortest_side_size, Filter, Region};
