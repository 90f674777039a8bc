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

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use candle_core::{Device, Tensor};

use crate::data::{Item, ItemImage};
use crate::image::augment::{below, sample_rng, DataAugmentationDino};
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

/// The epoch's sample order: `0..n` shuffled with a stream seeded by `(seed, epoch)`.
pub fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut rng = sample_rng(seed, u64::MAX, epoch as u64);
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = below(&mut rng, (i + 1) as u32) as usize;
        order.swap(i, j);
    }
    order
}

/// Builds one batch (used by the workers, and inline without workers).
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

/// What the workers share: the next batch to start and how far the consumer has got.
struct Gate {
    next: usize,
    consumed: usize,
}

/// The batches of one epoch, in order, produced by `workers` threads at most `prefetch`
/// batches ahead of the consumer (inline in the consumer's thread with 0 workers).
pub struct EpochBatches {
    items: Arc<Vec<Item>>,
    aug: Arc<DataAugmentationDino>,
    decode: DecodeOptions,
    order: Arc<Vec<usize>>,
    batch_size: usize,
    seed: u64,
    epoch: usize,
    nbatches: usize,
    first: usize,
    next: usize,
    pending: BTreeMap<usize, Result<Batch>>,
    rx: Option<Receiver<(usize, Result<Batch>)>>,
    gate: Arc<(Mutex<Gate>, Condvar)>,
    stop: Arc<AtomicBool>,
    handles: Vec<JoinHandle<()>>,
}

/// Options of [`EpochBatches::new`].
#[derive(Debug, Clone)]
pub struct LoaderOptions {
    /// Images per batch.
    pub batch_size: usize,
    /// Seed of the sample order and of the augmentations.
    pub seed: u64,
    /// Worker threads (0: decode and augment in the training thread).
    pub workers: usize,
    /// Batches prepared ahead of the one being trained on.
    pub prefetch: usize,
    /// How image files are decoded (pixel limit, EXIF orientation).
    pub decode: DecodeOptions,
}

impl EpochBatches {
    /// The `len(items) / batch_size` full batches of `epoch`, starting at batch `start`.
    pub fn new(
        items: Arc<Vec<Item>>,
        aug: Arc<DataAugmentationDino>,
        options: &LoaderOptions,
        epoch: usize,
        start: usize,
    ) -> Self {
        let b = options.batch_size.max(1);
        let nbatches = items.len() / b;
        let order = Arc::new(epoch_order(items.len(), options.seed, epoch));
        let gate = Arc::new((Mutex::new(Gate { next: start, consumed: start }), Condvar::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut me = Self {
            items,
            aug,
            decode: options.decode,
            order,
            batch_size: b,
            seed: options.seed,
            epoch,
            nbatches,
            first: start,
            next: start,
            pending: BTreeMap::new(),
            rx: None,
            gate,
            stop,
            handles: Vec::new(),
        };
        if options.workers > 0 && start < nbatches {
            let (tx, rx) = mpsc::channel();
            for _ in 0..options.workers {
                let tx = tx.clone();
                let (items, aug, order) = (me.items.clone(), me.aug.clone(), me.order.clone());
                let (gate, stop, decode) = (me.gate.clone(), me.stop.clone(), me.decode);
                let (seed, prefetch) = (options.seed, options.prefetch.max(1));
                me.handles.push(std::thread::spawn(move || loop {
                    let index = {
                        let (lock, cvar) = &*gate;
                        let mut g = lock.lock().expect("loader gate");
                        while !stop.load(Ordering::Relaxed) && g.next < nbatches && g.next >= g.consumed + prefetch {
                            g = cvar.wait(g).expect("loader gate");
                        }
                        if stop.load(Ordering::Relaxed) || g.next >= nbatches {
                            return;
                        }
                        g.next += 1;
                        g.next - 1
                    };
                    let samples = &order[index * b..(index + 1) * b];
                    let batch = make_batch(index, samples, &items, &aug, &decode, seed, epoch);
                    if tx.send((index, batch)).is_err() {
                        return;
                    }
                }));
            }
            me.rx = Some(rx);
        }
        me
    }

    /// Full batches in the epoch.
    pub fn len(&self) -> usize {
        self.nbatches
    }

    /// True when the epoch has no full batch.
    pub fn is_empty(&self) -> bool {
        self.nbatches == 0
    }

    /// The batch the epoch starts at (0 unless resuming midway).
    pub fn first(&self) -> usize {
        self.first
    }
}

impl Iterator for EpochBatches {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Result<Batch>> {
        if self.next >= self.nbatches {
            return None;
        }
        let index = self.next;
        self.next += 1;
        let Some(rx) = &self.rx else {
            let samples = &self.order[index * self.batch_size..(index + 1) * self.batch_size];
            return Some(make_batch(index, samples, &self.items, &self.aug, &self.decode, self.seed, self.epoch));
        };
        let batch = loop {
            if let Some(b) = self.pending.remove(&index) {
                break b;
            }
            match rx.recv() {
                Ok((i, b)) => {
                    self.pending.insert(i, b);
                }
                Err(_) => {
                    return Some(Err(crate::Error::DataWorker("the data-loading threads stopped unexpectedly".into())));
                }
            }
        };
        let (lock, cvar) = &*self.gate;
        if let Ok(mut g) = lock.lock() {
            g.consumed = index + 1;
        }
        cvar.notify_all();
        Some(batch)
    }
}

impl Drop for EpochBatches {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.gate.1.notify_all();
        self.rx = None;
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}
