//! SAM's prompt encoder (`segment_anything/modeling/prompt_encoder.py`).
//!
//! Points and box corners become sparse tokens: a random-Fourier positional encoding of the
//! coordinate (`PositionEmbeddingRandom`) plus a learned embedding for its kind (negative point,
//! positive point, top-left corner, bottom-right corner). A "not a point" token pads point-only
//! prompts. A low-resolution mask becomes a dense embedding through two stride-2 convolutions;
//! without one, a learned "no mask" vector fills the grid.

use candle_core::{DType, Device, Module, Tensor};

use super::config::DecoderConfig;
use crate::nn::conv::Conv2d;
use crate::nn::{portable, Activation, LayerNorm, Linear};
use crate::weights::Vb;
use crate::Result;

/// A point label as the reference encodes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PointLabel {
    /// `-1`: padding, "not a point".
    NotAPoint,
    /// `0`: background.
    Negative,
    /// `1`: foreground.
    Positive,
}

/// One prompt set for [`PromptEncoder::sparse_batch`]: points (input-frame coordinates) and an
/// optional box.
pub type PromptSet<'a> = (&'a [([f32; 2], PointLabel)], Option<[f32; 4]>);

/// `PromptEncoder`.
pub struct PromptEncoder {
    dim: usize,
    /// `positional_encoding_gaussian_matrix`, `[2, dim/2]` row-major.
    gaussian: Vec<f32>,
    /// Negative point, positive point, box top-left, box bottom-right.
    point_embeddings: [Vec<f32>; 4],
    not_a_point: Vec<f32>,
    no_mask: Vec<f32>,
    /// `no_mask_embed` as `[1, C]` on the weights' device and dtype.
    no_mask_t: Tensor,
    down1: Conv2d,
    ln1: LayerNorm,
    down2: Conv2d,
    ln2: LayerNorm,
    down3: Linear,
    /// `(h, w)` of the image embedding.
    grid: (usize, usize),
    /// `(H, W)` of the padded encoder input the coordinates refer to.
    input_size: (usize, usize),
    device: Device,
    dtype: DType,
}

fn vec1(vb: &Vb, shape: &[usize], name: &str) -> Result<Vec<f32>> {
    super::image_encoder::host_f32(&vb.get(shape, name)?)
}

impl PromptEncoder {
    /// Reads the prompt encoder below `vb` for a `grid` × `grid` embedding of an `image_size` ×
    /// `image_size` input.
    pub fn load(vb: &Vb, cfg: &DecoderConfig, grid: usize, image_size: usize) -> Result<Self> {
        let c = cfg.dim;
        let m = cfg.mask_in_chans;
        let md = vb.pp("mask_downscaling");
        let pe = |i: usize| vec1(&vb.pp("point_embeddings").pp(i), &[1, c], "weight");
        let no_mask = vec1(&vb.pp("no_mask_embed"), &[1, c], "weight")?;
        Ok(Self {
            dim: c,
            gaussian: vec1(&vb.pp("pe_layer"), &[2, c / 2], "positional_encoding_gaussian_matrix")?,
            point_embeddings: [pe(0)?, pe(1)?, pe(2)?, pe(3)?],
            not_a_point: vec1(&vb.pp("not_a_point_embed"), &[1, c], "weight")?,
            no_mask_t: portable::upload(&no_mask, &[1, c], (vb.device(), vb.dtype()))?,
            no_mask,
            down1: Conv2d::new(
                &md.pp(0).get(&[m / 4, 1, 2, 2], "weight")?,
                Some(md.pp(0).get(&[m / 4], "bias")?),
                2,
                0,
            )?,
            ln1: LayerNorm::load(&md.pp(1), m / 4, 1e-6)?,
            down2: Conv2d::new(&md.pp(3).get(&[m, m / 4, 2, 2], "weight")?, Some(md.pp(3).get(&[m], "bias")?), 2, 0)?,
            ln2: LayerNorm::load(&md.pp(4), m, 1e-6)?,
            down3: Linear::new(
                md.pp(6).get(&[c, m, 1, 1], "weight")?.reshape((c, m))?,
                Some(md.pp(6).get(&[c], "bias")?),
            )?,
            grid: (grid, grid),
            input_size: (image_size, image_size),
            device: vb.device().clone(),
            dtype: vb.dtype(),
        })
    }

    /// The device of the weights, which the prompt tensors must be on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The dtype of the weights, which the prompt tensors must have.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Width of the prompt embeddings (`DecoderConfig::dim`).
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// `(h, w)` of the image embedding; masks in are `(4h, 4w)`.
    pub fn grid(&self) -> (usize, usize) {
        self.grid
    }

