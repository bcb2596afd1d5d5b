//! Arguments from Python: integers, and the generation options. `Int` accepts any Python (or
//! NumPy) int up to 127 bits, so the function checks the range and names the argument: an
//! out-of-range value (`seed=-1`, `top_k=2**70`) is a ValueError, never PyO3's OverflowError.

use pyo3::exceptions::PyOverflowError;
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
                Err(crate::errors::value_error(format!(
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
            Err(crate::errors::value_error(format!(
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
                crate::errors::value_error(format!(
                    "{what}: token id {t} at position {i} is negative or too large"
                ))
            })
        })
        .collect()
}

/// The sampling and stopping keywords of every generation method, parsed from its
/// `**options` in this one place (the stubs list them once too, as `gpt_rs.GenerateOptions`).
pub struct GenOptions {
    pub params: gpt_rs::generate::SamplingParams,
    /// None: the model's default stop tokens.
    pub stop_token_ids: Option<Vec<u32>>,
    pub stop: Vec<String>,
}

/// The keywords `GenOptions::parse` takes; `stop` only where text is decoded.
const OPTION_NAMES: [&str; 8] = [
    "temperature",
    "top_k",
    "top_p",
    "min_p",
    "repetition_penalty",
    "seed",
    "stop_token_ids",
    "stop",
];

impl GenOptions {
    /// Reads `options`; an unknown keyword is a TypeError worded as Python's own, a bad value
    /// a ValueError naming it. `takes_stop` is false for the id-only methods (no tokenizer to
    /// match stop strings with).
    pub fn parse(
        method: &str,
        options: Option<&Bound<'_, pyo3::types::PyDict>>,
        takes_stop: bool,
    ) -> PyResult<Self> {
        use pyo3::types::PyDictMethods;
        let mut params = gpt_rs::generate::SamplingParams::default();
        let (mut stop_token_ids, mut stop) = (None, Vec::new());
        for (key, value) in options.into_iter().flat_map(|d| d.iter()) {
            let key: String = key.extract()?;
            if value.is_none() && key != "temperature" {
                continue;
            }
            // A wrong type names the keyword (PyO3's own message would not).
            let py = value.py();
            let named = |e: PyErr| {
                if e.is_instance_of::<pyo3::exceptions::PyTypeError>(py) {
                    crate::errors::type_error(format!("{method}(): {key}: {e}"))
                } else {
                    e
                }
            };
            let float = |v: &Bound<'_, PyAny>| v.extract::<f64>().map(|x| x as f32).map_err(named);
            match key.as_str() {
                "temperature" => params.temperature = float(&value)?,
                "top_k" => {
                    // A top_k beyond the vocabulary keeps every token (as Hugging Face's).
                    let k = value.extract::<Int>().map_err(named)?.within(
                        "top_k",
                        1,
                        i64::MAX as i128,
                    )?;
                    params.top_k = Some(k as usize);
                }
                "top_p" => params.top_p = Some(float(&value)?),
                "min_p" => params.min_p = Some(float(&value)?),
                "repetition_penalty" => params.repetition_penalty = Some(float(&value)?),
                "seed" => params.seed = seed(Some(value.extract().map_err(named)?))?,
                "stop_token_ids" => {
                    let ids = value.extract().map_err(named)?;
                    stop_token_ids = Some(token_ids(ids, "stop_token_ids")?)
                }
                "stop" if takes_stop => {
                    stop = if let Ok(s) = value.extract::<String>() {
                        vec![s]
                    } else {
                        value.extract().map_err(named)?
                    }
                }
                _ => {
                    let known = OPTION_NAMES
                        .iter()
                        .filter(|n| takes_stop || **n != "stop")
                        .copied()
                        .collect::<Vec<_>>()
                        .join(", ");
                    return Err(crate::errors::type_error(format!(
                        "{method}() got an unexpected keyword argument '{key}' (it takes: {known})"
                    )));
                }
            }
        }
        params.validate().map_err(crate::errors::to_py)?;
        Ok(Self {
            params,
            stop_token_ids,
            stop,
        })
    }
}
