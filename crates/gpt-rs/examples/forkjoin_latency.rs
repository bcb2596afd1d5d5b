//! Measures the cost of one parallel region on the engine's pool when it follows serial work
//! (as each op of a decode step does): `cargo run --release -p gpt-rs --example forkjoin_latency`.

use std::time::{Duration, Instant};

use rayon::prelude::*;

fn spin(d: Duration) {
    let t = Instant::now();
    while t.elapsed() < d {
        std::hint::spin_loop();
    }
}

fn main() {
    gpt_rs::threads::set_num_threads(2).unwrap();
    for gap_us in [0u64, 5, 20, 100] {
        let n = 2000;
        let t = Instant::now();
        gpt_rs::threads::install(|| {
            for _ in 0..n {
                spin(Duration::from_micros(gap_us));
                (0..4)
                    .into_par_iter()
                    .for_each(|_| spin(Duration::from_micros(25)));
            }
        });
        let per = t.elapsed().as_secs_f64() * 1e6 / n as f64;
        // Ideal: gap + 2 x 25 us of parallel work on 2 threads.
        println!(
            "gap {gap_us:3} us: {per:6.1} us per region (ideal {:.0})",
            gap_us as f64 + 50.0
        );
    }
}
