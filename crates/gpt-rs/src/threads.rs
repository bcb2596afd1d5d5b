//! The engine's threads: one rayon pool whose size `set_num_threads` controls, and
//! `for_each_index`, the parallel loop every `cpu` kernel splits its work with.
//!
//! The pool is replaced (not resized) when the count changes; work already running keeps
//! the pool it started on, so changing the count concurrently is safe.
//!
//! `for_each_index` keeps its helpers awake for a moment after a call (`SPIN`), waiting for
//! the next one: a decode step runs ~60 parallel regions back to back, each some tens of
//! microseconds long, and waking a sleeping thread can cost more than a region takes
//! (docs/performance.md, "Thread hand-off"). OpenMP runtimes spin the same way between
//! parallel regions.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// How long a helper waits, awake, for the next `for_each_index` call before it gives its
/// thread back to the pool (where rayon lets it sleep).
const SPIN: Duration = Duration::from_micros(300);
/// How often a waiting helper steps aside to run other work queued on the pool (rayon jobs
/// of the blocked GEMM's packing, the training kernels, the other backends).
const YIELD_EVERY: Duration = Duration::from_micros(10);

/// A pool and the calls of `for_each_index` running on it.
struct Engine {
    pool: rayon::ThreadPool,
    hot: Hot,
}

static ENGINE: RwLock<Option<Arc<Engine>>> = RwLock::new(None);

/// The default thread count: the machine's available cores.
pub fn default_num_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

fn build(n: usize) -> Result<Arc<Engine>> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .thread_name(|i| format!("gpt-rs-{i}"))
        .build()
        .map_err(|e| Error::Internal(format!("could not start {n} threads: {e}")))?;
    Ok(Arc::new(Engine {
        pool,
        hot: Hot::default(),
    }))
}

/// The current engine, created with the default size on first use.
fn engine() -> Arc<Engine> {
    if let Some(e) = ENGINE.read().unwrap_or_else(|e| e.into_inner()).as_ref() {
        return e.clone();
    }
    let mut guard = ENGINE.write().unwrap_or_else(|e| e.into_inner());
    if guard.is_none() {
        let e = build(default_num_threads())
            .or_else(|_| build(1))
            .expect("the engine needs at least one worker thread");
        *guard = Some(e);
    }
    guard.as_ref().expect("engine was just set").clone()
}

/// Sets the number of worker threads used by multithreaded backends.
pub fn set_num_threads(n: usize) -> Result<()> {
    if n == 0 || n > 1024 {
        return Err(Error::Value(format!(
            "num_threads must be between 1 and 1024, got {n}"
        )));
    }
    let e = build(n)?;
    *ENGINE.write().unwrap_or_else(|e| e.into_inner()) = Some(e);
    Ok(())
}

/// The number of worker threads of the current pool.
pub fn num_threads() -> usize {
    engine().pool.current_num_threads()
}

/// Runs `f` inside the engine's pool (rayon calls in `f` use it).
pub fn install<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    let e = engine();
    if rayon::current_thread_index().is_some()
        && rayon::current_num_threads() == e.pool.current_num_threads()
    {
        return f();
    }
    e.pool.install(f)
}

