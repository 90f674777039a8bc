//! Decoding files and byte buffers into 8-bit RGB (or RGBA, keeping transparency), with a
//! decompression-bomb guard.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use ::image::error::{ImageFormatHint, UnsupportedErrorKind};
use ::image::{DynamicImage, ImageDecoder, ImageError, ImageFormat, ImageReader, Limits, RgbImage, RgbaImage};

use crate::{Error, Result};

/// Default for [`DecodeOptions::max_pixels`]: 178,956,970 pixels, the count at which Pillow
/// refuses an image as a decompression bomb (`2 * Image.MAX_IMAGE_PIXELS`, 2 × 89,478,485).
///
/// Matching Pillow means every image the Python reference pipelines open, vista opens too,
/// and what they refuse as a bomb vista refuses. It admits a 178 MP 16,320 × 10,880 photo
/// (200 MP phone sensors, 16,320 × 12,240, exceed it, as they exceed Pillow's) while bounding
/// the decoded buffer at ~537 MB of RGB8 (~1.4 GB for 16-bit RGBA sources). Raise it with
/// [`DecodeOptions::with_max_pixels`] for trusted inputs.
pub const DEFAULT_MAX_PIXELS: u64 = 2 * 89_478_485;

/// Scratch the decoders may allocate on top of the output buffer (metadata chunks, row and
/// strip buffers, the zlib window...): part of the `image` crate's allocation limit.
const DECODER_SCRATCH_BYTES: u64 = 64 << 20;

/// Largest bytes per pixel among the decoders' output types we may see (16-bit RGBA;
/// 32-bit float TIFFs are the exception and, near the pixel limit, hit the allocation limit).
const MAX_DECODED_BYTES_PER_PIXEL: u64 = 8;

/// A decoded image: 8-bit RGB, or RGBA when the file has transparency.
///
/// What a reference pipeline does with the transparency depends on the checkpoint family
/// ([`crate::image::AlphaRule`]); [`Decoded::into_rgb`] is Pillow's `convert("RGB")` (alpha dropped).
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    /// No transparency.
    Rgb(RgbImage),
    /// With transparency.
    Rgba {
        /// The pixels (greyscale replicated; a palette or colour key expanded to alpha).
        image: RgbaImage,
        /// Whether the file stores an alpha channel (RGBA or grey + alpha; Pillow's `RGBA` / `LA`
        /// modes) rather than a palette or colour-key transparency (Pillow's `P` / `RGB` / `L`
        /// with `info["transparency"]`): Pillow premultiplies alpha when it resizes the former
        /// only.
        alpha_channel: bool,
    },
}

impl Decoded {
    /// `(width, height)`.
    pub fn dimensions(&self) -> (u32, u32) {
        match self {
            Decoded::Rgb(im) => im.dimensions(),
            Decoded::Rgba { image, .. } => image.dimensions(),
        }
    }

    /// Pillow's `convert("RGB")`: the colour under each pixel, alpha dropped (not composited).
    pub fn into_rgb(self) -> RgbImage {
        match self {
            Decoded::Rgb(im) => im,
            Decoded::Rgba { image, .. } => DynamicImage::ImageRgba8(image).into_rgb8(),
        }
    }
}

/// Options for [`load_rgb`] and [`decode_rgb`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeOptions {
    /// Refuse images with more pixels than this ([`Error::ImageTooLarge`]), checked from the
    /// header before any pixel is decoded. `u64::MAX` disables the check (and the allocation
    /// limit derived from it). Default: [`DEFAULT_MAX_PIXELS`].
    pub max_pixels: u64,
    /// Apply the EXIF orientation tag, as Pillow's `ImageOps.exif_transpose` does (default:
    /// `true`). Set `false` to give rotated photos to the model as the reference CLIP pipelines
    /// do: open_clip and Hugging Face do not transpose.
    pub exif_orientation: bool,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        Self { max_pixels: DEFAULT_MAX_PIXELS, exif_orientation: true }
    }
}

