//! Encode an image once, prompt it many times: [`Predictor::set_image`] returns a [`Session`]
//! holding the image embedding, and only a session can [`Session::predict`].
//!
//! This is `SamPredictor` with one change of shape: many boxes go through the decoder as one
//! batch (`predict_torch` with `B` boxes), and the points and mask input of a call are shared by
//! every box (the reference needs them repeated per box; the result is the same).

use std::sync::{Arc, OnceLock};

use candle_core::{DType, Tensor};
use rayon::prelude::*;

use super::mask_decoder::PreparedImage;
use super::model::Sam;
use super::prompt_encoder::PointLabel;
use super::transforms;
use crate::image::RgbImage;
use crate::{Error, Result};

/// A click on the image, in original pixel coordinates (`x` right, `y` down).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    /// Horizontal position in pixels.
    pub x: f32,
    /// Vertical position in pixels.
    pub y: f32,
    /// Foreground (`true`, label 1) or background (`false`, label 0).
    pub positive: bool,
}

/// Everything one call may say about the object(s) wanted.
#[derive(Debug, Clone, Default)]
pub struct Prompts {
    /// Clicks, shared by every box.
    pub points: Vec<Point>,
    /// `[x0, y0, x1, y1]` in original pixel coordinates; each box gets its own mask set.
    pub boxes: Vec<[f32; 4]>,
    /// Low-resolution logits `[4h, 4w]` (256×256 for the releases), usually a previous call's
    /// best [`Prediction::low_res`] plane; shared by every box.
    pub mask_input: Option<Vec<f32>>,
    /// Three masks per set (the ambiguity-aware outputs) instead of one.
    pub multimask: bool,
    /// Also return the full-size logits (`return_logits=True`).
    pub return_logits: bool,
}

/// Masks for `sets` prompt sets (one per box, or one), `per_set` masks each.
#[derive(Debug, Clone)]
pub struct Prediction {
    /// Number of prompt sets: one per box, or one without boxes.
    pub sets: usize,
    /// Masks per set: `num_multimask_outputs` (3) with `multimask`, else 1.
    pub per_set: usize,
    /// Original image height.
    pub height: usize,
    /// Original image width.
    pub width: usize,
    /// `[sets, per_set, H, W]`, 1 where the logit is > 0.
    pub masks: Vec<u8>,
    /// Predicted IoU per mask, `[sets, per_set]`.
    pub iou: Vec<f32>,
    /// Low-resolution logits, `[sets, per_set, 4h, 4w]`.
    pub low_res: Tensor,
    /// Full-size logits `[sets, per_set, H, W]`, when asked for.
    pub logits: Option<Vec<f32>>,
}

impl Prediction {
    /// Mask `m` of set `s`, row-major `H × W`.
    pub fn mask(&self, s: usize, m: usize) -> &[u8] {
        let n = self.height * self.width;
        let i = s * self.per_set + m;
        &self.masks[i * n..(i + 1) * n]
    }

    /// The predicted IoU of mask `m` of set `s`.
    pub fn score(&self, s: usize, m: usize) -> f32 {
        self.iou[s * self.per_set + m]
    }

    /// The index of the highest-scoring mask of set `s`.
    pub fn best(&self, s: usize) -> usize {
        (0..self.per_set).max_by(|a, b| self.score(s, *a).total_cmp(&self.score(s, *b))).unwrap_or(0)
    }

    /// Low-resolution logits of mask `m` of set `s` (to feed back as a mask input).
    pub fn low_res_plane(&self, s: usize, m: usize) -> Result<Vec<f32>> {
        Ok(self.low_res.get(s)?.get(m)?.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1()?)
    }
}

/// Shares a loaded model between sessions.
#[derive(Clone)]
pub struct Predictor {
    model: Arc<Sam>,
}

/// An encoded image, ready for prompts. Cheap to keep: the embedding is `C × h × w` floats,
/// and after the first prompt without a mask the decoder's work that no such prompt changes
/// ([`Sam::prepare`], about 2.5× the embedding), shared by the session's clones.
#[derive(Clone)]
pub struct Session {
    model: Arc<Sam>,
    /// Channels-last `[h·w, C]`.
    embedding: Tensor,
    original_size: (usize, usize),
    input_size: (usize, usize),
    prepared: Arc<OnceLock<PreparedImage>>,
}

/// Bytes of image-token activations one decoder pass may hold per tensor. Each prompt set
/// carries its own copy of the `h·w × C` image tokens through the two-way transformer (and twice
/// that after up-sampling); keeping each tensor under glibc's largest mmap threshold (32 MiB)
/// lets the allocator reuse heap memory between passes instead of faulting in fresh pages,
/// which cost more than the arithmetic at 64 boxes.
const DECODER_CHUNK_BYTES: usize = 32 << 20;

