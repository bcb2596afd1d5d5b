//! Measures how fast the `cpu` backend streams weights from memory in decode-shaped products
//! (one row times a matrix much larger than the caches). Run:
//!     cargo run --release -p gpt-rs --example gemv_bandwidth [threads]

use std::time::Instant;

use gpt_rs::backend::{BackendKind, Panels, SourceDtype, WeightFormat, WeightSource};
use gpt_rs::storage::Storage;

fn main() {
    let threads: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    gpt_rs::threads::set_num_threads(threads).unwrap();
    let be = BackendKind::Cpu.get().unwrap();
    // 64 matrices of 768 x 3072 (604 MB, more than the caches), cycled so no matrix is still
    // cached when reused, in the weight memory the GPT-2 runtime uses (huge pages on Linux).
    let (k, n, count) = (768usize, 3072usize, 64usize);
    let all = Storage::weights_with(k * n * count, "matrices", |w| {
        for (j, v) in w.iter_mut().enumerate() {
            *v = (j % 13) as f32 * 0.01;
        }
    })
    .expect("memory for the matrices");
    let mats: Vec<&[f32]> = all.as_slice().chunks(k * n).collect();
    let x: Vec<f32> = (0..k).map(|i| i as f32 * 1e-3).collect();
    let mut y = vec![0.0f32; n];
    let bytes = (k * n * 4 * count) as f64;
    let time = |f: &mut dyn FnMut()| {
        f();
        let t = Instant::now();
        for _ in 0..5 {
            f();
        }
        t.elapsed().as_secs_f64() / 5.0
    };
    let t = time(&mut || {
        gpt_rs::threads::install(|| {
            mats.iter()
                .for_each(|w| be.matmul(&x, w, None, &mut y, 1, k, n))
        })
    });
    println!(
        "{threads} thread(s): matmul    [K,N] GEMV {:6.1} GB/s",
        bytes / t / 1e9
    );
    let t = time(&mut || {
        gpt_rs::threads::install(|| {
            mats.iter()
                .for_each(|w| be.matmul_nt(&x, w, None, &mut y, 1, k, n))
        })
    });
    println!(
        "{threads} thread(s): matmul_nt [N,K] GEMV {:6.1} GB/s",
        bytes / t / 1e9
    );
    // The same values as `Panels` (how the runtime keeps its projections), f32 and bf16.
    let panels: Vec<Panels> = mats
        .iter()
        .map(|w| Panels::from_kn(w, k, n).unwrap())
        .collect();
    let bf16: Vec<Panels> = mats
        .iter()
        .map(|w| {
            let bytes: Vec<u8> = w.iter().flat_map(|v| v.to_le_bytes()).collect();
            let src = WeightSource {
                bytes: &bytes,
                dtype: SourceDtype::F32,
                out_in: false,
                k,
                n,
            };
            Panels::prepare(&src, WeightFormat::Bf16).unwrap()
        })
        .collect();
    drop(all);
    let t = time(&mut || {
        gpt_rs::threads::install(|| {
            panels
                .iter()
                .for_each(|w| be.matmul_panels(&x, w, None, &mut y, 1))
        })
    });
    println!(
        "{threads} thread(s): matmul_panels GEMV  {:6.1} GB/s",
        bytes / t / 1e9
    );
    let t = time(&mut || {
        gpt_rs::threads::install(|| {
            bf16.iter()
                .for_each(|w| be.matmul_panels(&x, w, None, &mut y, 1))
        })
    });
    println!(
        "{threads} thread(s): matmul_panels bf16 GEMV {:6.1} GB/s",
        bytes / 2.0 / t / 1e9
    );
}
