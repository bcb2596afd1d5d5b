//! A GPT-2 transformer block (pre-norm):
//! `x = x + attn(ln_1(x)); x = x + mlp(ln_2(x))`, with the tanh-GELU MLP.

use super::{CausalSelfAttention, FeedForward, LayerNorm};
use crate::backend::Backend;
use crate::error::Result;
use crate::ops::{self, BinaryOp};
use crate::tensor::Tensor;

#[derive(Clone, Debug)]
pub struct TransformerBlock {
    pub ln_1: LayerNorm,
    pub attn: CausalSelfAttention,
    pub ln_2: LayerNorm,
    pub mlp: FeedForward,
}

impl TransformerBlock {
    pub fn new(
        ln_1: LayerNorm,
        attn: CausalSelfAttention,
        ln_2: LayerNorm,
        mlp: FeedForward,
    ) -> Result<Self> {
        let c = attn.c_attn.in_features();
        for (name, ln) in [("ln_1", &ln_1), ("ln_2", &ln_2)] {
            if ln.weight.shape() != [c] {
                return Err(crate::error::Error::Shape(format!(
                    "TransformerBlock: {name} must be over C={c}, got weight {:?}",
                    ln.weight.shape()
                )));
            }
        }
        if mlp.c_fc.in_features() != c || mlp.c_proj.out_features() != c {
            return Err(crate::error::Error::Shape(format!(
                "TransformerBlock: mlp must map C={c} to C, got c_fc {:?} and c_proj {:?}",
                mlp.c_fc.weight.shape(),
                mlp.c_proj.weight.shape()
            )));
        }
        Ok(Self {
            ln_1,
            attn,
            ln_2,
            mlp,
        })
    }

    /// `x` is `[T, C]` or `[B, T, C]`.
    pub fn forward(&self, be: &dyn Backend, x: &Tensor) -> Result<Tensor> {
        let a = self.attn.forward(be, &self.ln_1.forward(be, x)?)?;
        let x = ops::binary(be, BinaryOp::Add, x, &a)?;
        let m = self.mlp.forward(be, &self.ln_2.forward(be, &x)?)?;
        ops::binary(be, BinaryOp::Add, &x, &m)
    }
}
