//! Engine errors to Python exceptions, and `run`: release the GIL around engine work and turn
//! any Rust panic into a RuntimeError instead of letting it abort the interpreter.

use std::panic::{catch_unwind, AssertUnwindSafe};

use gpt_rs::Error;
use pyo3::exceptions::{
    PyFileNotFoundError, PyKeyboardInterrupt, PyMemoryError, PyOSError, PyOverflowError,
    PyRuntimeError, PyTypeError, PyValueError,
};
use pyo3::prelude::*;
use pyo3::types::PyType;

pub fn to_py(e: Error) -> PyErr {
    let msg = e.to_string();
    let (class, builtin): (&str, fn(String) -> PyErr) = match e {
        Error::Shape(_) => ("ShapeError", PyValueError::new_err),
        Error::Value(_) => ("InvalidValueError", PyValueError::new_err),
        Error::DType(_) => ("DTypeError", PyTypeError::new_err),
        Error::Overflow(_) => ("SizeOverflowError", PyOverflowError::new_err),
        Error::Io(_) => ("FileReadError", PyOSError::new_err),
        Error::NotFound(_) => ("MissingFileError", PyFileNotFoundError::new_err),
        Error::Memory(_) => ("OutOfMemoryError", PyMemoryError::new_err),
        Error::Interrupted => return PyKeyboardInterrupt::new_err(msg),
        Error::Busy(_) => ("BusyError", PyRuntimeError::new_err),
        Error::Backend(_) => ("BackendError", PyRuntimeError::new_err),
        Error::Internal(_) => ("InternalError", PyRuntimeError::new_err),
    };
    raise(class, builtin, msg)
}

/// `class` of `gpt_rs.errors` with `msg`. The classes are Python ones (two bases each); the
/// built-in base stands in if that module cannot be imported.
fn raise(class: &str, builtin: fn(String) -> PyErr, msg: String) -> PyErr {
    Python::attach(|py| {
        py.import("gpt_rs.errors")
            .and_then(|m| m.getattr(class))
            .and_then(|c| Ok(c.cast_into::<PyType>()?))
            .map(|t| PyErr::from_type(t, msg.clone()))
            .unwrap_or_else(|_| builtin(msg))
    })
}

/// The binding's own argument checks raise the engine's classes too: a bad value...
pub fn value_error(msg: impl Into<String>) -> PyErr {
    raise("InvalidValueError", PyValueError::new_err, msg.into())
}

/// ...a type or dtype an operation does not take...
pub fn type_error(msg: impl Into<String>) -> PyErr {
    raise("DTypeError", PyTypeError::new_err, msg.into())
}

/// ...and a number too large for its target.
pub fn overflow_error(msg: impl Into<String>) -> PyErr {
    raise("SizeOverflowError", PyOverflowError::new_err, msg.into())
}

/// Inputs smaller than this run without releasing the GIL: the release costs more than the op.
const DETACH_MIN_WORK: usize = 1 << 14;

/// Runs engine work `f` (of roughly `work` elements) with the GIL released when it is large
/// enough to matter, mapping errors and panics to Python exceptions.
/// Runs `f`, turning a Rust panic into `Error::Internal` (so it reaches Python as RuntimeError).
pub fn catch_panics<T>(f: impl FnOnce() -> gpt_rs::Result<T>) -> gpt_rs::Result<T> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|p| {
        let what = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        Err(Error::Internal(format!(
            "internal error in gpt_rs (please report it): {what}"
        )))
    })
}

pub fn run<T: Send>(
    py: Python<'_>,
    work: usize,
    f: impl FnOnce() -> gpt_rs::Result<T> + Send,
) -> PyResult<T> {
    let guarded = move || catch_panics(f);
    let r = if work >= DETACH_MIN_WORK {
        py.detach(guarded)
    } else {
        guarded()
    };
    r.map_err(to_py)
}
