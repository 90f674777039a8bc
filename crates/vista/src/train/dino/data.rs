//! The training data of one epoch: DINO's shuffled, `drop_last` batches of multi-crop views,
//! decoded and augmented on worker threads ahead of the training step.
//!
//! Everything random is a pure function of `(seed, epoch)` and the sample index: the order is a
//! Fisher–Yates shuffle seeded by `(seed, epoch)`, each sample's views come from its own stream
//! ([`sample_rng`]`(seed, index, epoch)`). So the batches are the same whatever the number of
//! workers or the order they finish in, and a run resumed at an epoch boundary sees exactly the
//! batches the uninterrupted run saw.
//!
//! An item that fails to load or augment is left out of its batch (its error is returned with
//! the batch); a batch keeps whatever samples succeeded.

use std::sync::Arc;

use candle_core::{Device, Tensor};

use crate::data::{Item, ItemImage};
use crate::image::augment::DataAugmentationDino;
use crate::image::DecodeOptions;
use crate::Result;

/// The crops of one batch, ready for [`super::multi_crop_forward`].
#[derive(Debug)]
pub struct Batch {
    /// Position of the batch in the epoch.
    pub index: usize,
    /// One `[n, size, size, 3]` tensor per view (2 globals, then the locals); empty when no
    /// sample of the batch could be loaded.
    pub crops: Vec<Tensor>,
    /// Samples in the batch (`n`).
    pub images: usize,
    /// One message per item that could not be used.
    pub failed: Vec<String>,
}

pub use crate::train::loader::{epoch_order, LoaderOptions};
use crate::train::loader::{Batches, MakeBatch};

/// Builds one batch of multi-crop views.
fn make_batch(
    index: usize,
    samples: &[usize],
    items: &[Item],
    aug: &DataAugmentationDino,
    decode: &DecodeOptions,
    seed: u64,
    epoch: usize,
) -> Result<Batch> {
    let mut views = Vec::with_capacity(samples.len());
    let mut failed = Vec::new();
    for &s in samples {
        let item = &items[s];
        let result = item.load(decode).and_then(|img| aug.augment_sample(&img, seed, s as u64, epoch as u64));
        match result {
            Ok(v) => views.push(v),
            Err(e) => failed.push(match &item.image {
                ItemImage::File(_) => e.to_string(),
                ItemImage::Gray(_) => format!("item {s}: {e}"),
            }),
        }
    }
    let n = views.len();
    let mut crops = Vec::new();
    if n > 0 {
        let nviews = views[0].globals.len() + views[0].locals.len();
        for k in 0..nviews {
            let first = if k < 2 { &views[0].globals[k] } else { &views[0].locals[k - 2] };
            let (h, w) = (first.height, first.width);
            let mut data = Vec::with_capacity(n * h * w * 3);
            for v in &views {
                let view = if k < 2 { &v.globals[k] } else { &v.locals[k - 2] };
                data.extend_from_slice(&view.data);
            }
            crops.push(Tensor::from_vec(data, (n, h, w, 3), &Device::Cpu)?);
        }
    }
    Ok(Batch { index, crops, images: n, failed })
}

/// DINO's batches: the multi-crop views of the epoch's samples.
pub struct DinoBatches {
    items: Arc<Vec<Item>>,
    aug: Arc<DataAugmentationDino>,
    decode: DecodeOptions,
    seed: u64,
}

impl MakeBatch for DinoBatches {
    type Batch = Batch;

    fn make(&self, index: usize, samples: &[usize], epoch: usize) -> Result<Batch> {
        make_batch(index, samples, &self.items, &self.aug, &self.decode, self.seed, epoch)
    }
}

/// The batches of one epoch, in order (see [`Batches`]).
pub type EpochBatches = Batches<DinoBatches>;

impl Batches<DinoBatches> {
    /// The `len(items) / batch_size` full batches of `epoch`, starting at batch `start`.
    pub fn new(
        items: Arc<Vec<Item>>,
        aug: Arc<DataAugmentationDino>,
        options: &LoaderOptions,
        epoch: usize,
        start: usize,
    ) -> Self {
        let n = items.len();
        let maker = DinoBatches { items, aug, decode: options.decode, seed: options.seed };
        Batches::start(Arc::new(maker), n, options, epoch, start)
    }
}