/// The same bound on a GPU: 2 GiB per tensor (256 prompt sets of a 64×64×256 embedding).
const DEVICE_DECODER_CHUNK_BYTES: usize = 2 << 30;

impl Predictor {
    /// A predictor over a loaded model.
    pub fn new(model: Arc<Sam>) -> Self {
        Self { model }
    }

    /// The model.
    pub fn model(&self) -> &Arc<Sam> {
        &self.model
    }

    /// Runs the image encoder (the expensive step) once for `img`.
    pub fn set_image(&self, img: &RgbImage) -> Result<Session> {
        if img.width() == 0 || img.height() == 0 {
            return Err(Error::arg("image", format!("empty image ({}x{})", img.width(), img.height())));
        }
        let (pixels, input_size) = self.model.preprocess(img)?;
        let emb = self.model.encode(&pixels, None)?;
        let (_, h, w, c) = emb.dims4()?;
        let original_size = (img.height() as usize, img.width() as usize);
        Ok(Session {
            model: self.model.clone(),
            embedding: emb.reshape((h * w, c))?,
            original_size,
            input_size,
            prepared: Arc::default(),
        })
    }

    /// A session from a stored embedding (`[C, h, w]`, as [`Session::embedding_chw`] gives it)
    /// for an image of `original_size = (height, width)`.
    pub fn session_from_embedding(&self, embedding_chw: &Tensor, original_size: (usize, usize)) -> Result<Session> {
        let (c, h, w) = embedding_chw.dims3()?;
        let (gh, gw) = self.model.grid();
        if (c, h, w) != (self.model.embed_dim(), gh, gw) {
            return Err(Error::arg(
                "embedding",
                format!("shape [{c}, {h}, {w}] does not fit this model's [{}, {gh}, {gw}]", self.model.embed_dim()),
            ));
        }
        if original_size.0 == 0 || original_size.1 == 0 {
            return Err(Error::arg("embedding", "the stored image size is empty"));
        }
        let input_size = transforms::preprocess_shape(original_size.0, original_size.1, self.model.image_size());
        let embedding = embedding_chw
            .to_device(self.model.device())?
            .to_dtype(self.model.dtype())?
            .permute((1, 2, 0))?
            .reshape((h * w, c))?;
        Ok(Session {
            model: self.model.clone(),
            embedding: embedding.contiguous()?,
            original_size,
            input_size,
            prepared: Arc::default(),
        })
    }
}

impl Session {
    /// The decoder on this image: from the prepared image work without mask prompts (made on
    /// first use), from the embedding with them.
    fn decode(&self, sparse: &Tensor, masks: Option<&Tensor>) -> Result<(Tensor, Tensor)> {
        if masks.is_some() {
            return self.model.decode(&self.embedding, sparse, masks);
        }
        let prepared = match self.prepared.get() {
            Some(p) => p,
            None => {
                // Two threads may both make it; the first one stored is kept.
                let _ = self.prepared.set(self.model.prepare(&self.embedding)?);
                self.prepared.get().expect("just set")
            }
        };
        self.model.decode_prepared(prepared, sparse)
    }

    /// `(height, width)` of the original image.
    pub fn original_size(&self) -> (usize, usize) {
        self.original_size
    }

    /// The image embedding as the reference holds it, `[C, h, w]`.
    pub fn embedding_chw(&self) -> Result<Tensor> {
        let (h, w) = self.model.grid();
        Ok(self.embedding.reshape((h, w, ()))?.permute((2, 0, 1))?.contiguous()?)
    }

    /// The model.
    pub fn model(&self) -> &Arc<Sam> {
        &self.model
    }

    fn check_xy(&self, what: &str, x: f32, y: f32) -> Result<()> {
        let (h, w) = self.original_size;
        if !(x.is_finite() && y.is_finite()) || x < 0.0 || y < 0.0 || x > w as f32 || y > h as f32 {
            return Err(Error::arg(
                what,
                format!("({x}, {y}) is outside the {w}x{h} image (x must be in 0..={w}, y in 0..={h})"),
            ));
        }
        Ok(())
    }

