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
        Format::Safetensors => {
            // SAFETY: the file is mapped read-only; like every mmap user we rely on nobody
            // truncating it while we copy the tensors out (we copy them all before returning).
            let st = unsafe { candle_core::safetensors::MmapedSafetensors::new(path) }.map_err(ckpt_err)?;
            let mut out = HashMap::new();
            for (name, _) in st.tensors() {
                let t = st.load(&name, device).map_err(ckpt_err)?;
                out.insert(name, t);
            }
            Ok(out)
        }
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
