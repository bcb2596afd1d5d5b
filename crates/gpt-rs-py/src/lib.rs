//! `gpt_rs._native`: the PyO3 layer. It only translates: Python objects to engine tensors and
//! back, engine errors to Python exceptions, and it releases the GIL around engine work.
//!
//! Module dependencies point one way (`tests/test_binding_layout.py` checks it): `errors` and
//! `args` are leaves, `convert` (the Tensor class, NumPy in and out, arguments) builds on
//! them, `dlpack` and `functional` on `convert`, and `tensor` (Tensor's methods), `nn`,
//! `model`, `quant` and `train` on those.

mod args;
mod convert;
mod dlpack;
mod engine;
mod errors;
mod functional;
mod model;
mod nn;
mod quant;
mod tensor;
mod train;

use gpt_rs::backend::cpu::simd;
use gpt_rs::backend::{self, BackendKind};
use pyo3::prelude::*;

use errors::to_py;

/// Sets the backend used by subsequent ops (process-wide).
///
/// Args:
///     name: one of ``list_backends()``.
///
/// Raises:
///     ValueError: if the name is unknown or the backend was compiled out.
#[pyfunction]
fn set_backend(name: &str) -> PyResult<()> {
    let kind = BackendKind::parse(name).map_err(to_py)?;
    backend::set_current(kind).map_err(to_py)
}

/// Returns the name of the current backend.
#[pyfunction]
fn get_backend() -> &'static str {
    backend::current().name()
}

/// Returns the compiled-in backends, in a stable order (fastest first).
#[pyfunction]
fn list_backends() -> Vec<&'static str> {
    backend::available().iter().map(|b| b.name()).collect()
}

/// Sets the number of worker threads used by the multithreaded backends.
///
/// Args:
///     n: a thread count from 1 to 1024.
#[pyfunction]
fn set_num_threads(n: i64) -> PyResult<()> {
    let n = usize::try_from(n).map_err(|_| {
        crate::errors::value_error(format!("num_threads must be between 1 and 1024, got {n}"))
    })?;
    gpt_rs::threads::set_num_threads(n).map_err(to_py)
}

/// Returns the number of worker threads.
#[pyfunction]
fn get_num_threads() -> usize {
    gpt_rs::threads::num_threads()
}

/// CPU features the kernels can use, as detected at run time.
#[pyfunction]
fn cpu_features() -> Vec<&'static str> {
    simd::cpu_features()
}

/// The SIMD level the `cpu` kernels use now: 'avx512', 'avx2' or 'scalar'.
#[pyfunction]
fn get_simd_level() -> &'static str {
    simd::level().name()
}

/// Caps the SIMD level of the `cpu` kernels ('avx512', 'avx2' or 'scalar'); used to test
/// the fallback paths. Returns the level now in use (never above what the CPU has).
#[pyfunction]
fn set_simd_level(name: &str) -> PyResult<&'static str> {
    let level = simd::SimdLevel::parse(name).ok_or_else(|| {
        crate::errors::value_error(format!(
            "unknown SIMD level '{name}'; expected 'avx512', 'avx2' or 'scalar'"
        ))
    })?;
    Ok(simd::set_max_level(level).name())
}

/// For tests: panics inside engine work, to show that a Rust panic reaches Python as a
/// RuntimeError (never an abort).
#[pyfunction]
fn _panic_for_tests(py: Python<'_>, release_gil: bool) -> PyResult<()> {
    let work = if release_gil { usize::MAX } else { 0 };
    errors::run(py, work, || -> gpt_rs::Result<()> {
        panic!("deliberate test panic")
    })
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("_MAX_VOCAB_SIZE", gpt_rs::tokenizer::MAX_VOCAB)?;
    m.add_function(wrap_pyfunction!(set_backend, m)?)?;
    m.add_function(wrap_pyfunction!(get_backend, m)?)?;
    m.add_function(wrap_pyfunction!(list_backends, m)?)?;
    m.add_function(wrap_pyfunction!(set_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(get_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(cpu_features, m)?)?;
    m.add_function(wrap_pyfunction!(get_simd_level, m)?)?;
    m.add_function(wrap_pyfunction!(set_simd_level, m)?)?;
    dlpack::register(m)?;
    m.add_function(wrap_pyfunction!(_panic_for_tests, m)?)?;
    tensor::register(m)?;
    functional::register(m)?;
    nn::register(m)?;
    model::register(m)?;
    engine::register(m)?;
    quant::register(m)?;
    train::register(m)?;
    Ok(())
}
