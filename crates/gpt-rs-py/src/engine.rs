//! `gpt_rs.Engine` and its `Request`: the continuous-batching engine (`generate::engine`)
//! for Python. Waiting for a request's next piece releases the GIL and wakes every 100 ms to
//! let Ctrl-C through.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use gpt_rs::generate::{Engine, EngineConfig, Event, Handle, Request};
use gpt_rs::tokenizer::Tokenizer;
use pyo3::exceptions::PyStopIteration;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::args::{token_ids, GenOptions, Int};
use crate::errors::{to_py, type_error, value_error};
use crate::model::{render_chat, PyModel};

/// Serves many generation requests of one model at once: each step runs one forward over
/// every running request, and requests join and leave between steps (continuous batching).
///
/// Args:
///     model: a loaded ``gpt_rs.Model``.
///     max_batch: requests decoded together at most.
///     max_queue: requests waiting at most; ``submit`` beyond it raises ``gpt_rs.BusyError``.
///     prefill_chunk: prompt tokens read per step at most, so running streams keep flowing
///         while a long prompt is prefilled.
///     max_kv_bytes: bytes the running requests' KV caches may take together (default: a
///         quarter of the machine's memory).
#[pyclass(name = "Engine", module = "gpt_rs", frozen)]
pub struct PyEngine {
    engine: Arc<Engine>,
    model: Py<PyModel>,
    tokenizer: Option<Arc<Tokenizer>>,
}

#[pymethods]
impl PyEngine {
    #[new]
    #[pyo3(
        signature = (model, max_batch = Int(8), max_queue = Int(64), prefill_chunk = Int(256), max_kv_bytes = None),
        text_signature = "(model, max_batch=8, max_queue=64, prefill_chunk=256, max_kv_bytes=None)"
    )]
    fn new(
        model: Bound<'_, PyModel>,
        max_batch: Int,
        max_queue: Int,
        prefill_chunk: Int,
        max_kv_bytes: Option<Int>,
    ) -> PyResult<Self> {
        let m = model.get();
        let default_kv = gpt_rs::memory::physical_bytes().map_or(8 << 30, |b| b / 4);
        let config = EngineConfig {
            max_batch: max_batch.within("max_batch", 1, 4096)? as usize,
            max_queue: max_queue.within("max_queue", 0, 1 << 20)? as usize,
            prefill_chunk: prefill_chunk.within("prefill_chunk", 1, 1 << 20)? as usize,
            max_kv_bytes: match max_kv_bytes {
                Some(b) => b.within("max_kv_bytes", 1, i128::MAX)? as u128,
                None => default_kv,
            },
        };
        let engine = Engine::new(
            m.model.clone(),
            m.tokenizer.clone(),
            m.backend_kind(),
            config,
        )
        .map_err(to_py)?;
        Ok(Self {
            engine: Arc::new(engine),
            tokenizer: m.tokenizer.clone(),
            model: model.unbind(),
        })
    }

    /// Queues a generation request and returns at once.
    ///
    /// Args:
    ///     prompt: text, or a list of token ids.
    ///     max_new_tokens: tokens to generate at most.
    ///     **options: ``gpt_rs.GenerateOptions`` (temperature, top_k, top_p, min_p,
    ///         repetition_penalty, seed, stop_token_ids, stop).
    ///
    /// Returns:
    ///     Request: iterate it for text pieces (``for`` or ``async for``), or call ``result()``.
    ///
    /// Raises:
    ///     gpt_rs.BusyError: the queue is full or the engine is shutting down.
    ///     ValueError: a bad prompt or option (the prompt does not fit the context...).
    #[pyo3(
        signature = (prompt, max_new_tokens = Int(64), **options),
        text_signature = "($self, prompt, max_new_tokens=64, **options)"
    )]
    fn submit(
        &self,
        py: Python<'_>,
        prompt: &Bound<'_, PyAny>,
        max_new_tokens: Int,
        options: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<PyRequest> {
        let options = GenOptions::parse("submit", options, true)?;
        let ids = if let Ok(text) = prompt.extract::<String>() {
            let tok = self.model.get().tokenizer()?.clone();
            crate::errors::run(py, text.len(), move || tok.encode(&text))?
        } else {
            let ids: Vec<Int> = prompt
                .extract()
                .map_err(|_| type_error("submit: prompt must be a str or a list of token ids"))?;
            token_ids(ids, "prompt")?
        };
        self.submit_ids(py, ids, max_new_tokens, options)
    }

    /// Queues a chat reply: ``messages`` go through the model's chat template (with the
    /// assistant header), as in ``Model.chat``. Takes ``submit``'s arguments.
    #[pyo3(
        signature = (messages, max_new_tokens = Int(256), **options),
        text_signature = "($self, messages, max_new_tokens=256, **options)"
    )]
    fn submit_chat(
        &self,
        py: Python<'_>,
        messages: &Bound<'_, PyAny>,
        max_new_tokens: Int,
        options: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<PyRequest> {
        let options = GenOptions::parse("submit_chat", options, true)?;
        let tok = self.model.get().tokenizer()?.clone();
        let text = render_chat(py, &tok, messages, true, None)?;
        let ids = tok.encode_chat(&text).map_err(to_py)?;
        self.submit_ids(py, ids, max_new_tokens, options)
    }

    /// The engine's state: ``running``, ``queued``, ``kv_bytes_in_use``, ``kv_bytes_limit``,
    /// ``requests_total``, ``prompt_tokens_total``, ``generated_tokens_total`` and
    /// ``tokens_per_second`` (over the last few seconds).
    #[getter]
    fn metrics<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let m = self.engine.metrics();
        let d = PyDict::new(py);
        d.set_item("running", m.running)?;
        d.set_item("queued", m.queued)?;
        d.set_item("kv_bytes_in_use", m.kv_bytes_in_use)?;
        d.set_item("kv_bytes_limit", m.kv_bytes_limit)?;
        d.set_item("requests_total", m.requests_total)?;
        d.set_item("prompt_tokens_total", m.prompt_tokens_total)?;
        d.set_item("generated_tokens_total", m.generated_tokens_total)?;
        d.set_item("tokens_per_second", m.tokens_per_second)?;
        Ok(d)
    }

    /// Stops admitting requests, lets the running and queued ones finish for up to ``grace``
    /// seconds, then cancels the rest and stops the engine's thread.
    #[pyo3(signature = (grace = 5.0))]
    fn shutdown(&self, py: Python<'_>, grace: f64) -> PyResult<()> {
        if !(grace.is_finite() && grace >= 0.0) {
            return Err(value_error(format!(
                "grace must be a non-negative number of seconds, got {grace}"
            )));
        }
        let engine = self.engine.clone();
        py.detach(move || engine.shutdown(Duration::from_secs_f64(grace)));
        Ok(())
    }

    /// The model this engine serves.
    #[getter]
    fn model(&self, py: Python<'_>) -> Py<PyModel> {
        self.model.clone_ref(py)
    }

    fn __repr__(&self) -> String {
        let c = self.engine.config();
        let m = self.engine.metrics();
        format!(
            "Engine(max_batch={}, max_queue={}, prefill_chunk={}, running={}, queued={})",
            c.max_batch, c.max_queue, c.prefill_chunk, m.running, m.queued
        )
    }
}

