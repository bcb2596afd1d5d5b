//! `threads::for_each_index`: every index exactly once, from outside and inside the pool, from
//! several threads at once, and a panic in one index reaches the caller.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use gpt_rs::threads;

/// The pool size is global: tests that set it run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn counts_once(n: usize) {
    let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
    threads::for_each_index(n, &|i| {
        // Some work, so helpers get a share.
        let mut x = i as f64;
        for _ in 0..200 {
            x = (x * 1.000_001).sqrt() + 1.0;
        }
        assert!(x > 0.0);
        hits[i].fetch_add(1, Ordering::Relaxed);
    });
    assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
}

#[test]
fn every_index_once_outside_and_inside_the_pool() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    for t in [1, 2, 3] {
        threads::set_num_threads(t).unwrap();
        for n in [0, 1, 2, 7, 64, 1000] {
            counts_once(n);
            threads::install(|| counts_once(n));
        }
    }
}

#[test]
fn concurrent_callers() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    threads::set_num_threads(2).unwrap();
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for n in 0..200 {
                    counts_once(n % 17);
                }
            });
        }
    });
}

#[test]
fn a_panic_reaches_the_caller_and_the_pool_still_works() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    threads::set_num_threads(2).unwrap();
    let ran = AtomicUsize::new(0);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        threads::for_each_index(50, &|i| {
            ran.fetch_add(1, Ordering::Relaxed);
            if i == 13 {
                panic!("index 13 failed");
            }
        })
    }));
    let msg = r.unwrap_err();
    assert_eq!(msg.downcast_ref::<&str>(), Some(&"index 13 failed"));
    assert_eq!(
        ran.load(Ordering::Relaxed),
        50,
        "the other indices still ran"
    );
    counts_once(100);
}

#[test]
fn nested_calls_and_calls_between_pool_jobs() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    for t in [2, 3] {
        threads::set_num_threads(t).unwrap();
        // A call inside every index of another (as attention runs GEMMs per head), from
        // outside and inside the pool.
        let nested = || {
            let hits: Vec<AtomicUsize> = (0..12 * 9).map(|_| AtomicUsize::new(0)).collect();
            threads::for_each_index(12, &|h| {
                threads::for_each_index(9, &|j| {
                    hits[h * 9 + j].fetch_add(1, Ordering::Relaxed);
                })
            });
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
        };
        nested();
        threads::install(nested);
        // Calls interleaved with other pool work, while helpers of earlier calls still wait.
        for n in 0..50 {
            counts_once(n);
            threads::install(|| counts_once(n % 7));
            std::thread::sleep(std::time::Duration::from_micros(50 * (n % 3) as u64));
        }
    }
}
