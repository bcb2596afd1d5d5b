//! Forward and backward kernels for training, llm.c style: every op has an explicit backward
//! that reads what its forward saved. Matrix products go through the current backend (the
//! same GEMMs as inference); the row kernels here are scalar code the compiler vectorizes in
//! each `multiversion!` instance, spread over the engine's threads.
//!
//! All buffers are row-major; `n` is the number of rows (batch * time). Gradients of
//! parameters are accumulated (`+=`); gradients of activations are written, except the
//! residual stream's (`layer_norm_backward`'s `dx`), which accumulates.

use rayon::prelude::*;

use crate::backend::cpu::math::{axpy_body, exp, max, sum, MulAdd};
use crate::backend::cpu::simd::multiversion;
use crate::backend::{Backend, SendPtr};

/// Rows per parallel task for row-wise kernels: enough work to amortize the task handoff.
fn rows_per_task(n: usize, cols: usize) -> usize {
    let tasks = rayon::current_num_threads() * 4;
    n.div_ceil(tasks).max((1 << 14) / cols.max(1)).max(1)
}

// ---------------------------------------------------------------------------------------------
// Embedding

/// `out[b*t + i] = wte[tokens[b*t + i]] + wpe[i]` for sequences of length `t`.
pub fn embedding_forward(tokens: &[u32], wte: &[f32], wpe: &[f32], out: &mut [f32], t: usize) {
    let c = out.len() / tokens.len().max(1);
    out.par_chunks_mut(c)
        .zip(tokens.par_iter())
        .enumerate()
        .for_each(|(r, (o, &tok))| {
            let (e, p) = (tok as usize * c, (r % t) * c);
            for ((o, &a), &b) in o.iter_mut().zip(&wte[e..e + c]).zip(&wpe[p..p + c]) {
                *o = a + b;
            }
        });
}

/// Scatters `dout` rows into the token and position tables' gradients.
pub fn embedding_backward(
    tokens: &[u32],
    dout: &[f32],
    dwte: &mut [f32],
    dwpe: &mut [f32],
    t: usize,
) {
    let c = dout.len() / tokens.len().max(1);
    // Positions: rows with the same position go to the same dwpe row; split by column blocks
    // so tasks never share an element.
    dwpe[..t * c]
        .par_chunks_mut(c)
        .enumerate()
        .for_each(|(i, dp)| {
            for r in (i..tokens.len()).step_by(t) {
                axpy_body(1.0, &dout[r * c..(r + 1) * c], dp);
            }
        });
    // Tokens repeat arbitrarily: accumulate serially (n * c adds, small next to the GEMMs).
    for (r, &tok) in tokens.iter().enumerate() {
        let e = tok as usize * c;
        axpy_body(1.0, &dout[r * c..(r + 1) * c], &mut dwte[e..e + c]);
    }
}

// ---------------------------------------------------------------------------------------------
// Layer norm

#[inline(always)]
fn layer_norm_forward_body(
    x: &[f32],
    w: &[f32],
    b: &[f32],
    out: &mut [f32],
    stats: &mut [f32],
    c: usize,
    eps: f32,
) {
    for ((xr, or), st) in x
        .chunks_exact(c)
        .zip(out.chunks_exact_mut(c))
        .zip(stats.chunks_exact_mut(2))
    {
        let mean = sum(xr) / c as f32;
        let mut var = 0.0f32;
        for &v in xr {
            var += (v - mean) * (v - mean);
        }
        let rstd = 1.0 / (var / c as f32 + eps).sqrt();
        for (((o, &v), &wj), &bj) in or.iter_mut().zip(xr).zip(w).zip(b) {
            *o = (v - mean) * rstd * wj + bj;
        }
        st[0] = mean;
        st[1] = rstd;
    }
}
multiversion! { fn layer_norm_forward_kernel(x: &[f32], w: &[f32], b: &[f32], out: &mut [f32], stats: &mut [f32], c: usize, eps: f32) = layer_norm_forward_body; }

