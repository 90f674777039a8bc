//! The batches of one CLIP training epoch: image–caption pairs decoded, augmented and tokenised
//! on worker threads ahead of the step ([`crate::train::loader`]).
//!
//! open_clip's training transform (`image_transform(is_train=True)`): `RandomResizedCrop(size,
//! scale=(0.9, 1.0), interpolation=BICUBIC)` (torchvision's crop sampling, Pillow's bicubic
//! resize), conversion to RGB, `ToTensor`, `Normalize(mean, std)`; the evaluation transform is
//! the model's own (shortest side resized, centre crop). Each sample draws its crop and which of
//! its captions it uses from its own stream (`sample_rng(seed, sample, epoch)`).

use std::sync::Arc;

use candle_core::{Device, Tensor};

use crate::clip::tokenizer::TextTokenizer;
use crate::data::{CaptionSet, ItemImage};
use crate::image::augment::{below, random_resized_crop_params, sample_rng, CropBox, DEFAULT_RATIO};
use crate::image::resize::{resize_exact, Filter};
use crate::image::{ClipPreprocess, DecodeOptions, RgbImage};
use crate::train::loader::MakeBatch;
use crate::Result;

/// One batch: pixels channels-last and token ids.
#[derive(Debug)]
pub struct ClipBatch {
    /// Position of the batch in the epoch.
    pub index: usize,
    /// `[n, S, S, 3]`, normalised.
    pub pixels: Tensor,
    /// `n` rows of `context_length` ids.
    pub ids: Vec<Vec<u32>>,
    /// The item index of each row.
    pub samples: Vec<usize>,
    /// One message per sample that could not be used.
    pub failed: Vec<String>,
}

/// `ToTensor` + `Normalize`, channels-last: `(x / 255 − mean) / std`.
pub fn normalize_hwc(img: &RgbImage, mean: [f32; 3], std: [f32; 3], out: &mut Vec<f32>) {
    for px in img.pixels() {
        for c in 0..3 {
            out.push((px[c] as f32 / 255.0 - mean[c]) / std[c]);
        }
    }
}

/// How samples become model inputs.
pub struct ClipBatches {
    /// The pairs.
    pub set: Arc<CaptionSet>,
    /// The family's tokenizer.
    pub tokenizer: Arc<TextTokenizer>,
    /// Tokens per text.
    pub context_length: usize,
    /// Square input side.
    pub size: u32,
    /// `RandomResizedCrop`'s area range; `None` for the evaluation transform.
    pub train_scale: Option<(f64, f64)>,
    /// The evaluation transform (and the normalisation statistics).
    pub eval: ClipPreprocess,
    /// Image decoding (pixel limit, EXIF orientation).
    pub decode: DecodeOptions,
    /// Seed of the augmentations and caption choices.
    pub seed: u64,
}

impl ClipBatches {
    /// Sample `s`'s view: the augmented (or evaluation) crop, and its caption.
    fn sample(&self, s: usize, epoch: usize) -> Result<(RgbImage, &str)> {
        let mut rng = sample_rng(self.seed, s as u64, epoch as u64);
        let caps = &self.set.captions[s];
        // Training draws one of the captions; evaluation reads the first.
        let pick =
            if self.train_scale.is_some() && caps.len() > 1 { below(&mut rng, caps.len() as u32) as usize } else { 0 };
        let caption = &caps[pick];
        let img = self.set.items[s].load(&self.decode)?;
        let view = match self.train_scale {
            Some(scale) => {
                let CropBox { top, left, height, width } =
                    random_resized_crop_params(img.width(), img.height(), scale, DEFAULT_RATIO, &mut rng);
                let cropped = ::image::imageops::crop_imm(&img, left, top, width, height).to_image();
                resize_exact(&cropped, self.size, self.size, Filter::Bicubic)?
            }
            None => self.eval.resize_crop(&img),
        };
        Ok((view, caption))
    }

    /// Builds the batch of `samples` (also used for evaluation, without workers).
    pub fn build(&self, index: usize, samples: &[usize], epoch: usize) -> Result<ClipBatch> {
        let s = self.size as usize;
        let mut pixels = Vec::with_capacity(samples.len() * s * s * 3);
        let (mut ids, mut kept, mut failed) = (Vec::new(), Vec::new(), Vec::new());
        for &i in samples {
            let result = self
                .sample(i, epoch)
                .and_then(|(view, caption)| Ok((view, self.tokenizer.tokenize(caption, self.context_length)?)));
            match result {
                Ok((view, tokens)) => {
                    normalize_hwc(&view, self.eval.mean, self.eval.std, &mut pixels);
                    ids.push(tokens);
                    kept.push(i);
                }
                Err(e) => failed.push(match &self.set.items[i].image {
                    ItemImage::File(_) => e.to_string(),
                    ItemImage::Gray(_) => format!("item {i}: {e}"),
                }),
            }
        }
        let n = kept.len();
        let pixels = Tensor::from_vec(pixels, (n, s, s, 3), &Device::Cpu)?;
        Ok(ClipBatch { index, pixels, ids, samples: kept, failed })
    }
}

impl MakeBatch for ClipBatches {
    type Batch = ClipBatch;

    fn make(&self, index: usize, samples: &[usize], epoch: usize) -> Result<ClipBatch> {
        self.build(index, samples, epoch)
    }
}
