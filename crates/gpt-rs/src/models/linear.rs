//! A linear layer as the runtime runs it: a weight prepared once at load (`Panels`, f32 or
//! bf16) and an optional f32 bias.

use crate::backend::{Backend, Panels};
use crate::error::Result;

pub struct Linear {
    pub weight: Panels, // (in, out)
    pub bias: Option<Vec<f32>>,
}

impl Linear {
    pub fn in_features(&self) -> usize {
        self.weight.k()
    }

    pub fn out_features(&self) -> usize {
        self.weight.n()
    }

    pub fn numel(&self) -> usize {
        self.weight.k() * self.weight.n() + self.bias.as_ref().map_or(0, Vec::len)
    }

    /// `out[rows, out] = x[rows, in] @ W (+ b)`. With `exact`, rows go in calls of at most 15,
    /// where every backend computes a row the same way whatever the row count (so batched
    /// decoding equals one-by-one decoding).
    pub fn apply(
        &self,
        be: &dyn Backend,
        x: &[f32],
        out: &mut [f32],
        rows: usize,
        exact: bool,
    ) -> Result<()> {
        apply(be, &self.weight, self.bias.as_deref(), x, out, rows, exact);
        Ok(())
    }
}

/// `out = x @ w (+ bias)` over `rows` rows; see `Linear::apply` for `exact`.
pub fn apply(
    be: &dyn Backend,
    w: &Panels,
    bias: Option<&[f32]>,
    x: &[f32],
    out: &mut [f32],
    rows: usize,
    exact: bool,
) {
    let (k, n) = (w.k(), w.n());
    let chunk = if exact { 15 } else { rows.max(1) };
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
