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
use crate::memory;
use crate::tensor::{Data, Tensor};

/// Runs `f(output)` over a fresh, zero-filled f32 buffer shaped like `shape`. The buffer is
/// allocated fallibly (`memory`): a refused allocation is `Error::Memory` naming `op`.
pub(crate) fn new_f32(
    be: &dyn Backend,
    op: &str,
    shape: Vec<usize>,
    f: impl FnOnce(&mut [f32]),
) -> Result<Tensor> {
    let n = crate::tensor::numel(&shape)?;
    let mut out = memory::zeroed(n, op).map_err(|_| output_error(op, &shape))?;
    f(&mut out);
    Tensor::from_f32(out, shape, be.kind())
}

/// As `new_f32` for an `f` that writes every element: the buffer may be a recycled one with
/// old contents (`storage::recycle`), which skips the zero fill.
pub(crate) fn new_f32_overwritten(
    be: &dyn Backend,
    op: &str,
    shape: Vec<usize>,
    f: impl FnOnce(&mut [f32]),
) -> Result<Tensor> {
    let n = crate::tensor::numel(&shape)?;
    let mut out = crate::storage::recycle::take(n, op).map_err(|_| output_error(op, &shape))?;
    f(&mut out);
    Tensor::new(
        Data::F32(crate::storage::Storage::recycled(out)),
        shape,
        be.kind(),
    )
}

/// The `MemoryError` for an op's f32 output of `shape` that could not be allocated.
pub(crate) fn output_error(op: &str, shape: &[usize]) -> crate::Error {
    memory::out_of_memory(
        &format!("{op}: the f32 output of shape {shape:?}"),
        memory::bytes_of::<f32>(memory::numel_u128(shape)),
    )
}

/// The size of the last dimension (1 for rank-0 tensors).
pub(crate) fn last_dim(x: &Tensor) -> usize {
    x.shape().last().copied().unwrap_or(1)
}
