//! A persistent team of threads for the CPU kernels' fork/join regions, spinning between them.
//!
//! A forward pass at batch 1 is a chain of short parallel regions (a ResNet-50 is 53 GEMMs of
//! about a millisecond each). Through rayon, each region injects its tasks into the pool from the
//! calling thread, which then sleeps, and the pool's threads go to sleep a few microseconds after
//! running out of work: every region pays a wake-up or two (tens of microseconds in a VM, more
//! under load) before both cores compute, 6–10 % of the GEMM time measured on ResNet-50 b1.
//! ONNX Runtime's pool and OpenMP instead spin a while before sleeping, and so does this team:
//! the caller runs tasks itself beside `threads − 1` helpers, which wait for the next region
//! spinning for [`SPIN`] and then sleep on a condition variable.
//!
//! One region at a time: a caller that finds the team busy (another thread's region, or a
//! region started from inside a task) runs its tasks on rayon's pool as before.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rayon::prelude::*;

/// How long a helper waits for the next region spinning before it sleeps.
pub const SPIN: Duration = Duration::from_millis(2);

/// Bits of the claim word: generation, task count, next task.
const INDEX_BITS: u32 = 20;
const GENERATIONS: u64 = 1 << (64 - 2 * INDEX_BITS);
const MAX_TASKS: usize = 1 << INDEX_BITS;

type Task<'a> = dyn Fn(usize) + Sync + 'a;

struct Team {
    /// Helper threads running.
    helpers: AtomicUsize,
    /// `generation << 40 | tasks << 20 | next`: a helper claims a task of the region it saw by
    /// one compare-and-swap, which fails once the region has changed.
    claim: AtomicU64,
    /// The region's tasks: the address of the caller's `&Task` (a thin pointer to the fat
    /// one), valid while a task is claimed and not done.
    task: AtomicPtr<()>,
    /// Tasks of the current region finished.
    done: AtomicUsize,
    /// The first panic of the region's tasks.
    panic: Mutex<Option<Box<dyn std::any::Any + Send>>>,
    /// Held by the thread whose region runs.
    owner: Mutex<()>,
    sleepers: AtomicUsize,
    sleep: Mutex<()>,
    wake: Condvar,
}

fn pack(generation: u64, tasks: usize, next: usize) -> u64 {
    generation << (2 * INDEX_BITS) | (tasks as u64) << INDEX_BITS | next as u64
}

fn unpack(word: u64) -> (u64, usize, usize) {
    let mask = (1u64 << INDEX_BITS) - 1;
    (word >> (2 * INDEX_BITS), ((word >> INDEX_BITS) & mask) as usize, (word & mask) as usize)
}

thread_local! {
    static HELPER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

impl Team {
    /// Claims the next task of region `generation`, if it has one left.
    fn claim(&self, generation: u64) -> Option<usize> {
        let mut word = self.claim.load(Ordering::Acquire);
        loop {
            let (g, tasks, next) = unpack(word);
            if g != generation || next >= tasks {
                return None;
            }
            match self.claim.compare_exchange_weak(word, word + 1, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Some(next),
                Err(now) => word = now,
            }
        }
    }

    /// Runs the tasks of region `generation` it can claim.
    fn work(&self, generation: u64) {
        while let Some(i) = self.claim(generation) {
            // SAFETY: a claimed, unfinished task keeps its region (and the closure) alive.
            let task: &Task<'_> = unsafe { *self.task.load(Ordering::Acquire).cast::<&Task<'_>>() };
            if let Err(payload) = catch_unwind(AssertUnwindSafe(|| task(i))) {
                self.panic.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(payload);
            }
            self.done.fetch_add(1, Ordering::Release);
        }
    }

    fn helper(&self) {
        HELPER.with(|h| h.set(true));
        let mut seen = unpack(self.claim.load(Ordering::Acquire)).0;
        loop {
            let start = Instant::now();
            let mut spins = 0u32;
            let generation = loop {
                let g = unpack(self.claim.load(Ordering::Acquire)).0;
                if g != seen {
                    break g;
                }
                std::hint::spin_loop();
                spins = spins.wrapping_add(1);
                if spins.is_multiple_of(1024) && start.elapsed() > SPIN {
                    let mut guard = self.sleep.lock().unwrap_or_else(|e| e.into_inner());
                    self.sleepers.fetch_add(1, Ordering::SeqCst);
                    while unpack(self.claim.load(Ordering::SeqCst)).0 == seen {
                        guard = self.wake.wait(guard).unwrap_or_else(|e| e.into_inner());
                    }
                    self.sleepers.fetch_sub(1, Ordering::SeqCst);
                }
            };
            seen = generation;
            self.work(generation);
        }
    }
}