/// Layer norm over rows of `c`, saving `(mean, 1/std)` per row in `stats` for the backward.
pub fn layer_norm_forward(
    x: &[f32],
    w: &[f32],
    b: &[f32],
    out: &mut [f32],
    stats: &mut [f32],
    c: usize,
    eps: f32,
) {
    let rows = rows_per_task(x.len() / c, c);
    x.par_chunks(rows * c)
        .zip(out.par_chunks_mut(rows * c))
        .zip(stats.par_chunks_mut(rows * 2))
        .for_each(|((x, o), s)| layer_norm_forward_kernel(x, w, b, o, s, c, eps));
}

#[inline(always)]
fn layer_norm_backward_body(
    dout: &[f32],
    x: &[f32],
    w: &[f32],
    stats: &[f32],
    dx: &mut [f32],
    dwb: &mut [f32],
    c: usize,
) {
    let (dw, db) = dwb.split_at_mut(c);
    for (((g, xr), st), dxr) in dout
        .chunks_exact(c)
        .zip(x.chunks_exact(c))
        .zip(stats.chunks_exact(2))
        .zip(dx.chunks_exact_mut(c))
    {
        let (mean, rstd) = (st[0], st[1]);
        let (mut a, mut bsum) = (0.0f32, 0.0f32);
        for ((&gj, &xj), &wj) in g.iter().zip(xr).zip(w) {
            let xhat = (xj - mean) * rstd;
            a += gj * wj;
            bsum += gj * wj * xhat;
        }
        let (a, bsum) = (a / c as f32, bsum / c as f32);
        for j in 0..c {
            let xhat = (xr[j] - mean) * rstd;
            dxr[j] += rstd * (g[j] * w[j] - a - xhat * bsum);
            dw[j] += g[j] * xhat;
            db[j] += g[j];
        }
    }
}
multiversion! { fn layer_norm_backward_kernel(dout: &[f32], x: &[f32], w: &[f32], stats: &[f32], dx: &mut [f32], dwb: &mut [f32], c: usize) = layer_norm_backward_body; }

/// Layer norm backward: `dx += ...`, `dw += sum(dout * xhat)`, `db += sum(dout)`.
#[allow(clippy::too_many_arguments)]
pub fn layer_norm_backward(
    dout: &[f32],
    x: &[f32],
    w: &[f32],
    stats: &[f32],
    dx: &mut [f32],
    dw: &mut [f32],
    db: &mut [f32],
    c: usize,
) {
    let rows = rows_per_task(x.len() / c, c);
    let partial = dout
        .par_chunks(rows * c)
        .zip(x.par_chunks(rows * c))
        .zip(stats.par_chunks(rows * 2))
        .zip(dx.par_chunks_mut(rows * c))
        .fold(
            || vec![0.0f32; 2 * c],
            |mut acc, (((g, x), s), dx)| {
                layer_norm_backward_kernel(g, x, w, s, dx, &mut acc, c);
                acc
            },
        )
        .reduce(|| vec![0.0f32; 2 * c], add_vecs);
    add_into(dw, &partial[..c]);
    add_into(db, &partial[c..]);
}

fn add_vecs(mut a: Vec<f32>, b: Vec<f32>) -> Vec<f32> {
    add_into(&mut a, &b);
    a
}

fn add_into(dst: &mut [f32], src: &[f32]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d += s;
    }
}

/// `dst += src`, in parallel (gradient accumulation of whole tensors).
pub fn add_assign(dst: &mut [f32], src: &[f32]) {
    dst.par_chunks_mut(1 << 14)
        .zip(src.par_chunks(1 << 14))
        .for_each(|(d, s)| add_into(d, s));
}

/// `db[j] += sum_r dout[r, j]` (a bias's gradient).
pub fn bias_backward(dout: &[f32], db: &mut [f32]) {
    let c = db.len();
    let rows = rows_per_task(dout.len() / c, c);
    let partial = dout
        .par_chunks(rows * c)
        .fold(
            || vec![0.0f32; c],
            |mut acc, g| {
                for r in g.chunks_exact(c) {
                    add_into(&mut acc, r);
                }
                acc
            },
        )
        .reduce(|| vec![0.0f32; c], add_vecs);
    add_into(db, &partial);
}

