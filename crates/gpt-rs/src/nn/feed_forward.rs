//! Position-wise feed-forward: `act(x @ w_in + b_in) @ w_out + b_out`.

use super::Linear;
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::ops;
use crate::tensor::Tensor;

/// The activation between the two projections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// Exact erf GELU (the default, as in the seed API).
    Gelu,
    /// GPT-2's tanh approximation (`gelu_new`).
    GeluTanh,
}

impl Activation {
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "gelu" => Ok(Self::Gelu),
            "gelu_tanh" | "gelu_new" => Ok(Self::GeluTanh),
            _ => Err(Error::Value(format!(
                "unknown activation '{name}'; expected 'gelu' or 'gelu_tanh'"
            ))),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Self::Gelu => "gelu",
            Self::GeluTanh => "gelu_tanh",
        }
    }
}

#[derive(Clone, Debug)]
pub struct FeedForward {
    /// `[C, H]` (GPT-2's `mlp.c_fc`).
    pub c_fc: Linear,
    /// `[H, C]` (GPT-2's `mlp.c_proj`).
    pub c_proj: Linear,
    pub activation: Activation,
}

impl FeedForward {
    pub fn new(
        w_in: Tensor,
        w_out: Tensor,
        b_in: Option<Tensor>,
        b_out: Option<Tensor>,
        activation: Activation,
    ) -> Result<Self> {
        let c_fc = Linear::new(w_in, b_in).map_err(|e| in_layer(e, "FeedForward (w_in/b_in)"))?;
        let c_proj =
            Linear::new(w_out, b_out).map_err(|e| in_layer(e, "FeedForward (w_out/b_out)"))?;
        if c_fc.out_features() != c_proj.in_features() {
            return Err(Error::Shape(format!(
                "FeedForward: w_in is {:?} so w_out must be [{}, C], got {:?}",
                c_fc.weight.shape(),
                c_fc.out_features(),
                c_proj.weight.shape()
            )));
        }
        Ok(Self {
            c_fc,
            c_proj,
            activation,
        })
    }

    pub fn forward(&self, be: &dyn Backend, x: &Tensor) -> Result<Tensor> {
        let h = self.c_fc.forward(be, x)?; // (.., H)
        let h = match self.activation {
            Activation::Gelu => ops::gelu(be, &h)?,
            Activation::GeluTanh => ops::gelu_tanh(be, &h)?,
        };
        self.c_proj.forward(be, &h) // (.., C)
    }
}

/// Prefixes a layer error with the enclosing layer's name.
pub(crate) fn in_layer(e: Error, layer: &str) -> Error {
    match e {
        Error::Shape(m) => Error::Shape(format!("{layer}: {m}")),
        Error::DType(m) => Error::DType(format!("{layer}: {m}")),
        Error::Value(m) => Error::Value(format!("{layer}: {m}")),
        other => other,
    }
}
