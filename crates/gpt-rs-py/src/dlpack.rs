//! DLPack, both ways, without copying: `Tensor.__dlpack__` exports a "dltensor" capsule whose
//! deleter releases our buffer; `from_dlpack(obj)` imports a CPU float32/float16/bfloat16/int32
//! C-contiguous tensor by taking ownership of the producer's capsule. Those dtypes in other
//! layouts are gathered into a new buffer here; other dtypes are converted through NumPy.

use std::ffi::{c_void, CStr};
use std::sync::Arc;

use gpt_rs::memory;
use gpt_rs::storage::{Owner, Storage};
use gpt_rs::tensor::Data;
use gpt_rs::{DType, Tensor};
use pyo3::exceptions::PyBufferError;
use pyo3::ffi;
use pyo3::prelude::*;

use crate::convert::{tensor_from_numpy, PyTensor};
use crate::errors::to_py;

pub const DEVICE_CPU: i32 = 1;
const CODE_INT: u8 = 0;
const CODE_FLOAT: u8 = 2;
const CODE_BFLOAT: u8 = 4;
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
    let writable = t.data().writable();
    if copy == Some(false) && !writable {
        return Err(PyBufferError::new_err(
            "__dlpack__(copy=False): the tensor's memory is read-only, and an unversioned DLPack \
             capsule cannot say so; use copy=None or True",
        ));
    }
    let t = if copy == Some(true) || !writable {
        t.deep_copy("__dlpack__: the copy").map_err(to_py)?
    } else {
        t.clone()
    };
    let (owner, ptr) = t.data().raw_parts();
    let (data, keep) = (ptr as *mut c_void, owner.clone());
    let dtype = dl_dtype(t.dtype());
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

/// DLPack's description of our element types.
fn dl_dtype(d: DType) -> DLDataType {
    let (code, bits) = match d {
        DType::F32 => (CODE_FLOAT, 32),
        DType::F16 => (CODE_FLOAT, 16),
        DType::BF16 => (CODE_BFLOAT, 16),
        DType::I32 => (CODE_INT, 32),
    };
    DLDataType {
        code,
        bits,
        lanes: 1,
    }
}

