//! DINO's `MultiCropWrapper`: crops of one resolution are concatenated and go through the
//! backbone in one pass (one pass per resolution, in the order the sizes first change), their
//! CLS (or pooled) outputs are concatenated in crop order, and the head runs once on all of them.

use candle_core::Tensor;
use rand_chacha::ChaCha8Rng;

use super::arch::CropBackbone;
use super::head::DinoHead;
use crate::{Error, Result};

/// Student or teacher forward over a list of crops, each `[B, H, W, 3]`; with `drop_path` a
/// random stream, the backbone runs in training mode (stochastic depth, the student's).
///
/// Returns the head's output `[ncrops · B, out_dim]`, rows grouped by crop as the reference
/// (`torch.cat` of per-resolution chunks, then the head).
pub fn multi_crop_forward<B: CropBackbone + ?Sized>(
    backbone: &B,
    head: &DinoHead,
    crops: &[Tensor],
    mut drop_path: Option<&mut ChaCha8Rng>,
) -> Result<Tensor> {
    if crops.is_empty() {
        return Err(Error::arg("crops", "no crops"));
    }
    // `torch.cumsum(torch.unique_consecutive([inp.shape[-1] for inp in x], return_counts=True)[1])`:
    // runs of consecutive crops with the same size.
    let mut outputs = Vec::new();
    let mut start = 0;
    while start < crops.len() {
        let size = crops[start].dims()[1..3].to_vec();
        let mut end = start + 1;
        while end < crops.len() && crops[end].dims()[1..3] == size[..] {
            end += 1;
        }
        let batch = Tensor::cat(&crops[start..end], 0)?;
        outputs.push(backbone.crop_features(&batch, drop_path.as_deref_mut())?);
        start = end;
    }
    head.forward(&Tensor::cat(&outputs, 0)?)
}
