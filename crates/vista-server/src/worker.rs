//! Model workers: each model lives on its own OS thread behind a bounded queue, as
//! text-embeddings-inference runs its backends. A request that finds the queue full is refused
//! at once (429) instead of waiting; jobs that arrive together are taken as one batch (up to
//! `batch` jobs, waiting at most `wait` after the first) so one forward pass serves them all.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::ApiError;

/// How a worker takes its jobs.
#[derive(Debug, Clone, Copy)]
pub struct Batching {
    /// Jobs queued at most; one more is refused.
    pub queue: usize,
    /// Jobs per batch at most.
    pub batch: usize,
    /// How long a batch waits for more jobs after its first.
    pub wait: Duration,
}

/// The sending side of a worker thread.
pub struct Worker<J> {
    name: &'static str,
    tx: SyncSender<J>,
    depth: Arc<AtomicUsize>,
    batches: Arc<AtomicUsize>,
    jobs: Arc<AtomicUsize>,
}

impl<J: Send + 'static> Worker<J> {
    /// Starts the thread: `state` is built on it (models need not be `Send`-moved twice), then
    /// `run(&mut state, batch)` is called for each batch until every sender is gone.
    pub fn spawn<S: 'static>(
        name: &'static str,
        batching: Batching,
        state: impl FnOnce() -> S + Send + 'static,
        mut run: impl FnMut(&mut S, Vec<J>) + Send + 'static,
    ) -> Self {
        let (tx, rx) = sync_channel::<J>(batching.queue.max(1));
        let depth = Arc::new(AtomicUsize::new(0));
        let batches = Arc::new(AtomicUsize::new(0));
        let jobs = Arc::new(AtomicUsize::new(0));
        let (d, b, n) = (depth.clone(), batches.clone(), jobs.clone());
        std::thread::Builder::new()
            .name(format!("vista-{name}"))
            .spawn(move || {
                let mut state = state();
                while let Ok(first) = rx.recv() {
                    let mut batch = vec![first];
                    let deadline = Instant::now() + batching.wait;
                    while batch.len() < batching.batch.max(1) {
                        let left = deadline.saturating_duration_since(Instant::now());
                        match rx.recv_timeout(left) {
                            Ok(j) => batch.push(j),
                            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                        }
                    }
                    d.fetch_sub(batch.len(), Ordering::SeqCst);
                    b.fetch_add(1, Ordering::Relaxed);
                    n.fetch_add(batch.len(), Ordering::Relaxed);
                    run(&mut state, batch);
                }
            })
            .expect("spawn a worker thread");
        Self { name, tx, depth, batches, jobs }
    }

    /// As [`spawn`](Self::spawn), in two stages: a preparing thread takes each batch off the
    /// queue and runs `prepare` on every job (decoding, resizing), then hands the batch to the
    /// model thread through a one-batch buffer — so the next batch is prepared while the model
    /// runs the current one.
    pub fn spawn_pipelined<P: Send + 'static, S: 'static>(
        name: &'static str,
        batching: Batching,
        prepare: impl Fn(J) -> P + Send + 'static,
        state: impl FnOnce() -> S + Send + 'static,
        mut run: impl FnMut(&mut S, Vec<P>) + Send + 'static,
    ) -> Self {
        let (ready_tx, ready_rx) = sync_channel::<Vec<P>>(1);
        std::thread::Builder::new()
            .name(format!("vista-{name}-model"))
            .spawn(move || {
                let mut state = state();
                while let Ok(batch) = ready_rx.recv() {
                    run(&mut state, batch);
                }
            })
            .expect("spawn a worker thread");
        Self::spawn(
            name,
            batching,
            move || (prepare, ready_tx),
            |(prepare, ready_tx): &mut (_, SyncSender<Vec<P>>), jobs: Vec<J>| {
                let prepared: Vec<P> = jobs.into_iter().map(&*prepare).collect();
                // The model thread is gone only when the process is going down.
                let _ = ready_tx.send(prepared);
            },
        )
    }

    /// Queues `job`, or refuses it (429) when the queue is full.
    pub fn submit(&self, job: J) -> Result<(), ApiError> {
        self.depth.fetch_add(1, Ordering::SeqCst);
        match self.tx.try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => {
                self.depth.fetch_sub(1, Ordering::SeqCst);
                Err(ApiError::busy(format!("the {} queue is full; retry shortly", self.name)))
            }
            Err(TrySendError::Disconnected(_)) => {
                self.depth.fetch_sub(1, Ordering::SeqCst);
                Err(ApiError::unavailable(format!("the {} worker has stopped", self.name)))
            }
        }
    }

    /// Jobs waiting now.
    pub fn depth(&self) -> usize {
        self.depth.load(Ordering::SeqCst)
    }

    /// Batches run and jobs they held, so far.
    pub fn batch_stats(&self) -> (usize, usize) {
        (self.batches.load(Ordering::Relaxed), self.jobs.load(Ordering::Relaxed))
    }

    /// The worker's name (`clip`, `sam`).
    pub fn name(&self) -> &'static str {
        self.name
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::channel;

    #[test]
    fn a_pipelined_worker_prepares_the_next_batch_while_the_model_runs() {
        let (gate_tx, gate_rx) = channel::<()>();
        let (seen_tx, seen_rx) = channel::<Vec<String>>();
        let (prepared_tx, prepared_rx) = channel::<u32>();
        let gate = std::sync::Mutex::new(gate_rx);
        let w = Worker::spawn_pipelined(
            "test",
            Batching { queue: 8, batch: 1, wait: Duration::ZERO },
            move |j: u32| {
                prepared_tx.send(j).unwrap();
                format!("job {j}")
            },
            || (),
            move |_, batch: Vec<String>| {
                gate.lock().unwrap().recv().unwrap();
                seen_tx.send(batch).unwrap();
            },
        );
        for j in 1..=3 {
            w.submit(j).unwrap();
        }
        // Job 1 is in the model (held at the gate); job 2 is prepared meanwhile and waits in
        // the one-batch buffer; job 3 is prepared once the buffer has room.
        assert_eq!(prepared_rx.recv_timeout(Duration::from_secs(5)).unwrap(), 1);
        assert_eq!(prepared_rx.recv_timeout(Duration::from_secs(5)).unwrap(), 2);
        for want in ["job 1", "job 2", "job 3"] {
            gate_tx.send(()).unwrap();
            assert_eq!(seen_rx.recv_timeout(Duration::from_secs(5)).unwrap(), vec![want.to_string()]);
        }
        assert_eq!(prepared_rx.recv_timeout(Duration::from_secs(5)).unwrap(), 3);
    }

    #[test]
    fn jobs_that_arrive_together_run_as_one_batch_and_a_full_queue_refuses() {
        let (gate_tx, gate_rx) = channel::<()>();
        let (seen_tx, seen_rx) = channel::<Vec<u32>>();
        let gate = std::sync::Mutex::new(gate_rx);
        let w = Worker::spawn(
            "test",
            Batching { queue: 3, batch: 8, wait: Duration::from_millis(200) },
            || (),
            move |_, batch: Vec<u32>| {
                gate.lock().unwrap().recv().unwrap();
                seen_tx.send(batch).unwrap();
            },
        );
        w.submit(1).unwrap();
        // The first batch takes job 1 (and whatever comes within 200 ms), then waits at the gate.
        std::thread::sleep(Duration::from_millis(400));
        for j in 2..=4 {
            w.submit(j).unwrap();
        }
        let refused = w.submit(5).unwrap_err();
        assert_eq!(refused.status, axum::http::StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(w.depth(), 3);
        gate_tx.send(()).unwrap();
        assert_eq!(seen_rx.recv().unwrap(), vec![1]);
        gate_tx.send(()).unwrap();
        assert_eq!(seen_rx.recv().unwrap(), vec![2, 3, 4], "queued together, run together");
        assert_eq!(w.depth(), 0);
        assert_eq!(w.batch_stats(), (2, 4));
    }
}
