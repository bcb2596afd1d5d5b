use gpt_rs::backend::cpu::math;
use std::time::Instant;
fn main() {
    let n = 30720;
    let x: Vec<f32> = (0..n).map(|i| ((i % 997) as f32 - 498.0) * 0.01).collect();
    let mut o = vec![0.0f32; n];
    let w = vec![1.0f32; 768];
    let b = vec![0.0f32; 768];
    for _ in 0..3 {
        let t = Instant::now();
        for _ in 0..1000 {
            math::gelu_kernel(&x, &mut o);
        }
        println!(
            "gelu {:.3} ns/el",
            t.elapsed().as_secs_f64() / 1000.0 / n as f64 * 1e9
        );
        let t = Instant::now();
        for _ in 0..1000 {
            math::gelu_tanh_kernel(&x, &mut o);
        }
        println!(
            "gelu_tanh {:.3} ns/el",
            t.elapsed().as_secs_f64() / 1000.0 / n as f64 * 1e9
        );
        let t = Instant::now();
        for _ in 0..1000 {
            math::softmax_rows_kernel(&x, &mut o, 128);
        }
        println!(
            "softmax128 {:.3} ns/el",
            t.elapsed().as_secs_f64() / 1000.0 / n as f64 * 1e9
        );
        let t = Instant::now();
        for _ in 0..1000 {
            math::softmax_rows_kernel(&x, &mut o, 768);
        }
        println!(
            "softmax768 {:.3} ns/el",
            t.elapsed().as_secs_f64() / 1000.0 / n as f64 * 1e9
        );
        let t = Instant::now();
        for _ in 0..1000 {
            math::layer_norm_kernel(&x, &w, &b, &mut o, 768, 1e-5);
        }
        println!(
            "ln {:.3} ns/el",
            t.elapsed().as_secs_f64() / 1000.0 / n as f64 * 1e9
        );
    }
}