/// Runs `f(i)` for every `i` in `0..n` on the engine's threads, the calling thread included.
///
/// The caller publishes the call and works on it itself; helpers (pool threads) claim the
/// next index from a shared counter too. Helpers still awake from an earlier call (see
/// `SPIN`) join at once; only if too few are awake are more started on the pool. A helper
/// that starts late finds less (or nothing) left, so a call is never slower than running
/// alone by more than one index's work. Works the same from a pool thread (a generation step
/// runs inside `install`) and from any other thread.
pub fn for_each_index(n: usize, f: &(dyn Fn(usize) + Sync)) {
    let e = engine();
    let helpers = e.pool.current_num_threads().min(n).saturating_sub(1);
    if helpers == 0 {
        return (0..n).for_each(f);
    }
    // SAFETY: only the lifetime changes; `Call::work` dereferences `f` only for a claimed
    // index, and this function returns only after every claimed index has finished.
    let job = unsafe {
        std::mem::transmute::<
            *const (dyn Fn(usize) + Sync + '_),
            *const (dyn Fn(usize) + Sync + 'static),
        >(f)
    };
    let call = Arc::new(Call {
        next: AtomicUsize::new(0),
        done: AtomicUsize::new(0),
        seats: AtomicUsize::new(helpers),
        n,
        job: Job(job),
        panic: Mutex::new(None),
    });
    let hot = &e.hot;
    hot.publish(&call);
    // Helpers awake (or spawned and about to start) will find the call; start the rest.
    for _ in hot.alive.load(Ordering::SeqCst)..helpers {
        hot.alive.fetch_add(1, Ordering::SeqCst);
        let e2 = Arc::clone(&e);
        e.pool.spawn(move || help(&e2));
    }
    call.work();
    hot.retire(&call);
    // Every index is claimed; wait for those still running on helpers (at most one each).
    let mut spins = 0u32;
    while call.done.load(Ordering::Acquire) < n {
        spins += 1;
        if spins < 1 << 12 {
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
    let panic = call.panic.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(p) = panic {
        std::panic::resume_unwind(p);
    }
}

/// `f` with its lifetime erased; dereferenced only for a claimed index (see `Call::work`).
struct Job(*const (dyn Fn(usize) + Sync + 'static));
// SAFETY: the pointee is `Sync`; the pointer is only dereferenced while its caller waits.
unsafe impl Send for Job {}
unsafe impl Sync for Job {}

type Panic = Box<dyn std::any::Any + Send>;

/// One `for_each_index` call: indices are claimed from `next`, counted in `done` when run;
/// `seats` helpers may join (one fewer than the engine's threads: the caller works too).
struct Call {
    next: AtomicUsize,
    done: AtomicUsize,
    seats: AtomicUsize,
    n: usize,
    job: Job,
    panic: Mutex<Option<Panic>>,
}

impl Call {
    fn has_work(&self) -> bool {
        self.next.load(Ordering::Relaxed) < self.n
    }

    /// Claims and runs indices until none is left.
    fn work(&self) {
        loop {
            let i = self.next.fetch_add(1, Ordering::AcqRel);
            if i >= self.n {
                return;
            }
            // SAFETY: index `i` was claimed, so the caller is still waiting (for `done` to
            // reach `n`) and `f` is alive. A helper that finds nothing left never reads it.
            let f = unsafe { &*self.job.0 };
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(i)));
            if let Err(e) = r {
                *self.panic.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
            }
            self.done.fetch_add(1, Ordering::Release);
        }
    }
}

/// The calls in progress on an engine, and its helpers.
#[derive(Default)]
struct Hot {
    /// Calls that may have indices left.
    calls: Mutex<Vec<Arc<Call>>>,
    /// Bumped whenever a call is published.
    epoch: AtomicUsize,
    /// Helpers spawned and not yet gone (nor stepped aside to run other pool work).
    alive: AtomicUsize,
}

impl Hot {
    fn publish(&self, call: &Arc<Call>) {
        self.calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::clone(call));
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }

    fn retire(&self, call: &Arc<Call>) {
        self.calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|c| !Arc::ptr_eq(c, call));
    }

    /// A call with indices left and a free seat, taking the seat.
    fn pick(&self) -> Option<Arc<Call>> {
        let calls = self.calls.lock().unwrap_or_else(|e| e.into_inner());
        let c = calls
            .iter()
            .find(|c| c.has_work() && c.seats.load(Ordering::Relaxed) > 0)?;
        // Seats change only under the lock.
        c.seats.fetch_sub(1, Ordering::Relaxed);
        Some(Arc::clone(c))
    }

    /// Waits, awake, until a call is published after `seen` (true) or `SPIN` passes (false:
    /// the helper is no longer counted in `alive`). Every `YIELD_EVERY` it runs other work
    /// queued on the pool, if any, uncounted meanwhile: a long job there must not make
    /// callers count on this helper.
    ///
    /// A caller publishes, then reads `alive`; a helper leaves `alive`, then reads `epoch`
    /// (all sequentially consistent): so either the caller starts another helper or the
    /// helper sees the call.
    fn wait(&self, seen: usize) -> bool {
        let deadline = Instant::now() + SPIN;
        let mut next_yield = Instant::now() + YIELD_EVERY;
        let mut spins = 0u32;
        loop {
            if self.epoch.load(Ordering::SeqCst) != seen {
                return true;
            }
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(4) {
                let now = Instant::now();
                if now >= deadline || now >= next_yield {
                    self.alive.fetch_sub(1, Ordering::SeqCst);
                    if self.epoch.load(Ordering::SeqCst) != seen {
                        self.alive.fetch_add(1, Ordering::SeqCst);
                        return true;
                    }
                    if now >= deadline {
                        return false;
                    }
                    rayon::yield_now();
                    self.alive.fetch_add(1, Ordering::SeqCst);
                    next_yield = Instant::now() + YIELD_EVERY;
                }
            }
            // Yielding, as rayon's idle loop does, not a `pause` loop: a hypervisor may
            // deschedule a virtual CPU it sees spinning, and a pause loop measured slower
            // (docs/performance.md, "Thread hand-off").
            std::thread::yield_now();
        }
    }
}

thread_local! {
    /// Whether this thread is a helper already (a helper that runs queued pool work while it
    /// waits may run another helper's start: that one must not wait too).
    static HELPING: Cell<bool> = const { Cell::new(false) };
}

/// A helper (counted in `alive` from its spawn): works on published calls while there are
/// any, waits `SPIN` for more, then returns its thread to the pool.
fn help(e: &Engine) {
    let hot = &e.hot;
    if HELPING.with(|h| h.replace(true)) {
        while let Some(c) = hot.pick() {
            c.work();
        }
        hot.alive.fetch_sub(1, Ordering::SeqCst);
        return;
    }
    loop {
        // Read before looking, so a call published after the look is noticed by `wait`.
        let seen = hot.epoch.load(Ordering::SeqCst);
        while let Some(c) = hot.pick() {
            c.work();
        }
        if !hot.wait(seen) {
            break;
        }
    }
    HELPING.with(|h| h.set(false));
}
