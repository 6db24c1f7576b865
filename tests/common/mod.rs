//! Helpers shared by integration tests. Each test binary includes this with `mod common;` and
//! installs the allocator itself:
//!
//! ```ignore
//! #[global_allocator]
//! static ALLOC: common::CountingAlloc = common::CountingAlloc;
//! ```

#![allow(dead_code)]

pub mod gpu;
pub mod pb;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// Forwards to the system allocator and records, per thread, the largest single request and the
/// total requested since the last [`measure_allocs`] began.
pub struct CountingAlloc;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
    static TOTAL: Cell<usize> = const { Cell::new(0) };
}

/// Allocations on every thread but the test harness's (for code that runs on worker threads too).
static GLOBAL_ALLOCS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Bytes held on the heap right now, on every thread (allocations minus frees).
static LIVE_BYTES: std::sync::atomic::AtomicIsize = std::sync::atomic::AtomicIsize::new(0);

/// Heap bytes held now, counted since the counting allocator was installed.
pub fn live_bytes() -> isize {
    LIVE_BYTES.load(std::sync::atomic::Ordering::SeqCst)
}

/// Allocations made on any thread so far.
pub fn global_allocs() -> usize {
    GLOBAL_ALLOCS.load(std::sync::atomic::Ordering::SeqCst)
}

thread_local! {
    /// Whether this thread is the process's main thread, once known (0 unknown, 1 yes, 2 no).
    static MAIN: Cell<u8> = const { Cell::new(0) };
}

/// Whether the allocation comes from the test harness's own thread: the process's main thread,
/// where libtest (which runs every test on a thread of its own) prints its progress, such as
/// "has been running for over 60 seconds" on a loaded machine. Those allocations are not the
/// code under test's, so the all-threads count leaves them out. (Linux: the main thread's id is
/// the process id; syscalls, not allocations, so this is safe inside the allocator.)
fn on_harness_thread() -> bool {
    #[cfg(target_os = "linux")]
    {
        MAIN.try_with(|m| {
            if m.get() == 0 {
                // SAFETY: gettid and getpid have no preconditions.
                let main = unsafe { libc::gettid() == libc::getpid() };
                m.set(if main { 1 } else { 2 });
            }
            m.get() == 1
        })
        .unwrap_or(false)
    }
    #[cfg(not(target_os = "linux"))]
    false
}

fn note_alloc(size: usize) {
    if !on_harness_thread() {
        GLOBAL_ALLOCS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
    // `try_with`: the thread-locals may already be gone while a thread is being torn down. They
    // are const-initialised `Cell`s, so touching them never allocates (no recursion).
    let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
    let _ = TOTAL.try_with(|t| t.set(t.get().saturating_add(size)));
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; the counters
// are plain thread-local cells that neither allocate nor unwind.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_alloc(layout.size());
        LIVE_BYTES.fetch_add(layout.size() as isize, std::sync::atomic::Ordering::SeqCst);
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_alloc(layout.size());
        LIVE_BYTES.fetch_add(layout.size() as isize, std::sync::atomic::Ordering::SeqCst);
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_alloc(new_size);
        LIVE_BYTES.fetch_add(new_size as isize - layout.size() as isize, std::sync::atomic::Ordering::SeqCst);
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as isize, std::sync::atomic::Ordering::SeqCst);
        System.dealloc(ptr, layout)
    }
}

/// Runs `f` and returns its result with (largest single allocation, total allocated) on this
/// thread while it ran. Needs [`CountingAlloc`] installed as the global allocator.
pub fn measure_allocs<T>(f: impl FnOnce() -> T) -> (T, usize, usize) {
    LARGEST.with(|l| l.set(0));
    TOTAL.with(|t| t.set(0));
    let out = f();
    (out, LARGEST.with(Cell::get), TOTAL.with(Cell::get))
}