// ---------------------------------------------------------------------------------------------
// Linear layers (HF Conv1D layout: weight `[in, out]`)

/// `out[n, o] = x[n, i] @ w[i, o] + b`.
pub fn linear_forward(
    be: &dyn Backend,
    x: &[f32],
    w: &[f32],
    b: &[f32],
    out: &mut [f32],
    n: usize,
) {
    let (k, m) = (x.len() / n, b.len());
    be.matmul(x, w, Some(b), out, n, k, m);
}

/// Linear backward: `dx = dout @ w^T`, `dw += x^T @ dout`, `db += sum(dout)`.
#[allow(clippy::too_many_arguments)]
pub fn linear_backward(
    be: &dyn Backend,
    dout: &[f32],
    x: &[f32],
    w: &[f32],
    dx: &mut [f32],
    dw: &mut [f32],
    db: &mut [f32],
    n: usize,
) {
    let (k, m) = (x.len() / n, db.len());
    // w is [k, m]: as matmul_nt's `[n, k]` operand it gives dout[n, m] @ w^T.
    be.matmul_nt(dout, w, None, dx, n, m, k);
    be.matmul_tn_acc(x, dout, dw, k, n, m);
    bias_backward(dout, db);
}

// ---------------------------------------------------------------------------------------------
// GELU (tanh form, GPT-2's)

const GELU_C: f32 = 0.797_884_6; // sqrt(2 / pi)

#[inline(always)]
fn gelu_backward_body<M: MulAdd>(x: &[f32], d: &mut [f32]) {
    // gelu(x) = x * s with s = sigmoid(2u), u = C (x + 0.044715 x^3).
    for (g, &v) in d.iter_mut().zip(x) {
        let u = GELU_C * (v + 0.044_715 * v * v * v);
        let s = 1.0 / (1.0 + exp::<M, f32>(-2.0 * u));
        let du = GELU_C * (1.0 + 3.0 * 0.044_715 * v * v);
        *g *= s + v * s * (1.0 - s) * 2.0 * du;
    }
}
multiversion! { fn gelu_backward_kernel(x: &[f32], d: &mut [f32]) = gelu_backward_body::<MulAdd>; }

/// `d *= gelu_tanh'(x)`, in place.
pub fn gelu_backward(x: &[f32], d: &mut [f32]) {
    x.par_chunks(1 << 14)
        .zip(d.par_chunks_mut(1 << 14))
        .for_each(|(x, d)| gelu_backward_kernel(x, d));
}

// ---------------------------------------------------------------------------------------------
// Causal self-attention over packed qkv rows `[q (C) | k (C) | v (C)]`
//
// Per (sequence, head) group, as matrix products on the backend's GEMM: the group's q, k, v
// (and output gradient) are gathered into contiguous `[t, d]` blocks, scores are a full
// `t x t` product (the masked half is wasted, but a GEMM at full speed beats dot-product
// loops), and the causal softmax and its backward run row by row.

/// Sizes of one attention call: `b` sequences of `t` tokens, `h` heads of width `d`.
#[derive(Clone, Copy)]
pub struct AttnDims {
    pub b: usize,
    pub t: usize,
    pub h: usize,
    pub d: usize,
}

impl AttnDims {
    /// Scratch floats per group that `attention_backward` needs (the forward uses a prefix).
    pub fn scratch_per_group(&self) -> usize {
        7 * self.t * self.d + self.t * self.t
    }
}

/// Copies column block `col0..col0+d` of rows `row0..row0+t` (row stride `stride`) into `dst`.
fn gather(src: &[f32], stride: usize, row0: usize, col0: usize, dst: &mut [f32], d: usize) {
    for (i, out) in dst.chunks_exact_mut(d).enumerate() {
        let s = (row0 + i) * stride + col0;
        out.copy_from_slice(&src[s..s + d]);
    }
}