impl DecodeOptions {
    /// The defaults with another pixel limit.
    pub fn with_max_pixels(max_pixels: u64) -> Self {
        Self { max_pixels, ..Self::default() }
    }

    /// The `image` crate's limits: the decoders' allocations are bounded by the largest image
    /// we admit at the widest pixel type, plus scratch.
    fn limits(&self) -> Limits {
        let mut limits = Limits::no_limits();
        limits.max_alloc = if self.max_pixels == u64::MAX {
            None
        } else {
            Some(self.max_pixels.saturating_mul(MAX_DECODED_BYTES_PER_PIXEL).saturating_add(DECODER_SCRATCH_BYTES))
        };
        limits
    }
}

/// Decodes the image file at `path` (JPEG, PNG, WebP, GIF — first frame —, BMP or TIFF; the
/// format is recognised from the content, not the extension) into 8-bit RGB.
///
/// See the [module docs](super) for the conversions. Errors: [`Error::Io`] when the file
/// cannot be opened, [`Error::ImageTooLarge`] over [`DecodeOptions::max_pixels`],
/// [`Error::ImageDecode`] for anything else (unknown format, truncated or corrupt data); all
/// name the file.
pub fn load_rgb(path: impl AsRef<Path>, options: &DecodeOptions) -> Result<RgbImage> {
    load_image(path, options).map(Decoded::into_rgb)
}

/// Decodes an image held in memory; `name_for_errors` (a path, URL or any label) is what
/// the errors name. Same formats and conversions as [`load_rgb`].
pub fn decode_rgb(bytes: &[u8], name_for_errors: impl AsRef<Path>, options: &DecodeOptions) -> Result<RgbImage> {
    decode_image(bytes, name_for_errors, options).map(Decoded::into_rgb)
}

/// [`load_rgb`], keeping transparency: RGBA when the file has an alpha channel, a transparent
/// palette entry or a colour key.
pub fn load_image(path: impl AsRef<Path>, options: &DecodeOptions) -> Result<Decoded> {
    let path = path.as_ref();
    // Whole file in memory: it is the compressed size (the pixel limit bounds the rest), and
    // the JPEG completeness check below wants the end of the data.
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode_from(&bytes, path, options)
}

/// [`decode_rgb`], keeping transparency as [`load_image`] does.
pub fn decode_image(bytes: &[u8], name_for_errors: impl AsRef<Path>, options: &DecodeOptions) -> Result<Decoded> {
    decode_from(bytes, name_for_errors.as_ref(), options)
}

fn decode_error(path: &Path, message: impl Into<String>) -> Error {
    Error::ImageDecode { path: path.to_path_buf(), message: message.into() }
}

fn image_error(path: &Path, e: ImageError) -> Error {
    let message = match &e {
        ImageError::Unsupported(u) if matches!(u.kind(), UnsupportedErrorKind::Format(ImageFormatHint::Unknown)) => {
            "unrecognised image format (supported: JPEG, PNG, WebP, GIF, BMP, TIFF)".to_string()
        }
        ImageError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            format!("truncated file ({io})")
        }
        ImageError::Limits(_) => format!("{e} (decoder memory limit; see DecodeOptions::max_pixels)"),
        _ => e.to_string(),
    };
    decode_error(path, message)
}

fn decode_from(bytes: &[u8], path: &Path, options: &DecodeOptions) -> Result<Decoded> {
    // The decoders are not supposed to panic on bad input; if one does anyway, the caller
    // still gets an ImageDecode error naming the file rather than an unwinding batch.
    crate::error::catch_panic(
        || decode_inner(bytes, path, options),
        |what| decode_error(path, format!("decoder panicked: {what}")),
    )
}