    fn validate(&self, p: &Prompts) -> Result<()> {
        if p.points.is_empty() && p.boxes.is_empty() && p.mask_input.is_none() {
            return Err(Error::arg("prompts", "no point, box or mask input given"));
        }
        for pt in &p.points {
            self.check_xy("point", pt.x, pt.y)?;
        }
        for b in &p.boxes {
            self.check_xy("box", b[0], b[1])?;
            self.check_xy("box", b[2], b[3])?;
            if b[2] < b[0] || b[3] < b[1] {
                return Err(Error::arg("box", format!("{b:?} has x1 < x0 or y1 < y0 (expected x0,y0,x1,y1)")));
            }
        }
        if let Some(m) = &p.mask_input {
            let (h, w) = self.model.grid();
            if m.len() != 16 * h * w {
                return Err(Error::arg(
                    "mask input",
                    format!("{} values, expected {}x{} low-resolution logits", m.len(), 4 * h, 4 * w),
                ));
            }
        }
        Ok(())
    }

    /// The decoder on many one-point prompts at once, the automatic mask generator's call
    /// (`predict_torch` with `B` sets of one foreground point, `return_logits=True`): set `i` is
    /// the point `points[i]` (original pixel coordinates) with, when `mask_inputs` is given, the
    /// low-resolution logits `mask_inputs[i·4h·4w..]` as its dense prompt (SAM 2's mask-to-mask
    /// refinement). Returns mask outputs `outputs` of every set, on the host: (`low_res`
    /// `[B, K, 4h, 4w]`, `iou` `[B, K]`) with `K = outputs.len()`. Chunked as
    /// [`Session::predict`], so memory stays bounded at any `B`.
    pub fn decode_points(
        &self,
        points: &[[f64; 2]],
        mask_inputs: Option<&[f32]>,
        outputs: std::ops::Range<usize>,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        let model = &self.model;
        let (gh, gw) = model.grid();
        let c = model.embed_dim();
        let plane = 16 * gh * gw;
        let total = model.config.decoder.num_multimask_outputs + 1;
        if outputs.is_empty() || outputs.end > total {
            return Err(Error::arg("outputs", format!("{outputs:?} is not within the decoder's {total} mask outputs")));
        }
        if let Some(m) = mask_inputs {
            if m.len() != points.len() * plane {
                return Err(Error::arg(
                    "mask inputs",
                    format!("{} values for {} points of {}x{} logits", m.len(), points.len(), 4 * gh, 4 * gw),
                ));
            }
        }
        for p in points {
            self.check_xy("point", p[0] as f32, p[1] as f32)?;
        }
        let size = model.image_size();
        let orig = self.original_size;
        let tokens: Vec<[([f32; 2], PointLabel); 1]> = points
            .iter()
            .map(|p| {
                let (x, y) = transforms::apply_coords(p[0], p[1], orig, size);
                [([x, y], PointLabel::Positive)]
            })
            .collect();
        let set_bytes = 2 * gh * gw * c * std::mem::size_of::<f32>();
        let budget = if model.device().is_cpu() { DECODER_CHUNK_BYTES } else { DEVICE_DECODER_CHUNK_BYTES };
        let chunk_len = (budget / set_bytes.max(1)).max(1);
        let k = outputs.len();
        let mut low_res = Vec::with_capacity(points.len() * k * plane);
        let mut iou = Vec::with_capacity(points.len() * k);
        type OnePoint = [([f32; 2], PointLabel); 1];
        let decode_chunk = |(ci, chunk): (usize, &[OnePoint])| -> Result<(Vec<f32>, Vec<f32>)> {
            let sets: Vec<_> = chunk.iter().map(|t| (t.as_slice(), None)).collect();
            let sparse = model.prompt_encoder.sparse_batch(&sets)?;
            let dense = match mask_inputs {
                Some(m) => {
                    let start = ci * chunk_len * plane;
                    let m = &m[start..start + chunk.len() * plane];
                    let m = Tensor::from_slice(m, (chunk.len(), 4 * gh, 4 * gw), model.device())?;
                    Some(model.prompt_encoder.embed_masks(&m)?)
                }
                None => None,
            };
            let (masks, scores) = self.decode(&sparse, dense.as_ref())?;
            let masks = masks.narrow(1, outputs.start, k)?.to_dtype(DType::F32)?;
            let scores = scores.narrow(1, outputs.start, k)?.to_dtype(DType::F32)?;
            Ok((masks.flatten_all()?.to_vec1::<f32>()?, scores.flatten_all()?.to_vec1::<f32>()?))
        };
        // On the CPU, chunks run side by side: one chunk's small matrix products and
        // element-wise passes keep about one core busy, so a thread per chunk fills the others
        // (each chunk holds at most DECODER_CHUNK_BYTES per tensor).
        let parts: Vec<(Vec<f32>, Vec<f32>)> = if model.device().is_cpu() {
            use rayon::prelude::*;
            tokens.par_chunks(chunk_len).enumerate().map(decode_chunk).collect::<Result<_>>()?
        } else {
            tokens.chunks(chunk_len).enumerate().map(decode_chunk).collect::<Result<_>>()?
        };
        for (l, i) in parts {
            low_res.extend(l);
            iou.extend(i);
        }
        Ok((low_res, iou))
    }

