//! GPT-2 causal self-attention built from ops: one fused QKV projection (`c_attn`),
//! per-head scaled dot-product attention, and the output projection (`c_proj`).

use super::feed_forward::in_layer;
use super::Linear;
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::ops;
use crate::tensor::Tensor;

#[derive(Clone, Debug)]
pub struct CausalSelfAttention {
    /// `[C, 3C]`: q, k, v projections side by side.
    pub c_attn: Linear,
    /// `[C, C]`.
    pub c_proj: Linear,
    pub n_head: usize,
}

impl CausalSelfAttention {
    pub fn new(c_attn: Linear, c_proj: Linear, n_head: usize) -> Result<Self> {
        let c = c_attn.in_features();
        if c_attn.out_features() != 3 * c {
            return Err(Error::Shape(format!(
                "CausalSelfAttention: c_attn weight must be [C, 3C], got {:?}",
                c_attn.weight.shape()
            )));
        }
        if c_proj.weight.shape() != [c, c] {
            return Err(Error::Shape(format!(
                "CausalSelfAttention: c_proj weight must be [{c}, {c}], got {:?}",
                c_proj.weight.shape()
            )));
        }
        if n_head == 0 || !c.is_multiple_of(n_head) {
            return Err(Error::Value(format!(
                "CausalSelfAttention: n_head ({n_head}) must be positive and divide the embedding size {c}"
            )));
        }
        Ok(Self {
            c_attn,
            c_proj,
            n_head,
        })
    }

    /// `x` is `[T, C]` or `[B, T, C]`; returns the same shape.
    pub fn forward(&self, be: &dyn Backend, x: &Tensor) -> Result<Tensor> {
        let c = self.c_attn.in_features();
        let (b, t) = match x.shape() {
            [t, cc] if *cc == c => (1, *t),
            [b, t, cc] if *cc == c => (*b, *t),
            s => {
                return Err(Error::Shape(format!(
                    "CausalSelfAttention: input must be [T, {c}] or [B, T, {c}], got {s:?}"
                )))
            }
        };
        let (h, d) = (self.n_head, c / self.n_head);
        let qkv = self
            .c_attn
            .forward(be, x)
            .map_err(|e| in_layer(e, "CausalSelfAttention"))?; // (B, T, 3C)
        let heads = |i: usize| -> Result<Tensor> {
            let part = ops::narrow(&qkv, -1, i * c, c)?; // (B, T, C)
            let part = part.reshape(&[b as i64, t as i64, h as i64, d as i64])?; // (B, T, H, D)
            ops::transpose(&part, 1, 2) // (B, H, T, D)
        };
        let (q, k, v) = (heads(0)?, heads(1)?, heads(2)?);
        let y = ops::scaled_dot_product_attention(be, &q, &k, &v, true)?; // (B, H, T, D)
        let y = ops::transpose(&y, 1, 2)?.reshape(&[b as i64, t as i64, c as i64])?; // (B, T, C)
        let y = self.c_proj.forward(be, &y)?;
        y.reshape(&x.shape().iter().map(|&s| s as i64).collect::<Vec<_>>())
    }
}
