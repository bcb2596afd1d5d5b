//! Speed of the `cpu` backend's quantized products, per format, in the shapes of a 0.5B
//! model (896 -> 4864 and 4864 -> 896): one row (decode) and 128 rows (prefill). Run:
//!     cargo run --release -p gpt-rs --example quant_gemv [threads]

use std::time::Instant;

use gpt_rs::backend::quant::QuantType;
use gpt_rs::backend::{BackendKind, Panels, SourceDtype, WeightFormat, WeightSource};

fn main() {
    let threads: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    gpt_rs::threads::set_num_threads(threads).unwrap();
    let be = BackendKind::Cpu.get().unwrap();
    let types = [
        QuantType::Q4_0,
        QuantType::Q5_0,
        QuantType::Q8_0,
        QuantType::Q4K,
        QuantType::Q5K,
        QuantType::Q6K,
    ];
    println!("threads={threads}  (GB/s of weights read; GMAC/s)");
    for t in types {
        let shapes: Vec<(usize, usize)> = match std::env::var("SHAPES") {
            Ok(v) => v
                .split(',')
                .map(|p| {
                    let (k, n) = p.split_once('x').expect("SHAPES=KxN,...");
                    (k.parse().unwrap(), n.parse().unwrap())
                })
                .collect(),
            Err(_) => vec![(896, 4864), (4864, 896)],
        };
        for (k, n) in shapes {
            if k % t.block_elems() != 0 {
                continue;
            }
            // 48 matrices (more than the caches hold; `BYTES=1000000` for a set that stays in
            // L2, the kernels' compute speed), random bytes.
            let bytes: usize = std::env::var("BYTES").map_or(150_000_000, |v| v.parse().unwrap());
            let count = (bytes / (t.row_bytes(k) * n)).clamp(1, 48);
            let rb = t.row_bytes(k);
            let mut seed = 0x1234_5678u64;
            let mats: Vec<Panels> = (0..count)
                .map(|_| {
                    let mut bytes = vec![0u8; rb * n];
                    for b in bytes.iter_mut() {
                        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                        *b = (seed >> 33) as u8;
                    }
                    // Tame the f16 scales (every byte random would give inf/NaN).
                    let src = WeightSource {
                        bytes: &bytes,
                        dtype: SourceDtype::Quant(t),
                        out_in: true,
                        k,
                        n,
                    };
                    Panels::prepare(&src, WeightFormat::Quant(t)).unwrap()
                })
                .collect();
            let ms: Vec<usize> = match std::env::var("ROWS") {
                Ok(v) => v.split(',').map(|x| x.parse().unwrap()).collect(),
                Err(_) => vec![1, 128],
            };
            for m in ms {
                let x: Vec<f32> = (0..m * k).map(|i| ((i % 17) as f32 - 8.0) * 0.1).collect();
                let mut y = vec![0.0f32; m * n];
                let run = |y: &mut [f32]| {
                    gpt_rs::threads::install(|| {
                        for w in &mats {
                            be.matmul_panels(&x, w, None, y, m);
                        }
                    })
                };
                run(&mut y);
                // The fastest of a few passes: the machines are shared, and slower passes are
                // other tenants' noise.
                let reps = if m == 1 { 20 } else { 3 };
                let s = (0..reps)
                    .map(|_| {
                        let t0 = Instant::now();
                        run(&mut y);
                        t0.elapsed().as_secs_f64()
                    })
                    .fold(f64::INFINITY, f64::min);
                let gb = (rb * n * count) as f64 / s / 1e9;
                let gmac = (m * k * n * count) as f64 / s / 1e9;
                println!(
                    "{:5} k={k:5} n={n:5} m={m:3}: {:7.1} us/matrix {gb:6.1} GB/s {gmac:6.1} GMAC/s",
                    t.name(),
                    s / count as f64 * 1e6
                );
            }
        }
    }
}