/// Group (bi, hi)'s query, key and value blocks `[t, d]` out of the packed qkv rows.
fn gather_qkv(qkv: &[f32], dims: AttnDims, bi: usize, hi: usize, dst: [&mut [f32]; 3]) {
    let c = dims.h * dims.d;
    for (which, block) in dst.into_iter().enumerate() {
        gather(
            qkv,
            3 * c,
            bi * dims.t,
            which * c + hi * dims.d,
            block,
            dims.d,
        );
    }
}

/// The inverse of `gather`, through a shared pointer (each group owns its column block).
///
/// # Safety
/// `dst` must point to a buffer of at least `(row0 + rows) * stride` floats, and no other
/// task may write these elements concurrently.
unsafe fn scatter(src: &[f32], dst: SendPtr, stride: usize, row0: usize, col0: usize, d: usize) {
    for (i, row) in src.chunks_exact(d).enumerate() {
        // SAFETY: in bounds and exclusively this group's, per the contract above.
        unsafe {
            std::ptr::copy_nonoverlapping(
                row.as_ptr(),
                dst.get().add((row0 + i) * stride + col0),
                d,
            )
        };
    }
}

#[inline(always)]
fn causal_softmax_body<M: MulAdd>(p: &mut [f32], t: usize, scale: f32) {
    for (i, row) in p.chunks_exact_mut(t).enumerate() {
        let (seen, masked) = row.split_at_mut(i + 1);
        for v in seen.iter_mut() {
            *v *= scale;
        }
        let m = max(seen);
        for v in seen.iter_mut() {
            *v = exp::<M, f32>(*v - m);
        }
        let inv = 1.0 / sum(seen);
        for v in seen.iter_mut() {
            *v *= inv;
        }
        masked.fill(0.0);
    }
}
multiversion! { fn causal_softmax(p: &mut [f32], t: usize, scale: f32) = causal_softmax_body::<MulAdd>; }

/// `ds = p * (dp - rowsum(p * dp)) * scale`, in place in `dp` (zero above the diagonal).
#[inline(always)]
fn causal_softmax_backward_body(p: &[f32], dp: &mut [f32], t: usize, scale: f32) {
    for (i, (pr, dr)) in p.chunks_exact(t).zip(dp.chunks_exact_mut(t)).enumerate() {
        let mut s = 0.0f32;
        for (&a, &b) in pr[..=i].iter().zip(&dr[..=i]) {
            s += a * b;
        }
        for (d, &a) in dr[..=i].iter_mut().zip(&pr[..=i]) {
            *d = a * (*d - s) * scale;
        }
        dr[i + 1..].fill(0.0);
    }
}
multiversion! { fn causal_softmax_backward(p: &[f32], dp: &mut [f32], t: usize, scale: f32) = causal_softmax_backward_body; }

/// Causal attention: `out[b, i, head] = softmax(q_i k_j^T / sqrt(d), j <= i) v`; saves the
/// probabilities `probs[b, head, i, j]` for the backward. `scratch` holds
/// `b * h * dims.scratch_per_group()` floats.
pub fn attention_forward(
    be: &dyn Backend,
    qkv: &[f32],
    probs: &mut [f32],
    out: &mut [f32],
    scratch: &mut [f32],
    dims: AttnDims,
) {
    let AttnDims { t, h, d, .. } = dims;
    let c = h * d;
    let scale = 1.0 / (d as f32).sqrt();
    let out_ptr = SendPtr(out.as_mut_ptr());
    probs
        .par_chunks_mut(t * t)
        .zip(scratch.par_chunks_mut(dims.scratch_per_group()))
        .enumerate()
        .for_each(|(g, (p, sc))| {
            let (bi, hi) = (g / h, g % h);
            let (q, rest) = sc.split_at_mut(t * d);
            let (k, rest) = rest.split_at_mut(t * d);
            let (v, rest) = rest.split_at_mut(t * d);
            let o = &mut rest[..t * d];
            gather_qkv(qkv, dims, bi, hi, [q, k, v]);
            be.matmul_nt(q, k, None, p, t, d, t);
            causal_softmax(p, t, scale);
            be.matmul(p, v, None, o, t, t, d);
            // SAFETY: group (bi, hi) owns columns hi*d..hi*d+d of rows bi*t..bi*t+t of out.
            unsafe { scatter(o, out_ptr, c, bi * t, hi * d, d) };
        });
}

