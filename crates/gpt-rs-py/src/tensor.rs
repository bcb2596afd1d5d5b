//! `gpt_rs.Tensor`: NumPy in (copy, or shared memory with `copy=False`), NumPy out (always a
//! zero-copy view), Python operators, reshape and transpose.

use std::sync::Arc;

use gpt_rs::backend::{self, BackendKind};
use gpt_rs::memory;
use gpt_rs::ops::{self, BinaryOp};
use gpt_rs::storage::{Owner, Storage};
use gpt_rs::tensor::Data;
use gpt_rs::{DType, Tensor};
use numpy::ndarray::{ArrayViewD, IxDyn};
use numpy::npyffi::flags::{NPY_ARRAY_ALIGNED, NPY_ARRAY_WRITEABLE};
use numpy::{
    PyArray, PyArrayDescrMethods, PyArrayDyn, PyArrayMethods, PyUntypedArray, PyUntypedArrayMethods,
};
use pyo3::exceptions::{PyOverflowError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyFloat, PyInt, PyList, PyTuple};

use crate::errors::{run, to_py};

const SUPPORTED: &str =
    "supported dtypes: float32, float64 (converted to float32), int32, int64 (converted to int32)";

/// A contiguous n-dimensional array of float32 ('f32') or int32 ('i32') in host memory.
///
/// Create one with ``Tensor.from_numpy``; get NumPy back with ``numpy()`` (a zero-copy view).
/// ``backend`` is the backend that produced the tensor. All backends share host memory, so
/// tensors from different backends can be mixed: an op runs on the current backend
/// (``gpt_rs.get_backend()``) and its result records that backend.
#[pyclass(name = "Tensor", module = "gpt_rs", frozen)]
pub struct PyTensor {
    pub inner: Tensor,
}

/// Keeps a buffer alive for NumPy arrays that view it.
#[pyclass(name = "_Buffer", module = "gpt_rs", frozen)]
struct BufferOwner {
    _keep: Owner,
}

