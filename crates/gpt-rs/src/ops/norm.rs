//! Layer normalization over the last dimension.

use super::{last_dim, new_f32_overwritten};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// `(x - mean) / sqrt(var + eps) * weight + bias` over the last dimension `C`.
/// `weight` and `bias` must be `[C]`; `eps` must be a positive finite number.
pub fn layer_norm(
    be: &dyn Backend,
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f32,
) -> Result<Tensor> {
    super::in_f32([x, weight, bias], |[x, weight, bias]| {
        let xs = x.f32s("layer_norm: input")?;
        let ws = weight.f32s("layer_norm: weight")?;
        let bs = bias.f32s("layer_norm: bias")?;
        if x.ndim() == 0 {
            return Err(Error::Shape(
                "layer_norm: input must have at least 1 dimension, got a scalar".into(),
            ));
        }
        let c = last_dim(x);
        for (name, t) in [("weight", weight), ("bias", bias)] {
            if t.shape() != [c] {
                return Err(Error::Shape(format!(
                "layer_norm: {name} must have shape [{c}] to match the input's last dimension (input {:?}), got {:?}",
                x.shape(),
                t.shape()
            )));
            }
        }
        if !(eps.is_finite() && eps > 0.0) {
            return Err(Error::Value(format!(
                "layer_norm: eps must be a positive finite number, got {eps}"
            )));
        }
        new_f32_overwritten(be, "layer_norm", x.shape().to_vec(), |out| {
            be.layer_norm(xs, ws, bs, out, c, eps)
        })
    })
}
