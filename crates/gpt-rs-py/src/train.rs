//! `gpt_rs.TrainableModel`: a GPT-2 being trained (parameters, gradients, AdamW state).
//! Each call runs one engine step with the GIL released; the loop, data and schedule are in
//! Python (`gpt_rs.train`).

use std::path::PathBuf;

use gpt_rs::checkpoint::Gpt2Config;
use gpt_rs::train::{self, AdamW, AdamWConfig, TrainableGpt2};
use numpy::{PyArray1, PyArray3, PyArrayMethods, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::args::Int;
use crate::errors::{run, to_py};

/// A GPT-2-architecture model with gradients and optimizer state, for training.
///
/// Use ``gpt_rs.train.new_model`` / ``gpt_rs.train.load_model`` (which build this) and
/// ``gpt_rs.train.Trainer`` for the training loop.
#[pyclass(name = "TrainableModel", module = "gpt_rs")]
pub struct PyTrainable {
    model: TrainableGpt2,
    opt: Option<AdamW>,
}

/// Converts a `[batch, time]` int64 array to token ids, checking the range.
fn tokens(arr: &PyReadonlyArray2<'_, i64>, what: &str) -> PyResult<(Vec<u32>, usize, usize)> {
    let (b, t) = (arr.shape()[0], arr.shape()[1]);
    let view = arr.as_array();
    let mut ids = gpt_rs::memory::with_capacity(b * t, what).map_err(to_py)?;
    for &x in view.iter() {
        ids.push(u32::try_from(x).map_err(|_| {
            crate::errors::value_error(format!("{what}: token id {x} is negative or too large"))
        })?);
    }
    Ok((ids, b, t))
}

fn config_from_py(py: Python<'_>, config: &Bound<'_, PyDict>) -> PyResult<Gpt2Config> {
    let text: String = py
        .import("json")?
        .call_method1("dumps", (config,))
        .map_err(|e| crate::errors::type_error(format!("config must be JSON-serializable: {e}")))?
        .extract()?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| crate::errors::value_error(e.to_string()))?;
    Gpt2Config::from_json(&v).map_err(to_py)
}

#[pymethods]
impl PyTrainable {
    /// A new model with GPT-2's seeded initialization.
    ///
    /// Args:
    ///     config: GPT-2 ``config.json`` fields (``vocab_size``, ``n_positions``, ``n_embd``,
    ///         ``n_layer``, ``n_head``, ...; missing ones take GPT2Config's defaults).
    ///     seed: the initialization seed.
    #[new]
    #[pyo3(signature = (config, seed = Int(0)), text_signature = "(config, seed=0)")]
    fn new(py: Python<'_>, config: &Bound<'_, PyDict>, seed: Int) -> PyResult<Self> {
        let seed = crate::args::seed(Some(seed))?.unwrap_or(0);
        let cfg = config_from_py(py, config)?;
        let model = run(py, usize::MAX, move || TrainableGpt2::new(cfg, seed))?;
        Ok(Self { model, opt: None })
    }

    /// Loads ``config.json`` + ``model.safetensors`` from a folder (optimizer state is loaded
    /// separately with ``load_optimizer``).
    #[staticmethod]
    fn load(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        let model = run(py, usize::MAX, move || {
            let cfg = Gpt2Config::from_file(&path.join("config.json"))?;
            TrainableGpt2::load(&path.join("model.safetensors"), cfg)
        })?;
        Ok(Self { model, opt: None })
    }

    /// Forward and backward on one batch; returns the mean loss and adds the gradient of
    /// ``loss_scale * loss`` to the accumulated gradients.
    ///
    /// Args:
    ///     inputs, targets: int64 arrays of shape ``(batch, time)``.
    #[pyo3(signature = (inputs, targets, loss_scale = 1.0))]
    fn forward_backward(
        &mut self,
        py: Python<'_>,
        inputs: PyReadonlyArray2<'_, i64>,
        targets: PyReadonlyArray2<'_, i64>,
        loss_scale: f32,
    ) -> PyResult<f64> {
        let (x, b, t) = tokens(&inputs, "inputs")?;
        let (y, ..) = tokens(&targets, "targets")?;
        if inputs.shape() != targets.shape() {
            return Err(crate::errors::value_error(format!(
                "inputs {:?} and targets {:?} must have the same shape",
                inputs.shape(),
                targets.shape()
            )));
        }
        let m = &mut self.model;
        run(py, usize::MAX, move || {
            m.forward_backward(&x, &y, b, t, loss_scale)
        })
    }