/// A NumPy array (or DLPack producer) kept alive by a tensor that shares its memory.
pub struct PyOwner(#[allow(dead_code)] pub Py<PyAny>);

impl PyTensor {
    pub fn wrap(inner: Tensor) -> Self {
        Self { inner }
    }
}

fn np_module(py: Python<'_>) -> PyResult<Bound<'_, PyModule>> {
    py.import("numpy")
}

/// Whether `arr`'s data pointer is aligned for its dtype (NumPy's ALIGNED flag).
fn is_aligned(arr: &Bound<'_, PyUntypedArray>) -> bool {
    // SAFETY: reading the flags field of a live ndarray object.
    unsafe { (*arr.as_array_ptr()).fields.flags & NPY_ARRAY_ALIGNED != 0 }
}

fn is_writeable(arr: &Bound<'_, PyUntypedArray>) -> bool {
    // SAFETY: as above.
    unsafe { (*arr.as_array_ptr()).fields.flags & NPY_ARRAY_WRITEABLE != 0 }
}

/// Copies a typed array (any strides) into a vector in C order.
fn copy_elems<T: numpy::Element + Copy>(arr: &Bound<'_, PyUntypedArray>) -> PyResult<Vec<T>> {
    copy_elems_with(arr, |s| memory::copy(s, "from_numpy: the copy"), |v| v, Ok)
}

/// The array's elements in C order: `contiguous` gets them as one slice when they are laid
/// out that way; otherwise they are gathered element by element through `map` (so a
/// conversion happens in the same pass) and handed to `strided`. Allocated fallibly: a
/// zero-stride view of 2^40 elements is a MemoryError, not an abort.
fn copy_elems_with<T: numpy::Element + Copy, U, R>(
    arr: &Bound<'_, PyUntypedArray>,
    contiguous: impl FnOnce(&[T]) -> gpt_rs::Result<R>,
    map: impl Fn(T) -> U,
    strided: impl FnOnce(Vec<U>) -> gpt_rs::Result<R>,
) -> PyResult<R> {
    let typed = arr
        .cast::<PyArrayDyn<T>>()
        .map_err(|e| PyTypeError::new_err(e.to_string()))?;
    let ro = typed
        .try_readonly()
        .map_err(|e| PyValueError::new_err(e.to_string()))?;
    // `as_slice` also accepts Fortran order (memory order), so only use it for C order.
    match ro.as_slice() {
        Ok(s) if arr.is_c_contiguous() => contiguous(s),
        _ => {
            let shape = arr.shape().to_vec();
            let gathered =
                memory::collect(ro.as_array().iter().map(|&x| map(x)), "").map_err(|_| {
                    memory::out_of_memory(
                        &format!(
                            "from_numpy: a copy of the {} array of shape {shape:?}",
                            arr.dtype()
                        ),
                        memory::bytes_of::<U>(memory::numel_u128(&shape)),
                    )
                });
            gathered.and_then(strided)
        }
    }
    .map_err(to_py)
}

/// The array's memory, shared (no copy). Caller checked dtype, contiguity and alignment.
fn share<T: numpy::Element + Send + Sync + 'static>(
    arr: &Bound<'_, PyUntypedArray>,
) -> PyResult<Storage<T>> {
    let typed = arr
        .cast::<PyArrayDyn<T>>()
        .map_err(|e| PyTypeError::new_err(e.to_string()))?;
    let ptr = typed.data() as *const T;
    let owner: Owner = Arc::new(PyOwner(arr.clone().into_any().unbind()));
    // SAFETY: the array is C-contiguous and aligned with `len` elements of T, and `owner`
    // holds a reference to it, so its buffer outlives the storage.
    Ok(unsafe { Storage::from_raw_parts(ptr, arr.len(), is_writeable(arr), owner) })
}

/// Converts any array-like to a tensor. `copy=false` shares memory or raises ValueError.
pub fn tensor_from_numpy(obj: &Bound<'_, PyAny>, copy: bool) -> PyResult<Tensor> {
    let py = obj.py();
    if let Ok(t) = obj.cast::<PyTensor>() {
        return Ok(t.get().inner.clone());
    }
    let arr = match obj.cast::<PyUntypedArray>() {
        Ok(a) => a.clone(),
        Err(_) => {
            if !copy {
                return Err(PyValueError::new_err(format!(
                    "from_numpy(copy=False) needs a numpy.ndarray to share memory with, got {}",
                    obj.get_type().name()?
                )));
            }
            let a = np_module(py)?
                .call_method1("asarray", (obj,))
                .map_err(|e| {
                    PyTypeError::new_err(format!(
                        "expected a numpy array or array-like, could not convert it: {e}"
                    ))
                })?;
            a.cast_into::<PyUntypedArray>()
                .map_err(|e| PyTypeError::new_err(e.to_string()))?
        }
    };
    let dt = arr.dtype();
    let (kind, size) = (dt.kind(), dt.itemsize());
    // Non-native byte order or misaligned data: normalise with one NumPy copy first.
    let arr = if (matches!((kind, size), (b'f', 4 | 8) | (b'i', 4 | 8))
        && !dt.is_native_byteorder().unwrap_or(true))
        || !is_aligned(&arr)
    {
        if !copy {
            return Err(PyValueError::new_err(
                "from_numpy(copy=False) cannot share memory with a misaligned or byte-swapped array; use copy=True",
            ));
        }
        let native = dt.call_method1("newbyteorder", ("=",))?;
        np_module(py)?
            .call_method1("array", (&arr, native))?
            .cast_into::<PyUntypedArray>()
            .map_err(|e| PyTypeError::new_err(e.to_string()))?
    } else {
        arr
    };
    let shape = arr.shape().to_vec();
    let be = backend::current();
    let shareable = arr.is_c_contiguous();
    let data = match (kind, size) {
        (b'f', 4) if !copy && shareable => Data::F32(share::<f32>(&arr)?),
        (b'i', 4) if !copy && shareable => Data::I32(share::<i32>(&arr)?),
        _ if !copy => {
            return Err(PyValueError::new_err(format!(
                "from_numpy(copy=False) shares memory only with C-contiguous float32 or int32 arrays; got a {} array{}; use copy=True to convert",
                dt.str()?,
                if shareable { "" } else { " that is not C-contiguous" }
            )))
        }
        (b'f', 4) => Data::F32(copy_elems_with(
            &arr,
            |s| Storage::copy_of(s, "from_numpy: the copy"),
            |v| v,
            |v| Ok(Storage::from_vec(v)),
        )?),
        (b'f', 8) => Data::F32(copy_elems_with(
            &arr,
            |s: &[f64]| {
                memory::collect(s.iter().map(|&v| v as f32), "from_numpy: the converted copy")
                    .map(Storage::from_vec)
            },
            |v: f64| v as f32,
            |v| Ok(Storage::from_vec(v)),
        )?),
        (b'i', 4) => Data::I32(Storage::from_vec(copy_elems::<i32>(&arr)?)),
        (b'i', 8) => {
            let v = copy_elems::<i64>(&arr)?;
            let mut out = memory::with_capacity(v.len(), "from_numpy: the int32 copy").map_err(to_py)?;
            for (i, &x) in v.iter().enumerate() {
                out.push(i32::try_from(x).map_err(|_| {
                    PyOverflowError::new_err(format!(
                        "int64 value {x} at flat index {i} does not fit in int32 (range -2147483648..2147483647)"
                    ))
                })?);
            }
            Data::I32(Storage::from_vec(out))
        }
        _ => {
            return Err(PyTypeError::new_err(format!("unsupported dtype '{}'; {SUPPORTED}", dt.str()?)));
        }
    };
    Tensor::new(data, shape, be).map_err(to_py)
}

/// A NumPy array viewing `t`'s memory; the array keeps the buffer alive.
pub fn numpy_view<'py>(py: Python<'py>, t: &Tensor) -> PyResult<Bound<'py, PyAny>> {
    fn view<'py, T: numpy::Element>(
        py: Python<'py>,
        s: &Storage<T>,
        shape: &[usize],
    ) -> PyResult<Bound<'py, PyAny>> {
        let container = Bound::new(
            py,
            BufferOwner {
                _keep: s.owner().clone(),
            },
        )?;
        // SAFETY: the storage holds exactly prod(shape) elements at an aligned, non-null
        // pointer, and `container` (the array's base object) keeps them alive.
        let arr = unsafe {
            let v = ArrayViewD::from_shape_ptr(IxDyn(shape), s.as_ptr());
            PyArray::borrow_from_array(&v, container.into_any())
        };
        if !s.writable() {
            // SAFETY: clearing the WRITEABLE flag of the array we just created.
            unsafe { (*arr.as_array_ptr()).fields.flags &= !NPY_ARRAY_WRITEABLE };
        }
        Ok(arr.into_any())
    }
    match t.data() {
        Data::F32(s) => view(py, s, t.shape()),
        Data::I32(s) => view(py, s, t.shape()),
    }
}

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
    let be = backend::current().get().map_err(to_py)?;
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
            (true, Some(false)) => Err(PyValueError::new_err(format!(
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

    /// 'f32' or 'i32'.
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
            _ => Err(PyValueError::new_err(
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
            .ok_or_else(|| PyTypeError::new_err("len() of a 0-d tensor"))
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

    /// DLPack export (``np.from_dlpack(t)``, ``torch.from_dlpack(t)``): shares memory.
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

/// `backend` for tensors built by the binding itself (e.g. DLPack imports).
pub fn current_backend() -> BackendKind {
    backend::current()
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyTensor>()?;
    Ok(())
}