/// The team, its helpers started on first use: one fewer than the kernels' thread count.
fn team() -> &'static Team {
    static TEAM: OnceLock<&'static Team> = OnceLock::new();
    TEAM.get_or_init(|| {
        let team: &'static Team = Box::leak(Box::new(Team {
            helpers: AtomicUsize::new(0),
            claim: AtomicU64::new(0),
            task: AtomicPtr::new(std::ptr::null_mut()),
            done: AtomicUsize::new(0),
            panic: Mutex::new(None),
            owner: Mutex::new(()),
            sleepers: AtomicUsize::new(0),
            sleep: Mutex::new(()),
            wake: Condvar::new(),
        }));
        for i in 0..super::cpu::threads().saturating_sub(1) {
            // A helper that cannot start is one fewer: the caller runs whatever is left.
            if std::thread::Builder::new().name(format!("vista-cpu-{i}")).spawn(move || team.helper()).is_ok() {
                team.helpers.fetch_add(1, Ordering::Relaxed);
            }
        }
        team
    })
}

/// Runs `f(i)` for every `i < tasks`, on this thread and the team's helpers (or, when the team
/// is busy, on rayon's pool), and returns when all have run.
///
/// # Panics
/// If a task panicked (after every task has finished).
pub fn for_each(tasks: usize, f: impl Fn(usize) + Sync + Send) {
    if tasks <= 1 {
        (0..tasks).for_each(f);
        return;
    }
    let team = team();
    let owner = if team.helpers.load(Ordering::Relaxed) == 0 || tasks >= MAX_TASKS || HELPER.with(|h| h.get()) {
        None
    } else {
        team.owner.try_lock().ok()
    };
    let Some(_owner) = owner else {
        (0..tasks).into_par_iter().for_each(f);
        return;
    };
    let task: &Task<'_> = &f;
    // Helpers dereference it only for a claimed task, and this function returns (and `task`
    // goes) only after every task is done.
    team.task.store((&task as *const &Task<'_>).cast_mut().cast(), Ordering::Release);
    team.done.store(0, Ordering::Release);
    let generation = (unpack(team.claim.load(Ordering::Acquire)).0 + 1) % GENERATIONS;
    team.claim.store(pack(generation, tasks, 0), Ordering::SeqCst);
    if team.sleepers.load(Ordering::SeqCst) > 0 {
        let _guard = team.sleep.lock().unwrap_or_else(|e| e.into_inner());
        team.wake.notify_all();
    }
    team.work(generation);
    // The helpers' last tasks: spin, and yield the core once that takes long (a helper
    // descheduled on a busy machine).
    let start = Instant::now();
    let mut spins = 0u32;
    while team.done.load(Ordering::Acquire) < tasks {
        std::hint::spin_loop();
        spins = spins.wrapping_add(1);
        if spins.is_multiple_of(1024) && start.elapsed() > SPIN {
            std::thread::yield_now();
        }
    }
    if let Some(payload) = team.panic.lock().unwrap_or_else(|e| e.into_inner()).take() {
        std::panic::resume_unwind(payload);
    }
}

/// A buffer's address shared with the tasks of one region, each of which touches its own
/// disjoint part (the parallel kernels' outputs).
#[derive(Clone, Copy)]
pub(crate) struct Shared<T>(pub(crate) *mut T);
// SAFETY: only used to hand disjoint parts of one buffer to the tasks of one region.
unsafe impl<T: Send> Sync for Shared<T> {}
unsafe impl<T: Send> Send for Shared<T> {}
impl<T> Shared<T> {
    /// A method (not a field access) so closures capture the wrapper, not the raw pointer.
    pub(crate) fn get(&self) -> *mut T {
        self.0
    }
}

/// [`for_each`] over the `chunk`-long pieces of `data` (the last may be shorter): `f(i, piece)`.
pub fn for_each_chunk<T: Send>(data: &mut [T], chunk: usize, f: impl Fn(usize, &mut [T]) + Sync + Send) {
    let (len, chunk) = (data.len(), chunk.max(1));
    let base = Shared(data.as_mut_ptr());
    // SAFETY: `base` is `data`, borrowed for the region, and each task takes its own piece.
    for_each(len.div_ceil(chunk), |i| f(i, unsafe { piece(&base, len, chunk, i) }))
}

/// [`for_each`] over the pieces of `data` between consecutive `bounds` (`0`, non-decreasing,
/// then `data.len()`): `f(i, &mut data[bounds[i]..bounds[i + 1]])`.
///
/// # Panics
/// If `bounds` is not such a list.
pub fn for_each_span<T: Send>(data: &mut [T], bounds: &[usize], f: impl Fn(usize, &mut [T]) + Sync + Send) {
    assert!(
        bounds.first() == Some(&0) && bounds.last() == Some(&data.len()) && bounds.windows(2).all(|w| w[0] <= w[1]),
        "spans {bounds:?} do not divide {} values",
        data.len()
    );
    let base = Shared(data.as_mut_ptr());
    // SAFETY: `base` is `data`, borrowed for the region, and the spans are disjoint.
    for_each(bounds.len() - 1, |i| {
        f(i, unsafe { std::slice::from_raw_parts_mut(base.get().add(bounds[i]), bounds[i + 1] - bounds[i]) })
    })
}

/// Piece `i` of the `chunk`-long pieces of a `len`-long buffer at `base`:
/// `i·chunk..min((i + 1)·chunk, len)`.
///
/// # Safety
/// `base` holds `len` values, live and borrowed by no one else for `'a`, and each piece is
/// taken once.
unsafe fn piece<'a, T>(base: &Shared<T>, len: usize, chunk: usize, i: usize) -> &'a mut [T] {
    let start = i * chunk;
    std::slice::from_raw_parts_mut(base.get().add(start), chunk.min(len - start))
}

/// [`for_each`] whose tasks each return a value: the values in task order (a reduction's
/// partial sums, added afterwards in that fixed order).
pub fn map<R: Send>(tasks: usize, f: impl Fn(usize) -> R + Sync + Send) -> Vec<R> {
    let mut out: Vec<Option<R>> = (0..tasks).map(|_| None).collect();
    for_each_chunk(&mut out, 1, |i, slot| slot[0] = Some(f(i)));
    out.into_iter().map(|r| r.expect("every task ran")).collect()
}

/// [`for_each_chunk`] whose pieces each return a value, in piece order (as [`map`]).
pub fn map_chunks<T: Send, R: Send>(
    data: &mut [T],
    chunk: usize,
    f: impl Fn(usize, &mut [T]) -> R + Sync + Send,
) -> Vec<R> {
    let (len, chunk) = (data.len(), chunk.max(1));
    let base = Shared(data.as_mut_ptr());
    // SAFETY: as in `for_each_chunk`.
    map(len.div_ceil(chunk), |i| f(i, unsafe { piece(&base, len, chunk, i) }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_return_in_task_order() {
        for tasks in [0, 1, 5, 64] {
            assert_eq!(map(tasks, |i| i * 3), (0..tasks).map(|i| i * 3).collect::<Vec<_>>());
        }
        let mut data: Vec<usize> = (0..10).collect();
        let sums = map_chunks(&mut data, 4, |i, piece| {
            piece.iter_mut().for_each(|v| *v += 1);
            (i, piece.iter().sum::<usize>())
        });
        assert_eq!(sums, [(0, 10), (1, 26), (2, 19)]);
        assert_eq!(data, (1..11).collect::<Vec<_>>());
    }

    #[test]
    fn every_task_runs_once_across_many_regions() {
        for tasks in [0, 1, 2, 3, 7, 64] {
            for _ in 0..200 {
                let hits: Vec<AtomicUsize> = (0..tasks).map(|_| AtomicUsize::new(0)).collect();
                for_each(tasks, |i| {
                    hits[i].fetch_add(1, Ordering::Relaxed);
                });
                assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1), "{tasks} tasks");
            }
        }
    }

    #[test]
    fn regions_from_several_threads_and_nested_regions_all_complete() {
        let total = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..50 {
                        for_each(4, |_| {
                            for_each(3, |_| {
                                total.fetch_add(1, Ordering::Relaxed);
                            });
                        });
                    }
                });
            }
        });
        assert_eq!(total.into_inner(), 4 * 50 * 4 * 3);
    }

    #[test]
    fn chunks_cover_the_slice_once() {
        let mut v = vec![0u32; 1001];
        for_each_chunk(&mut v, 64, |i, piece| piece.iter_mut().for_each(|x| *x += i as u32 + 1));
        assert!(v.iter().enumerate().all(|(j, &x)| x == (j / 64) as u32 + 1));
    }

    #[test]
    fn spans_cover_the_slice_once() {
        let mut v = vec![0u32; 20];
        let bounds = [0, 3, 3, 11, 20];
        for_each_span(&mut v, &bounds, |i, piece| piece.iter_mut().for_each(|x| *x += i as u32 + 1));
        let want: Vec<u32> = (0..20)
            .map(|j| {
                if j < 3 {
                    1
                } else if j < 11 {
                    3
                } else {
                    4
                }
            })
            .collect();
        assert_eq!(v, want);
        let bad = catch_unwind(AssertUnwindSafe(|| for_each_span(&mut v, &[0, 5, 4, 20], |_, _| ())));
        assert!(bad.is_err(), "decreasing bounds are refused");
    }

    #[test]
    fn a_panicking_task_panics_the_caller_after_the_region_ends() {
        let ran = AtomicUsize::new(0);
        let result = catch_unwind(AssertUnwindSafe(|| {
            for_each(8, |i| {
                ran.fetch_add(1, Ordering::Relaxed);
                assert!(i != 5, "task five fails");
            })
        }));
        assert!(result.is_err());
        assert_eq!(ran.load(Ordering::Relaxed), 8, "every other task still ran");
        // The team still works afterwards.
        let n = AtomicUsize::new(0);
        for_each(5, |_| {
            n.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(n.into_inner(), 5);
    }
}
