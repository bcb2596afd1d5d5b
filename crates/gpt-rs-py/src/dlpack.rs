//! DLPack, both ways, without copying: `Tensor.__dlpack__` exports a "dltensor" capsule whose
//! deleter releases our buffer; `from_dlpack(obj)` imports a CPU float32/int32 C-contiguous
//! tensor by taking ownership of the producer's capsule (other layouts and dtypes are copied
//! through NumPy).

use std::ffi::{c_void, CStr};
use std::sync::Arc;

use gpt_rs::storage::{Owner, Storage};
use gpt_rs::tensor::Data;
use gpt_rs::Tensor;
use pyo3::exceptions::{PyBufferError, PyTypeError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;

use crate::errors::to_py;
use crate::tensor::{current_backend, tensor_from_numpy, PyTensor};

pub const DEVICE_CPU: i32 = 1;
const CODE_INT: u8 = 0;
const CODE_FLOAT: u8 = 2;
const NAME: &CStr = c"dltensor";
const USED_NAME: &CStr = c"used_dltensor";

#[repr(C)]
struct DLDevice {
    device_type: i32,
    device_id: i32,
}

#[repr(C)]
struct DLDataType {
    code: u8,
    bits: u8,
    lanes: u16,
}

#[repr(C)]
struct DLTensor {
    data: *mut c_void,
    device: DLDevice,
    ndim: i32,
    dtype: DLDataType,
    shape: *mut i64,
    strides: *mut i64,
    byte_offset: u64,
}

#[repr(C)]
struct DLManagedTensor {
    dl_tensor: DLTensor,
    manager_ctx: *mut c_void,
    deleter: Option<unsafe extern "C" fn(*mut DLManagedTensor)>,
}

/// What an exported capsule keeps alive: our buffer and the shape array DLPack points at.
struct ExportCtx {
    _keep: Owner,
    shape: Vec<i64>,
}

unsafe extern "C" fn export_deleter(p: *mut DLManagedTensor) {
    if p.is_null() {
        return;
    }
    // SAFETY: `p` and its ctx were made by Box::into_raw in `export`; DLPack calls the deleter
    // exactly once (either the consumer, or our capsule destructor when never consumed).
    unsafe {
        let m = Box::from_raw(p);
        drop(Box::from_raw(m.manager_ctx as *mut ExportCtx));
    }
}

unsafe extern "C" fn capsule_destructor(capsule: *mut ffi::PyObject) {
    // SAFETY: called by Python with a live capsule. Only an unconsumed capsule (still named
    // "dltensor") owns its tensor; a consumer renames it to "used_dltensor".
    unsafe {
        if ffi::PyCapsule_IsValid(capsule, NAME.as_ptr()) == 1 {
            let p = ffi::PyCapsule_GetPointer(capsule, NAME.as_ptr()) as *mut DLManagedTensor;
            if let Some(d) = (*p).deleter {
                d(p);
            }
        }
    }
}

/// Exports `t` as a DLPack capsule that shares its memory (or a copy when `copy=True`).
pub fn export<'py>(
    py: Python<'py>,
    t: &Tensor,
    dl_device: Option<(i32, i32)>,
    copy: Option<bool>,
) -> PyResult<Bound<'py, PyAny>> {
    if let Some(dev) = dl_device {
        if dev != (DEVICE_CPU, 0) {
            return Err(PyBufferError::new_err(format!(
                "gpt_rs tensors live on the CPU (1, 0); cannot export to device {dev:?}"
            )));
        }
    }
    let t = if copy == Some(true) {
        deep_copy(t)
    } else {
        t.clone()
    };
    let (data, keep, dtype) = match t.data() {
        Data::F32(s) => (
            s.as_ptr() as *mut c_void,
            s.owner().clone(),
            DLDataType {
                code: CODE_FLOAT,
                bits: 32,
                lanes: 1,
            },
        ),
        Data::I32(s) => (
            s.as_ptr() as *mut c_void,
            s.owner().clone(),
            DLDataType {
                code: CODE_INT,
                bits: 32,
                lanes: 1,
            },
        ),
    };
    let mut ctx = Box::new(ExportCtx {
        _keep: keep,
        shape: t.shape().iter().map(|&d| d as i64).collect(),
    });
    let managed = Box::new(DLManagedTensor {
        dl_tensor: DLTensor {
            data,
            device: DLDevice {
                device_type: DEVICE_CPU,
                device_id: 0,
            },
            ndim: t.ndim() as i32,
            dtype,
            shape: ctx.shape.as_mut_ptr(),
            strides: std::ptr::null_mut(), // C-contiguous
            byte_offset: 0,
        },
        manager_ctx: std::ptr::null_mut(),
        deleter: Some(export_deleter),
    });
    let managed = Box::into_raw(managed);
    // SAFETY: `managed` is a valid, uniquely owned pointer; the ctx box moves into it.
    unsafe {
        (*managed).manager_ctx = Box::into_raw(ctx) as *mut c_void;
        let cap = ffi::PyCapsule_New(
            managed as *mut c_void,
            NAME.as_ptr(),
            Some(capsule_destructor),
        );
        if cap.is_null() {
            export_deleter(managed);
        }
        Bound::from_owned_ptr_or_err(py, cap)
    }
}

