//! `gpt_rs.Tensor`: NumPy in (copy, or shared memory with `copy=False`), NumPy out (always a
//! zero-copy view), Python operators, reshape and transpose.

use gpt_rs::backend;
use gpt_rs::ops::{self, BinaryOp};
use gpt_rs::{DType, Tensor};
use numpy::PyUntypedArray;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyFloat, PyInt, PyList, PyTuple};

use crate::convert::{current_backend, np_module, numpy_view, tensor_from_numpy, PyTensor};
use crate::errors::{run, to_py};

/// Converts an operand of an arithmetic operator: a tensor, a Python number or an array-like.
fn operand(other: &Bound<'_, PyAny>) -> Option<Tensor> {
    let be = backend::current();
    if let Ok(t) = other.cast::<PyTensor>() {
        return Some(t.get().inner.clone());
    }
    if other.is_instance_of::<PyBool>() || other.is_instance_of::<PyInt>() {
        let v: i64 = other.extract().ok()?;
        return match i32::try_from(v) {
            Ok(v) => Tensor::from_i32(vec![v], vec![], be).ok(),
            Err(_) => Tensor::from_f32(vec![v as f32], vec![], be).ok(),
        };
    }
    if other.is_instance_of::<PyFloat>() {
        let v: f64 = other.extract().ok()?;
        return Tensor::from_f32(vec![v as f32], vec![], be).ok();
    }
    if other.cast::<PyUntypedArray>().is_ok()
        || other.is_instance_of::<PyList>()
        || other.is_instance_of::<PyTuple>()
    {
        return tensor_from_numpy(other, true).ok();
    }
    None
}

fn binary(py: Python<'_>, a: &Tensor, b: &Tensor, op: BinaryOp) -> PyResult<PyTensor> {
    let be = current_backend()?;
    let (a, b) = (a.clone(), b.clone());
    let work = a.numel().max(b.numel());
    run(py, work, move || ops::binary(be, op, &a, &b)).map(PyTensor::wrap)
}

/// `self <op> other` (or `other <op> self` when `reflected`); NotImplemented for unknown types.
fn arith(
    slf: &PyTensor,
    other: &Bound<'_, PyAny>,
    op: BinaryOp,
    reflected: bool,
) -> PyResult<Py<PyAny>> {
    let py = other.py();
    let Some(o) = operand(other) else {
        return Ok(py.NotImplemented());
    };
    let r = if reflected {
        binary(py, &o, &slf.inner, op)?
    } else {
        binary(py, &slf.inner, &o, op)?
    };
    Ok(Bound::new(py, r)?.into_any().unbind())
}

#[pymethods]
impl PyTensor {
    /// Creates a tensor from a NumPy array (or any array-like).
    ///
    /// Args:
    ///     array: float32, float64 (converted to f32), int32 or int64 (converted to i32; values
    ///         that do not fit raise OverflowError) data of any shape, strides or memory order.
    ///     copy: True (default) copies the data. False shares the array's memory (C-contiguous,
    ///         aligned float32/int32 arrays only) and raises ValueError if it cannot.
    ///
    /// Returns:
    ///     Tensor: recording the current backend.
    #[staticmethod]
    #[pyo3(signature = (array, copy = true))]
    fn from_numpy(array: &Bound<'_, PyAny>, copy: bool) -> PyResult<Self> {
        tensor_from_numpy(array, copy).map(Self::wrap)
    }

