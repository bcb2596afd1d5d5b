//! Forward and backward kernels for training, llm.c style: every op has an explicit backward
//! that reads what its forward saved. Matrix products go through the current backend (the
//! same GEMMs as inference); the row kernels here are scalar code the compiler vectorizes in
//! each `multiversion!` instance, spread over the engine's threads.
//!
//! All buffers are row-major; `n` is the number of rows (batch * time). Gradients of
//! parameters are accumulated (`+=`); gradients of activations are written unless the name
//! says `_add`.

use rayon::prelude::*;

use crate::backend::cpu::math::{axpy_body, dot_body, exp, max, sum};
use crate::backend::cpu::simd::multiversion;
use crate::backend::Backend;

/// Rows per parallel task for row-wise kernels: enough work to amortize the task handoff.
fn rows_per_task(n: usize, cols: usize) -> usize {
    let tasks = rayon::current_num_threads() * 4;
    n.div_ceil(tasks).max((1 << 14) / cols.max(1)).max(1)
}

/// A raw pointer shared by tasks that write disjoint elements of one buffer.
#[derive(Clone, Copy)]
struct SharedMut(*mut f32);
// SAFETY: each task writes a disjoint set of elements (documented at every use).
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}
impl SharedMut {
    fn get(self) -> *mut f32 {
        self.0
    }
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

/// Scratch space reused across linear backwards.
#[derive(Default)]
pub struct LinearScratch {
    xt: Vec<f32>,
    dw: Vec<f32>,
}

fn grow(v: &mut Vec<f32>, n: usize) -> &mut [f32] {
    if v.len() < n {
        v.resize(n, 0.0);
    }
    &mut v[..n]
}

/// `(rows, cols)` row-major to `(cols, rows)`, in cache-sized tiles, on the engine's threads.
pub fn transpose(src: &[f32], rows: usize, cols: usize, dst: &mut [f32]) {
    const T: usize = 64;
    if rows == 0 || cols == 0 {
        return;
    }
    dst.par_chunks_mut(T * rows)
        .enumerate()
        .for_each(|(bj, out)| {
            let j0 = bj * T;
            let jn = out.len() / rows;
            for i0 in (0..rows).step_by(T) {
                for i in i0..(i0 + T).min(rows) {
                    for (jj, &v) in src[i * cols + j0..i * cols + j0 + jn].iter().enumerate() {
                        out[jj * rows + i] = v;
                    }
                }
            }
        });
}

/// `dst[cols, rows] += src[rows, cols]^T`.
pub fn transpose_add(src: &[f32], rows: usize, cols: usize, dst: &mut [f32]) {
    const T: usize = 64;
    if rows == 0 || cols == 0 {
        return;
    }
    dst.par_chunks_mut(T * rows)
        .enumerate()
        .for_each(|(bj, out)| {
            let j0 = bj * T;
            let jn = out.len() / rows;
            for i in 0..rows {
                for (jj, &v) in src[i * cols + j0..i * cols + j0 + jn].iter().enumerate() {
                    out[jj * rows + i] += v;
                }
            }
        });
}

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

/// Linear backward: `dx = dout @ w^T` (if wanted), `dw += x^T @ dout`, `db += sum(dout)`.
#[allow(clippy::too_many_arguments)]
pub fn linear_backward(
    be: &dyn Backend,
    dout: &[f32],
    x: &[f32],
    w: &[f32],
    dx: Option<&mut [f32]>,
    dw: &mut [f32],
    db: &mut [f32],
    n: usize,
    scratch: &mut LinearScratch,
) {
    let (k, m) = (x.len() / n, db.len());
    if let Some(dx) = dx {
        // w is [k, m] = "[n_out=k, k_in=m]" for matmul_nt: dout[n, m] @ w^T.
        be.matmul_nt(dout, w, None, dx, n, m, k);
    }
    let xt = grow(&mut scratch.xt, k * n);
    transpose(x, n, k, xt);
    let tmp = grow(&mut scratch.dw, k * m);
    be.matmul(xt, dout, None, tmp, k, n, m);
    add_assign(dw, tmp);
    bias_backward(dout, db);
}

// ---------------------------------------------------------------------------------------------
// GELU (tanh form, GPT-2's)

const GELU_C: f32 = 0.797_884_6; // sqrt(2 / pi)

#[inline(always)]
fn gelu_backward_body(x: &[f32], d: &mut [f32]) {
    // gelu(x) = x * s with s = sigmoid(2u), u = C (x + 0.044715 x^3).
    for (g, &v) in d.iter_mut().zip(x) {
        let u = GELU_C * (v + 0.044_715 * v * v * v);
        let s = 1.0 / (1.0 + exp(-2.0 * u));
        let du = GELU_C * (1.0 + 3.0 * 0.044_715 * v * v);
        *g *= s + v * s * (1.0 - s) * 2.0 * du;
    }
}
multiversion! { fn gelu_backward_kernel(x: &[f32], d: &mut [f32]) = gelu_backward_body; }

/// `d *= gelu_tanh'(x)`, in place.
pub fn gelu_backward(x: &[f32], d: &mut [f32]) {
    x.par_chunks(1 << 14)
        .zip(d.par_chunks_mut(1 << 14))
        .for_each(|(x, d)| gelu_backward_kernel(x, d));
}

// ---------------------------------------------------------------------------------------------
// Causal self-attention over packed qkv rows `[q (C) | k (C) | v (C)]`

/// Sizes of one attention call: `b` sequences of `t` tokens, `h` heads of width `d`.
#[derive(Clone, Copy)]
pub struct AttnDims {
    pub b: usize,
    pub t: usize,
    pub h: usize,
    pub d: usize,
}

#[inline(always)]
fn attention_forward_body(
    qkv: &[f32],
    probs: &mut [f32],
    out: *mut f32,
    dims: AttnDims,
    bi: usize,
    hi: usize,
) {
    let AttnDims { t, h, d, .. } = dims;
    let c = h * d;
    let scale = 1.0 / (d as f32).sqrt();
    let row = |i: usize| (bi * t + i) * 3 * c;
    for i in 0..t {
        let q = &qkv[row(i) + hi * d..][..d];
        let p = &mut probs[i * t..(i + 1) * t];
        for j in 0..=i {
            p[j] = dot_body(q, &qkv[row(j) + c + hi * d..][..d]) * scale;
        }
        let m = max(&p[..=i]);
        for v in p[..=i].iter_mut() {
            *v = exp(*v - m);
        }
        let inv = 1.0 / sum(&p[..=i]);
        for v in p[..=i].iter_mut() {
            *v *= inv;
        }
        p[i + 1..].fill(0.0);
        // SAFETY: this task owns columns [hi*d, hi*d + d) of rows of sequence bi.
        let o = unsafe { std::slice::from_raw_parts_mut(out.add((bi * t + i) * c + hi * d), d) };
        o.fill(0.0);
        for j in 0..=i {
            axpy_body(p[j], &qkv[row(j) + 2 * c + hi * d..][..d], o);
        }
    }
}
multiversion! { fn attention_forward_kernel(qkv: &[f32], probs: &mut [f32], out: *mut f32, dims: AttnDims, bi: usize, hi: usize) = attention_forward_body; }

/// Causal attention: `out[b, i, head] = softmax(q_i k_j^T / sqrt(d), j <= i) v`; saves the
/// probabilities `probs[b, head, i, j]` for the backward.
pub fn attention_forward(qkv: &[f32], probs: &mut [f32], out: &mut [f32], dims: AttnDims) {
    let t = dims.t;
    let out_ptr = SharedMut(out.as_mut_ptr());
    probs.par_chunks_mut(t * t).enumerate().for_each(|(g, p)| {
        attention_forward_kernel(qkv, p, out_ptr.get(), dims, g / dims.h, g % dims.h)
    });
}

#[inline(always)]
fn attention_backward_body(
    dout: &[f32],
    qkv: &[f32],
    probs: &[f32],
    dqkv: *mut f32,
    scratch: &mut [f32],
    dims: AttnDims,
    bi: usize,
    hi: usize,
) {
    let AttnDims { t, h, d, .. } = dims;
    let c = h * d;
    let scale = 1.0 / (d as f32).sqrt();
    let row = |i: usize| (bi * t + i) * 3 * c;
    // SAFETY: this task owns the q, k and v columns of head hi in the rows of sequence bi;
    // `at` stays inside dqkv (row < b*t, column < 3c).
    let at = |off: usize| unsafe { std::slice::from_raw_parts_mut(dqkv.add(off), d) };
    for i in 0..t {
        let g = &dout[(bi * t + i) * c + hi * d..][..d];
        let p = &probs[i * t..(i + 1) * t];
        let datt = &mut scratch[..=i];
        for j in 0..=i {
            datt[j] = dot_body(g, &qkv[row(j) + 2 * c + hi * d..][..d]);
            axpy_body(p[j], g, at(row(j) + 2 * c + hi * d));
        }
        let mut s = 0.0f32;
        for j in 0..=i {
            s += p[j] * datt[j];
        }
        let q = &qkv[row(i) + hi * d..][..d];
        let dq = at(row(i) + hi * d);
        for j in 0..=i {
            let dpre = p[j] * (datt[j] - s) * scale;
            axpy_body(dpre, &qkv[row(j) + c + hi * d..][..d], dq);
            axpy_body(dpre, q, at(row(j) + c + hi * d));
        }
    }
}
multiversion! { fn attention_backward_kernel(dout: &[f32], qkv: &[f32], probs: &[f32], dqkv: *mut f32, scratch: &mut [f32], dims: AttnDims, bi: usize, hi: usize) = attention_backward_body; }

/// Attention backward: writes `dqkv` (zeroed here) from `dout` `[b*t, c]`.
pub fn attention_backward(
    dout: &[f32],
    qkv: &[f32],
    probs: &[f32],
    dqkv: &mut [f32],
    dims: AttnDims,
) {
    dqkv.par_chunks_mut(1 << 14).for_each(|c| c.fill(0.0));
    let t = dims.t;
    let ptr = SharedMut(dqkv.as_mut_ptr());
    probs.par_chunks(t * t).enumerate().for_each(|(g, p)| {
        crate::backend::cpu::math::with_scratch(t, |scratch| {
            attention_backward_kernel(
                dout,
                qkv,
                p,
                ptr.get(),
                scratch,
                dims,
                g / dims.h,
                g % dims.h,
            )
        })
    });
}

// ---------------------------------------------------------------------------------------------
// Softmax cross-entropy over the vocabulary, fused with its backward

#[inline(always)]
fn cross_entropy_body(
    logits: &mut [f32],
    targets: &[u32],
    v: usize,
    grad_scale: Option<f32>,
) -> f64 {
    let mut loss = 0.0f64;
    for (row, &y) in logits.chunks_exact_mut(v).zip(targets) {
        let m = max(row);
        let mut s = 0.0f32;
        for &l in row.iter() {
            s += exp(l - m);
        }
        let lse = m + s.ln();
        loss += (lse - row[y as usize]) as f64;
        if let Some(scale) = grad_scale {
            for l in row.iter_mut() {
                *l = exp(*l - lse) * scale;
            }
            row[y as usize] -= scale;
        }
    }
    loss
}
multiversion! { fn cross_entropy_kernel(logits: &mut [f32], targets: &[u32], v: usize, grad_scale: Option<f32>) -> f64 = cross_entropy_body; }

/// Sum over rows of `-log softmax(logits)[target]`. With `grad_scale`, each row of `logits`
/// is replaced by its gradient `(softmax - onehot) * grad_scale`.
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