impl PyEngine {
    fn submit_ids(
        &self,
        py: Python<'_>,
        ids: Vec<u32>,
        max_new_tokens: Int,
        options: GenOptions,
    ) -> PyResult<PyRequest> {
        if !options.stop.is_empty() && self.tokenizer.is_none() {
            return Err(value_error(
                "stop strings need a tokenizer; this model has none",
            ));
        }
        let args = self
            .model
            .bind(py)
            .get()
            .gen_args(max_new_tokens, options)?;
        let handle = self
            .engine
            .submit(Request {
                prompt: ids,
                params: args.params,
                stop: args.stop,
            })
            .map_err(to_py)?;
        Ok(PyRequest {
            id: handle.id,
            inner: Mutex::new(RequestState {
                handle,
                text: String::new(),
                tokens: Vec::new(),
                finish_reason: None,
                usage: None,
                error: None,
            }),
        })
    }
}

struct RequestState {
    handle: Handle,
    text: String,
    tokens: Vec<u32>,
    finish_reason: Option<&'static str>,
    /// (prompt tokens, completion tokens, seconds to the first token)
    usage: Option<(usize, usize, f64)>,
    error: Option<String>,
}

/// What waiting for a request gave.
enum Next {
    Piece(String),
    End,
    Timeout,
}

impl RequestState {
    /// The next non-empty piece, the end, or a timeout.
    fn next(&mut self, timeout: Duration) -> Next {
        if self.finish_reason.is_some() || self.error.is_some() {
            return Next::End;
        }
        loop {
            match self.handle.next_timeout(timeout) {
                None => return Next::Timeout,
                Some(Event::Piece { token, text }) => {
                    self.tokens.extend(token);
                    if !text.is_empty() {
                        self.text.push_str(&text);
                        return Next::Piece(text);
                    }
                }
                Some(Event::Done {
                    reason,
                    prompt_tokens,
                    completion_tokens,
                    time_to_first_token,
                }) => {
                    self.finish_reason = Some(reason.name());
                    self.usage = Some((prompt_tokens, completion_tokens, time_to_first_token));
                    return Next::End;
                }
                Some(Event::Failed(msg)) => {
                    self.error = Some(msg);
                    return Next::End;
                }
            }
        }
    }
}

