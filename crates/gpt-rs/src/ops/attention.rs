//! Scaled dot-product attention over multi-head tensors.

use super::new_f32;
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// `softmax(q k^T / sqrt(D) + mask) v` per (batch, head).
///
/// `q` is `[B, H, Tq, D]` (or `[H, Tq, D]`), `k` and `v` are `[B, H, Tk, D]` (or `[H, Tk, D]`).
/// With `causal`, query `i` attends to keys `j <= i + Tk - Tq` (so `Tq <= Tk` is required;
/// with a KV cache the new queries see all cached keys). Returns the shape of `q`.
pub fn scaled_dot_product_attention(
    be: &dyn Backend,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    causal: bool,
) -> Result<Tensor> {
    super::in_f32([q, k, v], |[q, k, v]| {
        let qs = q.f32s("scaled_dot_product_attention: q")?;
        let ks = k.f32s("scaled_dot_product_attention: k")?;
        let vs = v.f32s("scaled_dot_product_attention: v")?;
        let (sq, sk, sv) = (q.shape(), k.shape(), v.shape());
        if !matches!(sq.len(), 3 | 4) || sk.len() != sq.len() || sv.len() != sq.len() {
            return Err(Error::Shape(format!(
            "scaled_dot_product_attention expects q, k, v of rank 4 [B, H, T, D] or rank 3 [H, T, D], got shapes {sq:?}, {sk:?}, {sv:?}"
        )));
        }
        let r = sq.len();
        let lead_ok = sq[..r - 2] == sk[..r - 2] && sk == sv;
        if !lead_ok || sq[r - 1] != sk[r - 1] {
            return Err(Error::Shape(format!(
            "scaled_dot_product_attention: k and v must have q's batch, head and D dimensions and equal shapes; got q {sq:?}, k {sk:?}, v {sv:?}"
        )));
        }
        let (tq, tk, d) = (sq[r - 2], sk[r - 2], sq[r - 1]);
        if causal && tq > tk {
            return Err(Error::Shape(format!(
            "scaled_dot_product_attention: causal attention needs at least as many keys as queries, got Tq={tq} > Tk={tk}"
        )));
        }
        if tk == 0 && tq > 0 {
            return Err(Error::Shape(
                "scaled_dot_product_attention: k and v have no positions (Tk = 0)".into(),
            ));
        }
        let g: usize = sq[..r - 2].iter().product();
        new_f32(be, "scaled_dot_product_attention", sq.to_vec(), |out| {
            be.attention(qs, ks, vs, out, g, tq, tk, d, tk * d, causal)
        })
    })
}
