//! Every kernel on every compiled-in backend against the `cpu-portable` reference, at every
//! SIMD level this CPU has. `on_every_backend!` makes one #[test] per backend.

use gpt_rs::backend::cpu::simd::{self, SimdLevel};
use gpt_rs::backend::{Backend, BackendKind, Panels, PANEL};
use gpt_rs::ops;
use gpt_rs::storage::Storage;
use gpt_rs::Tensor;
use rand_chacha::rand_core::{Rng as _, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Seeded test data: uniform values in [-1, 1) from ChaCha8 (the engine's own generator).
struct Rng(ChaCha8Rng);
impl Rng {
    fn new(seed: u64) -> Self {
        Self(ChaCha8Rng::seed_from_u64(seed))
    }
    fn next(&mut self) -> f32 {
        // 24 random bits: every value is an exact f32.
        ((self.0.next_u32() >> 8) as f32 / (1u32 << 24) as f32) * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.next() * scale).collect()
    }
    fn tensor(&mut self, shape: &[usize], scale: f32) -> Tensor {
        Tensor::from_f32(
            self.vec(shape.iter().product(), scale),
            shape.to_vec(),
            BackendKind::Cpu,
        )
        .unwrap()
    }
}

fn reference() -> &'static dyn Backend {
    BackendKind::CpuPortable.get().unwrap()
}

fn assert_close(got: &Tensor, want: &Tensor, rtol: f32, atol: f32, what: &str) {
    assert_eq!(got.shape(), want.shape(), "{what}: shape");
    let (g, w) = (got.f32s("got").unwrap(), want.f32s("want").unwrap());
    let mut worst = 0.0f32;
    for (i, (&a, &b)) in g.iter().zip(w).enumerate() {
        let err = (a - b).abs();
        worst = worst.max(err);
        assert!(
            err <= atol + rtol * b.abs() || (a.is_nan() && b.is_nan()),
            "{what}: element {i}: got {a}, want {b} (max err so far {worst})"
        );
    }
}

/// The SIMD level is process-wide: tests that change it run one at a time.
static LEVEL_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs `check(backend)` at each SIMD level the CPU supports (the fallbacks too).
fn at_every_level(be: &dyn Backend, check: impl Fn(&dyn Backend)) {
    let _guard = LEVEL_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    for level in [SimdLevel::Avx512, SimdLevel::Avx2, SimdLevel::Scalar] {
        if level <= simd::detected() {
            simd::set_max_level(level);
            check(be);
        }
    }
    simd::set_max_level(SimdLevel::Avx512);
}