/// A request submitted to an ``Engine``. Iterating it (``for piece in request`` or ``async
/// for``) yields the reply's text pieces as they are generated; ``result()`` waits for the
/// whole text. ``cancel()`` (or dropping the request) ends it at the next step.
#[pyclass(name = "Request", module = "gpt_rs", frozen)]
pub struct PyRequest {
    id: u64,
    inner: Mutex<RequestState>,
}

impl PyRequest {
    /// Waits (GIL released, the lock taken without it) for at most `timeout`, checking for
    /// Ctrl-C between waits when `timeout` is long.
    fn wait(&self, py: Python<'_>, timeout: Option<Duration>) -> PyResult<Next> {
        let slice = Duration::from_millis(100);
        let start = std::time::Instant::now();
        loop {
            let left = timeout.map(|t| t.saturating_sub(start.elapsed()));
            let this = left.map_or(slice, |l| l.min(slice));
            let r = py.detach(|| match self.inner.lock() {
                Ok(mut st) => st.next(this),
                Err(_) => Next::End,
            });
            match r {
                Next::Timeout if left.is_none_or(|l| l > this) => py.check_signals()?,
                other => {
                    self.raise_failure()?;
                    return Ok(other);
                }
            }
        }
    }

    fn raise_failure(&self) -> PyResult<()> {
        let st = self
            .inner
            .lock()
            .map_err(|_| value_error("request state poisoned"))?;
        match &st.error {
            Some(msg) => Err(crate::errors::to_py(gpt_rs::Error::Internal(format!(
                "the request failed: {msg}"
            )))),
            None => Ok(()),
        }
    }

    fn state<T>(&self, f: impl FnOnce(&RequestState) -> T) -> T {
        let st = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&st)
    }
}

#[pymethods]
impl PyRequest {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<String> {
        match self.wait(py, None)? {
            Next::Piece(p) => Ok(p),
            _ => Err(PyStopIteration::new_err(())),
        }
    }

    /// The next text piece, or None once the request has ended; waits at most ``timeout``
    /// seconds (forever if None) and raises ``TimeoutError`` past it. ``async for`` uses it.
    #[pyo3(signature = (timeout = None))]
    fn next_piece(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Option<String>> {
        let timeout = match timeout {
            Some(t) if t.is_finite() && t >= 0.0 => Some(Duration::from_secs_f64(t)),
            Some(t) => return Err(value_error(format!("timeout must be >= 0, got {t}"))),
            None => None,
        };
        match self.wait(py, timeout)? {
            Next::Piece(p) => Ok(Some(p)),
            Next::End => Ok(None),
            Next::Timeout => Err(pyo3::exceptions::PyTimeoutError::new_err(
                "no new text within the timeout",
            )),
        }
    }

    /// Waits for the end and returns the whole generated text.
    fn result(&self, py: Python<'_>) -> PyResult<String> {
        while let Next::Piece(_) = self.wait(py, None)? {}
        Ok(self.state(|s| s.text.clone()))
    }

    /// Ends the request at the next step (its ``finish_reason`` becomes ``"cancelled"``).
    fn cancel(&self) {
        self.state(|s| s.handle.cancel());
    }

    /// The request's number within its engine.
    #[getter]
    fn id(&self) -> u64 {
        self.id
    }

    /// Text generated so far (all of it once the request has ended).
    #[getter]
    fn text(&self) -> String {
        self.state(|s| s.text.clone())
    }

    /// Token ids generated so far (a stop token is not included).
    #[getter]
    fn tokens(&self) -> Vec<u32> {
        self.state(|s| s.tokens.clone())
    }

    /// ``"stop"`` (a stop token or string), ``"length"`` (max_new_tokens), ``"cancelled"``,
    /// or None while running.
    #[getter]
    fn finish_reason(&self) -> Option<&'static str> {
        self.state(|s| s.finish_reason)
    }

    /// ``{"prompt_tokens", "completion_tokens", "total_tokens", "time_to_first_token"}`` once
    /// the request has ended, else None.
    #[getter]
    fn usage<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        let Some((p, c, ttft)) = self.state(|s| s.usage) else {
            return Ok(None);
        };
        let d = PyDict::new(py);
        d.set_item("prompt_tokens", p)?;
        d.set_item("completion_tokens", c)?;
        d.set_item("total_tokens", p + c)?;
        d.set_item("time_to_first_token", ttft)?;
        Ok(Some(d))
    }

    fn __aiter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    /// ``async for``: waits for the next piece in a worker thread of the running loop.
    fn __anext__<'py>(slf: Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        py.import("gpt_rs._engine_async")?
            .call_method1("anext_piece", (slf,))
    }

    fn __repr__(&self) -> String {
        self.state(|s| {
            format!(
                "Request(id={}, tokens={}, finish_reason={:?})",
                self.id,
                s.tokens.len(),
                s.finish_reason
            )
        })
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyEngine>()?;
    m.add_class::<PyRequest>()?;
    Ok(())
}
