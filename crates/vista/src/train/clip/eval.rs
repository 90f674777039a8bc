//! Evaluation during CLIP training, as `open_clip_train/zero_shot.py` and `train.py`'s
//! `get_clip_metrics` compute it.
//!
//! * Zero-shot top-1 on a labelled set: each class's text embedding is the mean of its
//!   normalised template embeddings, normalised again; an image is classified by the largest
//!   cosine.
//! * Retrieval recall@K on a held-out caption set (each image with its first caption): the rank
//!   of the true pair among all candidates, image→text and text→image.

use candle_core::{Tensor, D};
use serde::{Deserialize, Serialize};

use super::data::ClipBatches;
use super::model::{l2_normalize, TrainClip};
use crate::clip::tokenizer::TextTokenizer;
use crate::data::captions::fill_template;
use crate::Result;

/// Images per evaluation forward.
const EVAL_BATCH: usize = 64;

/// Retrieval recall at 1, 5 and 10, both directions.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Recall {
    /// Image → text recall@1, @5, @10.
    pub image_to_text: [f64; 3],
    /// Text → image recall@1, @5, @10.
    pub text_to_image: [f64; 3],
}

impl Recall {
    /// The K of each column.
    pub const KS: [usize; 3] = [1, 5, 10];

    /// The mean of the two recall@10 (the gate's measure).
    pub fn mean_r10(&self) -> f64 {
        (self.image_to_text[2] + self.text_to_image[2]) / 2.0
    }
}

/// Normalised image and (with `texts`) first-caption text embeddings of every item of `data`'s
/// set; items that fail to load are left out (the kept items and the failure count come back).
pub fn embed_pairs(
    model: &TrainClip,
    data: &ClipBatches,
    texts: bool,
) -> Result<(Tensor, Option<Tensor>, Vec<usize>, usize)> {
    let model = model.detached();
    let device = model.device();
    let n = data.set.len();
    let (mut imgs, mut txts, mut kept, mut failed) = (Vec::new(), Vec::new(), Vec::new(), 0);
    for (index, start) in (0..n).step_by(EVAL_BATCH).enumerate() {
        let samples: Vec<usize> = (start..(start + EVAL_BATCH).min(n)).collect();
        let batch = data.build(index, &samples, 0)?;
        failed += batch.failed.len();
        if batch.samples.is_empty() {
            continue;
        }
        imgs.push(l2_normalize(&model.encode_image(&batch.pixels.to_device(&device)?)?)?);
        if texts {
            txts.push(l2_normalize(&model.encode_text(&batch.ids)?)?);
        }
        kept.extend(batch.samples);
    }
    if imgs.is_empty() {
        return Err(crate::Error::arg("eval", "no image of the evaluation set could be loaded"));
    }
    let txt = if texts { Some(Tensor::cat(&txts, 0)?) } else { None };
    Ok((Tensor::cat(&imgs, 0)?, txt, kept, failed))
}

/// `get_clip_metrics`' recall: a query's rank is the position of its true pair in the
/// candidates sorted by descending score — the candidates scoring above it, and those scoring
/// the same that come earlier (a stable `argsort`; duplicate captions tie exactly); recall@K is
/// the share of queries ranked below K.
pub fn recall(image: &Tensor, text: &Tensor) -> Result<Recall> {
    let sims = image.matmul(&text.t()?)?.to_vec2::<f32>()?;
    let n = sims.len();
    let ahead = |score: &dyn Fn(usize) -> f32, truth: usize| {
        let t = score(truth);
        (0..n).filter(|&c| score(c) > t || (score(c) == t && c < truth)).count()
    };
    let rank_i2t: Vec<usize> = (0..n).map(|i| ahead(&|c| sims[i][c], i)).collect();
    let rank_t2i: Vec<usize> = (0..n).map(|j| ahead(&|c| sims[c][j], j)).collect();
    let at = |ranks: &[usize]| Recall::KS.map(|k| ranks.iter().filter(|&&r| r < k).count() as f64 / n.max(1) as f64);
    Ok(Recall { image_to_text: at(&rank_i2t), text_to_image: at(&rank_t2i) })
}

/// Class embeddings of `classes` through `templates`: `normalize(mean(normalize(text)))`.
pub fn class_embeddings(
    model: &TrainClip,
    tokenizer: &TextTokenizer,
    classes: &[String],
    templates: &[String],
) -> Result<Tensor> {
    let model = model.detached();
    let ctx = model.config.text.context_length;
    let mut rows = Vec::with_capacity(classes.len());
    for c in classes {
        let texts: Vec<String> = templates.iter().map(|t| fill_template(t, c)).collect();
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let ids = tokenizer.tokenize_batch(&refs, ctx)?;
        let e = l2_normalize(&model.encode_text(&ids)?)?.mean_keepdim(0)?;
        rows.push(l2_normalize(&e)?);
    }
    Ok(Tensor::cat(&rows, 0)?)
}

/// Zero-shot top-1 (a fraction) of the images `image` (normalised, one row per item of
/// `labels`) against `classes`' embeddings.
pub fn zero_shot_top1(image: &Tensor, class_emb: &Tensor, labels: &[usize]) -> Result<f64> {
    let pred = image.matmul(&class_emb.t()?)?.argmax(D::Minus1)?.to_vec1::<u32>()?;
    let right = pred.iter().zip(labels).filter(|(p, l)| **p as usize == **l).count();
    Ok(right as f64 / labels.len().max(1) as f64)
}
