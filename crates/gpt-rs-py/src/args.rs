//! Integer arguments from Python. `Int` accepts any Python (or NumPy) int up to 127 bits, so
//! the function checks the range and names the argument: an out-of-range value (`seed=-1`,
//! `top_k=2**70`) is a ValueError, never PyO3's OverflowError.

use pyo3::exceptions::{PyOverflowError, PyValueError};
use pyo3::prelude::*;

/// An integer argument: any Python int of up to 127 bits; larger ones are a ValueError here.
#[derive(Clone, Copy, Debug)]
pub struct Int(pub i128);

impl<'a, 'py> FromPyObject<'a, 'py> for Int {
    type Error = PyErr;

    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        match obj.extract::<i128>() {
            Ok(v) => Ok(Int(v)),
            Err(e) if e.is_instance_of::<PyOverflowError>(obj.py()) => {
                Err(PyValueError::new_err(format!(
                    "integer {} is out of range",
                    obj.repr().map(|r| r.to_string()).unwrap_or_default()
                )))
            }
            Err(e) => Err(e),
        }
    }
}

impl Int {
    /// The value in `lo..=hi`, or a ValueError naming `name`.
    pub fn within(self, name: &str, lo: i128, hi: i128) -> PyResult<i128> {
        if (lo..=hi).contains(&self.0) {
            Ok(self.0)
        } else {
            Err(PyValueError::new_err(format!(
                "{name} must be an integer from {lo} to {hi}, got {}",
                self.0
            )))
        }
    }
}

/// A seed: an integer from 0 to 2**64 - 1.
pub fn seed(seed: Option<Int>) -> PyResult<Option<u64>> {
    seed.map(|s| s.within("seed", 0, u64::MAX as i128).map(|v| v as u64))
        .transpose()
}

/// Token ids (each from 0 to 2**32 - 1); the ValueError names the position of a bad one.
pub fn token_ids(ids: Vec<Int>, what: &str) -> PyResult<Vec<u32>> {
    ids.iter()
        .enumerate()
        .map(|(i, &Int(t))| {
            u32::try_from(t).map_err(|_| {
                PyValueError::new_err(format!(
                    "{what}: token id {t} at position {i} is negative or too large"
                ))
            })
        })
        .collect()
}