    /// `PositionEmbeddingRandom._pe_encoding` of one coordinate already divided by the input
    /// size: `[sin(2π·(2p − 1)·G), cos(…)]`.
    fn pe_encoding(&self, x: f32, y: f32, out: &mut [f32]) {
        let half = self.dim / 2;
        let (cx, cy) = (2.0 * x - 1.0, 2.0 * y - 1.0);
        let two_pi = (2.0 * std::f64::consts::PI) as f32;
        for j in 0..half {
            let v = two_pi * (cx * self.gaussian[j] + cy * self.gaussian[half + j]);
            out[j] = v.sin();
            out[half + j] = v.cos();
        }
    }

    /// `get_dense_pe()`: the encoding of every grid cell centre, channels-last `[h·w, C]`, on the
    /// weights' device and dtype (computed on the host, once per model).
    pub fn dense_pe(&self) -> Result<Tensor> {
        let (h, w) = self.grid;
        let mut out = vec![0f32; h * w * self.dim];
        for y in 0..h {
            for x in 0..w {
                let (fx, fy) = ((x as f32 + 0.5) / w as f32, (y as f32 + 0.5) / h as f32);
                let i = (y * w + x) * self.dim;
                self.pe_encoding(fx, fy, &mut out[i..i + self.dim]);
            }
        }
        portable::upload(&out, &[h * w, self.dim], (&self.device, self.dtype))
    }

    /// [`Self::sparse`] for a batch of prompt sets with the same token count, as `[B, T, C]` on
    /// the weights' device and dtype (the host-side encoding uploaded once).
    pub fn sparse_batch(&self, sets: &[PromptSet<'_>]) -> Result<Tensor> {
        let c = self.dim;
        let flat: Vec<f32> = sets.iter().flat_map(|(p, b)| self.sparse(p, *b)).collect();
        let t = flat.len() / c / sets.len().max(1);
        portable::upload(&flat, &[sets.len(), t, c], (&self.device, self.dtype))
    }

    /// One point in input-frame coordinates (already `apply_coords`-transformed).
    fn point_token(&self, x: f32, y: f32, label: PointLabel, out: &mut [f32]) {
        let (ih, iw) = self.input_size;
        match label {
            PointLabel::NotAPoint => out.copy_from_slice(&self.not_a_point),
            _ => {
                self.pe_encoding((x + 0.5) / iw as f32, (y + 0.5) / ih as f32, out);
                let e = &self.point_embeddings[if label == PointLabel::Negative { 0 } else { 1 }];
                out.iter_mut().zip(e).for_each(|(o, e)| *o += e);
            }
        }
    }

    /// The sparse tokens of one prompt set: its points (plus the padding point when there is no
    /// box, as the reference does), then the box corners.
    ///
    /// # Shapes
    /// -> `[T, C]` with `T = points + 1` without a box, `points + 2` with one.
    pub fn sparse(&self, points: &[([f32; 2], PointLabel)], bbox: Option<[f32; 4]>) -> Vec<f32> {
        let c = self.dim;
        let mut tokens: Vec<([f32; 2], PointLabel)> = points.to_vec();
        if !points.is_empty() && bbox.is_none() {
            tokens.push(([0.0, 0.0], PointLabel::NotAPoint));
        }
        let corners = if bbox.is_some() { 2 } else { 0 };
        let mut out = vec![0f32; (tokens.len() + corners) * c];
        for (i, (p, l)) in tokens.iter().enumerate() {
            self.point_token(p[0], p[1], *l, &mut out[i * c..(i + 1) * c]);
        }
        if let Some(b) = bbox {
            let (ih, iw) = self.input_size;
            let base = tokens.len() * c;
            for (k, (x, y)) in [(b[0], b[1]), (b[2], b[3])].into_iter().enumerate() {
                let o = &mut out[base + k * c..base + (k + 1) * c];
                self.pe_encoding((x + 0.5) / iw as f32, (y + 0.5) / ih as f32, o);
                o.iter_mut().zip(&self.point_embeddings[2 + k]).for_each(|(o, e)| *o += e);
            }
        }
        out
    }

    /// The dense embedding of low-resolution mask logits.
    ///
    /// # Shapes
    /// `masks: [B, 4h, 4w]` -> `[B, h, w, C]`
    pub fn embed_masks(&self, masks: &Tensor) -> Result<Tensor> {
        let (b, mh, mw) = masks.dims3()?;
        let x = masks.to_device(&self.device)?.to_dtype(self.dtype)?.reshape((b, mh, mw, 1))?;
        let x = Activation::Gelu.forward(&self.ln1.forward(&self.down1.forward(&x)?)?)?;
        let x = Activation::Gelu.forward(&self.ln2.forward(&self.down2.forward(&x)?)?)?;
        self.down3.forward_act(&x, None)
    }

    /// `no_mask_embed` as a `[C]` vector, broadcast over the grid when no mask is given.
    pub fn no_mask(&self) -> &[f32] {
        &self.no_mask
    }

    /// `no_mask_embed` as `[1, C]` on the weights' device and dtype.
    pub fn no_mask_tensor(&self) -> &Tensor {
        &self.no_mask_t
    }
}
