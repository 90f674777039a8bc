//! Reading tensors from checkpoint files: safetensors and PyTorch zip-pickles.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use candle_core::{Device, Tensor};

use crate::{Error, Result};

/// The on-disk formats we read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Hugging Face safetensors (`*.safetensors`).
    Safetensors,
    /// `torch.save` output since PyTorch 1.6: a zip archive holding `data.pkl` and raw storages.
    TorchZip,
}

/// Detects the format from the file's first bytes (not its extension, which people rename).
pub fn detect(path: &Path) -> Result<Format> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut head = [0u8; 8];
    let n = f.read(&mut head).map_err(|e| Error::io(path, e))?;
    if n >= 4 && &head[..4] == b"PK\x03\x04" {
        return Ok(Format::TorchZip);
    }
    if n == 8 {
        // safetensors: little-endian u64 header length, then a JSON object.
        let len = u64::from_le_bytes(head);
        let size = f.metadata().map_err(|e| Error::io(path, e))?.len();
        let mut brace = [0u8; 1];
        if len > 1 && len + 8 <= size && f.read(&mut brace).map_err(|e| Error::io(path, e))? == 1 && brace[0] == b'{' {
            return Ok(Format::Safetensors);
        }
    }
    Err(Error::Checkpoint {
        path: path.to_path_buf(),
        message: "not a safetensors file nor a PyTorch zip checkpoint (legacy non-zip \
                  `torch.save` files and TorchScript archives are not supported: re-save with \
                  `torch.save(model.state_dict(), path)`)"
            .into(),
    })
}

/// Reads every tensor of a checkpoint onto `device`, with the names as stored.
///
/// For PyTorch files whose state dict is nested (`{"state_dict": {...}}`, `{"model": {...}}`),
/// `key` selects the inner dict; `None` tries the file as a flat state dict first, then the
/// usual keys.
pub fn read_tensors(path: &Path, key: Option<&str>, device: &Device) -> Result<HashMap<String, Tensor>> {
    let ckpt_err = |e: candle_core::Error| Error::Checkpoint { path: path.to_path_buf(), message: e.to_string() };
    match detect(path)? {
        Format::Safetensors => read_safetensors(path, device),
        Format::TorchZip => {
            let keys: Vec<Option<&str>> = match key {
                Some(k) => vec![Some(k)],
                None => vec![None, Some("state_dict"), Some("model"), Some("module")],
            };
            for k in keys {
                let pth = candle_core::pickle::PthTensors::new(path, k).map_err(ckpt_err)?;
                if pth.tensor_infos().is_empty() {
                    continue;
                }
                let mut out = HashMap::new();
                let names: Vec<String> = pth.tensor_infos().keys().cloned().collect();
                for name in names {
                    if let Some(t) = pth.get(&name).map_err(ckpt_err)? {
                        out.insert(name, t.to_device(device).map_err(ckpt_err)?);
                    }
                }
                return Ok(out);
            }
            Err(Error::Checkpoint {
                path: path.to_path_buf(),
                message: "no tensors found in the pickle (expected a state dict)".into(),
            })
        }
    }
}

/// Opens a safetensors file and reads its JSON header: `(file, header, data start, file size)`.
fn open_safetensors(path: &Path) -> Result<(std::fs::File, serde_json::Map<String, serde_json::Value>, u64, u64)> {
    let bad = |m: String| Error::Checkpoint { path: path.to_path_buf(), message: m };
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let size = f.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut len8 = [0u8; 8];
    f.read_exact(&mut len8).map_err(|e| Error::io(path, e))?;
    let header_len = u64::from_le_bytes(len8);
    if header_len > 100_000_000 || 8 + header_len > size {
        return Err(bad(format!("corrupt safetensors header length {header_len}")));
    }
    let mut header = vec![0u8; header_len as usize];
    f.read_exact(&mut header).map_err(|e| Error::io(path, e))?;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|e| bad(format!("corrupt safetensors header: {e}")))?;
    Ok((f, header, 8 + header_len, size))
}

/// The `__metadata__` map of a safetensors file (empty when it has none); reads the header only.
pub fn safetensors_metadata(path: &Path) -> Result<HashMap<String, String>> {
    let (_, header, _, _) = open_safetensors(path)?;
    Ok(header
        .get("__metadata__")
        .and_then(|m| m.as_object())
        .map(|m| m.iter().filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string()))).collect())
        .unwrap_or_default())
}

/// Reads a safetensors file tensor by tensor with plain reads rather than a memory map: a mapped
/// file's touched pages count in the process's resident memory alongside the copies we make, which
/// doubled peak RSS; reading each tensor straight into its buffer keeps the peak at the model's size.
fn read_safetensors(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    use std::io::{Seek, SeekFrom};
    let bad = |m: String| Error::Checkpoint { path: path.to_path_buf(), message: m };
    let (mut f, header, data_start, size) = open_safetensors(path)?;
    let mut out = HashMap::with_capacity(header.len());
    for (name, info) in header {
        if name == "__metadata__" {
            continue;
        }
        let field = |k: &str| info.get(k).ok_or_else(|| bad(format!("tensor `{name}`: no `{k}` in the header")));
        let dtype = match field("dtype")?.as_str().unwrap_or_default() {
            "F32" => candle_core::DType::F32,
            "F16" => candle_core::DType::F16,
            "BF16" => candle_core::DType::BF16,
            "F64" => candle_core::DType::F64,
            "I64" => candle_core::DType::I64,
            "U32" => candle_core::DType::U32,
            "U8" | "BOOL" => candle_core::DType::U8,
            other => return Err(bad(format!("tensor `{name}`: unsupported dtype {other}"))),
        };
        let shape: Vec<usize> = field("shape")?
            .as_array()
            .ok_or_else(|| bad(format!("tensor `{name}`: bad shape")))?
            .iter()
            .map(|d| d.as_u64().map(|d| d as usize))
            .collect::<Option<_>>()
            .ok_or_else(|| bad(format!("tensor `{name}`: bad shape")))?;
        let offsets = field("data_offsets")?.as_array().cloned().unwrap_or_default();
        let (begin, end) = match (offsets.first().and_then(|v| v.as_u64()), offsets.get(1).and_then(|v| v.as_u64())) {
            (Some(b), Some(e)) if b <= e => (b, e),
            _ => return Err(bad(format!("tensor `{name}`: bad data_offsets"))),
        };
        let nbytes = shape.iter().product::<usize>() * dtype.size_in_bytes();
        if (end - begin) as usize != nbytes || data_start + end > size {
            return Err(bad(format!(
                "tensor `{name}`: {} bytes stored at {begin}..{end} for shape {shape:?} of {dtype:?} ({nbytes} bytes); \
                 the file may be truncated ({size} bytes)",
                end - begin
            )));
        }
        f.seek(SeekFrom::Start(data_start + begin)).map_err(|e| Error::io(path, e))?;
        let mut bytes = vec![0u8; nbytes];
        f.read_exact(&mut bytes).map_err(|e| Error::io(path, e))?;
        let t =
            Tensor::from_raw_buffer(&bytes, dtype, &shape, device).map_err(|e| bad(format!("tensor `{name}`: {e}")))?;
        out.insert(name, t);
    }
    Ok(out)
}
