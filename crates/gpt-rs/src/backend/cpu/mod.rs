//! `cpu`: the fast backend. SIMD kernels chosen at run time (see `simd`), spread over the
//! engine's thread pool. Small inputs run on the calling thread to avoid fork/join overhead.

mod bf16dot;
mod gemm;
mod gemv;
pub mod math;
mod qdot256;
mod qdot512;
mod qtile512;

/// Whether the 16-row tile kernels (AVX-512 VNNI) can run here.
pub fn tiles_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        qtile512::available()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}
pub mod qmatmul;
pub mod simd;
mod vector;

use super::{Backend, BackendKind, Panels, SendPtr};

/// Whether bf16 weights times many rows run on AVX512-BF16 (`vdpbf16ps`, activations rounded
/// to bf16) at the current SIMD level; otherwise they are widened to f32.
pub fn bf16_dot_active() -> bool {
    bf16dot::active()
}
use crate::threads;

pub struct Cpu;

/// Below this many elements a row-wise op runs on one thread.
const PAR_MIN_ELEMS: usize = 1 << 15;

/// Single-thread work (picoseconds) below which a row-wise op called from outside the pool runs
/// on the caller's thread alone. Above it the caller splits the rows with helpers from the pool
/// (`threads::for_each_index`), which costs the caller a few microseconds of wake-up calls.
/// Handing the whole call to the pool instead costs more than small ops take on the caller
/// (docs/performance.md, "Thread hand-off").
const HANDOFF_MIN_PS: usize = 20_000_000;

/// Applies `f` to groups of whole rows of `x`/`out`, in parallel when the input is large.
/// `ps_per_elem` is about what `f` costs per element on one core (picoseconds, AVX-512).
pub(crate) fn par_rows(
    x: &[f32],
    out: &mut [f32],
    cols: usize,
    ps_per_elem: usize,
    f: impl Fn(&[f32], &mut [f32]) + Sync + Send,
) {
    if cols == 0 || x.is_empty() {
        return;
    }
    let on_pool = rayon::current_thread_index().is_some();
    if x.len() < PAR_MIN_ELEMS
        || single_thread()
        || (!on_pool && x.len().saturating_mul(ps_per_elem) < HANDOFF_MIN_PS)
    {
        return f(x, out);
    }
    let rows = x.len() / cols;
    let per = rows.div_ceil(threads::num_threads() * 4).max(1) * cols;
    for_each_chunk_mut(&mut out[..x.len()], per, |t, o| {
        f(&x[t * per..t * per + o.len()], o)
    });
}

/// Calls `f(t, chunk)` for each `chunk`-long piece `t` of `out` (the last may be shorter) over
/// the engine's threads, the caller included (`threads::for_each_index`; sequential with one
/// thread).
fn for_each_chunk_mut(out: &mut [f32], chunk: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    let (len, o) = (out.len(), SendPtr(out.as_mut_ptr()));
    threads::for_each_index(len.div_ceil(chunk), &|t| {
        let (s, e) = (t * chunk, ((t + 1) * chunk).min(len));
        // SAFETY: piece t is out[s..e]; pieces are disjoint and `out` outlives the call.
        f(t, unsafe {
            std::slice::from_raw_parts_mut(o.get().add(s), e - s)
        })
    });
}

/// Depth of a packed block of the blocked GEMM. The GEMV path accumulates in blocks of the same
/// depth, so a row's result does not depend on which path computed it.
const KC: usize = 256;

/// Multiply-adds below which a blocked GEMM runs on the calling thread alone (helpers cost a
/// few microseconds, more than a small product itself).
const GEMM_SPLIT_MIN_WORK: usize = 1 << 15;

/// Threads a blocked GEMM of `work` multiply-adds splits over (`threads::for_each_index`).
fn gemm_threads(work: usize) -> usize {
    if work < GEMM_SPLIT_MIN_WORK {
        1
    } else {
        threads::num_threads()
    }
}

/// Whether the engine runs one thread. The `cpu` backend then works on the caller's thread
/// alone: splitting buys nothing there.
fn single_thread() -> bool {
    threads::num_threads() == 1
}

impl Backend for Cpu {
    fn kind(&self) -> BackendKind {
        BackendKind::Cpu
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
        gemm::matmul(a, b, bias, c, m, k, n)
    }