    /// The encoder's input size of the image, `(h, w)`: the original resized so its longest side
    /// is the model's input size.
    pub fn input_size(&self) -> (usize, usize) {
        self.input_size
    }

    /// Predicts masks for the prompts: one mask set per box (or one set without boxes).
    pub fn predict(&self, p: &Prompts) -> Result<Prediction> {
        self.validate(p)?;
        let model = &self.model;
        let size = model.image_size();
        let orig = self.original_size;
        let points: Vec<([f32; 2], PointLabel)> = p
            .points
            .iter()
            .map(|pt| {
                let (x, y) = transforms::apply_coords(pt.x as f64, pt.y as f64, orig, size);
                ([x, y], if pt.positive { PointLabel::Positive } else { PointLabel::Negative })
            })
            .collect();
        let boxes: Vec<Option<[f32; 4]>> = if p.boxes.is_empty() {
            vec![None]
        } else {
            p.boxes
                .iter()
                .map(|b| {
                    let (x0, y0) = transforms::apply_coords(b[0] as f64, b[1] as f64, orig, size);
                    let (x1, y1) = transforms::apply_coords(b[2] as f64, b[3] as f64, orig, size);
                    Some([x0, y0, x1, y1])
                })
                .collect()
        };
        let (gh, gw) = model.grid();
        let c = model.embed_dim();
        let dense = match &p.mask_input {
            Some(m) => {
                let m = Tensor::from_slice(m, (1, 4 * gh, 4 * gw), model.device())?;
                Some(model.prompt_encoder.embed_masks(&m)?)
            }
            None => None,
        };
        let (range_start, per_set) = if p.multimask { (1, model.config.decoder.num_multimask_outputs) } else { (0, 1) };
        let mut low_res = Vec::new();
        let mut iou = Vec::new();
        let set_bytes = 2 * gh * gw * c * std::mem::size_of::<f32>();
        // The CPU reason for small chunks (above) does not apply on a GPU, where one larger batch
        // keeps the device busy; still bounded, for memory.
        let budget = if model.device().is_cpu() { DECODER_CHUNK_BYTES } else { DEVICE_DECODER_CHUNK_BYTES };
        let chunk_len = (budget / set_bytes.max(1)).max(1);
        for chunk in boxes.chunks(chunk_len) {
            let sets: Vec<_> = chunk.iter().map(|b| (points.as_slice(), *b)).collect();
            let sparse = model.prompt_encoder.sparse_batch(&sets)?;
            let dense = match &dense {
                Some(d) => Some(d.broadcast_as((chunk.len(), gh, gw, c))?.contiguous()?),
                None => None,
            };
            let (masks, scores) = self.decode(&sparse, dense.as_ref())?;
            low_res.push(masks.narrow(1, range_start, per_set)?);
            iou.push(scores.narrow(1, range_start, per_set)?);
        }
        let low_res = Tensor::cat(&low_res, 0)?.contiguous()?;
        let iou: Vec<f32> = Tensor::cat(&iou, 0)?.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        let (masks, logits) = if crate::nn::cpu::eligible(&low_res) {
            let planes = low_res.flatten_all()?.to_vec1()?;
            if p.return_logits {
                let logits = transforms::postprocess_masks(&planes, (4 * gh, 4 * gw), size, self.input_size, orig);
                (logits.par_iter().map(|v| u8::from(*v > 0.0)).collect(), Some(logits))
            } else {
                let low = (4 * gh, 4 * gw);
                (transforms::postprocess_masks_positive(&planes, low, size, self.input_size, orig), None)
            }
        } else {
            // On the device: up-sample there, and bring back one byte per pixel (and the logits
            // only when asked for).
            let planes = low_res.reshape((boxes.len() * per_set, 4 * gh, 4 * gw))?;
            let full = transforms::postprocess_masks_tensor(&planes, size, self.input_size, orig)?;
            let masks = full.gt(0.0)?.flatten_all()?.to_vec1::<u8>()?;
            let logits =
                if p.return_logits { Some(full.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?) } else { None };
            (masks, logits)
        };
        Ok(Prediction { sets: boxes.len(), per_set, height: orig.0, width: orig.1, masks, iou, low_res, logits })
    }
}
