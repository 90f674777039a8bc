//! The process allocator for tensor work: the system's, with freed large blocks kept for reuse.
//!
//! glibc serves every block over 32 MiB (its largest mmap threshold) with a fresh `mmap` and
//! unmaps it on free, so a network whose activations are that large (a ResNet-50 at batch 32
//! writes 100 MiB maps) pays a page fault and a kernel-zeroed page for every 4 KiB of every
//! output, every layer, every call. [`TensorAllocator`] keeps up to [`SLOTS`] freed blocks of
//! [`LARGE`] bytes or more (at most [`CACHED_BYTES`] in all, the oldest given back first) and
//! hands one back to the next request of the same rounded size — a forward pass asks for the
//! same sizes as the last one — and asks the kernel for transparent huge pages on fresh ones.
//! Nothing is cached while a checkpoint is being read ([`Loading`]).
//! Smaller blocks go to the system allocator untouched.
//!
//! Install it in a binary: `#[global_allocator] static A: vista::memory::TensorAllocator =
//! vista::memory::TensorAllocator;` (the `vista` CLI and the benchmarks do).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Blocks this large or larger are cached.
pub const LARGE: usize = 16 << 20;
/// Sizes are rounded up to this (one huge page), so that near sizes share blocks.
const GRAIN: usize = 2 << 20;
/// Freed blocks kept at most.
pub const SLOTS: usize = 24;
/// Bytes kept in freed blocks at most.
pub const CACHED_BYTES: usize = 3 << 30;

/// A freed block: address, rounded size, alignment, age stamp (0 = empty).
#[derive(Clone, Copy)]
struct Slot {
    ptr: usize,
    size: usize,
    align: usize,
    stamp: u64,
}

struct Cache {
    slots: [Slot; SLOTS],
    bytes: usize,
    clock: u64,
    /// Rounded sizes allocated fresh, with how often (a ring: the newest replaces the oldest).
    seen: [(usize, u32); SEEN],
    next_seen: usize,
}

/// Sizes remembered: a freed block is kept only if its size was asked for fresh twice — a
/// forward pass's shapes recur, a one-off buffer (an input file, a decoded batch) does not.
const SEEN: usize = 64;

static CACHE: Mutex<Cache> = Mutex::new(Cache {
    slots: [Slot { ptr: 0, size: 0, align: 0, stamp: 0 }; SLOTS],
    bytes: 0,
    clock: 0,
    seen: [(0, 0); SEEN],
    next_seen: 0,
});

impl Cache {
    /// Counts a fresh allocation of `size`.
    fn saw(&mut self, size: usize) {
        match self.seen.iter_mut().find(|(s, _)| *s == size) {
            Some((_, n)) => *n = n.saturating_add(1),
            None => {
                let i = self.next_seen;
                self.seen[i] = (size, 1);
                self.next_seen = (i + 1) % SEEN;
            }
        }
    }

    /// Whether `size` was allocated fresh at least twice.
    fn recurs(&self, size: usize) -> bool {
        self.seen.iter().any(|&(s, n)| s == size && n >= 2)
    }
}

fn cache() -> std::sync::MutexGuard<'static, Cache> {
    CACHE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Checkpoints being read now: while any is, freed blocks go straight back to the system.
static LOADING: AtomicUsize = AtomicUsize::new(0);

/// Held while a checkpoint is read: its temporaries (a dtype conversion, a transposed copy) are
/// not shapes a forward pass asks for again, and cached they would raise peak memory by their
/// sum. Dropping the last one also gives back what was cached before ([`trim`]).
#[derive(Debug)]
pub struct Loading(());

impl Loading {
    /// Marks a load as started until the guard is dropped.
    pub fn start() -> Self {
        LOADING.fetch_add(1, Ordering::SeqCst);
        Self(())
    }
}

impl Drop for Loading {
    fn drop(&mut self) {
        if LOADING.fetch_sub(1, Ordering::SeqCst) == 1 {
            trim();
        }
    }
}

/// Gives every cached block back to the system.
pub fn trim() {
    let mut freed = [(0usize, Layout::new::<u8>()); SLOTS];
    let mut count = 0;
    {
        let mut c = cache();
        for slot in c.slots.iter_mut().filter(|s| s.stamp != 0) {
            // SAFETY of the layout: it was valid when the block was allocated.
            freed[count] = (slot.ptr, unsafe { Layout::from_size_align_unchecked(slot.size, slot.align) });
            count += 1;
            *slot = Slot { ptr: 0, size: 0, align: 0, stamp: 0 };
        }
        c.bytes = 0;
    }
    for &(p, l) in &freed[..count] {
        // SAFETY: the cache owned these blocks, allocated by `System` with these layouts.
        unsafe { System.dealloc(p as *mut u8, l) };
    }
}

/// The system allocator, with freed blocks of [`LARGE`] bytes or more kept for reuse.
pub struct TensorAllocator;

/// The layout a large block really has: its size rounded up to [`GRAIN`].
fn rounded(layout: Layout) -> Option<Layout> {
    if layout.size() < LARGE {
        return None;
    }
    Layout::from_size_align(layout.size().div_ceil(GRAIN) * GRAIN, layout.align()).ok()
}

impl TensorAllocator {
    /// A cached block of exactly this layout, taken out of the cache.
    fn take(layout: Layout) -> Option<*mut u8> {
        let mut c = cache();
        let i = c.slots.iter().position(|s| s.stamp != 0 && s.size == layout.size() && s.align == layout.align())?;
        let slot = std::mem::replace(&mut c.slots[i], Slot { ptr: 0, size: 0, align: 0, stamp: 0 });
        c.bytes -= slot.size;
        Some(slot.ptr as *mut u8)
    }