/// Attention backward: writes `dqkv` `[b*t, 3c]` from `dout` `[b*t, c]`.
pub fn attention_backward(
    be: &dyn Backend,
    dout: &[f32],
    qkv: &[f32],
    probs: &[f32],
    dqkv: &mut [f32],
    scratch: &mut [f32],
    dims: AttnDims,
) {
    let AttnDims { t, h, d, .. } = dims;
    let c = h * d;
    let scale = 1.0 / (d as f32).sqrt();
    let ptr = SendPtr(dqkv.as_mut_ptr());
    probs
        .par_chunks(t * t)
        .zip(scratch.par_chunks_mut(dims.scratch_per_group()))
        .enumerate()
        .for_each(|(g, (p, sc))| {
            let (bi, hi) = (g / h, g % h);
            let (blocks, dp) = sc.split_at_mut(7 * t * d);
            let mut blocks = blocks.chunks_exact_mut(t * d);
            let mut next = || blocks.next().expect("scratch holds 7 blocks");
            let (q, k, v, go, dq, dk, dv) =
                (next(), next(), next(), next(), next(), next(), next());
            gather_qkv(qkv, dims, bi, hi, [q, k, v]);
            gather(dout, c, bi * t, hi * d, go, d);
            be.matmul_nt(go, v, None, dp, t, d, t); // dp = dout v^T
            dv.fill(0.0);
            be.matmul_tn_acc(p, go, dv, t, t, d); // dv = p^T dout
            causal_softmax_backward(p, dp, t, scale); // dp -> d scores (scaled)
            be.matmul(dp, k, None, dq, t, t, d); // dq = ds k
            dk.fill(0.0);
            be.matmul_tn_acc(dp, q, dk, t, t, d); // dk = ds^T q
                                                  // SAFETY: group (bi, hi) owns its q, k and v columns in rows bi*t..bi*t+t.
            unsafe {
                scatter(dq, ptr, 3 * c, bi * t, hi * d, d);
                scatter(dk, ptr, 3 * c, bi * t, c + hi * d, d);
                scatter(dv, ptr, 3 * c, bi * t, 2 * c + hi * d, d);
            }
        });
}

// ---------------------------------------------------------------------------------------------
// Softmax cross-entropy over the vocabulary, fused with its backward

#[inline(always)]
fn cross_entropy_body<M: MulAdd>(
    logits: &mut [f32],
    targets: &[u32],
    v: usize,
    grad_scale: Option<f32>,
) -> f64 {
    let mut loss = 0.0f64;
    for (row, &y) in logits.chunks_exact_mut(v).zip(targets) {
        let m = max(row);
        let target = row[y as usize];
        // Exponentials in place (a vectorized loop), then a lane-wise sum; they are reused for
        // the gradient `softmax * scale - onehot * scale`.
        for l in row.iter_mut() {
            *l = exp::<M, f32>(*l - m);
        }
        let s = sum(row);
        loss += (m + s.ln() - target) as f64;
        if let Some(scale) = grad_scale {
            let f = scale / s;
            for l in row.iter_mut() {
                *l *= f;
            }
            row[y as usize] -= scale;
        }
    }
    loss
}
multiversion! { fn cross_entropy_kernel(logits: &mut [f32], targets: &[u32], v: usize, grad_scale: Option<f32>) -> f64 = cross_entropy_body::<MulAdd>; }

/// Sum over rows of `-log softmax(logits)[target]`. `logits` is overwritten: with
/// `grad_scale`, by its gradient `(softmax - onehot) * grad_scale`.
pub fn cross_entropy(
    logits: &mut [f32],
    targets: &[u32],
    v: usize,
    grad_scale: Option<f32>,
) -> f64 {
    let rows = rows_per_task(targets.len(), v);
    logits
        .par_chunks_mut(rows * v)
        .zip(targets.par_chunks(rows))
        .map(|(l, y)| cross_entropy_kernel(l, y, v, grad_scale))
        .sum()
}