    /// Mean cross-entropy loss on one batch, without gradients.
    fn loss(
        &mut self,
        py: Python<'_>,
        inputs: PyReadonlyArray2<'_, i64>,
        targets: PyReadonlyArray2<'_, i64>,
    ) -> PyResult<f64> {
        let (x, b, t) = tokens(&inputs, "inputs")?;
        let (y, ..) = tokens(&targets, "targets")?;
        if inputs.shape() != targets.shape() {
            return Err(crate::errors::value_error(
                "inputs and targets must have the same shape",
            ));
        }
        let m = &mut self.model;
        run(py, usize::MAX, move || m.loss(&x, &y, b, t))
    }

    /// Logits for every position: float32 array ``(batch, time, vocab_size)``.
    fn logits<'py>(
        &mut self,
        py: Python<'py>,
        inputs: PyReadonlyArray2<'_, i64>,
    ) -> PyResult<Bound<'py, PyArray3<f32>>> {
        let (x, b, t) = tokens(&inputs, "inputs")?;
        let v = self.model.config.vocab_size;
        let m = &mut self.model;
        let out = run(py, usize::MAX, move || {
            m.logits(&x, b, t)
                .and_then(|l| gpt_rs::memory::copy(l, "logits: the output"))
        })?;
        PyArray1::from_vec(py, out).reshape([b, t, v])
    }

    /// Sets the accumulated gradients to zero.
    fn zero_grad(&mut self) {
        self.model.zero_grad();
    }

    /// The global L2 norm of the accumulated gradients.
    fn grad_norm(&self, py: Python<'_>) -> PyResult<f64> {
        let g = &self.model.grads;
        run(py, usize::MAX, move || Ok(train::grad_norm(g)))
    }

    /// Scales the gradients to a global norm of at most ``max_norm``; returns the norm before.
    fn clip_grad_norm(&mut self, py: Python<'_>, max_norm: f32) -> PyResult<f64> {
        if !(max_norm > 0.0 && max_norm.is_finite()) {
            return Err(crate::errors::value_error(format!(
                "max_norm must be a positive number, got {max_norm}"
            )));
        }
        let g = &mut self.model.grads;
        run(py, usize::MAX, move || {
            Ok(train::clip_grad_norm(g, max_norm))
        })
    }

    /// One AdamW update from the accumulated gradients (PyTorch's AdamW; weight decay only on
    /// matrices and embeddings).
    #[pyo3(signature = (lr, beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.1))]
    fn adamw_step(
        &mut self,
        py: Python<'_>,
        lr: f32,
        beta1: f32,
        beta2: f32,
        eps: f32,
        weight_decay: f32,
    ) -> PyResult<()> {
        let ok = lr.is_finite()
            && lr >= 0.0
            && (0.0..1.0).contains(&beta1)
            && (0.0..1.0).contains(&beta2)
            && eps > 0.0
            && weight_decay >= 0.0;
        if !ok {
            return Err(crate::errors::value_error(format!(
                "invalid AdamW settings: lr={lr} (>= 0), beta1={beta1}, beta2={beta2} (in [0, 1)), eps={eps} (> 0), weight_decay={weight_decay} (>= 0)"
            )));
        }
        let hp = AdamWConfig {
            lr,
            beta1,
            beta2,
            eps,
            weight_decay,
        };
        let n = self.model.layout.total;
        if self.opt.is_none() {
            self.opt = Some(AdamW::new(n).map_err(to_py)?);
        }
        let opt = self.opt.as_mut().expect("just set");
        let m = &mut self.model;
        run(py, usize::MAX, move || {
            opt.update(&mut m.params, &m.grads, &m.layout, &hp);
            Ok(())
        })
    }

    /// The number of optimizer steps taken (restored by ``load_optimizer``).
    #[getter]
    fn optimizer_steps(&self) -> u64 {
        self.opt.as_ref().map_or(0, |o| o.step)
    }

    /// Saves ``config.json`` and ``model.safetensors`` (Hugging Face GPT-2 layout) to a folder.
    ///
    /// Args:
    ///     path: the folder (created if needed).
    ///     extra_config: more ``config.json`` fields (e.g. ``bos_token_id``), or None.
    #[pyo3(signature = (path, extra_config = None))]
    fn save(
        &self,
        py: Python<'_>,
        path: PathBuf,
        extra_config: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<()> {
        let extra: serde_json::Value = match extra_config {
            None => serde_json::Value::Null,
            Some(d) => {
                let text: String = py.import("json")?.call_method1("dumps", (d,))?.extract()?;
                serde_json::from_str(&text)
                    .map_err(|e| crate::errors::value_error(e.to_string()))?
            }
        };
        let m = &self.model;
        run(py, usize::MAX, move || m.save(&path, &extra))
    }

    /// Saves the AdamW state (moments and step) to a safetensors file.
    fn save_optimizer(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        let n = self.model.layout.total;
        let empty;
        let opt = match &self.opt {
            Some(o) => o,
            None => {
                empty = AdamW::new(n).map_err(to_py)?;
                &empty
            }
        };
        run(py, usize::MAX, move || opt.save(&path))
    }

    /// Restores AdamW state saved by ``save_optimizer``.
    fn load_optimizer(&mut self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        let n = self.model.layout.total;
        self.opt = Some(run(py, usize::MAX, move || AdamW::load(&path, n))?);
        Ok(())
    }

    /// Copies of the parameters, by checkpoint name (``wte.weight``, ``h.0.ln_1.weight``, ...).
    fn parameters<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        self.named(py, &self.model.params)
    }

    /// Copies of the accumulated gradients, by parameter name.
    fn gradients<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        self.named(py, &self.model.grads)
    }

    /// Overwrites one parameter (same name and shape as in ``parameters()``).
    fn set_parameter(
        &mut self,
        name: &str,
        value: numpy::PyReadonlyArrayDyn<'_, f32>,
    ) -> PyResult<()> {
        let spec = self
            .model
            .layout
            .get(name)
            .ok_or_else(|| crate::errors::value_error(format!("no parameter named '{name}'")))?
            .clone();
        if value.shape() != spec.shape.as_slice() {
            return Err(crate::errors::value_error(format!(
                "parameter '{name}' has shape {:?}, got {:?}",
                spec.shape,
                value.shape()
            )));
        }
        let dst = &mut self.model.params[spec.range()];
        for (d, &s) in dst.iter_mut().zip(value.as_array().iter()) {
            *d = s;
        }
        Ok(())
    }

    /// The model's hyper-parameters.
    #[getter]
    fn config<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        crate::model::config_dict(py, &self.model.config)
    }

    #[getter]
    fn num_parameters(&self) -> usize {
        self.model.num_parameters()
    }

    fn __repr__(&self) -> String {
        let c = &self.model.config;
        format!(
            "TrainableModel(n_layer={}, n_head={}, n_embd={}, n_positions={}, vocab_size={}, parameters={})",
            c.n_layer,
            c.n_head,
            c.n_embd,
            c.n_positions,
            c.vocab_size,
            self.model.num_parameters()
        )
    }
}

impl PyTrainable {
    fn named<'py>(&self, py: Python<'py>, buf: &[f32]) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for s in &self.model.layout.specs {
            let a = PyArray1::from_slice(py, &buf[s.range()]).reshape(s.shape.clone())?;
            d.set_item(&s.name, a)?;
        }
        Ok(d)
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyTrainable>()
}
