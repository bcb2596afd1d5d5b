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
use crate::tensor::{DType, Data, Tensor};

/// Runs an f32 op over operands that may be f16 or bf16: those are widened to f32 first, the
/// op runs on f32, and an f32 result is rounded back to the operands' 16-bit type. Only the
/// float operands go through here, so an op's dtype check on its other arguments (an f16
/// index tensor, say) still names the dtype the caller passed.
///
/// The result's type, as NumPy and PyTorch promote: the 16-bit type when every operand of
/// rank >= 1 is that type (a rank-0 operand, such as a Python scalar, does not decide);
/// f32 when an f32 operand or both 16-bit types are among them.
pub fn in_f32<const N: usize>(
    operands: [&Tensor; N],
    op: impl FnOnce([&Tensor; N]) -> Result<Tensor>,
) -> Result<Tensor> {
    if !operands.iter().any(|t| t.dtype().is_half()) {
        return op(operands);
    }
    let deciding = |t: &&&Tensor| t.ndim() > 0 && t.dtype() != DType::I32;
    let mut kinds = operands.iter().filter(deciding).map(|t| t.dtype());
    let target = match kinds.next() {
        Some(first) if kinds.all(|d| d == first) => first,
        Some(_) => DType::F32,
        // Only scalars: the 16-bit one decides.
        None => operands
            .iter()
            .map(|t| t.dtype())
            .find(|d| d.is_half())
            .unwrap_or(DType::F32),
    };
    let wide = operands
        .iter()
        .map(|t| {
            if t.dtype().is_half() {
                t.to_dtype(DType::F32)
            } else {
                Ok((*t).clone())
            }
        })
        .collect::<Result<Vec<_>>>()?;
    let out = op(std::array::from_fn(|i| &wide[i]))?;
    if out.dtype() == DType::F32 && target.is_half() {
        out.to_dtype(target)
    } else {
        Ok(out)
    }
}

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
