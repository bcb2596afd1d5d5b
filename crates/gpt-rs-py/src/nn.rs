//! `gpt_rs.nn` layers: thin wrappers over the engine's `nn` types. Constructors validate
//! weights up front; ``forward(x)`` and ``__call__(x)`` run on the current backend.

use gpt_rs::nn;
use gpt_rs::Tensor;
use pyo3::prelude::*;

use crate::convert::{arg, current_backend, PyTensor};
use crate::errors::{run, to_py};

fn wrap(t: &Tensor) -> PyTensor {
    PyTensor::wrap(t.clone())
}

/// Defines `forward`/`__call__` for a layer whose engine type has `forward(be, x)`.
macro_rules! forward_methods {
    ($ty:ty) => {
        #[pymethods]
        impl $ty {
            /// Applies the layer.
            ///
            /// Args:
            ///     x: input tensor (or NumPy array).
            ///
            /// Returns:
            ///     Tensor
            fn forward(&self, py: Python<'_>, x: &Bound<'_, PyAny>) -> PyResult<PyTensor> {
                let x = arg(x, "x")?;
                let be = current_backend()?;
                let layer = self.inner.clone();
                run(py, x.numel(), move || layer.forward(be, &x)).map(PyTensor::wrap)
            }
            fn __call__(&self, py: Python<'_>, x: &Bound<'_, PyAny>) -> PyResult<PyTensor> {
                self.forward(py, x)
            }
        }
    };
}

/// Embedding table lookup.
///
/// Args:
///     weight: f32 ``[num_embeddings, embedding_dim]``.
#[pyclass(name = "Embedding", module = "gpt_rs.nn", frozen)]
pub struct Embedding {
    inner: nn::Embedding,
}

#[pymethods]
impl Embedding {
    #[new]
    fn new(weight: &Bound<'_, PyAny>) -> PyResult<Self> {
        Ok(Self {
            inner: nn::Embedding::new(arg(weight, "weight")?).map_err(to_py)?,
        })
    }
    #[getter]
    fn weight(&self) -> PyTensor {
        wrap(&self.inner.weight)
    }
    fn __repr__(&self) -> String {
        let s = self.inner.weight.shape();
        format!("Embedding(num_embeddings={}, embedding_dim={})", s[0], s[1])
    }
}
forward_methods!(Embedding);

/// Linear layer ``y = x @ weight + bias`` with ``weight`` stored ``[in_features, out_features]``.
///
/// Args:
///     weight: f32 ``[in, out]``.
///     bias: optional f32 ``[out]``.
#[pyclass(name = "Linear", module = "gpt_rs.nn", frozen)]
pub struct Linear {
    inner: nn::Linear,
}

#[pymethods]
impl Linear {
    #[new]
    #[pyo3(signature = (weight, bias = None))]
    fn new(weight: &Bound<'_, PyAny>, bias: Option<&Bound<'_, PyAny>>) -> PyResult<Self> {
        let b = bias
            .filter(|b| !b.is_none())
            .map(|b| arg(b, "bias"))
            .transpose()?;
        Ok(Self {
            inner: nn::Linear::new(arg(weight, "weight")?, b).map_err(to_py)?,
        })
    }
    #[getter]
    fn weight(&self) -> PyTensor {
        wrap(&self.inner.weight)
    }
    #[getter]
    fn bias(&self) -> Option<PyTensor> {
        self.inner.bias.as_ref().map(wrap)
    }
    #[getter]
    fn in_features(&self) -> usize {
        self.inner.in_features()
    }
    #[getter]
    fn out_features(&self) -> usize {
        self.inner.out_features()
    }
    fn __repr__(&self) -> String {
        format!(
            "Linear(in_features={}, out_features={}, bias={})",
            self.inner.in_features(),
            self.inner.out_features(),
            if self.inner.bias.is_some() {
                "True"
            } else {
                "False"
            }
        )
    }
}
forward_methods!(Linear);

/// Layer normalization over the last dimension.
///
/// Args:
///     weight: f32 ``[C]``.
///     bias: f32 ``[C]``.
///     eps: positive number added to the variance.
#[pyclass(name = "LayerNorm", module = "gpt_rs.nn", frozen)]
pub struct LayerNorm {
    inner: nn::LayerNorm,
}

#[pymethods]
impl LayerNorm {
    #[new]
    #[pyo3(signature = (weight, bias, eps = 1e-5))]
    fn new(weight: &Bound<'_, PyAny>, bias: &Bound<'_, PyAny>, eps: f64) -> PyResult<Self> {
        Ok(Self {
            inner: nn::LayerNorm::new(arg(weight, "weight")?, arg(bias, "bias")?, eps as f32)
                .map_err(to_py)?,
        })
    }
    #[getter]
    fn weight(&self) -> PyTensor {
        wrap(&self.inner.weight)
    }
    #[getter]
    fn bias(&self) -> PyTensor {
        wrap(&self.inner.bias)
    }
    #[getter]
    fn eps(&self) -> f32 {
        self.inner.eps
    }
    fn __repr__(&self) -> String {
        format!(
            "LayerNorm({}, eps={})",
            self.inner.weight.shape()[0],
            self.inner.eps
        )
    }
}
forward_methods!(LayerNorm);

