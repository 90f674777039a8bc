//! SAM's mask decoder (`segment_anything/modeling/mask_decoder.py`): an IoU token and one
//! token per mask output join the prompt tokens in the two-way transformer; the image tokens
//! are up-sampled ×4 by two transposed convolutions; each mask token's hypernetwork MLP gives the
//! weights that turn the up-sampled features into that mask's logits; the IoU head scores them.

use candle_core::{Module, Tensor};

use super::config::DecoderConfig;
use super::transformer::{FirstLayerKeys, TwoWayTransformer};
use crate::nn::conv::ConvTranspose2x2;
use crate::nn::packed::PackedWeight;
use crate::nn::{Activation, LayerNorm, Linear};
use crate::weights::Vb;
use crate::Result;

/// The decoder's `MLP`: linear layers with ReLU between them.
struct HeadMlp {
    layers: Vec<Linear>,
}

impl HeadMlp {
    fn load(vb: &Vb, input: usize, hidden: usize, output: usize, depth: usize) -> Result<Self> {
        let layers = (0..depth)
            .map(|i| {
                let (a, b) = (if i == 0 { input } else { hidden }, if i + 1 == depth { output } else { hidden });
                Linear::load(&vb.pp("layers").pp(i), a, b, true)
            })
            .collect::<Result<_>>()?;
        Ok(Self { layers })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = x.clone();
        for (i, l) in self.layers.iter().enumerate() {
            let act = (i + 1 < self.layers.len()).then_some(Activation::Relu);
            x = l.forward_act(&x, act)?;
        }
        Ok(x)
    }
}