macro_rules! on_every_backend {
    ($($name:ident => $body:expr;)*) => {
        mod cpu { use super::*; $( #[test] fn $name() { let f: fn(&dyn Backend) = $body; at_every_level(BackendKind::Cpu.get().unwrap(), f); } )* }
        mod portable { use super::*; $( #[test] fn $name() { let f: fn(&dyn Backend) = $body; f(BackendKind::CpuPortable.get().unwrap()); } )* }
        #[cfg(feature = "faer")]
        mod faer { use super::*; $( #[test] fn $name() { let f: fn(&dyn Backend) = $body; f(BackendKind::Faer.get().unwrap()); } )* }
        #[cfg(feature = "c-backend")]
        mod c { use super::*; $( #[test] fn $name() { let f: fn(&dyn Backend) = $body; f(BackendKind::C.get().unwrap()); } )* }
    };
}

on_every_backend! {
    quantized_matmul_equals_the_product_it_defines => |be| {
        // Random blocks of every GGML type (small f16 scales), in the shapes of a legacy row
        // with a short last group (k = 320) and of K super-blocks (k = 512); n spans a padded
        // panel. `cpu` multiplies int8 activations (`Q8Rows`), the others the f32 ones: the
        // reference takes the same activations and the dequantized weights, in f64.
        use gpt_rs::backend::cpu::qmatmul::Q8Rows;
        use gpt_rs::backend::quant::QuantType;
        use gpt_rs::backend::{SourceDtype, WeightFormat, WeightSource};
        let mut r = Rng::new(77);
        let scales: &[(QuantType, &[usize])] = &[
            (QuantType::Q4_0, &[0]), (QuantType::Q4_1, &[0, 2]), (QuantType::Q5_0, &[0]),
            (QuantType::Q5_1, &[0, 2]), (QuantType::Q8_0, &[0]), (QuantType::Q2K, &[80, 82]),
            (QuantType::Q3K, &[108]), (QuantType::Q4K, &[0, 2]), (QuantType::Q5K, &[0, 2]),
            (QuantType::Q6K, &[208]),
        ];
        for &(t, offsets) in scales {
            let k = if t.block_elems() == 256 { 512 } else { 320 };
            let n = 37;
            let mut bytes: Vec<u8> = (0..t.row_bytes(k) * n).map(|_| ((r.next() + 1.0) * 127.99) as u8).collect();
            for block in bytes.chunks_exact_mut(t.block_bytes()) {
                for &o in offsets {
                    let d = half::f16::from_f32(0.001 + 0.005 * (r.next() + 1.0));
                    block[o..o + 2].copy_from_slice(&d.to_le_bytes());
                }
            }
            let src = WeightSource { bytes: &bytes, dtype: SourceDtype::Quant(t), out_in: true, k, n };
            let w = Panels::prepare(&src, WeightFormat::Quant(t)).unwrap();
            let w_kn = w.to_f32_kn().unwrap();
            for m in [1usize, 5, 17] {
                let a = r.vec(m * k, 1.0);
                let seen: Vec<f32> = if be.kind() == BackendKind::Cpu {
                    let q = Q8Rows::new(&a, m, k);
                    q.qs.iter().enumerate().map(|(i, &v)| v as f32 * q.d[i / 32]).collect()
                } else {
                    a.clone()
                };
                let mut got = vec![f32::NAN; m * n];
                be.matmul_panels(&a, &w, None, &mut got, m);
                for i in 0..m {
                    for j in 0..n {
                        let (mut want, mut size) = (0.0f64, 0.0f64);
                        for p in 0..k {
                            let x = seen[i * k + p] as f64 * w_kn[p * n + j] as f64;
                            want += x;
                            size += x.abs();
                        }
                        let g = got[i * n + j] as f64;
                        assert!((g - want).abs() <= 1e-5 * size + 1e-30, "{} m={m} [{i},{j}]: got {g}, want {want} (level {:?})", t.name(), simd::level());
                    }
                }
            }
        }
    };
    recycled_outputs_never_show_old_values => |be| {
        // Outputs of ops whose kernels write every element reuse freed buffers of the same
        // size (`storage::recycle`): fill the recycled buffers with NaN first, then every such
        // op on finite input must give finite results equal to the reference's.
        let mut r = Rng::new(37);
        let shape = [64, 300]; // above the recycling threshold
        let (x, w, b) = (r.tensor(&shape, 3.0), r.tensor(&[300], 1.0), r.tensor(&[300], 1.0));
        type Op = fn(&dyn Backend, &Tensor, &Tensor, &Tensor) -> Tensor;
        let cases: [(&str, Op); 5] = [
            ("gelu", |be, x, _, _| ops::gelu(be, x).unwrap()),
            ("gelu_tanh", |be, x, _, _| ops::gelu_tanh(be, x).unwrap()),
            ("softmax_last_dim", |be, x, _, _| ops::softmax_last_dim(be, x).unwrap()),
            ("layer_norm", |be, x, w, b| ops::layer_norm(be, x, w, b, 1e-5).unwrap()),
            ("add_bias", |be, x, _, b| ops::add_bias(be, x, b).unwrap()),
        ];
        for (name, op) in cases {
            for _ in 0..3 {
                // A NaN-filled buffer of the output's size, handed to the recycler.
                drop(Storage::recycled(vec![f32::NAN; 64 * 300]));
                let got = op(be, &x, &w, &b);
                assert!(got.f32s("got").unwrap().iter().all(|v| v.is_finite()), "{name}: old values leaked");
                assert_close(&got, &op(reference(), &x, &w, &b), 1e-4, 1e-5, name);
            }
        }
    };
    matmul_all_shapes => |be| {
        let mut r = Rng::new(7);
        for &(m, k, n) in &[(1, 1, 1), (1, 768, 77), (1, 2100, 300), (3, 5, 7), (7, 64, 200), (8, 33, 65), (37, 300, 51), (128, 257, 96), (200, 16, 513), (1, 0, 4), (0, 3, 4)] {
            let (a, b) = (r.tensor(&[m, k], 1.0), r.tensor(&[k, n], 1.0));
            let got = ops::matmul(be, &a, &b).unwrap();
            let want = ops::matmul(reference(), &a, &b).unwrap();
            assert_close(&got, &want, 1e-4, 1e-4 * (k as f32).sqrt(), &format!("matmul {m}x{k}x{n}"));
            let bias = r.tensor(&[n], 1.0);
            let got = ops::linear(be, &a, &b, Some(&bias)).unwrap();
            let want = ops::linear(reference(), &a, &b, Some(&bias)).unwrap();
            assert_close(&got, &want, 1e-4, 1e-4 * (k as f32).sqrt(), &format!("linear {m}x{k}x{n}"));
        }
    };
    matmul_tn_acc_all_shapes => |be| {
        let mut r = Rng::new(27);
        for &(m, k, n) in &[(1, 5, 3), (3, 5, 7), (8, 300, 65), (37, 257, 51), (128, 64, 96), (5, 0, 3)] {
            let (a, b, c0) = (r.vec(k * m, 1.0), r.vec(k * n, 1.0), r.vec(m * n, 1.0));
            let mut got = c0.clone();
            be.matmul_tn_acc(&a, &b, &mut got, m, k, n);
            // Naive f64 reference: c[i, j] += sum_p a[p, i] * b[p, j].
            let want: Vec<f32> = (0..m * n)
                .map(|ij| {
                    let (i, j) = (ij / n, ij % n);
                    let dot: f64 = (0..k).map(|p| a[p * m + i] as f64 * b[p * n + j] as f64).sum();
                    (c0[ij] as f64 + dot) as f32
                })
                .collect();
            let (g, w) = (Tensor::from_f32(got, vec![m, n], be.kind()).unwrap(), Tensor::from_f32(want, vec![m, n], be.kind()).unwrap());
            assert_close(&g, &w, 1e-4, 1e-4 * (k as f32).sqrt(), &format!("matmul_tn_acc {m}x{k}x{n}"));
        }
    };
    matmul_nt_all_shapes => |be| {
        let mut r = Rng::new(17);
        for &(m, k, n) in &[(1, 768, 300), (2, 1000, 1100), (3, 5, 7), (15, 64, 33), (16, 64, 33), (40, 129, 70), (64, 300, 100), (1, 0, 3)] {
            let (a, b, bias) = (r.vec(m * k, 1.0), r.vec(n * k, 1.0), r.vec(n, 1.0));
            let (mut got, mut want) = (vec![0.0; m * n], vec![0.0; m * n]);
            let bias = if m % 2 == 0 { Some(&bias[..]) } else { None };
            be.matmul_nt(&a, &b, bias, &mut got, m, k, n);
            reference().matmul_nt(&a, &b, bias, &mut want, m, k, n);
            let (g, w) = (Tensor::from_f32(got, vec![m, n], be.kind()).unwrap(), Tensor::from_f32(want, vec![m, n], be.kind()).unwrap());
            assert_close(&g, &w, 1e-4, 1e-4 * (k as f32).sqrt(), &format!("matmul_nt {m}x{k}x{n}"));
        }
    };
    matmul_panels_all_shapes => |be| {
        // Weights prepared as panels (read in place by `cpu`, panel by panel elsewhere) against
        // the plain product; shapes cover partial panels, the GEMV/GEMM switch at 16 rows,
        // several K blocks and several task groups.
        let mut r = Rng::new(29);
        for &(m, k, n) in &[(1, 768, 300), (2, 1000, 1100), (3, 5, 7), (15, 64, 33), (16, 64, 33), (40, 129, 70), (64, 300, 100), (130, 513, 96), (1, 0, 3), (0, 4, 5)] {
            let (a, w, bias) = (r.vec(m * k, 1.0), r.vec(k * n, 1.0), r.vec(n, 1.0));
            let panels = Panels::from_kn(&w, k, n).unwrap();
            assert_eq!((panels.k(), panels.n(), panels.panels()), (k, n, n.div_ceil(PANEL)));
            let (mut got, mut want) = (vec![f32::NAN; m * n], vec![0.0; m * n]);
            let bias = if m % 2 == 0 { Some(&bias[..]) } else { None };
            be.matmul_panels(&a, &panels, bias, &mut got, m);
            reference().matmul(&a, &w, bias, &mut want, m, k, n);
            let (g, wt) = (Tensor::from_f32(got, vec![m, n], be.kind()).unwrap(), Tensor::from_f32(want, vec![m, n], be.kind()).unwrap());
            assert_close(&g, &wt, 1e-4, 1e-4 * (k as f32).sqrt(), &format!("matmul_panels {m}x{k}x{n}"));
        }
    };
    matmul_prepared_bf16_and_out_in => |be| {
        // Weights prepared from checkpoint bytes: [out, in] (nn.Linear) and [in, out] sources,
        // f32 / bf16 / f16 elements, kept as f32 or bf16 panels. The reference multiplies the
        // exact values the panels hold (bf16 rounding is the format's, not an error).
        use gpt_rs::backend::{SourceDtype, WeightFormat, WeightSource};
        let mut r = Rng::new(31);
        for &(m, k, n) in &[(1, 768, 300), (2, 1000, 1100), (3, 5, 7), (16, 64, 33), (40, 129, 70), (130, 513, 96), (1, 0, 3), (29, 600, 300), (16, 31, 1)] {
            let (a, w_nk) = (r.vec(m * k, 1.0), r.vec(n * k, 1.0));
            for (dtype, format) in [(SourceDtype::F32, WeightFormat::Bf16), (SourceDtype::Bf16, WeightFormat::Bf16), (SourceDtype::Bf16, WeightFormat::F32), (SourceDtype::F16, WeightFormat::F32), (SourceDtype::F32, WeightFormat::F32)] {
                for out_in in [true, false] {
                    // The stored matrix: [n, k] if out_in, else [k, n].
                    let stored: Vec<f32> = if out_in { w_nk.clone() } else { (0..k * n).map(|i| w_nk[(i % n) * k + i / n]).collect() };
                    let bytes: Vec<u8> = match dtype {
                        SourceDtype::F32 => stored.iter().flat_map(|v| v.to_le_bytes()).collect(),
                        SourceDtype::Bf16 => stored.iter().flat_map(|&v| half::bf16::from_f32(v).to_le_bytes()).collect(),
                        SourceDtype::F16 => stored.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect(),
                        SourceDtype::Quant(_) => unreachable!("quantized sources: tests/test_quant.py"),
                    };
                    let src = WeightSource { bytes: &bytes, dtype, out_in, k, n };
                    let panels = Panels::prepare(&src, format).unwrap();
                    assert_eq!(panels.format(), format);
                    // What the panels must hold: the source value, rounded as the format says.
                    let exact = |v: f32| -> f32 {
                        let v = match dtype {
                            SourceDtype::F32 => v,
                            SourceDtype::Bf16 => half::bf16::from_f32(v).to_f32(),
                            SourceDtype::F16 => half::f16::from_f32(v).to_f32(),
                            SourceDtype::Quant(_) => unreachable!(),
                        };
                        if format == WeightFormat::Bf16 { half::bf16::from_f32(v).to_f32() } else { v }
                    };
                    let w_kn: Vec<f32> = (0..k * n).map(|i| exact(w_nk[(i % n) * k + i / n])).collect();
                    assert_eq!(panels.to_f32_kn().unwrap(), w_kn, "prepared values {dtype:?} -> {format:?}");
                    let (mut got, mut want) = (vec![f32::NAN; m * n], vec![0.0; m * n]);
                    be.matmul_panels(&a, &panels, None, &mut got, m);
                    // Many rows on AVX512-BF16 multiply bf16-rounded activations (vdpbf16ps).
                    let dot = be.kind() == BackendKind::Cpu && format == WeightFormat::Bf16 && m >= 16 && gpt_rs::backend::cpu::bf16_dot_active();
                    let a_used: Vec<f32> = if dot { a.iter().map(|&v| half::bf16::from_f32(v).to_f32()).collect() } else { a.clone() };
                    reference().matmul(&a_used, &w_kn, None, &mut want, m, k, n);
                    let (g, wt) = (Tensor::from_f32(got, vec![m, n], be.kind()).unwrap(), Tensor::from_f32(want, vec![m, n], be.kind()).unwrap());
                    assert_close(&g, &wt, 1e-4, 1e-4 * (k as f32).sqrt(), &format!("prepared {dtype:?}->{format:?} out_in={out_in} {m}x{k}x{n}"));
                }
            }
        }
    };
    attention_strided_cache => |be| {
        // Keys/values read in place from a preallocated [g, max_t, d] cache.
        let mut r = Rng::new(19);
        let (g, tq, tk, d, max_t) = (3, 2, 6, 8, 10);
        let (q, kc, vc) = (r.vec(g * tq * d, 1.0), r.vec(g * max_t * d, 1.0), r.vec(g * max_t * d, 1.0));
        let dense = |c: &[f32]| -> Vec<f32> { (0..g).flat_map(|h| c[h * max_t * d..h * max_t * d + tk * d].to_vec()).collect() };
        let (kd, vd) = (dense(&kc), dense(&vc));
        let (mut got, mut want) = (vec![0.0; g * tq * d], vec![0.0; g * tq * d]);
        be.attention(&q, &kc, &vc, &mut got, g, tq, tk, d, max_t * d, true);
        reference().attention(&q, &kd, &vd, &mut want, g, tq, tk, d, tk * d, true);
        let (gt, wt) = (Tensor::from_f32(got, vec![g, tq, d], be.kind()).unwrap(), Tensor::from_f32(want, vec![g, tq, d], be.kind()).unwrap());
        assert_close(&gt, &wt, 1e-4, 1e-5, "strided attention");
    };
    batched_matmul => |be| {
        let mut r = Rng::new(9);
        let (a, b, b2) = (r.tensor(&[3, 17, 40], 1.0), r.tensor(&[3, 40, 9], 1.0), r.tensor(&[40, 9], 1.0));
        assert_close(&ops::matmul(be, &a, &b).unwrap(), &ops::matmul(reference(), &a, &b).unwrap(), 1e-4, 1e-4, "bmm");
        assert_close(&ops::matmul(be, &a, &b2).unwrap(), &ops::matmul(reference(), &a, &b2).unwrap(), 1e-4, 1e-4, "bmm2");
    };
    elementwise_and_rows => |be| {
        let mut r = Rng::new(11);
        for &(rows, cols) in &[(1, 1), (3, 7), (12, 128), (64, 1000), (300, 769)] {
            let x = r.tensor(&[rows, cols], 8.0);
            assert_close(&ops::gelu(be, &x).unwrap(), &ops::gelu(reference(), &x).unwrap(), 1e-5, 1e-6, "gelu");
            assert_close(&ops::gelu_tanh(be, &x).unwrap(), &ops::gelu_tanh(reference(), &x).unwrap(), 1e-5, 1e-6, "gelu_tanh");
            assert_close(&ops::softmax_last_dim(be, &x).unwrap(), &ops::softmax_last_dim(reference(), &x).unwrap(), 1e-4, 1e-7, "softmax");
            let (w, b) = (r.tensor(&[cols], 1.0), r.tensor(&[cols], 1.0));
            assert_close(&ops::layer_norm(be, &x, &w, &b, 1e-5).unwrap(), &ops::layer_norm(reference(), &x, &w, &b, 1e-5).unwrap(), 1e-4, 1e-4, "layer_norm");
            assert_close(&ops::add_bias(be, &x, &b).unwrap(), &ops::add_bias(reference(), &x, &b).unwrap(), 1e-6, 0.0, "add_bias");
        }
    };
    attention => |be| {
        let mut r = Rng::new(13);
        for &(g, tq, tk, d, causal) in &[(1, 1, 1, 4, true), (2, 5, 5, 8, true), (3, 1, 9, 16, true), (4, 33, 33, 64, true), (2, 7, 11, 8, false), (12, 40, 40, 64, true), (2, 150, 150, 64, true), (2, 70, 100, 32, true), (2, 80, 90, 16, false)] {
            let (q, k, v) = (r.tensor(&[g, tq, d], 1.0), r.tensor(&[g, tk, d], 1.0), r.tensor(&[g, tk, d], 1.0));
            let got = ops::scaled_dot_product_attention(be, &q, &k, &v, causal).unwrap();
            let want = ops::scaled_dot_product_attention(reference(), &q, &k, &v, causal).unwrap();
            assert_close(&got, &want, 1e-4, 1e-5, &format!("attention g={g} tq={tq} tk={tk} d={d}"));
        }
    };
}

#[test]
fn errors_name_the_problem() {
    let be = reference();
    let mut r = Rng::new(3);
    let (a, v) = (r.tensor(&[2, 3], 1.0), r.tensor(&[3], 1.0));
    let e = ops::matmul(be, &a, &v).unwrap_err().to_string();
    assert!(
        e.contains("matmul expects rank-2 or rank-3 tensors, got ranks 2 and 1"),
        "{e}"
    );
    let e = ops::matmul(be, &a, &a).unwrap_err().to_string();
    assert!(e.contains("inner dimensions"), "{e}");
    let idx = Tensor::from_i32(vec![0, 5], vec![2], BackendKind::Cpu).unwrap();
    let e = ops::embedding_lookup(be, &a, &idx).unwrap_err().to_string();
    assert!(e.contains("index 5 at position 1 is out of range"), "{e}");
}

#[test]
fn registry_lists_compiled_in_backends_in_order() {
    let names: Vec<&str> = gpt_rs::backend::available()
        .iter()
        .map(|b| b.name())
        .collect();
    let mut want = vec!["cpu", "cpu-portable"];
    if cfg!(feature = "faer") {
        want.push("faer");
    }
    if cfg!(feature = "c-backend") {
        want.push("c");
    }
    assert_eq!(names, want);
    let e = BackendKind::parse("nope").unwrap_err().to_string();
    assert!(e.contains("available backends: cpu, cpu-portable"), "{e}");
}

#[cfg(not(feature = "faer"))]
#[test]
fn compiled_out_backend_names_its_feature() {
    let e = BackendKind::parse("faer").unwrap_err().to_string();
    assert!(e.contains("cargo feature 'faer'"), "{e}");
    assert!(BackendKind::Faer.get().is_err());
}

/// A row's result must not depend on how many rows share the call (batched generation must
/// equal one-by-one generation): bitwise, on the `cpu` backend, at every SIMD level.
#[test]
fn cpu_matmul_rows_are_independent_of_batch() {
    let be = BackendKind::Cpu.get().unwrap();
    at_every_level(be, |be| {
        let mut r = Rng::new(23);
        let (k, n) = (700, 301);
        let (w, bias) = (r.vec(k * n, 1.0), r.vec(n, 1.0));
        let panels = Panels::from_kn(&w, k, n).unwrap();
        for m in [1usize, 3, 7, 8, 20] {
            let a = r.vec(m * k, 1.0);
            let mut all = vec![0.0; m * n];
            be.matmul(&a, &w, Some(&bias), &mut all, m, k, n);
            let mut all_nt = vec![0.0; m * n];
            be.matmul_nt(&a, &w[..n * k], Some(&bias), &mut all_nt, m, k, n);
            let mut all_panels = vec![0.0; m * n];
            be.matmul_panels(&a, &panels, Some(&bias), &mut all_panels, m);
            for i in 0..m {
                let mut one = vec![0.0; n];
                be.matmul(&a[i * k..(i + 1) * k], &w, Some(&bias), &mut one, 1, k, n);
                assert_eq!(&all[i * n..(i + 1) * n], &one[..], "matmul row {i} of {m}");
                if m < 16 {
                    be.matmul_nt(
                        &a[i * k..(i + 1) * k],
                        &w[..n * k],
                        Some(&bias),
                        &mut one,
                        1,
                        k,
                        n,
                    );
                    assert_eq!(
                        &all_nt[i * n..(i + 1) * n],
                        &one[..],
                        "matmul_nt row {i} of {m}"
                    );
                    be.matmul_panels(&a[i * k..(i + 1) * k], &panels, Some(&bias), &mut one, 1);
                    assert_eq!(
                        &all_panels[i * n..(i + 1) * n],
                        &one[..],
                        "matmul_panels row {i} of {m}"
                    );
                }
            }
        }
    });
}

/// One-row products (decode-shaped) give bitwise the same result whatever the thread count:
/// narrow `[k, n]` weights split over blocks of depth, wide ones over columns.
#[test]
fn cpu_one_row_products_are_independent_of_thread_count() {
    // Other tests change the process-wide SIMD level (`at_every_level`); hold it still.
    let _guard = LEVEL_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let be = BackendKind::Cpu.get().unwrap();
    let mut r = Rng::new(31);
    for &(k, n) in &[(3072, 768), (2100, 300), (768, 3072), (1100, 97)] {
        let (a, w) = (r.vec(k, 1.0), r.vec(k * n, 1.0));
        let bias = r.vec(n, 1.0);
        let mut results = Vec::new();
        for t in [1, 2, 3] {
            gpt_rs::threads::set_num_threads(t).unwrap();
            let mut c = vec![0.0; n];
            be.matmul(&a, &w, Some(&bias), &mut c, 1, k, n);
            results.push(c);
        }
        gpt_rs::threads::set_num_threads(gpt_rs::threads::default_num_threads()).unwrap();
        assert_eq!(results[0], results[1], "1x{k}x{n}: 1 vs 2 threads");
        assert_eq!(results[0], results[2], "1x{k}x{n}: 1 vs 3 threads");
    }
}