/// Our element type for a DLPack one, if we hold it as is.
fn our_dtype(code: u8, bits: u8) -> Option<DType> {
    DType::ALL
        .into_iter()
        .find(|&d| (dl_dtype(d).code, dl_dtype(d).bits) == (code, bits))
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

/// What a validated capsule describes: shape, where its first element is, whether it is a
/// C-contiguous float32/int32 buffer that can be shared as is.
struct Checked {
    shape: Vec<usize>,
    /// Element strides (C order when the capsule had none).
    strides: Vec<i64>,
    ptr: *const u8,
    /// Our dtype for the capsule's, when we hold that type.
    dtype: Option<DType>,
    /// C-contiguous and aligned: can be shared as is.
    shareable: bool,
}

/// Validates every field of a producer's `DLTensor` before anything reads its memory: a
/// capsule is foreign input, and a wrong field would otherwise be a segfault.
///
/// # Safety
/// `dt` must point to a readable `DLTensor` (the capsule's pointer, checked by name).
unsafe fn check(dt: &DLTensor) -> PyResult<Checked> {
    let bad = |m: String| crate::errors::value_error(format!("from_dlpack: {m}"));
    if dt.device.device_type != DEVICE_CPU {
        return Err(bad(format!(
            "gpt_rs works on CPU memory, got DLPack device type {}",
            dt.device.device_type
        )));
    }
    if !(0..=MAX_NDIM).contains(&dt.ndim) {
        return Err(bad(format!(
            "the capsule's ndim is {}; expected 0 to {MAX_NDIM}",
            dt.ndim
        )));
    }
    let ndim = dt.ndim as usize;
    let (code, bits, lanes) = (dt.dtype.code, dt.dtype.bits, dt.dtype.lanes);
    if lanes != 1 || bits == 0 || !bits.is_multiple_of(8) {
        return Err(crate::errors::type_error(format!(
            "from_dlpack: unsupported DLPack dtype (code {code}, {bits} bits, {lanes} lanes): \
             only scalar types of whole bytes can be imported"
        )));
    }
    if ndim > 0 && dt.shape.is_null() {
        return Err(bad(format!(
            "the capsule has ndim {ndim} but no shape (NULL)"
        )));
    }
    // SAFETY: non-null with `ndim` entries, as the DLPack contract states for `shape`.
    let dims: &[i64] = if ndim == 0 {
        &[]
    } else {
        unsafe { std::slice::from_raw_parts(dt.shape, ndim) }
    };
    if let Some(d) = dims.iter().find(|&&d| d < 0) {
        return Err(bad(format!(
            "the capsule's shape {dims:?} has a negative dimension {d}"
        )));
    }
    let shape: Vec<usize> = dims.iter().map(|&d| d as usize).collect();
    let numel = memory::numel_u128(&shape);
    let item = (bits / 8) as i128;
    if numel.saturating_mul(item as u128) > isize::MAX as u128 {
        return Err(bad(format!(
            "the capsule's shape {dims:?} describes more bytes than can exist"
        )));
    }
    // Strides in elements; NULL means C-contiguous. The span [lo, hi] of element offsets
    // any index can reach (negative strides reach below the first element).
    let strides: Vec<i64> = if dt.strides.is_null() || ndim == 0 {
        let mut s = vec![0i64; ndim];
        let mut acc = 1i64;
        for i in (0..ndim).rev() {
            s[i] = acc;
            acc = acc.saturating_mul(dims[i].max(1));
        }
        s
    } else {
        // SAFETY: non-null with `ndim` entries (DLPack contract).
        unsafe { std::slice::from_raw_parts(dt.strides, ndim) }.to_vec()
    };
    let contiguous = {
        let mut expect = 1i128;
        let mut ok = true;
        for i in (0..ndim).rev() {
            if shape[i] != 1 && strides[i] as i128 != expect {
                ok = false;
            }
            expect *= shape[i] as i128;
        }
        ok
    };
    let base = (dt.data as usize as i128) + dt.byte_offset as i128;
    if numel > 0 {
        if dt.data.is_null() {
            return Err(bad(format!(
                "the capsule's data pointer is NULL but its shape {dims:?} has {numel} elements"
            )));
        }
        let (mut lo, mut hi) = (0i128, 0i128);
        for (&d, &st) in shape.iter().zip(&strides) {
            let reach = (d as i128 - 1) * st as i128;
            if reach < 0 {
                lo += reach;
            } else {
                hi += reach;
            }
        }
        let (start, end) = (base + lo * item, base + (hi + 1) * item);
        if start <= 0 || end > MAX_ADDRESS {
            return Err(bad(format!(
                "the capsule's data pointer, byte_offset {} and strides {strides:?} describe \
                 memory outside the address space",
                dt.byte_offset
            )));
        }
        if !is_mapped(start as usize, (end - start) as usize) {
            return Err(bad(format!(
                "the memory the capsule describes (data pointer, byte_offset {}, shape {dims:?}, \
                 strides {strides:?}) is not mapped in this process",
                dt.byte_offset
            )));
        }
    }
    let dtype = our_dtype(code, bits);
    let aligned = (base as usize).is_multiple_of(item as usize);
    Ok(Checked {
        shape,
        strides,
        ptr: base as usize as *const u8,
        dtype,
        shareable: dtype.is_some() && contiguous && aligned,
    })
}

/// At most this many dimensions (NumPy's limit).
const MAX_NDIM: i32 = 64;
/// The end of the lower half of a 64-bit address space, where user memory lives.
const MAX_ADDRESS: i128 = 1 << 63;

/// Whether every page of `[start, start + len)` is mapped (`mincore` fails with ENOMEM on
/// unmapped pages). Protection is not checked: mapped memory the producer cannot read is
/// outside what a capsule can be checked for.
fn is_mapped(start: usize, len: usize) -> bool {
    #[cfg(unix)]
    {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
        let first = start / page * page;
        let Some(end) = start.checked_add(len) else {
            return false;
        };
        let span = end - first;
        let Ok(mut residency) = memory::zeroed::<u8>(span.div_ceil(page), "") else {
            return false;
        };
        // SAFETY: `first` is page-aligned and `residency` has one byte per page of the span;
        // mincore only writes to `residency` and fails cleanly for unmapped ranges.
        let rc = unsafe {
            libc::mincore(
                first as *mut c_void,
                span,
                residency.as_mut_ptr() as *mut libc::c_uchar,
            )
        };
        rc == 0
    }
    #[cfg(not(unix))]
    {
        let _ = (start, len);
        true
    }
}

/// Hands an already validated capsule to NumPy (for dtypes and layouts NumPy converts):
/// `numpy.from_dlpack` asks this object, not the producer, for the capsule, so what NumPy
/// reads is what was checked.
#[pyclass(name = "_CheckedCapsule", module = "gpt_rs")]
struct CheckedCapsule {
    capsule: Option<Py<PyAny>>,
}

#[pymethods]
impl CheckedCapsule {
    #[pyo3(signature = (**_kwargs))]
    fn __dlpack__(
        &mut self,
        _kwargs: Option<&Bound<'_, pyo3::types::PyDict>>,
    ) -> PyResult<Py<PyAny>> {
        self.capsule
            .take()
            .ok_or_else(|| PyBufferError::new_err("the capsule was already consumed"))
    }

    fn __dlpack_device__(&self) -> (i32, i32) {
        (DEVICE_CPU, 0)
    }
}

/// Creates a tensor from any object implementing the DLPack protocol (``__dlpack__``), such
/// as a NumPy array or a PyTorch CPU tensor.
///
/// C-contiguous float32, float16, bfloat16 and int32 CPU data is shared (no copy); other
/// strides are copied, other dtypes converted with a copy following ``Tensor.from_numpy``'s
/// rules. Every field of the
/// producer's capsule (ndim, shape, strides, data pointer and offset, dtype) is checked
/// first: an inconsistent one raises ValueError or TypeError.
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
        return Err(crate::errors::type_error(format!(
            "from_dlpack expects an object with __dlpack__ (a NumPy array, a torch tensor...), got {}",
            obj.get_type().name()?
        )));
    }
    let cap = obj.call_method0("__dlpack__").map_err(|e| {
        crate::errors::type_error(format!(
            "from_dlpack: {} could not be exported through DLPack: {e}",
            obj.get_type()
                .name()
                .map(|n| n.to_string())
                .unwrap_or_default()
        ))
    })?;
    // SAFETY: we only read the capsule after checking its name, read its memory only after
    // `check`, and take ownership (rename) only when we will wrap it.
    unsafe {
        let capp = cap.as_ptr();
        if ffi::PyCapsule_IsValid(capp, NAME.as_ptr()) != 1 {
            return Err(crate::errors::type_error(
                "__dlpack__ did not return an unconsumed 'dltensor' capsule",
            ));
        }
        let m = ffi::PyCapsule_GetPointer(capp, NAME.as_ptr()) as *mut DLManagedTensor;
        if m.is_null() {
            return Err(crate::errors::value_error(
                "from_dlpack: the capsule holds NULL",
            ));
        }
        let c = check(&(*m).dl_tensor)?;
        let Some(dtype) = c.dtype else {
            // NumPy converts what we do not hold (float64, int64, ...), from the checked capsule.
            let holder = Bound::new(
                py,
                CheckedCapsule {
                    capsule: Some(cap.unbind()),
                },
            )?;
            let arr = py.import("numpy")?.call_method1("from_dlpack", (holder,))?;
            return tensor_from_numpy(&arr, true).map(PyTensor::wrap);
        };
        let len = memory::numel_u128(&c.shape) as usize;
        let data = if c.shareable {
            ffi::PyCapsule_SetName(capp, USED_NAME.as_ptr());
            let owner: Owner = Arc::new(Imported(m));
            match dtype {
                DType::F32 => Data::F32(Storage::from_raw_parts(c.ptr.cast(), len, true, owner)),
                DType::F16 => Data::F16(Storage::from_raw_parts(c.ptr.cast(), len, true, owner)),
                DType::BF16 => Data::BF16(Storage::from_raw_parts(c.ptr.cast(), len, true, owner)),
                DType::I32 => Data::I32(Storage::from_raw_parts(c.ptr.cast(), len, true, owner)),
            }
        } else {
            // Strided or misaligned: gathered into our own buffer; the capsule stays the
            // producer's (unconsumed, its destructor frees it).
            match dtype {
                DType::F32 => Data::F32(Storage::from_vec(gather::<f32>(&c)?)),
                DType::F16 => Data::F16(Storage::from_vec(gather::<half::f16>(&c)?)),
                DType::BF16 => Data::BF16(Storage::from_vec(gather::<half::bf16>(&c)?)),
                DType::I32 => Data::I32(Storage::from_vec(gather::<i32>(&c)?)),
            }
        };
        Tensor::new(data, c.shape, gpt_rs::backend::current())
            .map(PyTensor::wrap)
            .map_err(to_py)
    }
}

/// The elements of a checked capsule in C order, read through its strides (unaligned reads:
/// the data pointer need not be aligned for `T`).
///
/// # Safety
/// `c` came from `check`, which verified every reachable element lies in mapped memory.
unsafe fn gather<T: Copy>(c: &Checked) -> PyResult<Vec<T>> {
    let n = memory::numel_u128(&c.shape) as usize;
    let mut out =
        memory::with_capacity(n, "from_dlpack: the copy of a strided tensor").map_err(to_py)?;
    let mut idx = vec![0usize; c.shape.len()];
    for _ in 0..n {
        let off: i64 = idx
            .iter()
            .zip(&c.strides)
            .map(|(&i, &s)| i as i64 * s)
            .sum();
        // SAFETY: `check` bounded every index's offset inside the mapped span.
        out.push(unsafe { (c.ptr as *const T).offset(off as isize).read_unaligned() });
        for ax in (0..idx.len()).rev() {
            idx[ax] += 1;
            if idx[ax] < c.shape[ax] {
                break;
            }
            idx[ax] = 0;
        }
    }
    Ok(out)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(from_dlpack, m)?)?;
    Ok(())
}
