//! Malformed and hostile files: readers return errors naming the file, without panicking and
//! without allocating what a header claims before the data is there. (The fuzz targets in
//! `fuzz/` explore the same readers; each crash they found is a case here.)

use std::path::Path;

use candle_core::Device;
use vista::apps::segment::{Mask, Rle};
use vista::data::{npy, LabelledSet};
use vista::weights::formats;

fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn npy_with_header(header: &str, data: &[u8]) -> Vec<u8> {
    let mut h = header.to_string();
    let total = 10 + h.len() + 1;
    h.push_str(&" ".repeat(total.next_multiple_of(64) - total));
    h.push('\n');
    let mut b = b"\x93NUMPY\x01\x00".to_vec();
    b.extend_from_slice(&(h.len() as u16).to_le_bytes());
    b.extend_from_slice(h.as_bytes());
    b.extend_from_slice(data);
    b
}

#[test]
fn npy_shapes_that_overflow_are_errors() {
    let tmp = tempfile::tempdir().unwrap();
    for shape in ["(4294967296, 4294967296)", "(18446744073709551615,)", "(3, 6148914691236517206)"] {
        let header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
        let p = write(tmp.path(), "x.npy", &npy_with_header(&header, &[0; 16]));
        let err = npy::read_f32(&p).unwrap_err().to_string();
        assert!(err.contains("x.npy"), "{shape}: {err}");
    }
    for bytes in [&b"\x93NUMPY\x02\x00"[..], b"\x93NUMPY\x01\x00\xff\xff{", b"\x93NUMPY\x03\x00\xff\xff\xff\xff"] {
        let p = write(tmp.path(), "t.npy", bytes);
        assert!(npy::read_f32(&p).is_err());
    }
    assert!(npy::write_f32(&tmp.path().join("w.npy"), &[], &[usize::MAX, 2]).is_err());
}

fn idx(magic: u32, dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut b = magic.to_be_bytes().to_vec();
    for d in dims {
        b.extend_from_slice(&d.to_be_bytes());
    }
    b.extend_from_slice(data);
    b
}

#[test]
fn idx_headers_claiming_more_than_the_file_are_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let labels = write(tmp.path(), "labels", &idx(0x801, &[u32::MAX], &[1, 2, 3]));
    // 4 G images of 64 K × 64 K pixels: the product overflows even 64 bits... and the file
    // holds three bytes. Nothing of that size may be allocated.
    let images = write(tmp.path(), "images", &idx(0x803, &[u32::MAX, 65536, 65536], &[0; 12]));
    let err = LabelledSet::from_idx(&images, &labels, None).unwrap_err().to_string();
    assert!(err.contains("truncated") || err.contains("overflow"), "{err}");
    // Labels complete, images overflowing: the size check speaks before any read.
    let labels = write(tmp.path(), "labels", &idx(0x801, &[3], &[1, 2, 3]));
    let images = write(tmp.path(), "images", &idx(0x803, &[3, u32::MAX, u32::MAX], &[0; 12]));
    let err = LabelledSet::from_idx(&images, &labels, None).unwrap_err().to_string();
    assert!(err.contains("images") && (err.contains("overflow") || err.contains("truncated")), "{err}");
    let labels = write(tmp.path(), "labels", &idx(0x801, &[1_000_000_000], &[1, 2, 3]));
    let images = write(tmp.path(), "images", &idx(0x803, &[1_000_000_000, 28, 28], &[0; 12]));
    let err = LabelledSet::from_idx(&images, &labels, None).unwrap_err().to_string();
    assert!(err.contains("truncated"), "{err}");
}

fn safetensors_with_header(header: &str, data: &[u8]) -> Vec<u8> {
    let mut b = (header.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(header.as_bytes());
    b.extend_from_slice(data);
    b
}

#[test]
fn safetensors_headers_that_overflow_are_errors() {
    let tmp = tempfile::tempdir().unwrap();
    for header in [
        r#"{"a": {"dtype": "F32", "shape": [4294967296, 4294967296, 16], "data_offsets": [0, 16]}}"#,
        r#"{"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 18446744073709551615]}}"#,
        r#"{"a": {"dtype": "F32", "shape": [4], "data_offsets": [18446744073709551600, 18446744073709551615]}}"#,
        r#"{"a": {"dtype": "F32", "shape": [5], "data_offsets": [0, 16]}}"#,
        r#"{"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 16]}}"#,
        r#"{"a": {"dtype": "F32", "shape": [4], "data_offsets": [16, 0]}}"#,
    ] {
        let p = write(tmp.path(), "m.safetensors", &safetensors_with_header(header, &[0; 16]));
        let err = formats::read_safetensors(&p, &Device::Cpu).unwrap_err().to_string();
        assert!(err.contains("m.safetensors"), "{header}: {err}");
    }
    let p = write(tmp.path(), "h.safetensors", &u64::MAX.to_le_bytes());
    assert!(formats::read_safetensors(&p, &Device::Cpu).is_err());
    // Found by the `pickle` fuzz target: format detection added 8 to a header length of ~2^64.
    let mut b = (u64::MAX - 3).to_le_bytes().to_vec();
    b.extend_from_slice(b"{}");
    let p = write(tmp.path(), "d.pth", &b);
    let err = formats::read_tensors(&p, None, &Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("d.pth"), "{err}");
}

/// Found by the `pickle` fuzz target: a zip checkpoint whose pickle makes candle's reader shift
/// past 64 bits (a panic in candle, an error here). The input is the fuzzer's minimised crash.
#[test]
fn a_pickle_that_breaks_the_reader_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let crash = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/hostile/pickle_shift_overflow.pth"))
        .unwrap();
    let p = write(tmp.path(), "x.pth", &crash);
    let err = formats::read_tensors(&p, None, &Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("x.pth"), "{err}");
}

#[test]
fn masks_over_the_rle_limit_are_errors() {
    assert!(Mask::new(1 << 17, 1 << 17).is_err());
    assert!(Mask::from_fn(u32::MAX, 2, |_, _| true).is_err());
    assert!(Mask::from_polygons(&[vec![0.0, 0.0, 5.0, 0.0, 5.0, 5.0]], 1 << 20, 1 << 20).is_err());
    assert!(Rle::new(1 << 20, 1 << 20, vec![0]).is_err());
    assert!(Rle::from_string_counts("\u{7f}\u{7f}\u{7f}\u{7f}\u{7f}\u{7f}\u{7f}", 3, 3).is_err());
    assert_eq!(Mask::new(0, 5).unwrap().width(), 0);
}
