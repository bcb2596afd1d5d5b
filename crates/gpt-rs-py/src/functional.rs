//! `gpt_rs.functional`: each op converts its arguments, runs on the current backend with the
//! GIL released (for large inputs), and wraps the result.

use gpt_rs::backend::Backend;
use gpt_rs::{ops, Tensor};
use pyo3::prelude::*;

use crate::convert::{arg, current_backend, PyTensor};
use crate::errors::run;

/// Runs `f` on the current backend and wraps the result.
fn op(
    py: Python<'_>,
    work: usize,
    f: impl FnOnce(&'static dyn Backend) -> gpt_rs::Result<Tensor> + Send,
) -> PyResult<PyTensor> {
    let be = current_backend()?;
    run(py, work, move || f(be)).map(PyTensor::wrap)
}

pub fn matmul_impl(py: Python<'_>, a: &Tensor, b: &Tensor) -> PyResult<PyTensor> {
    let work = a.numel().max(b.numel());
    let (a, b) = (a.clone(), b.clone());
    op(py, work, move |be| ops::matmul(be, &a, &b))
}

/// Softmax over the last dimension.
///
/// Args:
///     x: f32 tensor of any rank.
///
/// Returns:
///     Tensor: same shape; each row along the last dimension sums to 1.
#[pyfunction]
fn softmax_last_dim(py: Python<'_>, x: &Bound<'_, PyAny>) -> PyResult<PyTensor> {
    let x = arg(x, "x")?;
    op(py, x.numel(), move |be| ops::softmax_last_dim(be, &x))
}

/// Exact GELU: ``0.5 * x * (1 + erf(x / sqrt(2)))`` (PyTorch's default ``gelu``).
///
/// Args:
///     x: f32 tensor.
///
/// Returns:
///     Tensor: same shape.
#[pyfunction]
fn gelu(py: Python<'_>, x: &Bound<'_, PyAny>) -> PyResult<PyTensor> {
    let x = arg(x, "x")?;
    op(py, x.numel(), move |be| ops::gelu(be, &x))
}

/// GELU, tanh approximation (GPT-2's ``gelu_new``):
/// ``0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x**3)))``.
///
/// Args:
///     x: f32 tensor.
///
/// Returns:
///     Tensor: same shape.
#[pyfunction]
fn gelu_tanh(py: Python<'_>, x: &Bound<'_, PyAny>) -> PyResult<PyTensor> {
    let x = arg(x, "x")?;
    op(py, x.numel(), move |be| ops::gelu_tanh(be, &x))
}

/// Layer normalization over the last dimension (biased variance, as PyTorch).
///
/// Args:
///     x: f32 tensor ``[..., C]``.
///     weight: f32 ``[C]``.
///     bias: f32 ``[C]``.
///     eps: added to the variance; a positive number.
///
/// Returns:
///     Tensor: same shape as ``x``.
#[pyfunction]
#[pyo3(signature = (x, weight, bias, eps = 1e-5))]
fn layer_norm(
    py: Python<'_>,
    x: &Bound<'_, PyAny>,
    weight: &Bound<'_, PyAny>,
    bias: &Bound<'_, PyAny>,
    eps: f64,
) -> PyResult<PyTensor> {
    let (x, w, b) = (arg(x, "x")?, arg(weight, "weight")?, arg(bias, "bias")?);
    op(py, x.numel(), move |be| {
        ops::layer_norm(be, &x, &w, &b, eps as f32)
    })
}

/// Matrix product.
///
/// Supports ``[M, K] @ [K, N]``, batched ``[B, M, K] @ [B, K, N]`` and ``[B, M, K] @ [K, N]``.
///
/// Args:
///     a: f32 tensor of rank 2 or 3.
///     b: f32 tensor of rank 2 or 3.
///
/// Returns:
///     Tensor: ``[M, N]`` or ``[B, M, N]``.
///
/// Raises:
///     ValueError: for other ranks or mismatched dimensions.
#[pyfunction]
fn matmul(py: Python<'_>, a: &Bound<'_, PyAny>, b: &Bound<'_, PyAny>) -> PyResult<PyTensor> {
    let (a, b) = (arg(a, "a")?, arg(b, "b")?);
    matmul_impl(py, &a, &b)
}

/// Adds a bias over the last dimension: ``x + bias``.
///
/// Args:
///     x: f32 tensor ``[..., C]``.
///     bias: f32 tensor ``[C]``.
///
/// Returns:
///     Tensor: same shape as ``x``.
#[pyfunction]
fn add_bias(py: Python<'_>, x: &Bound<'_, PyAny>, bias: &Bound<'_, PyAny>) -> PyResult<PyTensor> {
    let (x, b) = (arg(x, "x")?, arg(bias, "bias")?);
    op(py, x.numel(), move |be| ops::add_bias(be, &x, &b))
}

/// Fused ``x @ weight + bias`` (weights stored ``[in, out]``).
///
/// Args:
///     x: f32 tensor ``[..., in]``.
///     weight: f32 tensor ``[in, out]``.
///     bias: optional f32 tensor ``[out]``.
///
/// Returns:
///     Tensor: ``[..., out]``.
#[pyfunction]
#[pyo3(signature = (x, weight, bias = None))]
fn linear(
    py: Python<'_>,
    x: &Bound<'_, PyAny>,
    weight: &Bound<'_, PyAny>,
    bias: Option<&Bound<'_, PyAny>>,
) -> PyResult<PyTensor> {
    let (x, w) = (arg(x, "x")?, arg(weight, "weight")?);
    let b = bias.map(|b| arg(b, "bias")).transpose()?;
    let work = x.numel().max(w.numel());
    op(py, work, move |be| ops::linear(be, &x, &w, b.as_ref()))
}

/// Gathers rows of an embedding table.
///
/// Args:
///     table: f32 tensor ``[V, C]``.
///     indices: integer indices of shape ``[T]`` or ``[T, 1]`` (int32, or int64/lists that fit).
///
/// Returns:
///     Tensor: ``[T, C]``.
///
/// Raises:
///     ValueError: if an index is outside ``0..V``.
#[pyfunction]
fn embedding_lookup(
    py: Python<'_>,
    table: &Bound<'_, PyAny>,
    indices: &Bound<'_, PyAny>,
) -> PyResult<PyTensor> {
    let (t, i) = (arg(table, "table")?, arg(indices, "indices")?);
    op(
        py,
        i.numel() * t.shape().last().copied().unwrap_or(1),
        move |be| ops::embedding_lookup(be, &t, &i),
    )
}

/// Scaled dot-product attention, ``softmax(q @ k^T / sqrt(D)) @ v`` per batch and head.
///
/// Args:
///     q: f32 ``[B, H, Tq, D]`` (or ``[H, Tq, D]``).
///     k: f32 ``[B, H, Tk, D]``.
///     v: f32 ``[B, H, Tk, D]``.
///     causal: mask future positions; query ``i`` sees keys ``j <= i + Tk - Tq``.
///
/// Returns:
///     Tensor: shaped like ``q``.
#[pyfunction]
#[pyo3(signature = (q, k, v, causal = true))]
fn scaled_dot_product_attention(
    py: Python<'_>,
    q: &Bound<'_, PyAny>,
    k: &Bound<'_, PyAny>,
    v: &Bound<'_, PyAny>,
    causal: bool,
) -> PyResult<PyTensor> {
    let (q, k, v) = (arg(q, "q")?, arg(k, "k")?, arg(v, "v")?);
    let work = q.numel().max(k.numel());
    op(py, work, move |be| {
        ops::scaled_dot_product_attention(be, &q, &k, &v, causal)
    })
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(softmax_last_dim, m)?)?;
    m.add_function(wrap_pyfunction!(gelu, m)?)?;
    m.add_function(wrap_pyfunction!(gelu_tanh, m)?)?;
    m.add_function(wrap_pyfunction!(layer_norm, m)?)?;
    m.add_function(wrap_pyfunction!(matmul, m)?)?;
    m.add_function(wrap_pyfunction!(add_bias, m)?)?;
    m.add_function(wrap_pyfunction!(linear, m)?)?;
    m.add_function(wrap_pyfunction!(embedding_lookup, m)?)?;
    m.add_function(wrap_pyfunction!(scaled_dot_product_attention, m)?)?;
    Ok(())
}
