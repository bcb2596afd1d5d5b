//! `gpt_rs.quant`: the GGML block formats from Python (dequantize, quantize, the quantized
//! matmul of the current backend), for checking them against the `gguf` package.

use gpt_rs::backend::quant::QuantType;
use gpt_rs::backend::{self, Panels, SourceDtype, WeightFormat, WeightSource};
use gpt_rs::Error;
use numpy::{
    PyArray1, PyArray2, PyArrayMethods, PyReadonlyArray1, PyReadonlyArray2, PyUntypedArrayMethods,
};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::errors::{run, to_py};

fn parse(qtype: &str) -> PyResult<QuantType> {
    QuantType::parse(qtype).ok_or_else(|| {
        let names: Vec<&str> = QuantType::ALL.iter().map(|t| t.name()).collect();
        to_py(Error::Value(format!(
            "unknown quantization type '{qtype}' (supported: {})",
            names.join(", ")
        )))
    })
}

fn check_blocks(t: QuantType, bytes: usize) -> PyResult<usize> {
    if !bytes.is_multiple_of(t.block_bytes()) {
        return Err(to_py(Error::Value(format!(
            "{bytes} bytes is not a whole number of {} blocks ({} bytes each)",
            t.name(),
            t.block_bytes()
        ))));
    }
    Ok(bytes / t.block_bytes() * t.block_elems())
}

/// The block formats gpt_rs reads.
#[pyfunction]
fn quant_types() -> Vec<&'static str> {
    QuantType::ALL.iter().map(|t| t.name()).collect()
}

/// Dequantizes `data` (whole blocks of `qtype`) to a 1-D float32 array.
#[pyfunction]
fn dequantize<'py>(
    py: Python<'py>,
    data: &[u8],
    qtype: &str,
) -> PyResult<Bound<'py, PyArray1<f32>>> {
    let t = parse(qtype)?;
    let n = check_blocks(t, data.len())?;
    let out = run(py, n, || {
        let mut out = gpt_rs::memory::zeroed(n, "dequantized values")?;
        t.dequantize(data, &mut out);
        Ok(out)
    })?;
    Ok(PyArray1::from_vec(py, out))
}

/// Quantizes a 1-D float32 array (a multiple of the block size) to `qtype` blocks.
#[pyfunction]
fn quantize<'py>(
    py: Python<'py>,
    x: PyReadonlyArray1<'py, f32>,
    qtype: &str,
) -> PyResult<Bound<'py, PyBytes>> {
    let t = parse(qtype)?;
    let x = x.as_slice()?;
    if !t.can_quantize() {
        return Err(to_py(Error::Value(format!(
            "quantizing to {} is not supported (supported: {})",
            t.name(),
            QuantType::quantizable_names()
        ))));
    }
    if x.len() % t.block_elems() != 0 {
        return Err(to_py(Error::Value(format!(
            "{} values is not a whole number of {} blocks ({} values each)",
            x.len(),
            t.name(),
            t.block_elems()
        ))));
    }
    let mut out = vec![0u8; t.row_bytes(x.len())];
    t.quantize_row(x, &mut out);
    Ok(PyBytes::new(py, &out))
}

/// `a @ W.T` on the current backend, `W` being `n` rows of `qtype` blocks (`[n, k]`, the
/// GGUF layout) and `a` `[m, k]` float32.
#[pyfunction]
fn _quant_matmul<'py>(
    py: Python<'py>,
    a: PyReadonlyArray2<'py, f32>,
    w: &[u8],
    qtype: &str,
    n: usize,
) -> PyResult<Bound<'py, PyArray2<f32>>> {
    let t = parse(qtype)?;
    let (m, k) = (a.shape()[0], a.shape()[1]);
    let a = a.as_slice()?;
    let be = backend::current().get().map_err(to_py)?;
    let out = run(py, m * k * n, || {
        let src = WeightSource {
            bytes: w,
            dtype: SourceDtype::Quant(t),
            out_in: true,
            k,
            n,
        };
        let p = Panels::prepare(&src, WeightFormat::Quant(t))?;
        let mut c = gpt_rs::memory::zeroed(m * n, "the product")?;
        be.matmul_panels(a, &p, None, &mut c, m);
        Ok(c)
    })?;
    PyArray1::from_vec(py, out).reshape([m, n])
}

/// Writes the Hugging Face folder `src` as a GGUF file `out` with its matrices in `qtype`
/// (a block type, or the mixes q4_k_m and q5_k_m).
#[pyfunction]
#[pyo3(signature = (src, out, qtype, progress = false))]
fn quantize_model(
    py: Python<'_>,
    src: std::path::PathBuf,
    out: std::path::PathBuf,
    qtype: &str,
    progress: bool,
) -> PyResult<()> {
    let t = gpt_rs::models::gguf_export::Recipe::parse(qtype).map_err(to_py)?;
    run(py, usize::MAX, move || {
        let mut last = 0;
        gpt_rs::models::gguf_export::export(&src, &out, t, &mut |done, total| {
            let pct = 100 * done / total.max(1);
            if progress && (pct >= last + 10 || done == total) {
                last = pct;
                eprintln!("quantize: {pct}% of {total} tensors");
            }
        })
    })
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(quantize_model, m)?)?;
    m.add_function(wrap_pyfunction!(quant_types, m)?)?;
    m.add_function(wrap_pyfunction!(dequantize, m)?)?;
    m.add_function(wrap_pyfunction!(quantize, m)?)?;
    m.add_function(wrap_pyfunction!(_quant_matmul, m)?)?;
    Ok(())
}
