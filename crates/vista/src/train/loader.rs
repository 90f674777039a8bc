//! The batches of one training epoch, built on worker threads ahead of the step: shuffled,
//! `drop_last`, in order whatever the number of workers or the order they finish in.
//!
//! Everything random is a pure function of `(seed, epoch)` and the sample index: the order is a
//! Fisher–Yates shuffle seeded by `(seed, epoch)`, and a [`MakeBatch`] draws each sample's
//! augmentation from its own stream, so a run resumed at an epoch boundary (or midway, from the
//! batch it stopped at) sees exactly the batches the uninterrupted run saw.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use crate::image::augment::{below, sample_rng};
use crate::image::DecodeOptions;
use crate::Result;

/// Builds one batch from its samples (indices into the data set), on a worker thread.
pub trait MakeBatch: Send + Sync + 'static {
    /// What one batch is.
    type Batch: Send + 'static;
    /// Batch `index` of `epoch`, from `samples`.
    fn make(&self, index: usize, samples: &[usize], epoch: usize) -> Result<Self::Batch>;
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

/// What the workers share: the next batch to start and how far the consumer has got.
struct Gate {
    next: usize,
    consumed: usize,
}

/// The batches of one epoch, in order, produced by `workers` threads at most `prefetch`
/// batches ahead of the consumer (inline in the consumer's thread with 0 workers).
pub struct Batches<M: MakeBatch> {
    maker: Arc<M>,
    order: Arc<Vec<usize>>,
    batch_size: usize,
    epoch: usize,
    nbatches: usize,
    first: usize,
    next: usize,
    pending: BTreeMap<usize, Result<M::Batch>>,
    rx: Option<Receiver<(usize, Result<M::Batch>)>>,
    gate: Arc<(Mutex<Gate>, Condvar)>,
    stop: Arc<AtomicBool>,
    handles: Vec<JoinHandle<()>>,
}

/// Options of a loader.
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

impl<M: MakeBatch> Batches<M> {
    /// The `n / batch_size` full batches of `epoch` over samples `0..n`, starting at batch `start`.
    pub fn start(maker: Arc<M>, n: usize, options: &LoaderOptions, epoch: usize, start: usize) -> Self {
        let b = options.batch_size.max(1);
        let nbatches = n / b;
        let order = Arc::new(epoch_order(n, options.seed, epoch));
        let gate = Arc::new((Mutex::new(Gate { next: start, consumed: start }), Condvar::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut me = Self {
            maker,
            order,
            batch_size: b,
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
                let (maker, order) = (me.maker.clone(), me.order.clone());
                let (gate, stop) = (me.gate.clone(), me.stop.clone());
                let prefetch = options.prefetch.max(1);
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
                    let batch = maker.make(index, samples, epoch);
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

impl<M: MakeBatch> Iterator for Batches<M> {
    type Item = Result<M::Batch>;

    fn next(&mut self) -> Option<Result<M::Batch>> {
        if self.next >= self.nbatches {
            return None;
        }
        let index = self.next;
        self.next += 1;
        let Some(rx) = &self.rx else {
            let samples = &self.order[index * self.batch_size..(index + 1) * self.batch_size];
            return Some(self.maker.make(index, samples, self.epoch));
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

impl<M: MakeBatch> Drop for Batches<M> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.gate.1.notify_all();
        self.rx = None;
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}
