//! NumPy `.npy` files: float32 matrices written in format 1.0 (readable by `numpy.load`), and
//! little-endian float32 arrays read back (formats 1.0–3.0, C order).

use std::io::Write;
use std::path::Path;

use crate::{Error, Result};

/// Writes a C-order float32 matrix of `rows` × `cols`.
pub fn write_f32_matrix(path: &Path, data: &[f32], rows: usize, cols: usize) -> Result<()> {
    write_f32(path, data, &[rows, cols])
}

/// Writes a C-order float32 array of any shape.
pub fn write_f32(path: &Path, data: &[f32], shape: &[usize]) -> Result<()> {
    if Some(data.len()) != shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)) {
        return Err(Error::arg("data", format!("{} values for shape {shape:?}", data.len())));
    }
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let dims = if dims.len() == 1 { format!("{},", dims[0]) } else { dims.join(", ") };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({dims}), }}");
    // Magic (6) + version (2) + header length (2) + header, padded with spaces and a newline to
    // a multiple of 64 bytes.
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat(total.next_multiple_of(64) - total));
    header.push('\n');
    let mut bytes = Vec::with_capacity(10 + header.len() + data.len() * 4);
    bytes.extend_from_slice(b"\x93NUMPY\x01\x00");
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    for v in data {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    let mut f = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    f.write_all(&bytes).map_err(|e| Error::io(path, e))?;
    Ok(())
}

/// Reads a little-endian float32, C-order `.npy` array: its shape and values.
pub fn read_f32(path: &Path) -> Result<(Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let bad = |m: &str| Error::arg("npy", format!("{}: {m}", path.display()));
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad("not a .npy file"));
    }
    let (hlen, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12),
        _ => return Err(bad("unsupported .npy version")),
    };
    let header = std::str::from_utf8(bytes.get(start..start + hlen).ok_or_else(|| bad("truncated header"))?)
        .map_err(|_| bad("header is not text"))?;
    if !header.contains("'descr': '<f4'") {
        return Err(bad("expected little-endian float32 ('<f4') data"));
    }
    if header.contains("'fortran_order': True") {
        return Err(bad("Fortran-order arrays are not supported"));
    }
    let shape_text = header
        .split("'shape':")
        .nth(1)
        .and_then(|r| r.split('(').nth(1))
        .and_then(|r| r.split(')').next())
        .ok_or_else(|| bad("no shape in header"))?;
    let shape: Vec<usize> = shape_text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().map_err(|_| bad("bad shape")))
        .collect::<Result<_>>()?;
    // A hostile header can name a shape whose size overflows.
    let n = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)).and_then(|n| n.checked_mul(4));
    let data = &bytes[start + hlen..];
    if n != Some(data.len()) {
        return Err(bad(&format!("{} data bytes for shape {shape:?}", data.len())));
    }
    let values = data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    Ok((shape, values))
}

#[cfg(test)]
mod tests {
    #[test]
    fn header_is_aligned_and_parsable() {
        let dir = std::env::temp_dir().join(format!("vista-npy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("x.npy");
        super::write_f32_matrix(&p, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 2, 3).unwrap();
        let b = std::fs::read(&p).unwrap();
        let hlen = u16::from_le_bytes([b[8], b[9]]) as usize;
        assert_eq!((10 + hlen) % 64, 0);
        let header = std::str::from_utf8(&b[10..10 + hlen]).unwrap();
        assert!(header.contains("'shape': (2, 3)"));
        assert_eq!(f32::from_le_bytes(b[10 + hlen..14 + hlen].try_into().unwrap()), 1.0);
        assert_eq!(b.len(), 10 + hlen + 24);
        let (shape, values) = super::read_f32(&p).unwrap();
        assert_eq!((shape, values), (vec![2, 3], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
