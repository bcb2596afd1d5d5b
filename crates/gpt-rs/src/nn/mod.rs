//! Neural-network layers built only from `ops`. Constructors validate weights up front;
//! `forward` runs on the backend it is given.

mod attention;
mod block;
mod feed_forward;

pub use attention::CausalSelfAttention;
pub use block::TransformerBlock;
pub use feed_forward::{Activation, FeedForward};

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::ops;
use crate::tensor::{DType, Tensor};

/// Checks that `t` is a float tensor (f32, or f16/bf16, which the ops compute on in f32) of
/// rank `rank`, naming the layer and argument.
pub(crate) fn expect_float(t: &Tensor, rank: usize, what: &str) -> Result<()> {
    if t.dtype() == DType::I32 {
        return Err(Error::DType(format!(
            "{what} must be a float tensor (f32, f16 or bf16), got i32"
        )));
    }
    if t.ndim() != rank {
        return Err(Error::Shape(format!(
            "{what} must be rank {rank}, got shape {:?}",
            t.shape()
        )));
    }
    Ok(())
}

/// Token embedding: rows of `weight` (`[V, C]`) looked up by i32 indices.
#[derive(Clone, Debug)]
pub struct Embedding {
    pub weight: Tensor,
}

impl Embedding {
    pub fn new(weight: Tensor) -> Result<Self> {
        expect_float(
            &weight,
            2,
            "Embedding: weight [num_embeddings, embedding_dim]",
        )?;
        Ok(Self { weight })
    }
    pub fn forward(&self, be: &dyn Backend, indices: &Tensor) -> Result<Tensor> {
        ops::embedding_lookup(be, &self.weight, indices)
    }
}

/// `y = x @ weight + bias` with `weight` stored `[in, out]`.
#[derive(Clone, Debug)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Result<Self> {
        expect_float(&weight, 2, "Linear: weight [in_features, out_features]")?;
        if let Some(b) = &bias {
            expect_float(b, 1, "Linear: bias [out_features]")?;
            if b.shape()[0] != weight.shape()[1] {
                return Err(Error::Shape(format!(
                    "Linear: bias must have shape [{}] (out_features of weight {:?}), got {:?}",
                    weight.shape()[1],
                    weight.shape(),
                    b.shape()
                )));
            }
        }
        Ok(Self { weight, bias })
    }
    pub fn in_features(&self) -> usize {
        self.weight.shape()[0]
    }
    pub fn out_features(&self) -> usize {
        self.weight.shape()[1]
    }
    pub fn forward(&self, be: &dyn Backend, x: &Tensor) -> Result<Tensor> {
        ops::linear(be, x, &self.weight, self.bias.as_ref())
    }
}

/// Layer normalization over the last dimension.
#[derive(Clone, Debug)]
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub eps: f32,
}

impl LayerNorm {
    pub fn new(weight: Tensor, bias: Tensor, eps: f32) -> Result<Self> {
        expect_float(&weight, 1, "LayerNorm: weight [C]")?;
        expect_float(&bias, 1, "LayerNorm: bias [C]")?;
        if weight.shape() != bias.shape() {
            return Err(Error::Shape(format!(
                "LayerNorm: weight and bias must have the same shape, got {:?} and {:?}",
                weight.shape(),
                bias.shape()
            )));
        }
        if !(eps.is_finite() && eps > 0.0) {
            return Err(Error::Value(format!(
                "LayerNorm: eps must be a positive finite number, got {eps}"
            )));
        }
        Ok(Self { weight, bias, eps })
    }
    pub fn forward(&self, be: &dyn Backend, x: &Tensor) -> Result<Tensor> {
        ops::layer_norm(be, x, &self.weight, &self.bias, self.eps)
    }
}
