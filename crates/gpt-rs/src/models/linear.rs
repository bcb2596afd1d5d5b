//! A linear layer as the runtime runs it: weights prepared once at load (`Panels`: f32, bf16
//! or a quantized block format) and an optional f32 bias.
//!
//! A fused projection (q, k and v as one product) is usually one `Panels`. It is several
//! `parts` side by side when its pieces are stored in different formats, as GGUF files
//! quantized with llama.cpp's mixes do (a Q4_K_M file may hold q and k as Q5_0 and v as Q8_0);
//! each part then multiplies in its own format and writes its own output columns.

use std::cell::RefCell;

use crate::backend::{Backend, Panels};
use crate::error::Result;

thread_local! {
    /// The output of one part of a multi-part layer (see `Linear::apply`).
    static PART_OUT: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

pub struct Linear {
    /// The weight `(in, out)`, as consecutive column groups (usually one).
    pub parts: Vec<Panels>,
    pub bias: Option<Vec<f32>>,
}

impl Linear {
    pub fn new(weight: Panels, bias: Option<Vec<f32>>) -> Self {
        Self {
            parts: vec![weight],
            bias,
        }
    }

    pub fn in_features(&self) -> usize {
        self.parts.first().map_or(0, Panels::k)
    }

    pub fn out_features(&self) -> usize {
        self.parts.iter().map(Panels::n).sum()
    }

    pub fn numel(&self) -> usize {
        self.in_features() * self.out_features() + self.bias.as_ref().map_or(0, Vec::len)
    }

    /// Bytes of memory the weight and bias take.
    pub fn bytes(&self) -> usize {
        self.parts.iter().map(Panels::bytes).sum::<usize>()
            + self.bias.as_ref().map_or(0, |b| 4 * b.len())
    }

    /// The weight's storage format (the first part's).
    pub fn format(&self) -> crate::backend::WeightFormat {
        self.parts[0].format()
    }

    /// `out[rows, out] = x[rows, in] @ W (+ b)`. With `batch_invariant`, rows go in calls of
    /// at most 15, where every backend computes a row the same way whatever the row count, so
    /// each row's result does not depend on the batch it is in (batched decoding then equals
    /// one-by-one decoding bit for bit).
    pub fn apply(
        &self,
        be: &dyn Backend,
        x: &[f32],
        out: &mut [f32],
        rows: usize,
        batch_invariant: bool,
    ) -> Result<()> {
        if let [w] = self.parts.as_slice() {
            apply(be, w, self.bias.as_deref(), x, out, rows, batch_invariant);
            return Ok(());
        }
        let n = self.out_features();
        let mut j0 = 0;
        for w in &self.parts {
            let nj = w.n();
            let bias = self.bias.as_deref().map(|b| &b[j0..j0 + nj]);
            if rows == 1 {
                apply(be, w, bias, x, &mut out[j0..j0 + nj], 1, batch_invariant);
            } else {
                // Several rows: the part's columns are strided in `out`; go through a buffer,
                // this thread's, kept between calls: a fresh one per call would be fresh pages
                // the kernel faults in (and the OS zeroes) on every prefill and batched step.
                PART_OUT.with(|cell| -> Result<()> {
                    let mut tmp = cell.borrow_mut();
                    let t = crate::memory::grow(&mut tmp, rows * nj, "a linear layer's output")?;
                    apply(be, w, bias, x, t, rows, batch_invariant);
                    for (o, t) in out.chunks_exact_mut(n).zip(t.chunks_exact(nj)) {
                        o[j0..j0 + nj].copy_from_slice(t);
                    }
                    Ok(())
                })?;
            }
            j0 += nj;
        }
        Ok(())
    }
}

/// `out = x @ w (+ bias)` over `rows` rows; see `Linear::apply` for `batch_invariant`.
pub fn apply(
    be: &dyn Backend,
    w: &Panels,
    bias: Option<&[f32]>,
    x: &[f32],
    out: &mut [f32],
    rows: usize,
    batch_invariant: bool,
) {
    let (k, n) = (w.k(), w.n());
    let chunk = if batch_invariant { 15 } else { rows.max(1) };
    for r0 in (0..rows).step_by(chunk) {
        let r = chunk.min(rows - r0);
        be.matmul_panels(
            &x[r0 * k..(r0 + r) * k],
            w,
            bias,
            &mut out[r0 * n..(r0 + r) * n],
            r,
        );
    }
}
