//! A persistent worker pool for the CPU ops. Spawning scoped threads per op costs tens of
//! microseconds, and on a busy machine a new thread can start milliseconds late, by which time
//! the caller has done all the work alone: a YOLO model then runs no faster on two cores than
//! on one. The pool's workers are started once and wait for jobs; a job is a borrowed closure
//! that the caller keeps alive until every worker it woke has finished with it.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long a worker (or the waiting caller) spins before sleeping: long enough to catch the
/// next op of a model, short enough not to burn a core between frames.
const SPIN: Duration = Duration::from_micros(200);

/// A job: called once on each helper with the helper's index (0-based).
type Job = dyn Fn(usize) + Sync;

struct Shared {
    /// The current job, published with `generation`; a raw pointer because the closure lives
    /// on the caller's stack (see `run` for why that is sound).
    job: Mutex<Option<JobPtr>>,
    generation: AtomicU64,
    /// Helpers wanted for the current job, and helpers still running it.
    wanted: AtomicUsize,
    running: AtomicUsize,
    panicked: AtomicBool,
    wake: Condvar,
    done: Condvar,
    done_lock: Mutex<()>,
}

#[derive(Clone, Copy)]
struct JobPtr(*const Job);
// SAFETY: the pointee is `Sync` and outlives every use (see `Pool::run`).
unsafe impl Send for JobPtr {}

pub(crate) struct Pool {
    shared: &'static Shared,
    workers: usize,
    /// Serialises callers: one job at a time.
    busy: Mutex<()>,
}

impl Pool {
    /// The process-wide pool with `available_parallelism - 1` workers (the caller is the last).
    pub(crate) fn global() -> &'static Pool {
        static POOL: OnceLock<Pool> = OnceLock::new();
        POOL.get_or_init(|| {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get()).min(64);
            let shared: &'static Shared = Box::leak(Box::new(Shared {
                job: Mutex::new(None),
                generation: AtomicU64::new(0),
                wanted: AtomicUsize::new(0),
                running: AtomicUsize::new(0),
                panicked: AtomicBool::new(false),
                wake: Condvar::new(),
                done: Condvar::new(),
                done_lock: Mutex::new(()),
            }));
            let mut workers = 0;
            for index in 0..cores.saturating_sub(1) {
                let spawned = std::thread::Builder::new()
                    .name(format!("kestrel-ops-{index}"))
                    .spawn(move || worker(shared, index));
                if spawned.is_ok() {
                    workers += 1;
                }
            }
            Pool { shared, workers, busy: Mutex::new(()) }
        })
    }

    /// The caller and the helpers: the most threads one job runs on.
    pub(crate) fn threads(&self) -> usize {
        self.workers + 1
    }

    /// Runs `job(i)` on helpers `0..helpers` while the caller runs `own()`, and returns when all
    /// have finished. A panic in a helper is re-raised here.
    pub(crate) fn run<'a>(&self, helpers: usize, job: &'a (dyn Fn(usize) + Sync + 'a), own: impl FnOnce()) {
        let helpers = helpers.min(self.workers);
        if helpers == 0 {
            own();
            return;
        }
        let _one_at_a_time = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        let s = self.shared;
        // SAFETY (lifetime erasure): the pointer is only dereferenced by helpers between this
        // publication and the moment `running` drops back to zero, and this function does not
        // return (or unwind) before then: it waits below, after `own()`, which is caught.
        let ptr =
            JobPtr(unsafe { std::mem::transmute::<&'a (dyn Fn(usize) + Sync + 'a), &'static Job>(job) } as *const Job);
        *s.job.lock().unwrap_or_else(|e| e.into_inner()) = Some(ptr);
        s.panicked.store(false, Ordering::Relaxed);
        s.running.store(helpers, Ordering::SeqCst);
        s.wanted.store(helpers, Ordering::SeqCst);
        s.generation.fetch_add(1, Ordering::SeqCst);
        {
            let _g = s.done_lock.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        let own_result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(own));
        // Wait for the helpers: spin briefly, then sleep.
        let start = Instant::now();
        while s.running.load(Ordering::Acquire) != 0 && start.elapsed() < SPIN {
            std::hint::spin_loop();
        }
        let mut guard = s.done_lock.lock().unwrap_or_else(|e| e.into_inner());
        while s.running.load(Ordering::Acquire) != 0 {
            guard = s.done.wait(guard).unwrap_or_else(|e| e.into_inner());
        }
        drop(guard);
        *s.job.lock().unwrap_or_else(|e| e.into_inner()) = None;
        if let Err(p) = own_result {
            std::panic::resume_unwind(p);
        }
        if s.panicked.load(Ordering::Relaxed) {
            panic!("a kestrel op worker panicked");
        }
    }
}

