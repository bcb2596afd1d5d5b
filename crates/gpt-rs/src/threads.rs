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
