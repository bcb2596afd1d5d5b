//! `cpu-portable`: plain, single-threaded, obviously-correct kernels. Every other backend is
//! tested against these. Reductions accumulate in f64; transcendental functions come from libm.

use super::{Backend, BackendKind};

pub struct Portable;

/// `0.5 x erfc(-x / sqrt 2)`: the exact GELU, written with erfc so it stays accurate
/// (relative to the result) for large negative x, where `1 + erf` would cancel.
/// At -inf both GELUs return their limit, -0.0.
pub fn gelu_scalar(x: f32) -> f32 {
    if x == f32::NEG_INFINITY {
        return -0.0;
    }
    let x = x as f64;
    (0.5 * x * libm::erfc(-x / std::f64::consts::SQRT_2)) as f32
}

pub fn gelu_tanh_scalar(x: f32) -> f32 {
    if x == f32::NEG_INFINITY {
        return -0.0;
    }
    let x = x as f64;
    let c = (2.0 / std::f64::consts::PI).sqrt();
    // 0.5 x (1 + tanh u) written as x / (1 + e^(-2u)), which does not cancel for x << 0.
    (x / (1.0 + (-2.0 * c * (x + 0.044715 * x * x * x)).exp())) as f32
}

impl Backend for Portable {
    fn kind(&self) -> BackendKind {
        BackendKind::CpuPortable
    }

    fn matmul(
        &self,
        a: &[f32],
        b: &[f32],
        bias: Option<&[f32]>,
        c: &mut [f32],
        m: usize,
        k: usize,
        n: usize,
    ) {
        for i in 0..m {
            for j in 0..n {
                let mut acc = bias.map_or(0.0, |bias| bias[j] as f64);
                for p in 0..k {
                    acc += a[i * k + p] as f64 * b[p * n + j] as f64;
                }
                c[i * n + j] = acc as f32;
            }
        }
    }

    fn matmul_nt(
        &self,
        a: &[f32],
        b: &[f32],
        bias: Option<&[f32]>,
        c: &mut [f32],
        m: usize,
        k: usize,
        n: usize,
    ) {
        for i in 0..m {
            for j in 0..n {
                let dot: f64 = bias.map_or(0.0, |bias| bias[j] as f64)
                    + (0..k)
                        .map(|p| a[i * k + p] as f64 * b[j * k + p] as f64)
                        .sum::<f64>();
                c[i * n + j] = dot as f32;
            }
        }
    }

    fn softmax_rows(&self, x: &[f32], out: &mut [f32], cols: usize) {
        if cols == 0 {
            return;
        }
        for (row, o) in x.chunks_exact(cols).zip(out.chunks_exact_mut(cols)) {
            let max = row.iter().fold(
                f32::NEG_INFINITY,
                |m, &v| if v > m || v.is_nan() { v } else { m },
            );
            let mut sum = 0.0f64;
            for (oi, &v) in o.iter_mut().zip(row) {
                let e = ((v - max) as f64).exp();
                *oi = e as f32;
                sum += e;
            }
            for oi in o.iter_mut() {
                *oi = (*oi as f64 / sum) as f32;
            }
        }
    }

    fn gelu(&self, x: &[f32], out: &mut [f32]) {
        for (o, &v) in out.iter_mut().zip(x) {
            *o = gelu_scalar(v);
        }
    }

    fn gelu_tanh(&self, x: &[f32], out: &mut [f32]) {
        for (o, &v) in out.iter_mut().zip(x) {
            *o = gelu_tanh_scalar(v);
        }
    }

    fn layer_norm(
        &self,
        x: &[f32],
        weight: &[f32],
        bias: &[f32],
        out: &mut [f32],
        cols: usize,
        eps: f32,
    ) {
        if cols == 0 {
            return;
        }
        for (row, o) in x.chunks_exact(cols).zip(out.chunks_exact_mut(cols)) {
            let mean = row.iter().map(|&v| v as f64).sum::<f64>() / cols as f64;
            let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / cols as f64;
            let inv = 1.0 / (var + eps as f64).sqrt();
            for j in 0..cols {
                o[j] = ((row[j] as f64 - mean) * inv * weight[j] as f64 + bias[j] as f64) as f32;
            }
        }
    }

    fn add_bias(&self, x: &[f32], bias: &[f32], out: &mut [f32]) {
        if bias.is_empty() {
            return;
        }
        for (row, o) in x
            .chunks_exact(bias.len())
            .zip(out.chunks_exact_mut(bias.len()))
        {
            for j in 0..bias.len() {
                o[j] = row[j] + bias[j];
            }
        }
    }

    fn attention(
        &self,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        out: &mut [f32],
        g: usize,
        tq: usize,
        tk: usize,
        d: usize,
        kv_stride: usize,
        causal: bool,
    ) {
        let scale = 1.0 / (d as f64).sqrt();
        let mut scores = vec![0.0f64; tk];
        for h in 0..g {
            let (qh, kh, vh) = (&q[h * tq * d..], &k[h * kv_stride..], &v[h * kv_stride..]);
            for i in 0..tq {
                let visible = if causal {
                    (i + tk - tq + 1).min(tk)
                } else {
                    tk
                };
                let mut max = f64::NEG_INFINITY;
                for (j, s) in scores.iter_mut().enumerate().take(visible) {
                    let dot: f64 = (0..d)
                        .map(|c| qh[i * d + c] as f64 * kh[j * d + c] as f64)
                        .sum();
                    *s = dot * scale;
                    max = max.max(*s);
                }
                let mut sum = 0.0;
                for s in scores.iter_mut().take(visible) {
                    *s = (*s - max).exp();
                    sum += *s;
                }
                for c in 0..d {
                    let acc: f64 = (0..visible).map(|j| scores[j] * vh[j * d + c] as f64).sum();
                    out[(h * tq + i) * d + c] = (acc / sum) as f32;
                }
            }
        }
    }
}