    fn matmul_tn_acc(&self, a: &[f32], b: &[f32], c: &mut [f32], m: usize, k: usize, n: usize) {
        gemm::matmul_tn_acc(a, b, c, m, k, n)
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
        gemm::matmul_nt(a, b, bias, c, m, k, n)
    }

    fn matmul_panels(&self, a: &[f32], w: &Panels, bias: Option<&[f32]>, c: &mut [f32], m: usize) {
        if w.quant_rows().is_some() {
            return qmatmul::matmul(a, w, bias, c, m);
        }
        gemm::matmul_panels(a, w, bias, c, m)
    }

    fn softmax_rows(&self, x: &[f32], out: &mut [f32], cols: usize) {
        par_rows(x, out, cols, 600, |x, o| {
            math::softmax_rows_kernel(x, o, cols)
        })
    }

    fn gelu(&self, x: &[f32], out: &mut [f32]) {
        par_rows(x, out, 1, 900, math::gelu_kernel)
    }

    fn gelu_tanh(&self, x: &[f32], out: &mut [f32]) {
        par_rows(x, out, 1, 500, math::gelu_tanh_kernel)
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
        par_rows(x, out, cols, 400, |x, o| {
            math::layer_norm_kernel(x, weight, bias, o, cols, eps)
        })
    }

    fn add_bias(&self, x: &[f32], bias: &[f32], out: &mut [f32]) {
        let cols = bias.len();
        par_rows(x, out, cols, 200, |x, o| math::add_bias_kernel(x, bias, o))
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
        let scale = 1.0 / (d as f32).sqrt();
        let out = &mut out[..g * tq * d];
        if tq >= 16 {
            // Prefill: per group, in blocks of query rows, scores = Q K^T and out = softmax(scores)
            // V as two GEMMs over the keys the block can see (causal: the upper triangle past
            // the block is never computed). Scores and probabilities live in reused scratch.
            const QB: usize = 64;
            let body = |(h, oh): (usize, &mut [f32])| {
                let (qh, kh, vh) = (
                    &q[h * tq * d..(h + 1) * tq * d],
                    &k[h * kv_stride..h * kv_stride + tk * d],
                    &v[h * kv_stride..h * kv_stride + tk * d],
                );
                let qb = QB.min(tq);
                math::with_scratch(2 * qb * tk, |buf| {
                    let (scores, probs) = buf.split_at_mut(qb * tk);
                    for i0 in (0..tq).step_by(qb) {
                        let rows = qb.min(tq - i0);
                        let (offset, vis) =
                            (tk - tq + i0, if causal { tk - tq + i0 + rows } else { tk });
                        let (s, p) = (&mut scores[..rows * vis], &mut probs[..rows * vis]);
                        gemm::matmul_nt(
                            &qh[i0 * d..(i0 + rows) * d],
                            &kh[..vis * d],
                            None,
                            s,
                            rows,
                            d,
                            vis,
                        );
                        math::masked_softmax_rows(s, p, vis, offset, causal, scale);
                        gemm::matmul(
                            p,
                            &vh[..vis * d],
                            None,
                            &mut oh[i0 * d..(i0 + rows) * d],
                            rows,
                            vis,
                            d,
                        );
                    }
                })
            };
            return for_each_chunk_mut(out, tq * d, |h, oh| body((h, oh)));
        }
        // Decode and short queries: one task per (batch, head) group, row by row.
        let body = |(h, oh): (usize, &mut [f32])| {
            let (kh, vh) = (
                &k[h * kv_stride..h * kv_stride + tk * d],
                &v[h * kv_stride..h * kv_stride + tk * d],
            );
            math::with_scratch(tk, |scores| {
                for (i, orow) in oh.chunks_exact_mut(d).enumerate() {
                    let visible = if causal {
                        (i + tk - tq + 1).min(tk)
                    } else {
                        tk
                    };
                    let qrow = &q[(h * tq + i) * d..(h * tq + i + 1) * d];
                    math::attend_row(qrow, kh, vh, orow, &mut scores[..visible], d, scale);
                }
            })
        };
        if g == 1 || g * tq * tk * d < PAR_MIN_ELEMS {
            out.chunks_exact_mut(tq * d).enumerate().for_each(body);
        } else {
            for_each_chunk_mut(out, tq * d, |h, oh| body((h, oh)));
        }
    }
}
