//! Times the GEMMs of a GPT-2 124M prefill (12 layers of `x[T, in] @ W[in, out]` with the
//! model's four projection shapes) three ways, alternating in one process so all see the same
//! machine state: `cpu` with the weights as `Panels` (how the runtime keeps them), `cpu` with
//! them stored `[out, in]` (`matmul_nt`, packed per call) and `faer` on `[out, in]`. Prints
//! GFLOP/s (best and median of the repeats). Run:
//!     cargo run --release -p gpt-rs --example gemm_prefill [threads] [T] [repeats]

use std::time::Instant;

use gpt_rs::backend::{BackendKind, Panels};

fn main() {
    let arg = |i: usize, d: usize| {
        std::env::args()
            .nth(i)
            .and_then(|s| s.parse().ok())
            .unwrap_or(d)
    };
    let (threads, t, repeats) = (arg(1, 1), arg(2, 128), arg(3, 7));
    gpt_rs::threads::set_num_threads(threads).unwrap();
    let c = 768usize;
    // (k, n) of c_attn, attn.c_proj, c_fc, mlp.c_proj, for 12 layers.
    let shapes = [(c, 3 * c), (c, c), (c, 4 * c), (4 * c, c)];
    let mats: Vec<(usize, usize, Vec<f32>)> = (0..12)
        .flat_map(|l| shapes.iter().map(move |&(k, n)| (l, k, n)))
        .map(|(l, k, n)| {
            let w = (0..k * n)
                .map(|j| (((j + l) % 17) as f32 - 8.0) * 0.01)
                .collect();
            (k, n, w)
        })
        .collect();
    let panels: Vec<Panels> = mats
        .iter()
        .map(|(k, n, w)| Panels::from_kn(w, *k, *n).unwrap())
        .collect();
    let nk: Vec<Vec<f32>> = mats
        .iter()
        .map(|(k, n, w)| (0..k * n).map(|i| w[(i % k) * n + i / k]).collect())
        .collect();
    let x: Vec<f32> = (0..t * 4 * c)
        .map(|i| ((i % 11) as f32 - 5.0) * 0.1)
        .collect();
    let mut y = vec![0.0f32; t * 4 * c];
    let flops: f64 = mats.iter().map(|(k, n, _)| 2.0 * (t * k * n) as f64).sum();
    let mut ways: Vec<(&str, BackendKind, bool)> = vec![
        ("cpu Panels", BackendKind::Cpu, true),
        ("cpu [out,in]", BackendKind::Cpu, false),
    ];
    if BackendKind::Faer.is_available() {
        ways.push(("faer [out,in]", BackendKind::Faer, false));
    }
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); ways.len()];
    for rep in 0..=repeats {
        for (wi, &(_, kind, use_panels)) in ways.iter().enumerate() {
            let be = kind.get().unwrap();
            let start = Instant::now();
            gpt_rs::threads::install(|| {
                for (i, (k, n, _)) in mats.iter().enumerate() {
                    let (a, out) = (&x[..t * k], &mut y[..t * n]);
                    if use_panels {
                        be.matmul_panels(a, &panels[i], None, out, t);
                    } else {
                        be.matmul_nt(a, &nk[i], None, out, t, *k, *n);
                    }
                }
            });
            if rep > 0 {
                times[wi].push(start.elapsed().as_secs_f64());
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
    for (wi, (name, _, _)) in ways.iter().enumerate() {
        let v = &mut times[wi];
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!(
            "{threads} thread(s) T={t} {name:>13}: best {:6.1} GFLOP/s, median {:6.1} ({:.1} ms median)",
            flops / v[0] / 1e9,
            flops / v[v.len() / 2] / 1e9,
            v[v.len() / 2] * 1e3
        );
    }
}