fn worker(s: &'static Shared, index: usize) {
    let mut seen = 0u64;
    loop {
        // Wait for a new generation: spin, then sleep on the condvar.
        let start = Instant::now();
        while s.generation.load(Ordering::Acquire) == seen && start.elapsed() < SPIN {
            std::hint::spin_loop();
        }
        if s.generation.load(Ordering::Acquire) == seen {
            let mut guard = s.done_lock.lock().unwrap_or_else(|e| e.into_inner());
            while s.generation.load(Ordering::Acquire) == seen {
                guard = s.wake.wait(guard).unwrap_or_else(|e| e.into_inner());
            }
        }
        seen = s.generation.load(Ordering::Acquire);
        if index >= s.wanted.load(Ordering::Acquire) {
            continue;
        }
        let job = *s.job.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(JobPtr(ptr)) = job {
            // SAFETY: the caller of `run` keeps the closure alive until `running` reaches zero,
            // which happens only after this call returns.
            let f: &Job = unsafe { &*ptr };
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(index))).is_err() {
                s.panicked.store(true, Ordering::Relaxed);
            }
        }
        if s.running.fetch_sub(1, Ordering::AcqRel) == 1 {
            let _g = s.done_lock.lock().unwrap_or_else(|e| e.into_inner());
            s.done.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Pool;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn every_helper_runs_once_per_job_and_the_caller_waits() {
        let pool = Pool::global();
        for round in 0..500 {
            let hits: Vec<AtomicUsize> = (0..pool.workers + 1).map(|_| AtomicUsize::new(0)).collect();
            let job = |i: usize| {
                hits[i + 1].fetch_add(1, Ordering::SeqCst);
            };
            pool.run(pool.workers, &job, || {
                hits[0].fetch_add(1, Ordering::SeqCst);
            });
            // Every helper finished before run returned: all counts are exactly 1.
            assert!(hits.iter().all(|h| h.load(Ordering::SeqCst) == 1), "round {round}");
        }
    }

    #[test]
    fn callers_on_several_threads_share_the_pool() {
        let total = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..100 {
                        let job = |_: usize| {
                            total.fetch_add(1, Ordering::SeqCst);
                        };
                        Pool::global().run(1, &job, || {
                            total.fetch_add(1, Ordering::SeqCst);
                        });
                    }
                });
            }
        });
        let per_call = 1 + Pool::global().workers.min(1);
        assert_eq!(total.load(Ordering::SeqCst), 400 * per_call);
    }

    #[test]
    fn a_panicking_helper_is_reported_to_the_caller_and_the_pool_survives() {
        let pool = Pool::global();
        if pool.workers == 0 {
            return; // a single-core machine has no helpers to panic
        }
        let job = |_: usize| panic!("boom");
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| pool.run(1, &job, || {})));
        assert!(r.is_err());
        let ran = AtomicUsize::new(0);
        let ok = |_: usize| {
            ran.fetch_add(1, Ordering::SeqCst);
        };
        pool.run(1, &ok, || {});
        assert_eq!(ran.load(Ordering::SeqCst), 1);
    }
}
