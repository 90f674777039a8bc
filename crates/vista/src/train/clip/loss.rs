//! open_clip's contrastive losses (`open_clip/loss.py`), world size 1.
//!
//! * [`clip_loss`] (`ClipLoss`): `logits_per_image = s · I Tᵀ`, `logits_per_text = s · T Iᵀ`
//!   for normalised features and `s = exp(logit_scale)`; labels are the diagonal; the loss is
//!   the mean of the two cross-entropies.
//! * [`siglip_loss`] (`SigLipLoss`): `logits = s · I Tᵀ + b`, labels `2·eye − 1`, loss
//!   `−Σ log σ(labels · logits) / B`.

use candle_core::{Device, Tensor};

use crate::train::dino::loss::log_softmax;
use crate::{Error, Result};

fn check(image: &Tensor, text: &Tensor) -> Result<usize> {
    let (bi, di) = image.dims2()?;
    let (bt, dt) = text.dims2()?;
    if bi != bt || di != dt {
        return Err(Error::arg(
            "features",
            format!("image features {:?} against text features {:?}", image.dims(), text.dims()),
        ));
    }
    if bi == 0 {
        return Err(Error::arg("features", "an empty batch"));
    }
    Ok(bi)
}

fn eye(n: usize, device: &Device) -> Result<Tensor> {
    let mut v = vec![0f32; n * n];
    for i in 0..n {
        v[i * n + i] = 1.0;
    }
    Ok(Tensor::from_vec(v, (n, n), device)?)
}

/// `F.cross_entropy(logits, arange(B))`: the mean over rows of `−log_softmax(row)[i]`.
fn diagonal_cross_entropy(logits: &Tensor, eye: &Tensor) -> Result<Tensor> {
    let n = logits.dim(0)?;
    Ok((log_softmax(logits)?.mul(eye)?.sum_all()? * (-1.0 / n as f64))?)
}

/// `ClipLoss()(image_features, text_features, logit_scale)` with `logit_scale` the stored
/// parameter (its `exp()` is taken here, as `CLIP.forward` does). Features are normalised.
pub fn clip_loss(image: &Tensor, text: &Tensor, logit_scale: &Tensor) -> Result<Tensor> {
    let n = check(image, text)?;
    let s = logit_scale.exp()?;
    let per_image = image.matmul(&text.t()?)?.broadcast_mul(&s)?;
    let per_text = text.matmul(&image.t()?)?.broadcast_mul(&s)?;
    let e = eye(n, image.device())?;
    Ok(((diagonal_cross_entropy(&per_image, &e)? + diagonal_cross_entropy(&per_text, &e)?)? * 0.5)?)
}

/// `SigLipLoss()(image_features, text_features, logit_scale, logit_bias)` (one device).
pub fn siglip_loss(image: &Tensor, text: &Tensor, logit_scale: &Tensor, logit_bias: &Tensor) -> Result<Tensor> {
    let n = check(image, text)?;
    let logits = image.matmul(&text.t()?)?.broadcast_mul(&logit_scale.exp()?)?.broadcast_add(logit_bias)?;
    let labels = (eye(n, image.device())?.affine(2.0, -1.0))?;
    let z = logits.mul(&labels)?;
    // log σ(z) = −softplus(−z) = −(max(−z, 0) + log(1 + exp(−|z|))).
    let neg = z.neg()?;
    let softplus = (neg.relu()? + ((z.abs()?.neg()?.exp()? + 1.0)?.log()?))?;
    Ok((softplus.sum_all()? * (1.0 / n as f64))?)
}
