//! Activations: softmax over the last dimension, exact GELU, tanh GELU.

use super::{last_dim, new_f32_overwritten};
use crate::backend::Backend;
use crate::error::Result;
use crate::tensor::Tensor;

/// Softmax over the last dimension.
pub fn softmax_last_dim(be: &dyn Backend, x: &Tensor) -> Result<Tensor> {
    super::in_f32([x], |[x]| {
        let xs = x.f32s("softmax_last_dim: input")?;
        let cols = last_dim(x);
        new_f32_overwritten(be, "softmax", x.shape().to_vec(), |out| {
            be.softmax_rows(xs, out, cols)
        })
    })
}

/// Exact GELU: `0.5 x (1 + erf(x / sqrt 2))`.
pub fn gelu(be: &dyn Backend, x: &Tensor) -> Result<Tensor> {
    super::in_f32([x], |[x]| {
        let xs = x.f32s("gelu: input")?;
        new_f32_overwritten(be, "gelu", x.shape().to_vec(), |out| be.gelu(xs, out))
    })
}

/// The tanh approximation of GELU used by GPT-2 (`gelu_new`).
pub fn gelu_tanh(be: &dyn Backend, x: &Tensor) -> Result<Tensor> {
    super::in_f32([x], |[x]| {
        let xs = x.f32s("gelu_tanh: input")?;
        new_f32_overwritten(be, "gelu_tanh", x.shape().to_vec(), |out| {
            be.gelu_tanh(xs, out)
        })
    })
}
