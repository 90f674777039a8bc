//! Decoding: every format, the pixel conversions, EXIF orientation, errors and the pixel limit.
//!
//! Expected pixels come from Pillow (tools/reference/gen_preprocess.py,
//! tests/fixtures/preprocess/decode/). Lossless formats must match exactly. Lossy ones are
//! decoded by other libraries than Pillow's (zune-jpeg vs libjpeg-turbo, image-webp vs
//! libwebp), which differ in IDCT rounding and chroma upsampling: bounds below.

use std::path::{Path, PathBuf};

use serde_json::Value;
use vista::image::{decode_rgb, load_rgb, DecodeOptions, RgbImage, DEFAULT_MAX_PIXELS};
use vista::Error;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/preprocess")
}

fn manifest() -> Value {
    let text = std::fs::read_to_string(fixtures().join("manifest.json")).expect("manifest.json");
    serde_json::from_str(&text).expect("manifest json")
}

fn expected(name: &str) -> (Vec<usize>, Vec<u8>) {
    let bytes = std::fs::read(fixtures().join("decode/expected.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor(name).unwrap_or_else(|_| panic!("no expected tensor {name}"));
    assert_eq!(t.dtype(), safetensors::Dtype::U8);
    (t.shape().to_vec(), t.data().to_vec())
}

fn opts() -> DecodeOptions {
    DecodeOptions::default()
}

/// Largest |diff| and largest mean |diff| allowed against Pillow, per fixture.
///
/// JPEG (zune-jpeg vs Pillow's libjpeg-turbo), measured with Pillow 13.0 / image 0.25.10:
/// greyscale, 4:4:4 and CMYK differ only by IDCT rounding (max 1-2, mean < 0.05); 4:2:0
/// adds the chroma upsampling ("fancy" triangle filter in both, rounded differently): max 3,
/// mean 0.30 on the real photo, max 9, mean 0.38 on the synthetic image, whose saturated
/// one-pixel colour edges are the worst case. Bounds: a little headroom over those.
fn tolerance(file: &str, format: &str) -> (u8, f64) {
    let name = file.rsplit('/').next().unwrap();
    match (format, name) {
        // 16-bit: Pillow keeps the high byte, we round v / 257: off by at most one
        (_, "rgb16.png") => (1, 0.5),
        ("jpeg", "rgb_q90_420.jpg" | "rgb_progressive.jpg") => (12, 0.5),
        ("jpeg", "photo_q85.jpg") => (4, 0.4),
        ("jpeg", _) => (3, 0.1), // 4:4:4 (orient*.jpg), greyscale, CMYK
        // image-webp's lossy decoder matches libwebp exactly here
        ("webp", "lossy.webp") => (1, 0.05),
        _ => (0, 0.0),
    }
}

fn diff_stats(a: &[u8], b: &[u8]) -> (u8, f64, f64) {
    assert_eq!(a.len(), b.len());
    let mut max = 0u8;
    let mut sum = 0u64;
    let mut exact = 0usize;
    for (x, y) in a.iter().zip(b) {
        let d = x.abs_diff(*y);
        max = max.max(d);
        sum += u64::from(d);
        exact += (d == 0) as usize;
    }
    (max, sum as f64 / a.len() as f64, exact as f64 / a.len() as f64)
}

#[test]
fn every_fixture_decodes_like_pillow() {
    let m = manifest();
    let mut failures = vec![];
    for case in m["decode_cases"].as_array().unwrap() {
        let file = case["file"].as_str().unwrap();
        let format = case["format"].as_str().unwrap();
        let img = match load_rgb(fixtures().join(file), &opts()) {
            Ok(img) => img,
            Err(e) => {
                failures.push(format!("{file}: {e}"));
                continue;
            }
        };
        let (w, h) = (case["width"].as_u64().unwrap() as u32, case["height"].as_u64().unwrap() as u32);
        assert_eq!(img.dimensions(), (w, h), "{file}: size");
        let (shape, exp) = expected(case["tensor"].as_str().unwrap());
        assert_eq!(shape, vec![h as usize, w as usize, 3]);
        let (max, mean, exact) = diff_stats(img.as_raw(), &exp);
        let (tol_max, tol_mean) = tolerance(file, format);
        println!(
            "{file:<32} {:<5} {:<5} {w}x{h}: max |diff| {max:>2}, mean {mean:.4}, exact {:>7.3} %  (allowed max {tol_max})",
            format,
            case["pillow_mode"].as_str().unwrap(),
            100.0 * exact
        );
        if max > tol_max || mean > tol_mean {
            failures.push(format!("{file}: max {max} mean {mean:.4} (allowed {tol_max} / {tol_mean})"));
        }
    }
    assert!(failures.is_empty(), "decode failures:\n{}", failures.join("\n"));
}

/// The photos decode exactly as Pillow does (FNV-1a 64 of the RGB bytes, from the manifest).
#[test]
fn photos_decode_exactly() {
    fn fnv1a64(bytes: &[u8]) -> String {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        format!("{h:016x}")
    }
    let m = manifest();
    for (name, info) in m["photos"].as_object().unwrap() {
        let img = load_rgb(fixtures().join(name), &opts()).unwrap();
        assert_eq!(img.dimensions(), (info["width"].as_u64().unwrap() as u32, info["height"].as_u64().unwrap() as u32));
        assert_eq!(fnv1a64(img.as_raw()), info["rgb_fnv1a64"].as_str().unwrap(), "{name}");
    }
}

fn rotate90_cw(img: &RgbImage) -> RgbImage {
    ::image::imageops::rotate90(img)
}

/// Orientation 6 is the stored image rotated 90° clockwise, bit for bit (the same JPEG data,
/// so this holds whatever the JPEG decoder), and `exif_orientation: false` keeps it stored.
#[test]
fn exif_orientation_is_applied() {
    let dir = fixtures().join("decode");
    let stored = load_rgb(dir.join("orient1.jpg"), &opts()).unwrap();
    assert_eq!(stored.dimensions(), (40, 30));
    let o6 = load_rgb(dir.join("orient6.jpg"), &opts()).unwrap();
    assert_eq!(o6.dimensions(), (30, 40));
    assert!(o6 == rotate90_cw(&stored), "orientation 6 = rotate 90 CW");
    let o3 = load_rgb(dir.join("orient3.jpg"), &opts()).unwrap();
    assert!(o3 == ::image::imageops::rotate180(&stored));
    let o8 = load_rgb(dir.join("orient8.jpg"), &opts()).unwrap();
    assert!(o8 == ::image::imageops::rotate270(&stored));
    let o2 = load_rgb(dir.join("orient2.jpg"), &opts()).unwrap();
    assert!(o2 == ::image::imageops::flip_horizontal(&stored));
    for o in 5..=8 {
        let img = load_rgb(dir.join(format!("orient{o}.jpg")), &opts()).unwrap();
        assert_eq!(img.dimensions(), (30, 40), "orientation {o}");
    }
    // PNG eXIf and WebP EXIF too
    for f in ["orient6.png", "orient6.webp"] {
        let img = load_rgb(dir.join(f), &opts()).unwrap();
        let flat = load_rgb(dir.join(f), &DecodeOptions { exif_orientation: false, ..opts() }).unwrap();
        assert_eq!(flat.dimensions(), (40, 30), "{f}");
        assert!(img == rotate90_cw(&flat), "{f}");
    }
    let raw = load_rgb(dir.join("orient6.jpg"), &DecodeOptions { exif_orientation: false, ..opts() }).unwrap();
    assert!(raw == stored);
}

#[test]
fn animated_gif_gives_the_first_frame() {
    let dir = fixtures().join("decode");
    let anim = load_rgb(dir.join("anim.gif"), &opts()).unwrap();
    let still = load_rgb(dir.join("palette.gif"), &opts()).unwrap();
    assert!(anim == still, "first frame of anim.gif is palette.gif");
}

fn assert_decode_error(result: vista::Result<RgbImage>, name: &str) -> String {
    match result {
        Err(e @ Error::ImageDecode { .. }) => {
            let msg = e.to_string();
            if let Error::ImageDecode { path, .. } = &e {
                assert!(path.to_string_lossy().contains(name), "{msg}");
            }
            assert!(msg.contains(name), "error does not name the file: {msg}");
            msg
        }
        Err(e) => panic!("{name}: expected ImageDecode, got {e:?}"),
        Ok(img) => panic!("{name}: decoded a {:?} image from bad data", img.dimensions()),
    }
}

#[test]
fn truncated_files_are_decode_errors() {
    let dir = fixtures().join("decode");
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("vista_image_decode");
    std::fs::create_dir_all(&tmp).unwrap();
    for f in [
        "rgb8.png",
        "photo_q85.jpg",
        "rgb_progressive.jpg",
        "lossless.webp",
        "lossy.webp",
        "palette.gif",
        "rgb.bmp",
        "rgb_lzw.tiff",
    ] {
        let bytes = std::fs::read(dir.join(f)).unwrap();
        for keep in [bytes.len() / 2, bytes.len() * 9 / 10, 40] {
            let name = format!("truncated_{keep}_{f}");
            let msg = assert_decode_error(decode_rgb(&bytes[..keep], &name, &opts()), &name);
            if keep == bytes.len() / 2 {
                println!("{msg}");
            }
            // and through the file path
            let path = tmp.join(&name);
            std::fs::write(&path, &bytes[..keep]).unwrap();
            assert_decode_error(load_rgb(&path, &opts()), &name);
        }
    }
}

#[test]
fn garbage_is_a_decode_error() {
    // deterministic pseudo-random bytes (xorshift)
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let bytes: Vec<u8> = (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let msg = assert_decode_error(decode_rgb(&bytes, "noise.jpg", &opts()), "noise.jpg");
    assert!(msg.contains("unrecognised image format"), "{msg}");
    assert_decode_error(decode_rgb(&[], "empty.png", &opts()), "empty.png");
    // right magic, garbage after it
    // (a garbage header may also declare a huge size: ImageTooLarge, naming the file too)
    for magic in [&b"\x89PNG\r\n\x1a\n"[..], b"\xff\xd8\xff\xe0", b"GIF89a", b"BM", b"RIFF\0\0\0\0WEBPVP8 ", b"II*\0"] {
        let mut b = magic.to_vec();
        b.extend_from_slice(&bytes[..1000]);
        match decode_rgb(&b, "bad_magic", &opts()) {
            Err(e @ (Error::ImageDecode { .. } | Error::ImageTooLarge { .. })) => {
                assert!(e.to_string().contains("bad_magic"), "{e}")
            }
            other => panic!("{magic:?}: {other:?}"),
        }
    }
    // missing file: an Io error naming it
    match load_rgb("/nonexistent/dir/photo.jpg", &opts()) {
        Err(e @ Error::Io { .. }) => assert!(e.to_string().contains("photo.jpg")),
        other => panic!("{other:?}"),
    }
}

// ---- decompression bombs: headers claiming 50000 x 50000, without the pixel data ----------

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

fn png_chunk(out: &mut Vec<u8>, tag: &[u8; 4], payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    let mut body = tag.to_vec();
    body.extend_from_slice(payload);
    out.extend_from_slice(&body);
    out.extend_from_slice(&crc32(&body).to_be_bytes());
}

fn png_header(width: u32, height: u32) -> Vec<u8> {
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = vec![];
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB
    png_chunk(&mut png, b"IHDR", &ihdr);
    // a tiny (incomplete) zlib stream: the decoder would fail on it, not refuse the size
    png_chunk(&mut png, b"IDAT", &[0x78, 0x9c, 0x63, 0x00, 0x00]);
    png_chunk(&mut png, b"IEND", &[]);
    png
}

fn bmp_header(width: i32, height: i32) -> Vec<u8> {
    let mut b = b"BM".to_vec();
    b.extend_from_slice(&(54u32 + 16).to_le_bytes()); // file size (a lie)
    b.extend_from_slice(&0u32.to_le_bytes());
    b.extend_from_slice(&54u32.to_le_bytes()); // pixel data offset
    b.extend_from_slice(&40u32.to_le_bytes()); // BITMAPINFOHEADER
    b.extend_from_slice(&width.to_le_bytes());
    b.extend_from_slice(&height.to_le_bytes());
    b.extend_from_slice(&1u16.to_le_bytes()); // planes
    b.extend_from_slice(&24u16.to_le_bytes()); // bpp
    b.extend_from_slice(&[0; 24]); // BI_RGB, sizes, resolution, palette
    b.extend_from_slice(&[0x55; 16]); // a few pixels
    b
}

fn gif_header(width: u16, height: u16) -> Vec<u8> {
    let mut g = b"GIF89a".to_vec();
    g.extend_from_slice(&width.to_le_bytes());
    g.extend_from_slice(&height.to_le_bytes());
    g.extend_from_slice(&[0x80, 0, 0]); // global colour table of 2 entries
    g.extend_from_slice(&[0, 0, 0, 255, 255, 255]);
    // image descriptor covering the screen, then a truncated LZW stream
    g.push(0x2c);
    g.extend_from_slice(&[0, 0, 0, 0]);
    g.extend_from_slice(&width.to_le_bytes());
    g.extend_from_slice(&height.to_le_bytes());
    g.push(0);
    g.extend_from_slice(&[2, 2, 0x4c, 0x01, 0x00, 0x3b]);
    g
}

/// A real JPEG with the frame header's size patched.
fn jpeg_header(width: u16, height: u16) -> Vec<u8> {
    let mut j = std::fs::read(fixtures().join("decode/rgb_q95_444.jpg")).unwrap();
    let sof = j.windows(2).position(|w| w == [0xff, 0xc0]).expect("SOF0");
    j[sof + 5..sof + 7].copy_from_slice(&height.to_be_bytes());
    j[sof + 7..sof + 9].copy_from_slice(&width.to_be_bytes());
    j
}

fn assert_too_large(result: vista::Result<RgbImage>, name: &str, w: u32, h: u32) {
    match result {
        Err(Error::ImageTooLarge { path, width, height, pixels, limit }) => {
            assert_eq!((width, height), (w, h), "{name}");
            assert_eq!(pixels, u64::from(w) * u64::from(h));
            assert_eq!(limit, DEFAULT_MAX_PIXELS);
            assert_eq!(path, PathBuf::from(name));
        }
        other => panic!("{name}: expected ImageTooLarge, got {other:?}"),
    }
}

#[test]
fn bombs_are_refused_from_the_header() {
    let t0 = std::time::Instant::now();
    assert_too_large(decode_rgb(&png_header(50_000, 50_000), "bomb.png", &opts()), "bomb.png", 50_000, 50_000);
    assert_too_large(decode_rgb(&bmp_header(50_000, 50_000), "bomb.bmp", &opts()), "bomb.bmp", 50_000, 50_000);
    assert_too_large(decode_rgb(&gif_header(50_000, 50_000), "bomb.gif", &opts()), "bomb.gif", 50_000, 50_000);
    assert_too_large(decode_rgb(&jpeg_header(50_000, 50_000), "bomb.jpg", &opts()), "bomb.jpg", 50_000, 50_000);
    // no 7.5 GB allocation happened: this took no time
    assert!(t0.elapsed().as_secs_f64() < 1.0, "{:?}", t0.elapsed());
    let e = decode_rgb(&png_header(50_000, 50_000), "bomb.png", &opts()).unwrap_err().to_string();
    println!("{e}");
    assert!(e.contains("bomb.png") && e.contains("50000x50000"));

    // just under the default limit the header is accepted (and the data then fails to decode)
    let side = (DEFAULT_MAX_PIXELS as f64).sqrt() as u32;
    assert!(matches!(decode_rgb(&png_header(side, side), "big.png", &opts()), Err(Error::ImageDecode { .. })));
    // the limit is configurable, both ways
    let rgb8 = std::fs::read(fixtures().join("decode/rgb8.png")).unwrap();
    match decode_rgb(&rgb8, "rgb8.png", &DecodeOptions::with_max_pixels(1000)) {
        Err(Error::ImageTooLarge { pixels: 1200, limit: 1000, .. }) => {}
        other => panic!("{other:?}"),
    }
    assert!(decode_rgb(&rgb8, "rgb8.png", &DecodeOptions::with_max_pixels(1200)).is_ok());
    assert!(decode_rgb(&rgb8, "rgb8.png", &DecodeOptions::with_max_pixels(u64::MAX)).is_ok());
}