    /// Keeps a freed block, giving the oldest back to the system while the cache is over its
    /// bounds.
    ///
    /// # Safety
    /// `ptr` was allocated by `System` with `layout` and is no longer used.
    unsafe fn keep(ptr: *mut u8, layout: Layout) {
        let mut evicted = [(0usize, Layout::new::<u8>()); SLOTS];
        let mut count = 0;
        if LOADING.load(Ordering::Relaxed) > 0 {
            System.dealloc(ptr, layout);
            return;
        }
        {
            let mut c = cache();
            if layout.size() > CACHED_BYTES || !c.recurs(layout.size()) {
                drop(c);
                System.dealloc(ptr, layout);
                return;
            }
            while c.bytes + layout.size() > CACHED_BYTES || c.slots.iter().all(|s| s.stamp != 0) {
                let Some(i) = (0..SLOTS).filter(|&i| c.slots[i].stamp != 0).min_by_key(|&i| c.slots[i].stamp) else {
                    break;
                };
                let old = std::mem::replace(&mut c.slots[i], Slot { ptr: 0, size: 0, align: 0, stamp: 0 });
                c.bytes -= old.size;
                // SAFETY of the layout: it was valid when the block was allocated.
                evicted[count] = (old.ptr, Layout::from_size_align_unchecked(old.size, old.align));
                count += 1;
            }
            c.clock += 1;
            let stamp = c.clock;
            let i = c.slots.iter().position(|s| s.stamp == 0).expect("a slot was freed above");
            c.slots[i] = Slot { ptr: ptr as usize, size: layout.size(), align: layout.align(), stamp };
            c.bytes += layout.size();
        }
        for &(p, l) in &evicted[..count] {
            System.dealloc(p as *mut u8, l);
        }
    }

    /// A fresh large block, with transparent huge pages asked for.
    unsafe fn fresh(layout: Layout, zeroed: bool) -> *mut u8 {
        cache().saw(layout.size());
        let ptr = if zeroed { System.alloc_zeroed(layout) } else { System.alloc(layout) };
        #[cfg(target_os = "linux")]
        if !ptr.is_null() {
            let start = (ptr as usize).div_ceil(4096) * 4096;
            let end = (ptr as usize + layout.size()) / 4096 * 4096;
            if end > start {
                // Advice only: failure (THP off) changes nothing.
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
            }
        }
        ptr
    }
}

// SAFETY: every block is allocated and freed by `System` with one layout (the rounded one for
// large blocks, computed the same way on both sides); a cached block is owned by the cache alone
// until it is handed out again whole.
unsafe impl GlobalAlloc for TensorAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match rounded(layout) {
            Some(big) => Self::take(big).unwrap_or_else(|| Self::fresh(big, false)),
            None => System.alloc(layout),
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        match rounded(layout) {
            Some(big) => match Self::take(big) {
                Some(ptr) => {
                    std::ptr::write_bytes(ptr, 0, layout.size());
                    ptr
                }
                None => Self::fresh(big, true),
            },
            None => System.alloc_zeroed(layout),
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        match rounded(layout) {
            Some(big) => Self::keep(ptr, big),
            None => System.dealloc(ptr, layout),
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // The system's own (glibc moves a large block with `mremap`, no copy and no moment with
        // both resident: a checkpoint read into a growing buffer), between the real layouts.
        let old = rounded(layout).unwrap_or(layout);
        let new = Layout::from_size_align_unchecked(new_size, layout.align());
        System.realloc(ptr, old, rounded(new).map_or(new_size, |l| l.size()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_freed_large_block_is_handed_back_and_small_ones_pass_through() {
        let a = TensorAllocator;
        // SAFETY: each block is used within its layout and freed once with it.
        unsafe {
            let big = Layout::from_size_align(LARGE + 123, 64).unwrap();
            // A size seen once is given back; seen twice, it is kept.
            let once = a.alloc(big);
            a.dealloc(once, big);
            assert_eq!(cache().bytes, 0);
            let p = a.alloc(big);
            assert!(!p.is_null() && (p as usize).is_multiple_of(64));
            p.add(big.size() - 1).write(7);
            a.dealloc(p, big);
            assert!(cache().bytes > 0);
            // Same rounded size, same alignment: the same block, zeroed on request.
            let same = Layout::from_size_align(LARGE + 4567, 64).unwrap();
            let q = a.alloc_zeroed(same);
            assert_eq!(q, p);
            assert!(std::slice::from_raw_parts(q, same.size()).iter().all(|&b| b == 0));
            // Growing out of the grain moves the block and keeps its values.
            q.write(42);
            let r = a.realloc(q, same, LARGE + GRAIN + 1);
            assert_eq!(r.read(), 42);
            a.dealloc(r, Layout::from_size_align(LARGE + GRAIN + 1, 64).unwrap());
            let small = Layout::from_size_align(100, 8).unwrap();
            let s = a.alloc(small);
            s.write(1);
            a.dealloc(s, small);
        }
        {
            let c = cache();
            assert!(c.bytes <= CACHED_BYTES);
            assert_eq!(c.bytes, c.slots.iter().filter(|s| s.stamp != 0).map(|s| s.size).sum::<usize>());
        }
        trim();
        let c = cache();
        assert_eq!((c.bytes, c.slots.iter().filter(|s| s.stamp != 0).count()), (0, 0));
    }
}
