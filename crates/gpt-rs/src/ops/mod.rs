//! Functional ops: free functions over tensors. Each validates ranks, shapes and dtypes with
//! a message naming the op, then runs the backend's kernel. Results record the backend.

mod activation;
mod attention;
mod elementwise;
mod embedding;
mod matmul;
mod norm;
mod shape;

pub use activation::{gelu, gelu_tanh, softmax_last_dim};
pub use attention::scaled_dot_product_attention;
pub use elementwise::{binary, BinaryOp};
pub use embedding::embedding_lookup;
pub use matmul::{add_bias, linear, matmul};
pub use norm::layer_norm;
pub use shape::{narrow, transpose};

use crate::backend::Backend;
use crate::error::Result;
use crate::tensor::{Data, Tensor};

/// Runs `f(input, output)` over a fresh, zero-filled f32 buffer shaped like `shape`.
pub(crate) fn new_f32(
    be: &dyn Backend,
    shape: Vec<usize>,
    f: impl FnOnce(&mut [f32]),
) -> Result<Tensor> {
    let n = crate::tensor::numel(&shape)?;
    let mut out = vec![0.0f32; n];
    f(&mut out);
    Tensor::from_f32(out, shape, be.kind())
}

/// As `new_f32` for an `f` that writes every element: the buffer may be a recycled one with
/// old contents (`storage::recycle`), which skips the zero fill.
pub(crate) fn new_f32_overwritten(
    be: &dyn Backend,
    shape: Vec<usize>,
    f: impl FnOnce(&mut [f32]),
) -> Result<Tensor> {
    let n = crate::tensor::numel(&shape)?;
    let mut out = crate::storage::recycle::take(n);
    f(&mut out);
    Tensor::new(
        Data::F32(crate::storage::Storage::recycled(out)),
        shape,
        be.kind(),
    )
}

/// The size of the last dimension (1 for rank-0 tensors).
pub(crate) fn last_dim(x: &Tensor) -> usize {
    x.shape().last().copied().unwrap_or(1)
}