/// Feed-forward block ``act(x @ w_in + b_in) @ w_out + b_out``.
///
/// Args:
///     w_in: f32 ``[C, H]``.
///     w_out: f32 ``[H, C_out]``.
///     b_in: optional f32 ``[H]``.
///     b_out: optional f32 ``[C_out]``.
///     activation: ``"gelu"`` (exact, default) or ``"gelu_tanh"`` (GPT-2).
#[pyclass(name = "FeedForward", module = "gpt_rs.nn", frozen)]
pub struct FeedForward {
    inner: nn::FeedForward,
}

#[pymethods]
impl FeedForward {
    #[new]
    #[pyo3(signature = (w_in, w_out, b_in = None, b_out = None, activation = "gelu"))]
    fn new(
        w_in: &Bound<'_, PyAny>,
        w_out: &Bound<'_, PyAny>,
        b_in: Option<&Bound<'_, PyAny>>,
        b_out: Option<&Bound<'_, PyAny>>,
        activation: &str,
    ) -> PyResult<Self> {
        let opt = |b: Option<&Bound<'_, PyAny>>, n: &str| {
            b.filter(|b| !b.is_none()).map(|b| arg(b, n)).transpose()
        };
        let act = nn::Activation::parse(activation).map_err(to_py)?;
        let inner = nn::FeedForward::new(
            arg(w_in, "w_in")?,
            arg(w_out, "w_out")?,
            opt(b_in, "b_in")?,
            opt(b_out, "b_out")?,
            act,
        )
        .map_err(to_py)?;
        Ok(Self { inner })
    }
    #[getter]
    fn activation(&self) -> &'static str {
        self.inner.activation.name()
    }
    fn __repr__(&self) -> String {
        let s = self.inner.c_fc.weight.shape();
        format!(
            "FeedForward({} -> {} -> {}, activation={})",
            s[0],
            s[1],
            self.inner.c_proj.out_features(),
            self.inner.activation.name()
        )
    }
}
forward_methods!(FeedForward);

/// GPT-2 causal self-attention: fused QKV projection, per-head causal attention, output
/// projection.
///
/// Args:
///     c_attn: ``Linear`` ``[C, 3C]``.
///     c_proj: ``Linear`` ``[C, C]``.
///     n_head: number of heads (divides C).
#[pyclass(name = "CausalSelfAttention", module = "gpt_rs.nn", frozen)]
pub struct CausalSelfAttention {
    inner: nn::CausalSelfAttention,
}

#[pymethods]
impl CausalSelfAttention {
    #[new]
    fn new(c_attn: PyRef<'_, Linear>, c_proj: PyRef<'_, Linear>, n_head: usize) -> PyResult<Self> {
        Ok(Self {
            inner: nn::CausalSelfAttention::new(c_attn.inner.clone(), c_proj.inner.clone(), n_head)
                .map_err(to_py)?,
        })
    }
    #[getter]
    fn n_head(&self) -> usize {
        self.inner.n_head
    }
    fn __repr__(&self) -> String {
        format!(
            "CausalSelfAttention(n_embd={}, n_head={})",
            self.inner.c_attn.in_features(),
            self.inner.n_head
        )
    }
}
forward_methods!(CausalSelfAttention);

/// GPT-2 transformer block: ``x + attn(ln_1(x))`` then ``x + mlp(ln_2(x))``.
///
/// Args:
///     ln_1: ``LayerNorm``.
///     attn: ``CausalSelfAttention``.
///     ln_2: ``LayerNorm``.
///     mlp: ``FeedForward`` (GPT-2 uses ``activation="gelu_tanh"``).
#[pyclass(name = "TransformerBlock", module = "gpt_rs.nn", frozen)]
pub struct TransformerBlock {
    inner: nn::TransformerBlock,
}

#[pymethods]
impl TransformerBlock {
    #[new]
    fn new(
        ln_1: PyRef<'_, LayerNorm>,
        attn: PyRef<'_, CausalSelfAttention>,
        ln_2: PyRef<'_, LayerNorm>,
        mlp: PyRef<'_, FeedForward>,
    ) -> PyResult<Self> {
        let inner = nn::TransformerBlock::new(
            ln_1.inner.clone(),
            attn.inner.clone(),
            ln_2.inner.clone(),
            mlp.inner.clone(),
        )
        .map_err(to_py)?;
        Ok(Self { inner })
    }
    fn __repr__(&self) -> String {
        format!(
            "TransformerBlock(n_embd={}, n_head={})",
            self.inner.attn.c_attn.in_features(),
            self.inner.attn.n_head
        )
    }
}
forward_methods!(TransformerBlock);

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Embedding>()?;
    m.add_class::<Linear>()?;
    m.add_class::<LayerNorm>()?;
    m.add_class::<FeedForward>()?;
    m.add_class::<CausalSelfAttention>()?;
    m.add_class::<TransformerBlock>()?;
    Ok(())
}