/// Each backward against central finite differences of an independent float64 forward.
#[cfg(test)]
mod tests {
    use super::*;

    struct Lcg(u64);
    impl Lcg {
        fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
            (0..n)
                .map(|_| {
                    self.0 = self
                        .0
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((self.0 >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
                })
                .collect()
        }
    }

    /// Central differences of `f` at `x` (in f64, step 1e-5).
    fn numeric_grad(f: &dyn Fn(&[f64]) -> f64, x: &[f32]) -> Vec<f64> {
        let mut p: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        (0..p.len())
            .map(|i| {
                let old = p[i];
                p[i] = old + 1e-5;
                let up = f(&p);
                p[i] = old - 1e-5;
                let down = f(&p);
                p[i] = old;
                (up - down) / 2e-5
            })
            .collect()
    }

    fn assert_grad(got: &[f32], want: &[f64], what: &str) {
        let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        assert!(scale > 1e-3, "{what}: degenerate test");
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g as f64 - w).abs() <= 1e-3 * scale,
                "{what}[{i}]: {g} vs finite differences {w}"
            );
        }
    }

    fn dot64(a: &[f64], b: &[f32]) -> f64 {
        a.iter().zip(b).map(|(x, &y)| x * y as f64).sum()
    }

    fn layer_norm64(x: &[f64], w: &[f64], b: &[f64], c: usize) -> Vec<f64> {
        x.chunks(c)
            .flat_map(|r| {
                let mean = r.iter().sum::<f64>() / c as f64;
                let var = r.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / c as f64;
                let rstd = 1.0 / (var + 1e-5).sqrt();
                r.iter()
                    .enumerate()
                    .map(move |(j, v)| (v - mean) * rstd * w[j] + b[j])
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn layer_norm_backward_matches_finite_differences() {
        let (n, c) = (5, 7);
        let mut r = Lcg(1);
        let (x, w, b, up) = (
            r.vec(n * c, 2.0),
            r.vec(c, 1.5),
            r.vec(c, 1.0),
            r.vec(n * c, 1.0),
        );
        let (mut out, mut stats) = (vec![0.0; n * c], vec![0.0; n * 2]);
        layer_norm_forward(&x, &w, &b, &mut out, &mut stats, c, 1e-5);
        let (mut dx, mut dw, mut db) = (vec![0.0; n * c], vec![0.0; c], vec![0.0; c]);
        layer_norm_backward(&up, &x, &w, &stats, &mut dx, &mut dw, &mut db, c);
        let f64s = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
        let (x64, w64, b64) = (f64s(&x), f64s(&w), f64s(&b));
        assert_grad(
            &dx,
            &numeric_grad(&|p| dot64(&layer_norm64(p, &w64, &b64, c), &up), &x),
            "dx",
        );
        assert_grad(
            &dw,
            &numeric_grad(&|p| dot64(&layer_norm64(&x64, p, &b64, c), &up), &w),
            "dw",
        );
        assert_grad(
            &db,
            &numeric_grad(&|p| dot64(&layer_norm64(&x64, &w64, p, c), &up), &b),
            "db",
        );
    }

    #[test]
    fn gelu_backward_matches_finite_differences() {
        let mut r = Lcg(2);
        let (x, up) = (r.vec(300, 6.0), r.vec(300, 1.0));
        let mut d = up.clone();
        gelu_backward(&x, &mut d);
        let gelu64 = |v: f64| {
            0.5 * v
                * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (v + 0.044715 * v.powi(3))).tanh())
        };
        let want = numeric_grad(
            &|p| p.iter().zip(&up).map(|(&v, &u)| gelu64(v) * u as f64).sum(),
            &x,
        );
        assert_grad(&d, &want, "gelu");
    }

    fn attention64(qkv: &[f64], dims: AttnDims) -> Vec<f64> {
        let AttnDims { b, t, h, d } = dims;
        let c = h * d;
        let mut out = vec![0.0; b * t * c];
        for bi in 0..b {
            for hi in 0..h {
                let at = |i: usize, which: usize, j: usize| {
                    qkv[(bi * t + i) * 3 * c + which * c + hi * d + j]
                };
                for i in 0..t {
                    let s: Vec<f64> = (0..=i)
                        .map(|j| {
                            (0..d).map(|x| at(i, 0, x) * at(j, 1, x)).sum::<f64>()
                                / (d as f64).sqrt()
                        })
                        .collect();
                    let m = s.iter().cloned().fold(f64::MIN, f64::max);
                    let z: f64 = s.iter().map(|v| (v - m).exp()).sum();
                    for (j, sj) in s.iter().enumerate() {
                        for x in 0..d {
                            out[(bi * t + i) * c + hi * d + x] += (sj - m).exp() / z * at(j, 2, x);
                        }
                    }
                }
            }
        }
        out
    }

    #[test]
    fn attention_backward_matches_finite_differences_on_every_backend() {
        let dims = AttnDims {
            b: 2,
            t: 5,
            h: 2,
            d: 3,
        };
        let (n, c) = (dims.b * dims.t, dims.h * dims.d);
        let mut r = Lcg(3);
        let (qkv, up) = (r.vec(n * 3 * c, 1.5), r.vec(n * c, 1.0));
        let want = numeric_grad(&|p| dot64(&attention64(p, dims), &up), &qkv);
        let q64: Vec<f64> = qkv.iter().map(|&v| v as f64).collect();
        for kind in crate::backend::available() {
            let be = kind.get().unwrap();
            let groups = dims.b * dims.h;
            let mut probs = vec![0.0; groups * dims.t * dims.t];
            let mut scratch = vec![0.0; groups * dims.scratch_per_group()];
            let mut out = vec![0.0; n * c];
            attention_forward(be, &qkv, &mut probs, &mut out, &mut scratch, dims);
            for (o, w) in out.iter().zip(attention64(&q64, dims)) {
                assert!((*o as f64 - w).abs() < 1e-5, "{kind} forward: {o} vs {w}");
            }
            let mut dqkv = vec![0.0; n * 3 * c];
            attention_backward(be, &up, &qkv, &probs, &mut dqkv, &mut scratch, dims);
            assert_grad(&dqkv, &want, &format!("{kind} dqkv"));
        }
    }

    #[test]
    fn cross_entropy_gradient_matches_finite_differences() {
        let (n, v) = (4, 9);
        let mut r = Lcg(4);
        let logits = r.vec(n * v, 3.0);
        let targets = [0u32, 8, 3, 3];
        let mut g = logits.clone();
        let loss = cross_entropy(&mut g, &targets, v, Some(1.0));
        let ce64 = |p: &[f64]| -> f64 {
            p.chunks(v)
                .zip(&targets)
                .map(|(row, &y)| {
                    let m = row.iter().cloned().fold(f64::MIN, f64::max);
                    m + row.iter().map(|x| (x - m).exp()).sum::<f64>().ln() - row[y as usize]
                })
                .sum()
        };
        let l64: Vec<f64> = logits.iter().map(|&x| x as f64).collect();
        assert!((loss - ce64(&l64)).abs() < 1e-5 * loss);
        assert_grad(&g, &numeric_grad(&ce64, &logits), "dlogits");
    }

    #[test]
    fn embedding_backward_scatters_into_both_tables() {
        let (t, c) = (3, 2);
        let tokens = [1u32, 1, 0, 2, 1, 0];
        let dout: Vec<f32> = (0..tokens.len() * c).map(|i| i as f32).collect();
        let (mut dwte, mut dwpe) = (vec![0.0; 3 * c], vec![0.0; 4 * c]);
        embedding_backward(&tokens, &dout, &mut dwte, &mut dwpe, t);
        // Token 1 is at rows 0, 1, 4; position 0 at rows 0 and 3.
        assert_eq!(&dwte[2..4], &[0.0 + 2.0 + 8.0, 1.0 + 3.0 + 9.0]);
        assert_eq!(&dwpe[0..2], &[0.0 + 6.0, 1.0 + 7.0]);
        assert_eq!(&dwpe[6..8], &[0.0, 0.0]);
    }
}