    /// Returns a NumPy array that views this tensor's memory (no copy). The array keeps the
    /// memory alive after the tensor is gone; writing to it changes the tensor.
    fn numpy<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        numpy_view(py, &self.inner)
    }

    /// Same as ``numpy()``.
    fn to_numpy<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        numpy_view(py, &self.inner)
    }

    /// NumPy's array protocol: a view, or a converted copy when ``dtype`` differs.
    #[pyo3(signature = (dtype = None, copy = None))]
    fn __array__<'py>(
        &self,
        py: Python<'py>,
        dtype: Option<Bound<'py, PyAny>>,
        copy: Option<bool>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let arr = numpy_view(py, &self.inner)?;
        let converts = match &dtype {
            Some(dt) => !np_module(py)?
                .call_method1("dtype", (dt,))?
                .eq(arr.getattr("dtype")?)?,
            None => false,
        };
        match (converts, copy) {
            // NumPy's protocol: copy=False must not copy, so a conversion is an error.
            (true, Some(false)) => Err(crate::errors::value_error(format!(
                "cannot convert a {} tensor to {} without a copy (copy=False); use copy=None or True",
                self.inner.dtype(),
                dtype.map(|d| d.to_string()).unwrap_or_default()
            ))),
            (true, _) => arr.call_method1("astype", (dtype,)),
            (false, Some(true)) => arr.call_method0("copy"),
            (false, _) => Ok(arr),
        }
    }

    /// The dimensions, as a list of ints.
    #[getter]
    fn shape(&self) -> Vec<usize> {
        self.inner.shape().to_vec()
    }

    /// 'f32', 'f16', 'bf16' or 'i32'.
    #[getter]
    fn dtype(&self) -> &'static str {
        self.inner.dtype().name()
    }

    /// The backend that produced this tensor.
    #[getter]
    fn backend(&self) -> &'static str {
        self.inner.backend().name()
    }

    /// Number of dimensions.
    #[getter]
    fn ndim(&self) -> usize {
        self.inner.ndim()
    }

    /// Number of elements.
    #[getter]
    fn size(&self) -> usize {
        self.inner.numel()
    }

    /// The transpose (dimensions reversed), as NumPy's ``.T``.
    #[getter(T)]
    fn t(&self) -> PyResult<Self> {
        let nd = self.inner.ndim();
        if nd <= 2 {
            return ops::transpose(&self.inner, 0, 1)
                .map(Self::wrap)
                .map_err(to_py);
        }
        let mut t = self.inner.clone();
        for i in 0..nd / 2 {
            t = ops::transpose(&t, i as i64, (nd - 1 - i) as i64).map_err(to_py)?;
        }
        Ok(Self::wrap(t))
    }

    /// Returns a tensor with the same data and a new shape (no copy).
    ///
    /// Args:
    ///     *shape: the new dimensions, as separate ints or one list/tuple; one may be -1.
    #[pyo3(signature = (*shape))]
    fn reshape(&self, shape: &Bound<'_, PyTuple>) -> PyResult<Self> {
        let dims: Vec<i64> = if shape.len() == 1 && !shape.get_item(0)?.is_instance_of::<PyInt>() {
            shape.get_item(0)?.extract()?
        } else {
            shape.extract()?
        };
        self.inner.reshape(&dims).map(Self::wrap).map_err(to_py)
    }

    /// Swaps two dimensions (a copy). Without arguments, reverses all dimensions (like ``.T``).
    ///
    /// Args:
    ///     dim0: first dimension (negative counts from the end).
    ///     dim1: second dimension.
    #[pyo3(signature = (dim0 = None, dim1 = None))]
    fn transpose(&self, dim0: Option<i64>, dim1: Option<i64>) -> PyResult<Self> {
        match (dim0, dim1) {
            (None, None) => self.t(),
            (Some(a), Some(b)) => ops::transpose(&self.inner, a, b)
                .map(Self::wrap)
                .map_err(to_py),
            _ => Err(crate::errors::value_error(
                "transpose takes either no dimensions or two (dim0, dim1)",
            )),
        }
    }

    /// The data as nested Python lists.
    fn tolist<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        numpy_view(py, &self.inner)?.call_method0("tolist")
    }

    fn __len__(&self) -> PyResult<usize> {
        self.inner
            .shape()
            .first()
            .copied()
            .ok_or_else(|| crate::errors::type_error("len() of a 0-d tensor"))
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let arr = numpy_view(py, &self.inner)?;
        let kwargs = pyo3::types::PyDict::new(py);
        kwargs.set_item("threshold", 20)?;
        kwargs.set_item("edgeitems", 2)?;
        kwargs.set_item("prefix", "Tensor(")?;
        let body: String = np_module(py)?
            .getattr("array2string")?
            .call((arr,), Some(&kwargs))?
            .extract()?;
        Ok(format!(
            "Tensor({body}, shape={:?}, dtype={}, backend={})",
            self.inner.shape(),
            self.inner.dtype(),
            self.inner.backend()
        ))
    }

    fn __add__(&self, other: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        arith(self, other, BinaryOp::Add, false)
    }
    fn __radd__(&self, other: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        arith(self, other, BinaryOp::Add, true)
    }
    fn __sub__(&self, other: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        arith(self, other, BinaryOp::Sub, false)
    }
    fn __rsub__(&self, other: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        arith(self, other, BinaryOp::Sub, true)
    }
    fn __mul__(&self, other: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        arith(self, other, BinaryOp::Mul, false)
    }
    fn __rmul__(&self, other: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        arith(self, other, BinaryOp::Mul, true)
    }
    fn __truediv__(&self, other: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        arith(self, other, BinaryOp::Div, false)
    }
    fn __rtruediv__(&self, other: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        arith(self, other, BinaryOp::Div, true)
    }
    fn __neg__(&self, py: Python<'_>) -> PyResult<Self> {
        let minus = Tensor::from_f32(vec![-1.0], vec![], backend::current()).map_err(to_py)?;
        let x = if self.inner.dtype() == DType::I32 {
            Tensor::from_i32(vec![-1], vec![], backend::current()).map_err(to_py)?
        } else {
            minus
        };
        binary(py, &self.inner, &x, BinaryOp::Mul)
    }
    fn __matmul__(&self, py: Python<'_>, other: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        let Some(o) = operand(other) else {
            return Ok(py.NotImplemented());
        };
        Ok(
            Bound::new(py, crate::functional::matmul_impl(py, &self.inner, &o)?)?
                .into_any()
                .unbind(),
        )
    }
    fn __rmatmul__(&self, py: Python<'_>, other: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        let Some(o) = operand(other) else {
            return Ok(py.NotImplemented());
        };
        Ok(
            Bound::new(py, crate::functional::matmul_impl(py, &o, &self.inner)?)?
                .into_any()
                .unbind(),
        )
    }

    /// A copy converted to ``dtype`` (this tensor itself when it already has that dtype).
    ///
    /// Args:
    ///     dtype: 'f32', 'f16', 'bf16' or 'i32'; NumPy's names and dtypes ('float16',
    ///         ``np.float32``...) and torch dtypes (``torch.bfloat16``) also work.
    ///
    /// Floats round to nearest even; a float to 'i32' truncates toward zero, and a NaN,
    /// infinity or out-of-range value raises ValueError.
    fn to(&self, py: Python<'_>, dtype: &Bound<'_, PyAny>) -> PyResult<Self> {
        let dtype = parse_dtype(dtype)?;
        let t = self.inner.clone();
        run(py, t.numel(), move || t.to_dtype(dtype)).map(Self::wrap)
    }

    /// Same as ``to(dtype)`` (NumPy's name).
    fn astype(&self, py: Python<'_>, dtype: &Bound<'_, PyAny>) -> PyResult<Self> {
        self.to(py, dtype)
    }

    /// Creates a tensor from a PyTorch CPU tensor, sharing its memory when it is contiguous
    /// and float32, float16, bfloat16 or int32 (a copy otherwise, converted as
    /// ``from_numpy`` converts: float64 to f32, int64 to i32).
    ///
    /// Raises:
    ///     ValueError: the tensor is on another device (call ``.cpu()`` first).
    ///     TypeError: not a torch tensor, or a dtype gpt_rs has no equivalent for.
    #[staticmethod]
    fn from_torch(py: Python<'_>, tensor: &Bound<'_, PyAny>) -> PyResult<Self> {
        let torch = import_torch(py, "from_torch")?;
        if !tensor.is_instance(&torch.getattr("Tensor")?)? {
            return Err(crate::errors::type_error(format!(
                "from_torch expects a torch.Tensor, got {}",
                tensor.get_type().name()?
            )));
        }
        let device = tensor.getattr("device")?;
        if device.getattr("type")?.extract::<String>()? != "cpu" {
            return Err(crate::errors::value_error(format!(
                "from_torch: the tensor is on device '{}'; gpt_rs works on CPU memory, call .cpu() first",
                device.str()?
            )));
        }
        // Views with a pending negation or conjugation cannot be exported as they are.
        let t = tensor
            .call_method0("detach")?
            .call_method0("resolve_conj")?
            .call_method0("resolve_neg")?;
        let dtype = t.getattr("dtype")?.str()?.to_string();
        if DType::parse(&dtype).is_ok() {
            return crate::dlpack::from_dlpack(py, &t);
        }
        let arr = t.call_method0("numpy").map_err(|e| {
            crate::errors::type_error(format!("from_torch: unsupported dtype {dtype}: {e}"))
        })?;
        tensor_from_numpy(&arr, true).map(Self::wrap)
    }

    /// A PyTorch tensor sharing this tensor's memory (through DLPack; a copy for read-only
    /// memory, such as a read-only NumPy array's). f32 gives ``torch.float32``, f16
    /// ``torch.float16``, bf16 ``torch.bfloat16``, i32 ``torch.int32``.
    fn to_torch<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        import_torch(py, "to_torch")?.call_method1("from_dlpack", (slf,))
    }

    /// DLPack export (``np.from_dlpack(t)``, ``torch.from_dlpack(t)``): shares memory, or
    /// copies read-only memory (consumers of unversioned DLPack may write to what they get).
    #[pyo3(signature = (*, stream = None, max_version = None, dl_device = None, copy = None))]
    fn __dlpack__<'py>(
        &self,
        py: Python<'py>,
        stream: Option<Bound<'py, PyAny>>,
        max_version: Option<Bound<'py, PyAny>>,
        dl_device: Option<(i32, i32)>,
        copy: Option<bool>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let _ = (stream, max_version);
        crate::dlpack::export(py, &self.inner, dl_device, copy)
    }

    /// DLPack device: (1, 0), the CPU.
    fn __dlpack_device__(&self) -> (i32, i32) {
        (crate::dlpack::DEVICE_CPU, 0)
    }
}

/// `import torch`, only when a torch method is called (torch is never a dependency).
fn import_torch<'py>(py: Python<'py>, what: &str) -> PyResult<Bound<'py, PyModule>> {
    py.import("torch").map_err(|e| {
        pyo3::exceptions::PyImportError::new_err(format!(
            "Tensor.{what} needs PyTorch, which could not be imported: {e}"
        ))
    })
}

/// A dtype argument: one of our names, NumPy's name or dtype, or a torch dtype.
fn parse_dtype(obj: &Bound<'_, PyAny>) -> PyResult<DType> {
    let name = if let Ok(s) = obj.extract::<String>() {
        s
    } else if obj.get_type().module()? == "torch" {
        obj.str()?.to_string()
    } else {
        let np = np_module(obj.py())?;
        np.call_method1("dtype", (obj,))
            .and_then(|d| d.getattr("name"))
            .map_err(|_| {
                crate::errors::type_error(format!(
                    "dtype must be a name such as 'f32' or a NumPy/torch dtype, got {}",
                    obj.repr().map(|r| r.to_string()).unwrap_or_default()
                ))
            })?
            .extract()?
    };
    DType::parse(&name).map_err(to_py)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyTensor>()?;
    Ok(())
}