fn decode_inner(bytes: &[u8], path: &Path, options: &DecodeOptions) -> Result<Decoded> {
    let mut reader = ImageReader::new(Cursor::new(bytes)).with_guessed_format().map_err(|e| Error::io(path, e))?;
    let reader_format = reader.format();
    let mut limits = options.limits();
    reader.limits(limits.clone());
    // Reads the headers only.
    let mut decoder = reader.into_decoder().map_err(|e| image_error(path, e))?;
    let (width, height) = decoder.dimensions();
    let pixels = u64::from(width) * u64::from(height);
    if pixels > options.max_pixels {
        return Err(Error::ImageTooLarge {
            path: PathBuf::from(path),
            width,
            height,
            pixels,
            limit: options.max_pixels,
        });
    }
    if pixels == 0 {
        return Err(decode_error(path, format!("image has no pixels ({width}x{height})")));
    }
    // As ImageReader::decode does: the output buffer comes out of the allocation budget,
    // the decoder gets the rest.
    limits.reserve(decoder.total_bytes()).map_err(|e| image_error(path, e))?;
    decoder.set_limits(limits).map_err(|e| image_error(path, e))?;
    // A missing or unreadable EXIF block means "upright", as for Pillow.
    let orientation = if options.exif_orientation { decoder.orientation().ok() } else { None };
    if reader_format == Some(ImageFormat::Jpeg) && !jpeg_is_complete(bytes) {
        // zune-jpeg fills missing data with grey and succeeds; libjpeg warns and Pillow raises
        // "image file is truncated". A half-grey photo is not what anyone wants to embed.
        return Err(decode_error(path, "truncated file (JPEG data ends before the end-of-image marker)"));
    }
    let mut image = DynamicImage::from_decoder(decoder).map_err(|e| image_error(path, e))?;
    if let Some(orientation) = orientation {
        image.apply_orientation(orientation);
    }
    if !image.color().has_alpha() {
        // into_rgb8 moves an RGB8 buffer without a copy and converts the rest: greyscale
        // replicated, deeper samples scaled to 8 bits with rounding (`round(v / 257)`).
        return Ok(Decoded::Rgb(image.into_rgb8()));
    }
    let image = image.into_rgba8();
    if image.pixels().all(|p| p[3] == u8::MAX) {
        // Opaque everywhere (a GIF frame, an RGBA PNG without transparency): every family's
        // rule leaves the colours as they are.
        return Ok(Decoded::Rgb(DynamicImage::ImageRgba8(image).into_rgb8()));
    }
    let alpha_channel = match reader_format {
        // The decoder expands palettes and colour keys (tRNS) to alpha; Pillow keeps them as
        // P / RGB / L images with info["transparency"]. IHDR's colour type tells them apart.
        Some(ImageFormat::Png) => matches!(bytes.get(25), Some(4 | 6)),
        Some(ImageFormat::Gif) => false,
        _ => true,
    };
    Ok(Decoded::Rgba { image, alpha_channel })
}

/// Whether a JPEG stream has its end-of-image marker after the first scan: walks the marker
/// segments up to the first SOS (so that an EXIF thumbnail's EOI does not count), then looks
/// for FF D9 after it (entropy-coded data cannot contain it: a data FF is followed by 00).
/// Data appended after the EOI (MPF images, trailers) is fine.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let mut pos = 2; // after SOI
    let sos = loop {
        // skip to the marker: FF (fill FFs) code
        while pos < bytes.len() && bytes[pos] != 0xFF {
            pos += 1;
        }
        while pos < bytes.len() && bytes[pos] == 0xFF {
            pos += 1;
        }
        let Some(&code) = bytes.get(pos) else {
            return false;
        };
        pos += 1;
        match code {
            0xDA => break pos,
            0xD9 => return false, // EOI before any scan
            0x01 | 0xD0..=0xD7 => {}
            _ => {
                let Some(len) = bytes.get(pos..pos + 2) else {
                    return false;
                };
                pos += usize::from(u16::from_be_bytes([len[0], len[1]]));
            }
        }
    };
    bytes.get(sos..).is_some_and(|rest| rest.windows(2).any(|w| w == [0xFF, 0xD9]))
}
