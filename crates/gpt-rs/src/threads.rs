//! The engine's thread pool: one rayon pool whose size `set_num_threads` controls.
//!
//! The pool is replaced (not resized) when the count changes; work already running keeps
//! the pool it started on, so changing the count concurrently is safe.

use std::sync::{Arc, RwLock};

use crate::error::{Error, Result};

static POOL: RwLock<Option<Arc<rayon::ThreadPool>>> = RwLock::new(None);

/// The default thread count: the machine's available cores.
pub fn default_num_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

fn build(n: usize) -> Result<Arc<rayon::ThreadPool>> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .thread_name(|i| format!("gpt-rs-{i}"))
        .build()
        .map(Arc::new)
        .map_err(|e| Error::Internal(format!("could not start {n} threads: {e}")))
}

/// The current pool, created with the default size on first use.
pub fn pool() -> Arc<rayon::ThreadPool> {
    if let Some(p) = POOL.read().unwrap_or_else(|e| e.into_inner()).as_ref() {
        return p.clone();
    }
    let mut guard = POOL.write().unwrap_or_else(|e| e.into_inner());
    if guard.is_none() {
        let p = build(default_num_threads())
            .or_else(|_| build(1))
            .expect("the engine needs at least one worker thread");
        *guard = Some(p);
    }
    guard.as_ref().expect("pool was just set").clone()
}

/// Sets the number of worker threads used by multithreaded backends.
pub fn set_num_threads(n: usize) -> Result<()> {
    if n == 0 || n > 1024 {
        return Err(Error::Value(format!(
            "num_threads must be between 1 and 1024, got {n}"
        )));
    }
    let p = build(n)?;
    *POOL.write().unwrap_or_else(|e| e.into_inner()) = Some(p);
    Ok(())
}

/// The number of worker threads of the current pool.
pub fn num_threads() -> usize {
    pool().current_num_threads()
}

/// Runs `f` inside the engine's pool (rayon calls in `f` use it).
pub fn install<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    let p = pool();
    if rayon::current_thread_index().is_some()
        && rayon::current_num_threads() == p.current_num_threads()
    {
        return f();
    }
    p.install(f)
}

/// Runs `f(i)` for every `i` in `0..n` on the engine's threads, the calling thread included.
///
/// From outside the pool (a Python call) this does not hand the whole call over as `install`
/// does: it spawns helpers on the pool and works itself, every thread claiming the next index
/// from a shared counter. Waking a sleeping worker costs 20-60 us on a VM; here the caller is
/// busy meanwhile, and a helper that starts late finds less (or nothing) left, so the call is
/// never slower than running alone by more than one index's work. On a pool thread it is
/// rayon's own parallel loop.
pub fn for_each_index(n: usize, f: &(dyn Fn(usize) + Sync)) {
    use rayon::prelude::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    if rayon::current_thread_index().is_some() {
        return (0..n).into_par_iter().for_each(f);
    }
    let p = pool();
    let helpers = p.current_num_threads().min(n).saturating_sub(1);
    if helpers == 0 {
        return (0..n).for_each(f);
    }

    /// `f` with its lifetime erased; dereferenced only for a claimed index (see `work`).
    struct Job(*const (dyn Fn(usize) + Sync + 'static));
    // SAFETY: the pointee is `Sync`; the pointer is only dereferenced while the caller waits.
    unsafe impl Send for Job {}
    unsafe impl Sync for Job {}
    type Panic = Box<dyn std::any::Any + Send>;
    struct Shared {
        next: AtomicUsize,
        done: AtomicUsize,
        n: usize,
        job: Job,
        panic: std::sync::Mutex<Option<Panic>>,
    }
    fn work(s: &Shared) {
        loop {
            let i = s.next.fetch_add(1, Ordering::AcqRel);
            if i >= s.n {
                return;
            }
            // SAFETY: index `i` was claimed, so the caller is still waiting (for `done` to
            // reach `n`) and `f` is alive. A helper that finds nothing left never reads it.
            let f = unsafe { &*s.job.0 };
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(i)));
            if let Err(e) = r {
                *s.panic.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
            }
            s.done.fetch_add(1, Ordering::Release);
        }
    }
    // SAFETY: only the lifetime changes; `work` guarantees `f` is not used after we return.
    let job = unsafe {
        std::mem::transmute::<
            *const (dyn Fn(usize) + Sync + '_),
            *const (dyn Fn(usize) + Sync + 'static),
        >(f)
    };
    let shared = Arc::new(Shared {
        next: AtomicUsize::new(0),
        done: AtomicUsize::new(0),
        n,
        job: Job(job),
        panic: std::sync::Mutex::new(None),
    });
    for _ in 0..helpers {
        let s = Arc::clone(&shared);
        p.spawn(move || work(&s));
    }
    work(&shared);
    // Every index is claimed; wait for those still running on helpers (at most one each).
    while shared.done.load(Ordering::Acquire) < n {
        std::thread::yield_now();
    }
    let panic = shared
        .panic
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    if let Some(e) = panic {
        std::panic::resume_unwind(e);
    }
}