fn deep_copy(t: &Tensor) -> Tensor {
    let data = match t.data() {
        Data::F32(s) => Data::F32(Storage::from_vec(s.as_slice().to_vec())),
        Data::I32(s) => Data::I32(Storage::from_vec(s.as_slice().to_vec())),
    };
    Tensor::new(data, t.shape().to_vec(), t.backend()).expect("same shape and length")
}

/// Owns an imported DLPack tensor; calls the producer's deleter when the last user is gone.
struct Imported(*mut DLManagedTensor);
// SAFETY: DLPack deleters may be called from any thread (NumPy's and PyTorch's take the GIL
// themselves when they need it); we never touch the struct except to call the deleter once.
unsafe impl Send for Imported {}
unsafe impl Sync for Imported {}
impl Drop for Imported {
    fn drop(&mut self) {
        // SAFETY: we took ownership when renaming the capsule; the deleter runs exactly once.
        unsafe {
            if let Some(d) = (*self.0).deleter {
                d(self.0);
            }
        }
    }
}

/// Creates a tensor from any object implementing the DLPack protocol (``__dlpack__``), such
/// as a NumPy array or a PyTorch CPU tensor.
///
/// C-contiguous float32/int32 CPU data is shared (no copy); other dtypes and strides are
/// converted with a copy, following ``Tensor.from_numpy``'s rules.
///
/// Args:
///     obj: an object with ``__dlpack__`` and ``__dlpack_device__``.
///
/// Returns:
///     Tensor
#[pyfunction]
pub fn from_dlpack(py: Python<'_>, obj: &Bound<'_, PyAny>) -> PyResult<PyTensor> {
    if let Ok(t) = obj.cast::<PyTensor>() {
        return Ok(PyTensor::wrap(t.get().inner.clone()));
    }
    if !obj.hasattr("__dlpack__")? {
        return Err(PyTypeError::new_err(format!(
            "from_dlpack expects an object with __dlpack__ (a NumPy array, a torch tensor...), got {}",
            obj.get_type().name()?
        )));
    }
    let cap = obj.call_method0("__dlpack__").map_err(|e| {
        PyTypeError::new_err(format!(
            "from_dlpack: {} could not be exported through DLPack: {e}",
            obj.get_type()
                .name()
                .map(|n| n.to_string())
                .unwrap_or_default()
        ))
    })?;
    // SAFETY: we only read the capsule after checking its name, and take ownership (rename)
    // only when we will wrap it.
    unsafe {
        let capp = cap.as_ptr();
        if ffi::PyCapsule_IsValid(capp, NAME.as_ptr()) != 1 {
            return Err(PyTypeError::new_err(
                "__dlpack__ did not return an unconsumed 'dltensor' capsule",
            ));
        }
        let m = ffi::PyCapsule_GetPointer(capp, NAME.as_ptr()) as *mut DLManagedTensor;
        let dt = &(*m).dl_tensor;
        if dt.device.device_type != DEVICE_CPU {
            return Err(PyValueError::new_err(format!(
                "from_dlpack: gpt_rs works on CPU memory, got DLPack device type {}",
                dt.device.device_type
            )));
        }
        let ndim = dt.ndim.max(0) as usize;
        let shape: Vec<usize> = if ndim == 0 {
            vec![]
        } else {
            std::slice::from_raw_parts(dt.shape, ndim)
                .iter()
                .map(|&d| d as usize)
                .collect()
        };
        let contiguous = dt.strides.is_null() || {
            let strides = std::slice::from_raw_parts(dt.strides, ndim);
            let mut expect = 1i64;
            let mut ok = true;
            for i in (0..ndim).rev() {
                if shape[i] != 1 && strides[i] != expect {
                    ok = false;
                }
                expect *= shape[i] as i64;
            }
            ok
        };
        let ptr = (dt.data as *const u8).add(dt.byte_offset as usize);
        let native = dt.dtype.lanes == 1
            && dt.dtype.bits == 32
            && matches!(dt.dtype.code, CODE_FLOAT | CODE_INT);
        if !(native && contiguous && (ptr as usize).is_multiple_of(4)) {
            drop(cap);
            let arr = py.import("numpy")?.call_method1("from_dlpack", (obj,))?;
            return tensor_from_numpy(&arr, true).map(PyTensor::wrap);
        }
        let len: usize = shape.iter().product();
        let code = dt.dtype.code;
        ffi::PyCapsule_SetName(capp, USED_NAME.as_ptr());
        let owner: Owner = Arc::new(Imported(m));
        let data = if code == CODE_FLOAT {
            Data::F32(Storage::from_raw_parts(ptr as *const f32, len, true, owner))
        } else {
            Data::I32(Storage::from_raw_parts(ptr as *const i32, len, true, owner))
        };
        Tensor::new(data, shape, current_backend())
            .map(PyTensor::wrap)
            .map_err(to_py)
    }
}