/// What the dense prompt adds to every image token.
pub enum DensePrompt<'a> {
    /// `no_mask_embed`, the same `[1, C]` vector everywhere (on the weights' device and dtype).
    NoMask(&'a Tensor),
    /// Embedded mask inputs, `[B, h, w, C]`.
    Masks(&'a Tensor),
}

/// One image's prompt-independent decoder work when there is no mask prompt: the image tokens
/// plus `no_mask_embed`, and the first transformer layer's projections of them. About 2.5× the
/// embedding's size; made once, it serves every prompt on the image.
pub struct PreparedImage {
    /// `[1, h·w, C]`.
    src: Tensor,
    first: FirstLayerKeys,
}

/// `MaskDecoder`.
pub struct MaskDecoder {
    /// `[iou_token; mask_tokens]`, `[1 + M, C]`.
    output_tokens: Tensor,
    transformer: TwoWayTransformer,
    up1: ConvTranspose2x2,
    up_norm: LayerNorm,
    up2: ConvTranspose2x2,
    hypernetworks: Vec<HeadMlp>,
    iou_head: HeadMlp,
}

impl MaskDecoder {
    /// Reads the decoder below `vb`.
    pub fn load(vb: &Vb, cfg: &DecoderConfig) -> Result<Self> {
        let c = cfg.dim;
        let m = cfg.num_multimask_outputs + 1;
        let iou = vb.pp("iou_token").get(&[1, c], "weight")?;
        let masks = vb.pp("mask_tokens").get(&[m, c], "weight")?;
        let up = vb.pp("output_upscaling");
        let up1 = ConvTranspose2x2::new(&up.pp(0).get(&[c, c / 4, 2, 2], "weight")?, &up.pp(0).get(&[c / 4], "bias")?)?;
        let up2 =
            ConvTranspose2x2::new(&up.pp(3).get(&[c / 4, c / 8, 2, 2], "weight")?, &up.pp(3).get(&[c / 8], "bias")?)?;
        Ok(Self {
            output_tokens: Tensor::cat(&[iou, masks], 0)?,
            transformer: TwoWayTransformer::load(&vb.pp("transformer"), cfg)?,
            up1,
            up_norm: LayerNorm::load(&up.pp(1), c / 4, 1e-6)?,
            up2,
            hypernetworks: (0..m)
                .map(|i| HeadMlp::load(&vb.pp("output_hypernetworks_mlps").pp(i), c, c, c / 8, 3))
                .collect::<Result<_>>()?,
            iou_head: HeadMlp::load(&vb.pp("iou_prediction_head"), c, cfg.iou_head_hidden_dim, m, cfg.iou_head_depth)?,
        })
    }

    /// The image's share of [`Self::forward`] without a mask prompt, for
    /// [`Self::forward_prepared`].
    ///
    /// # Shapes
    /// `image: [h·w, C]`, `image_pe: [h·w, C]`, `no_mask: [1, C]`
    pub fn prepare(&self, image: &Tensor, image_pe: &Tensor, no_mask: &Tensor) -> Result<PreparedImage> {
        let src = image.broadcast_add(&no_mask.reshape((1, image.dim(1)?))?)?.unsqueeze(0)?;
        let first = self.transformer.first_layer_keys(&src, image_pe)?;
        Ok(PreparedImage { src, first })
    }

    /// Predicts every mask output for a batch of prompt sets on one image; the caller picks
    /// the multimask outputs (`1..`) or the single one (`0`).
    ///
    /// # Shapes
    /// `image: [h·w, C]`, `image_pe: [h·w, C]`, `sparse: [B, T, C]` ->
    /// (`low_res: [B, M, 4h, 4w]`, `iou: [B, M]`)
    pub fn forward(
        &self,
        image: &Tensor,
        grid: (usize, usize),
        image_pe: &Tensor,
        sparse: &Tensor,
        dense: DensePrompt<'_>,
    ) -> Result<(Tensor, Tensor)> {
        let (b, _, c) = sparse.dims3()?;
        let (h, w) = grid;
        let src = match dense {
            // The same image tokens for every prompt set: one copy, shared (batch 1).
            DensePrompt::NoMask(v) => image.broadcast_add(&v.reshape((1, c))?)?.unsqueeze(0)?,
            DensePrompt::Masks(d) => d.reshape((b, h * w, c))?.broadcast_add(&image.unsqueeze(0)?)?,
        };
        self.decode(&src, None, grid, image_pe, sparse)
    }

    /// [`Self::forward`] without a mask prompt, from the image's [`Self::prepare`].
    ///
    /// # Shapes
    /// `image_pe: [h·w, C]`, `sparse: [B, T, C]` -> (`low_res: [B, M, 4h, 4w]`, `iou: [B, M]`)
    pub fn forward_prepared(
        &self,
        prepared: &PreparedImage,
        grid: (usize, usize),
        image_pe: &Tensor,
        sparse: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        self.decode(&prepared.src, Some(&prepared.first), grid, image_pe, sparse)
    }

    /// The transformer, up-sampling and heads on image tokens `src` (`[B or 1, h·w, C]`).
    fn decode(
        &self,
        src: &Tensor,
        first: Option<&FirstLayerKeys>,
        (h, w): (usize, usize),
        image_pe: &Tensor,
        sparse: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let (b, _, c) = sparse.dims3()?;
        let m = self.hypernetworks.len();
        let out_tokens = self.output_tokens.unsqueeze(0)?.broadcast_as((b, m + 1, c))?;
        let tokens = Tensor::cat(&[&out_tokens, sparse], 1)?.contiguous()?;
        let (hs, src) = self.transformer.forward(src, image_pe, &tokens, first)?;

        let hyper = self
            .hypernetworks
            .iter()
            .enumerate()
            .map(|(i, mlp)| mlp.forward(&hs.narrow(1, 1 + i, 1)?))
            .collect::<Result<Vec<_>>>()?;
        let hyper = Tensor::cat(&hyper, 1)?; // [B, M, C/8]
        let (norm_w, norm_b, norm_eps) = self.up_norm.parts();
        let fused = match (self.up1.packed(), self.up2.packed()) {
            (Some(u1), Some(u2)) if [&src, &hyper, norm_w, norm_b].into_iter().all(crate::nn::cpu::eligible) => {
                Some((u1, u2))
            }
            _ => None,
        };
        let masks = if let Some((up1, up2)) = fused {
            // Up-sampling and the masks' products in one pass per source row (see
            // `upscaled_masks`): no ×4 or ×16 feature map is ever written out whole.
            use crate::nn::cpu::with_slice;
            let out = with_slice(&src, |src| {
                with_slice(&hyper, |hy| {
                    with_slice(norm_w, |nw| {
                        with_slice(norm_b, |nb| {
                            upscaled_masks(src, hy, up1, (nw, nb, norm_eps as f32), up2, (b, h, w, m, c))
                        })
                    })
                })
            })?????;
            Tensor::from_vec(out, (b, m, 4 * h, 4 * w), src.device())?
        } else {
            let x = self.up1.forward(&src.reshape((b, h, w, c))?, None)?;
            let x = Activation::Gelu.forward(&self.up_norm.forward(&x)?)?;
            let x = self.up2.forward(&x, Some(Activation::Gelu))?; // [B, 4h, 4w, C/8]
            let x = x.reshape((b, 16 * h * w, c / 8))?;
            hyper.matmul(&x.transpose(1, 2)?)?.reshape((b, m, 4 * h, 4 * w))?
        };
        let iou = self.iou_head.forward(&hs.narrow(1, 0, 1)?.squeeze(1)?)?;
        Ok((masks, iou))
    }
}

/// The output up-scaling (`ConvTranspose2d`, `LayerNorm2d`, GELU, `ConvTranspose2d`, GELU) and
/// the masks' products, one source row of image tokens per task: the row's `w` tokens through the
/// first transposed convolution (one GEMM, `[w, 4·C/4]`, output pixels grouped by source pixel),
/// the LayerNorm and GELU on each of its `4w` pixels, the second one (`[4w, 4·C/8]`, GELU in its
/// output pass), then `masks[b, m, 4y + 2dy + ey, 4x + 2dx + ex] = Σ_c hyper[b, m, c] ·
/// up[x, dy, dx, ey, ex, c]` for the four output rows the source row covers. The features stay
/// in the task's cache (64 KiB and 128 KiB for SAM's 64 × 256 row): the whole-image ×4 and
/// ×16 maps (4 MiB and 8 MiB a prompt set) are never held whole. The same GEMM kernels,
/// LayerNorm and GELU as the separate layers, which the device path still runs (checked against
/// it in `tests/suite/device_fallback.rs`, and against the reference in `sam_parity`).
///
/// # Shapes
/// `src: [B, h·w, C]`, `hyper: [B, M, C/8]`, `up1: [C, 4·C/4]`, `norm: [C/4]`, `up2: [C/4, 4·C/8]`
/// -> `[B, M, 4h, 4w]`
fn upscaled_masks(
    src: &[f32],
    hyper: &[f32],
    (up1, up1_bias): (&PackedWeight, Option<&[f32]>),
    (norm_w, norm_b, eps): (&[f32], &[f32], f32),
    (up2, up2_bias): (&PackedWeight, Option<&[f32]>),
    (b, h, w, m, c): (usize, usize, usize, usize, usize),
) -> Result<Vec<f32>> {
    use crate::nn::cpu::{activate_slice, dot, layer_norm_row, with_simd};
    use crate::nn::packed::{gemm, Epilogue, Lhs};
    use crate::nn::team::{self, Shared};
    let (c1, c2) = (c / 4, c / 8);
    if src.len() != b * h * w * c
        || hyper.len() != b * m * c2
        || (up1.k(), up1.n(), up2.k(), up2.n()) != (c, 4 * c1, c1, 4 * c2)
        || norm_w.len() != c1
        || norm_b.len() != c1
    {
        return Err(candle_core::Error::Msg(format!(
            "mask up-scaling: {} image values for [{b}, {h}·{w}, {c}], {} hypernetwork values for [{b}, {m}, {c2}], \
             weights [{}, {}] and [{}, {}], norm {}",
            src.len(),
            hyper.len(),
            up1.k(),
            up1.n(),
            up2.k(),
            up2.n(),
            norm_w.len()
        ))
        .into());
    }
    let (oh, ow) = (4 * h, 4 * w);
    let mut out = vec![0f32; b * m * oh * ow];
    let base = Shared(out.as_mut_ptr());
    let done = team::map(b * h, |task| -> Result<()> {
        let (bi, y) = (task / h, task % h);
        let row = &src[(bi * h + y) * w * c..][..w * c];
        let hy = &hyper[bi * m * c2..][..m * c2];
        let x = gemm(Lhs::Rows { data: row, m: w }, up1, up1_bias, Epilogue::default(), 1)?;
        let mut normed = vec![0f32; x.len()];
        with_simd(
            #[inline(always)]
            || {
                for (x, o) in x.chunks_exact(c1).zip(normed.chunks_exact_mut(c1)) {
                    layer_norm_row(x, norm_w, norm_b, eps, o);
                }
                activate_slice(&mut normed, Activation::Gelu);
            },
        );
        let up = gemm(Lhs::Rows { data: &normed, m: 4 * w }, up2, up2_bias, Epilogue::act(Some(Activation::Gelu)), 1)?;
        with_simd(
            #[inline(always)]
            || {
                for (x, px) in up.chunks_exact(16 * c2).enumerate() {
                    for (s, v) in px.chunks_exact(c2).enumerate() {
                        let (dy, dx, ey, ex) = ((s >> 3) & 1, (s >> 2) & 1, (s >> 1) & 1, s & 1);
                        let (oy, ox) = (4 * y + 2 * dy + ey, 4 * x + 2 * dx + ex);
                        for (mi, hm) in hy.chunks_exact(c2).enumerate() {
                            // SAFETY: output rows 4y..4y + 4 of set `bi` belong to this task alone.
                            unsafe { *base.get().add(((bi * m + mi) * oh + oy) * ow + ox) = dot(v, hm) };
                        }
                    }
                }
            },
        );
        Ok(())
    });
    done.into_iter().collect::<Result<()>>()?;
    Ok(out)
}
