//! `c`: kernels written in C (csrc/gpt_rs_kernels.c), compiled by build.rs with the `cc`
//! crate and called over FFI. The C code is single-threaded; this file splits the work
//! (rows, or columns for thin matmuls) across the engine's thread pool.

use std::ffi::c_int;

use rayon::prelude::*;

// The per-element costs passed to `par_rows` (picoseconds) are these scalar C kernels' own,
// from the ops benchmark on one core.
use super::cpu::par_rows;
use super::{Backend, BackendKind, SendPtr};
use crate::threads;

mod ffi {
    use std::ffi::c_int;
    extern "C" {
        pub fn gr_matmul_acc(
            a: *const f32,
            lda: usize,
            b: *const f32,
            ldb: usize,
            c: *mut f32,
            ldc: usize,
            m: usize,
            k: usize,
            n: usize,
        );
        pub fn gr_matmul_nt(
            a: *const f32,
            b: *const f32,
            bias: *const f32,
            c: *mut f32,
            ldc: usize,
            m: usize,
            k: usize,
            n: usize,
        );
        pub fn gr_softmax_rows(x: *const f32, out: *mut f32, rows: usize, cols: usize);
        pub fn gr_gelu(x: *const f32, out: *mut f32, n: usize);
        pub fn gr_gelu_tanh(x: *const f32, out: *mut f32, n: usize);
        pub fn gr_layer_norm(
            x: *const f32,
            w: *const f32,
            b: *const f32,
            out: *mut f32,
            rows: usize,
            cols: usize,
            eps: f32,
        );
        pub fn gr_add_bias(
            x: *const f32,
            bias: *const f32,
            out: *mut f32,
            rows: usize,
            cols: usize,
        );
        pub fn gr_attention_rows(
            q: *const f32,
            k: *const f32,
            v: *const f32,
            out: *mut f32,
            scores: *mut f32,
            i0: usize,
            i1: usize,
            tq: usize,
            tk: usize,
            d: usize,
            causal: c_int,
        );
    }
}

pub struct CBackend;

impl Backend for CBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::C
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
        super::init_output(c, bias, n);
        if m == 0 || n == 0 || k == 0 {
            return;
        }
        // SAFETY (all calls below): the pointers cover m x k, k x n and m x n row-major
        // buffers that `ops` validated; each task's sub-matrix lies inside them.
        threads::install(|| {
            if m >= 16 {
                let rows = m.div_ceil(rayon::current_num_threads() * 4).max(4);
                c.par_chunks_mut(rows * n).enumerate().for_each(|(t, ct)| {
                    let i0 = t * rows;
                    let mt = ct.len() / n;
                    unsafe {
                        ffi::gr_matmul_acc(
                            a[i0 * k..].as_ptr(),
                            k,
                            b.as_ptr(),
                            n,
                            ct.as_mut_ptr(),
                            n,
                            mt,
                            k,
                            n,
                        )
                    }
                });
            } else {
                let cols = n
                    .div_ceil(rayon::current_num_threads() * 2)
                    .next_multiple_of(16);
                let cp = SendPtr(c.as_mut_ptr());
                (0..n.div_ceil(cols)).into_par_iter().for_each(|t| {
                    let j0 = t * cols;
                    let nt = (n - j0).min(cols);
                    unsafe {
                        ffi::gr_matmul_acc(
                            a.as_ptr(),
                            k,
                            b[j0..].as_ptr(),
                            n,
                            cp.get().add(j0),
                            n,
                            m,
                            k,
                            nt,
                        )
                    }
                });
            }
        })
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
        if m == 0 || n == 0 {
            return;
        }
        let bias_ptr = bias.map_or(std::ptr::null(), |b| b.as_ptr());
        // Columns of C (rows of b) split across threads.
        let cols = n.div_ceil(rayon::current_num_threads().max(1) * 4).max(16);
        let cp = SendPtr(c.as_mut_ptr());
        let bias_ptr = SendPtr(bias_ptr as *mut f32);
        threads::install(|| {
            (0..n.div_ceil(cols)).into_par_iter().for_each(|t| {
                let j0 = t * cols;
                let nt = (n - j0).min(cols);
                // SAFETY: a is m x k, b is n x k; task t writes columns j0..j0+nt of the m x n C.
                unsafe {
                    ffi::gr_matmul_nt(
                        a.as_ptr(),
                        b[j0 * k..].as_ptr(),
                        if bias_ptr.get().is_null() {
                            bias_ptr.get()
                        } else {
                            bias_ptr.get().wrapping_add(j0)
                        },
                        cp.get().add(j0),
                        n,
                        m,
                        k,
                        nt,
                    )
                }
            })
        })
    }

    fn softmax_rows(&self, x: &[f32], out: &mut [f32], cols: usize) {
        // SAFETY: x and out hold whole rows of `cols` floats.
        par_rows(x, out, cols, 6000, |x, o| unsafe {
            ffi::gr_softmax_rows(x.as_ptr(), o.as_mut_ptr(), x.len() / cols, cols)
        })
    }

    fn gelu(&self, x: &[f32], out: &mut [f32]) {
        // SAFETY: x and out have the same length.
        par_rows(x, out, 1, 13000, |x, o| unsafe {
            ffi::gr_gelu(x.as_ptr(), o.as_mut_ptr(), x.len())
        })
    }

    fn gelu_tanh(&self, x: &[f32], out: &mut [f32]) {
        // SAFETY: x and out have the same length.
        par_rows(x, out, 1, 10000, |x, o| unsafe {
            ffi::gr_gelu_tanh(x.as_ptr(), o.as_mut_ptr(), x.len())
        })
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
        // SAFETY: whole rows of `cols` floats; weight and bias hold `cols` floats.
        par_rows(x, out, cols, 3500, |x, o| unsafe {
            ffi::gr_layer_norm(
                x.as_ptr(),
                weight.as_ptr(),
                bias.as_ptr(),
                o.as_mut_ptr(),
                x.len() / cols,
                cols,
                eps,
            )
        })
    }

    fn add_bias(&self, x: &[f32], bias: &[f32], out: &mut [f32]) {
        let cols = bias.len();
        // SAFETY: whole rows of `cols` floats.
        par_rows(x, out, cols, 300, |x, o| unsafe {
            ffi::gr_add_bias(
                x.as_ptr(),
                bias.as_ptr(),
                o.as_mut_ptr(),
                x.len() / cols,
                cols,
            )
        })
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
        if d == 0 || tq == 0 {
            return;
        }
        let run = |(h, oh): (usize, &mut [f32])| {
            let mut scores = vec![0.0f32; tk.max(1)];
            // SAFETY: group h's q/out are tq x d and k/v are tk x d, inside the validated buffers.
            unsafe {
                ffi::gr_attention_rows(
                    q[h * tq * d..].as_ptr(),
                    k[h * kv_stride..].as_ptr(),
                    v[h * kv_stride..].as_ptr(),
                    oh.as_mut_ptr(),
                    scores.as_mut_ptr(),
                    0,
                    tq,
                    tq,
                    tk,
                    d,
                    causal as c_int,
                )
            }
        };
        threads::install(|| {
            out[..g * tq * d]
                .par_chunks_mut(tq * d)
                .enumerate()
                .for_each(run)
        });
    }
}
