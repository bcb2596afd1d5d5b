//! Conversions between Python objects and engine tensors, the leaf every other module of the
//! binding builds on: the `Tensor` class itself (its methods live in `tensor.rs`), NumPy in
//! (a copy, or shared memory) and out (a view), function arguments, and the backend ops run on.

use std::sync::Arc;

use gpt_rs::backend::{self, Backend};
use gpt_rs::memory;
use gpt_rs::storage::{Owner, Storage};
use gpt_rs::tensor::Data;
use gpt_rs::Tensor;
use half::{bf16, f16};
use numpy::ndarray::{ArrayViewD, IxDyn};
use numpy::npyffi::flags::{NPY_ARRAY_ALIGNED, NPY_ARRAY_WRITEABLE};
use numpy::{
    PyArray, PyArrayDescrMethods, PyArrayDyn, PyArrayMethods, PyUntypedArray, PyUntypedArrayMethods,
};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;

use crate::errors::to_py;

const SUPPORTED: &str = "supported dtypes: float32, float16, bfloat16 (ml_dtypes), int32, \
     float64 (converted to float32), int64 (converted to int32)";

/// A contiguous n-dimensional array of float32 ('f32'), float16 ('f16'), bfloat16 ('bf16')
/// or int32 ('i32') in host memory.
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

