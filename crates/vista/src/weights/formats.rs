//! Tensor files: reading checkpoints (safetensors and PyTorch zip-pickles) and the one
//! safetensors writer, atomic, that every cache, checkpoint and export of vista goes through.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::Path;

use candle_core::{DType, Device, Tensor};

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
        if len > 1
            && len.checked_add(8).is_some_and(|end| end <= size)
            && f.read(&mut brace).map_err(|e| Error::io(path, e))? == 1
            && brace[0] == b'{'
        {
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
    let _loading = crate::memory::Loading::start();
    match detect(path)? {
        Format::Safetensors => Ok(read_safetensors(path, device)?.0),
        // candle's pickle reader trusts the file (a hostile one can make it shift or index out of
        // range, found by fuzz/pickle): its panics become an error naming the file.
        Format::TorchZip => crate::error::catch_panic(
            || read_torch_zip(path, key, device),
            |what| Error::Checkpoint {
                path: path.to_path_buf(),
                message: format!("malformed PyTorch checkpoint (the pickle reader failed: {what})"),
            },
        ),
    }
}

/// The tensors of a PyTorch zip checkpoint (see [`read_tensors`]).
fn read_torch_zip(path: &Path, key: Option<&str>, device: &Device) -> Result<HashMap<String, Tensor>> {
    let ckpt_err = |e: candle_core::Error| Error::Checkpoint { path: path.to_path_buf(), message: e.to_string() };
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
    Ok(metadata_of(&header))
}

fn metadata_of(header: &serde_json::Map<String, serde_json::Value>) -> HashMap<String, String> {
    header
        .get("__metadata__")
        .and_then(|m| m.as_object())
        .map(|m| m.iter().filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string()))).collect())
        .unwrap_or_default()
}

/// Every tensor of a safetensors file (dtypes as stored) and its `__metadata__` map.
///
/// Reads tensor by tensor with plain reads rather than a memory map: a mapped file's touched
/// pages count in the process's resident memory alongside the copies we make, which doubled peak
/// RSS; reading each tensor straight into its buffer keeps the peak at the model's size. Every
/// header field is checked against the file's size before anything is allocated.
pub fn read_safetensors(path: &Path, device: &Device) -> Result<(HashMap<String, Tensor>, HashMap<String, String>)> {
    use std::io::{Seek, SeekFrom};
    let _loading = crate::memory::Loading::start();
    let bad = |m: String| Error::Checkpoint { path: path.to_path_buf(), message: m };
    let (mut f, header, data_start, size) = open_safetensors(path)?;
    let metadata = metadata_of(&header);
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
        // Hostile headers: the shape's byte count and the offsets may overflow.
        let nbytes = shape.iter().try_fold(dtype.size_in_bytes(), |acc, &d| acc.checked_mul(d));
        let Some(nbytes) = nbytes.filter(|&n| u64::try_from(n).is_ok_and(|n| n == end - begin)) else {
            return Err(bad(format!(
                "tensor `{name}`: {} bytes stored at {begin}..{end} do not hold shape {shape:?} of {dtype:?}",
                end - begin
            )));
        };
        if data_start.checked_add(end).is_none_or(|stop| stop > size) {
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
    Ok((out, metadata))
}

/// Writes `tensors` (each in its own dtype) and `metadata` to a safetensors file atomically: a
/// temporary file in the same folder, synced, then renamed over `path`, so a reader — or a run
/// killed midway — sees the old file or the new one, never a torn one.
pub fn write_safetensors<'a>(
    path: &Path,
    tensors: impl IntoIterator<Item = (&'a str, &'a Tensor)>,
    metadata: &HashMap<String, String>,
) -> Result<()> {
    let bad = |m: String| Error::Checkpoint { path: path.to_path_buf(), message: m };
    let data = tensors
        .into_iter()
        .map(|(name, t)| {
            let (dtype, bytes) = le_bytes(t).map_err(|e| bad(format!("tensor `{name}`: {e}")))?;
            Ok((name, dtype, t.dims().to_vec(), bytes))
        })
        .collect::<Result<Vec<_>>>()?;
    let views = data
        .iter()
        .map(|(name, dtype, shape, bytes)| {
            safetensors::tensor::TensorView::new(*dtype, shape.clone(), bytes)
                .map(|v| (name.to_string(), v))
                .map_err(|e| bad(format!("tensor `{name}`: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let bytes = safetensors::serialize(views, Some(metadata.clone())).map_err(|e| bad(e.to_string()))?;
    write_atomic(path, &bytes)
}

/// A tensor's values as little-endian bytes, with its safetensors dtype.
fn le_bytes(t: &Tensor) -> candle_core::Result<(safetensors::Dtype, Vec<u8>)> {
    use safetensors::Dtype as D;
    let t = t.flatten_all()?;
    fn bytes<T: candle_core::WithDType, const N: usize>(
        t: &Tensor,
        f: impl Fn(T) -> [u8; N],
    ) -> candle_core::Result<Vec<u8>> {
        Ok(t.to_vec1::<T>()?.into_iter().flat_map(f).collect())
    }
    Ok(match t.dtype() {
        DType::F32 => (D::F32, bytes(&t, f32::to_le_bytes)?),
        DType::F16 => (D::F16, bytes(&t, half::f16::to_le_bytes)?),
        DType::BF16 => (D::BF16, bytes(&t, half::bf16::to_le_bytes)?),
        DType::F64 => (D::F64, bytes(&t, f64::to_le_bytes)?),
        DType::I64 => (D::I64, bytes(&t, i64::to_le_bytes)?),
        DType::U32 => (D::U32, bytes(&t, u32::to_le_bytes)?),
        DType::U8 => (D::U8, t.to_vec1::<u8>()?),
        other => return Err(candle_core::Error::Msg(format!("cannot store dtype {other:?}"))),
    })
}

/// Writes `bytes` to `path` through a temporary file in the same folder (created with the
/// folder if needed), synced, then renamed: a reader sees the old file or the new one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| Error::io(dir, e))?;
    tmp.write_all(bytes).map_err(|e| Error::io(tmp.path(), e))?;
    tmp.as_file().sync_all().map_err(|e| Error::io(tmp.path(), e))?;
    tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
    Ok(())
}

/// A cache key for a model: the checkpoint's canonical path, size and modification time (see
/// [`crate::data::files::hash_file_stamp`]) and `architecture` (the resolved config, as JSON),
/// as 20 hex digits. Embedding and feature caches live under it.
pub fn checkpoint_key(checkpoint: &Path, architecture: &str) -> String {
    let mut h = blake3::Hasher::new();
    let canonical = checkpoint.canonicalize().unwrap_or_else(|_| checkpoint.to_path_buf());
    h.update(canonical.to_string_lossy().as_bytes());
    crate::data::files::hash_file_stamp(&mut h, checkpoint);
    h.update(architecture.as_bytes());
    h.finalize().to_hex()[..20].to_string()
}
