//! `faer`: matrix multiply through the faer crate; every other kernel is the `cpu` one.

use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

use super::cpu::Cpu;
use super::{Backend, BackendKind, Panels, SendPtr, PANEL};
use crate::threads;

pub struct Faer;

/// `c = a @ rhs (+ bias)` with `rhs(k, n)` the right-hand view (plain or transposed).
fn product<'b>(
    a: &[f32],
    bias: Option<&[f32]>,
    c: &mut [f32],
    m: usize,
    k: usize,
    n: usize,
    rhs: impl FnOnce(usize, usize) -> MatRef<'b, f32>,
) {
    super::init_output(c, bias, n);
    if m == 0 || n == 0 {
        return;
    }
    let accum = if bias.is_some() {
        Accum::Add
    } else {
        Accum::Replace
    };
    let (lhs, rhs) = (MatRef::from_row_major_slice(a, m, k), rhs(k, n));
    let dst = MatMut::from_row_major_slice_mut(c, m, n);
    threads::install(|| matmul(dst, accum, lhs, rhs, 1.0f32, par()))
}

/// faer's parallelism for the engine's current pool size (call inside `threads::install`).
fn par() -> Par {
    match rayon::current_num_threads() {
        1 => Par::Seq,
        t => Par::rayon(t),
    }
}

impl Backend for Faer {
    fn kind(&self) -> BackendKind {
        BackendKind::Faer
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
        product(a, bias, c, m, k, n, |k, n| {
            MatRef::from_row_major_slice(b, k, n)
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
        product(a, bias, c, m, k, n, |k, n| {
            MatRef::from_row_major_slice(b, n, k).transpose()
        })
    }

    /// Panel by panel, each a faer product written straight into its columns of C, panels
    /// spread over the engine's threads (one sequential faer product each).
    fn matmul_panels(&self, a: &[f32], w: &Panels, bias: Option<&[f32]>, c: &mut [f32], m: usize) {
        let (k, n) = (w.k(), w.n());
        super::init_output(c, bias, n);
        if m == 0 || n == 0 {
            return;
        }
        let Some(panels) = w.f32_panels() else {
            // Other formats: widened panel by panel (the shared default).
            return super::panels::matmul_by_panel(self, a, w, bias, c, m);
        };
        let cp = SendPtr(c.as_mut_ptr());
        threads::install(|| {
            (0..w.panels()).into_par_iter().for_each(|j| {
                let (j0, cols) = w.columns(j);
                let lhs = MatRef::from_row_major_slice(a, m, k);
                let panel = &panels[j * k * PANEL..(j + 1) * k * PANEL];
                let rhs = MatRef::from_row_major_slice(panel, k, PANEL).subcols(0, cols);
                // SAFETY: C is m x n row-major; this view covers rows 0..m and columns
                // j0..j0+cols only, which no other panel writes.
                let dst =
                    unsafe { MatMut::from_raw_parts_mut(cp.get().add(j0), m, cols, n as isize, 1) };
                matmul(dst, Accum::Add, lhs, rhs, 1.0f32, Par::Seq)
            })
        })
    }

    fn softmax_rows(&self, x: &[f32], out: &mut [f32], cols: usize) {
        Cpu.softmax_rows(x, out, cols)
    }
    fn gelu(&self, x: &[f32], out: &mut [f32]) {
        Cpu.gelu(x, out)
    }
    fn gelu_tanh(&self, x: &[f32], out: &mut [f32]) {
        Cpu.gelu_tanh(x, out)
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
        Cpu.layer_norm(x, weight, bias, out, cols, eps)
    }
    fn add_bias(&self, x: &[f32], bias: &[f32], out: &mut [f32]) {
        Cpu.add_bias(x, bias, out)
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
        Cpu.attention(q, k, v, out, g, tq, tk, d, kv_stride, causal)
    }
}