pub fn np_module(py: Python<'_>) -> PyResult<Bound<'_, PyModule>> {
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
        .map_err(|e| crate::errors::type_error(e.to_string()))?;
    let ro = typed
        .try_readonly()
        .map_err(|e| crate::errors::value_error(e.to_string()))?;
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

/// The array's memory, shared (no copy), as elements of `T`; `E` is the NumPy element type
/// of the same size it is read as (bfloat16 arrays are read through a uint16 view). Caller
/// checked dtype, contiguity and alignment.
fn share<E: numpy::Element, T: Send + Sync + 'static>(
    arr: &Bound<'_, PyUntypedArray>,
) -> PyResult<Storage<T>> {
    const { assert!(std::mem::size_of::<E>() == std::mem::size_of::<T>()) };
    let typed = arr
        .cast::<PyArrayDyn<E>>()
        .map_err(|e| crate::errors::type_error(e.to_string()))?;
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
                return Err(crate::errors::value_error(format!(
                    "from_numpy(copy=False) needs a numpy.ndarray to share memory with, got {}",
                    obj.get_type().name()?
                )));
            }
            let a = np_module(py)?
                .call_method1("asarray", (obj,))
                .map_err(|e| {
                    crate::errors::type_error(format!(
                        "expected a numpy array or array-like, could not convert it: {e}"
                    ))
                })?;
            a.cast_into::<PyUntypedArray>()
                .map_err(|e| crate::errors::type_error(e.to_string()))?
        }
    };
    let dt = arr.dtype();
    let (mut kind, size) = (dt.kind(), dt.itemsize());
    // NumPy has no bfloat16; ml_dtypes' (kind 'V') is read as raw uint16 bits ('b' here).
    let arr = if kind == b'V' && size == 2 && dt.getattr("name")?.extract::<String>()? == "bfloat16"
    {
        kind = b'b';
        arr.call_method1("view", (np_module(py)?.getattr("uint16")?,))?
            .cast_into::<PyUntypedArray>()
            .map_err(|e| crate::errors::type_error(e.to_string()))?
    } else {
        arr
    };
    let dt = arr.dtype();
    // Non-native byte order or misaligned data: normalise with one NumPy copy first.
    let arr = if (matches!((kind, size), (b'f', 2 | 4 | 8) | (b'i', 4 | 8) | (b'b', 2))
        && !dt.is_native_byteorder().unwrap_or(true))
        || !is_aligned(&arr)
    {
        if !copy {
            return Err(crate::errors::value_error(
                "from_numpy(copy=False) cannot share memory with a misaligned or byte-swapped array; use copy=True",
            ));
        }
        let native = dt.call_method1("newbyteorder", ("=",))?;
        np_module(py)?
            .call_method1("array", (&arr, native))?
            .cast_into::<PyUntypedArray>()
            .map_err(|e| crate::errors::type_error(e.to_string()))?
    } else {
        arr
    };
    let shape = arr.shape().to_vec();
    let be = backend::current();
    let shareable = arr.is_c_contiguous();
    let data = match (kind, size) {
        (b'f', 4) if !copy && shareable => Data::F32(share::<f32, f32>(&arr)?),
        (b'f', 2) if !copy && shareable => Data::F16(share::<f16, f16>(&arr)?),
        (b'b', 2) if !copy && shareable => Data::BF16(share::<u16, bf16>(&arr)?),
        (b'i', 4) if !copy && shareable => Data::I32(share::<i32, i32>(&arr)?),
        _ if !copy => {
            return Err(crate::errors::value_error(format!(
                "from_numpy(copy=False) shares memory only with C-contiguous float32, float16, bfloat16 or int32 arrays; got a {} array{}; use copy=True to convert",
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
        (b'f', 2) => Data::F16(Storage::from_vec(copy_elems::<f16>(&arr)?)),
        (b'b', 2) => {
            let bits = copy_elems::<u16>(&arr)?;
            let what = "from_numpy: the bfloat16 copy";
            Data::BF16(Storage::from_vec(
                memory::collect(bits.into_iter().map(bf16::from_bits), what).map_err(to_py)?,
            ))
        }
        (b'i', 4) => Data::I32(Storage::from_vec(copy_elems::<i32>(&arr)?)),
        (b'i', 8) => {
            let v = copy_elems::<i64>(&arr)?;
            let mut out = memory::with_capacity(v.len(), "from_numpy: the int32 copy").map_err(to_py)?;
            for (i, &x) in v.iter().enumerate() {
                out.push(i32::try_from(x).map_err(|_| {
                    crate::errors::overflow_error(format!(
                        "int64 value {x} at flat index {i} does not fit in int32 (range -2147483648..2147483647)"
                    ))
                })?);
            }
            Data::I32(Storage::from_vec(out))
        }
        _ => {
            return Err(crate::errors::type_error(format!("unsupported dtype '{}'; {SUPPORTED}", dt.str()?)));
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
        Data::F16(s) => view(py, s, t.shape()),
        Data::BF16(s) => {
            // NumPy's bfloat16 dtype is ml_dtypes'; the numpy crate looks it up by name, which
            // works only once ml_dtypes is imported.
            py.import("ml_dtypes").map_err(|_| {
                crate::errors::type_error(
                    "numpy() of a bf16 tensor needs the ml_dtypes package (pip install ml_dtypes), \
                     since NumPy has no bfloat16 type; or convert first with .to('f32')",
                )
            })?;
            view(py, s, t.shape())
        }
        Data::I32(s) => view(py, s, t.shape()),
    }
}

/// A tensor argument: a `Tensor`, or a NumPy array / array-like (copied).
pub fn arg(obj: &Bound<'_, PyAny>, name: &str) -> PyResult<Tensor> {
    if let Ok(t) = obj.cast::<PyTensor>() {
        return Ok(t.get().inner.clone());
    }
    if obj.is_none() {
        return Err(crate::errors::type_error(format!(
            "{name} must be a gpt_rs.Tensor or a numpy array, got None"
        )));
    }
    tensor_from_numpy(obj, true).map_err(|e| {
        let ty = obj
            .get_type()
            .name()
            .map(|n| n.to_string())
            .unwrap_or_default();
        if e.is_instance_of::<PyTypeError>(obj.py()) {
            crate::errors::type_error(format!(
                "{name} must be a gpt_rs.Tensor or a numpy array, got {ty}: {e}"
            ))
        } else {
            e
        }
    })
}

/// The backend ops run on now (`gpt_rs.set_backend`); its `kind()` labels new tensors.
pub fn current_backend() -> PyResult<&'static dyn Backend> {
    backend::current().get().map_err(to_py)
}
