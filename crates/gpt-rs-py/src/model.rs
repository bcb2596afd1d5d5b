//! `gpt_rs.Model` (a loaded GPT-2), `gpt_rs.Tokenizer` and the streaming iterator.
//! Generation runs in Rust with the GIL released; between tokens the loop briefly re-attaches
//! only to check for Ctrl-C.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use gpt_rs::backend::{self, BackendKind};
use gpt_rs::checkpoint::Gpt2Config;
use gpt_rs::generate::{Generator, SamplingParams, StopCriteria};
use gpt_rs::models::{CausalLm, LoadDtype, Logits, Scorer};
use gpt_rs::tokenizer::Tokenizer;
use gpt_rs::{threads, Error};
use numpy::{PyArray1, PyArray2};
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::errors::to_py;

/// A byte-level BPE tokenizer (Hugging Face ``tokenizers`` underneath, so encodings match it).
#[pyclass(name = "Tokenizer", module = "gpt_rs", frozen)]
pub struct PyTokenizer {
    pub inner: Arc<Tokenizer>,
}

use crate::args::{token_ids as ids_from_py, GenOptions, Int};

#[pymethods]
impl PyTokenizer {
    /// Loads a tokenizer from ``tokenizer.json``, or from a folder holding ``tokenizer.json`` or
    /// GPT-2's original ``vocab.json`` + ``merges.txt``.
    ///
    /// Args:
    ///     path: a tokenizer.json file or a folder.
    ///
    /// Raises:
    ///     FileNotFoundError: if no tokenizer files are found.
    #[staticmethod]
    fn from_file(path: PathBuf) -> PyResult<Self> {
        load_tokenizer(&path)
            .map_err(to_py)?
            .map(|t| Self { inner: Arc::new(t) })
            .ok_or_else(|| {
                pyo3::exceptions::PyFileNotFoundError::new_err(format!(
                    "no tokenizer.json or vocab.json + merges.txt in {}",
                    path.display()
                ))
            })
    }

    /// Text to token ids.
    fn encode(&self, py: Python<'_>, text: &str) -> PyResult<Vec<u32>> {
        let t = self.inner.clone();
        let text = text.to_string();
        crate::errors::run(py, text.len(), move || t.encode(&text))
    }

    /// Token ids to text (special tokens skipped). Raises ValueError for ids outside the vocabulary.
    fn decode(&self, ids: Vec<Int>) -> PyResult<String> {
        let ids = ids_from_py(ids, "decode")?;
        crate::errors::catch_panics(|| self.inner.decode(&ids)).map_err(to_py)
    }

    #[getter]
    fn vocab_size(&self) -> usize {
        self.inner.vocab_size()
    }

    /// The end-of-text token id, if the vocabulary has one.
    #[getter]
    fn eos_token_id(&self) -> Option<u32> {
        self.inner.eos_token_id()
    }

    /// Whether the tokenizer has a chat template (``tokenizer_config.json``'s
    /// ``chat_template`` or a ``chat_template.jinja`` file).
    #[getter]
    fn has_chat_template(&self) -> bool {
        self.inner.chat_template().is_some()
    }

    /// Renders a conversation with the model's chat template, as transformers'
    /// ``apply_chat_template`` does (same Jinja settings, byte-identical text).
    ///
    /// Args:
    ///     messages: a list of ``{"role": ..., "content": ...}`` dicts.
    ///     add_generation_prompt: end with the header of an assistant turn.
    ///     tokenize: return token ids (no special tokens added: the template writes them)
    ///         instead of the text.
    ///     **kwargs: further template variables (e.g. ``date_string``, ``enable_thinking``).
    ///
    /// Raises:
    ///     ValueError: the tokenizer has no chat template, or the template raised an error.
    #[pyo3(signature = (messages, add_generation_prompt = false, tokenize = true, **kwargs))]
    fn apply_chat_template<'py>(
        &self,
        py: Python<'py>,
        messages: &Bound<'py, PyAny>,
        add_generation_prompt: bool,
        tokenize: bool,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let text = render_chat(py, &self.inner, messages, add_generation_prompt, kwargs)?;
        if tokenize {
            let ids = self.inner.encode_chat(&text).map_err(to_py)?;
            Ok(ids.into_pyobject(py)?.into_any())
        } else {
            Ok(text.into_pyobject(py)?.into_any())
        }
    }

    /// Trains a byte-level BPE tokenizer (GPT-2's kind) on ``texts``.
    ///
    /// Args:
    ///     texts: the training documents.
    ///     vocab_size: the number of tokens, from 257 (256 byte symbols + ``<|endoftext|>``)
    ///         to 2**21.
    ///     min_frequency: merges seen fewer times than this are not learned.
    #[staticmethod]
    #[pyo3(
        signature = (texts, vocab_size, min_frequency = Int(2)),
        text_signature = "(texts, vocab_size, min_frequency=2)"
    )]
    fn train(
        py: Python<'_>,
        texts: Vec<String>,
        vocab_size: Int,
        min_frequency: Int,
    ) -> PyResult<Self> {
        let max = gpt_rs::tokenizer::MAX_VOCAB;
        let vocab_size = vocab_size.within("vocab_size", 257, max as i128)? as usize;
        let min_frequency = min_frequency.within("min_frequency", 0, u32::MAX as i128)? as u64;
        if texts.iter().all(|t| t.is_empty()) {
            return Err(crate::errors::value_error(
                "cannot train a tokenizer on an empty corpus",
            ));
        }
        let work = texts.iter().map(String::len).sum();
        let tok = crate::errors::run(py, work, move || {
            Tokenizer::train_bpe(texts.iter(), vocab_size, min_frequency)
        })?;
        Ok(Self {
            inner: Arc::new(tok),
        })
    }

    /// Saves ``tokenizer.json``, ``vocab.json`` and ``merges.txt`` into the folder ``path``.
    fn save(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        let t = self.inner.clone();
        crate::errors::run(py, usize::MAX, move || t.save(&path))
    }

    /// Encodes documents (in parallel) into one uint32 array, each followed by the
    /// end-of-text token when the vocabulary has one.
    fn encode_documents<'py>(
        &self,
        py: Python<'py>,
        texts: Vec<String>,
    ) -> PyResult<Bound<'py, PyArray1<u32>>> {
        let t = self.inner.clone();
        let work = texts.iter().map(String::len).sum();
        let ids = crate::errors::run(py, work, move || {
            let docs: Vec<&str> = texts.iter().map(String::as_str).collect();
            t.encode_documents(&docs, t.eos_token_id())
        })?;
        Ok(PyArray1::from_vec(py, ids))
    }

    fn __repr__(&self) -> String {
        format!(
            "Tokenizer(vocab_size={}, eos_token_id={:?})",
            self.inner.vocab_size(),
            self.inner.eos_token_id()
        )
    }
}

/// A JSON value as the Python object `json.loads` gives.
pub fn json_to_py<'py>(py: Python<'py>, v: &serde_json::Value) -> PyResult<Bound<'py, PyAny>> {
    py.import("json")?.call_method1("loads", (v.to_string(),))
}

/// A model's hyper-parameters as the dict `Model.config` and `TrainableModel.config` return.
pub fn config_dict<'py>(py: Python<'py>, c: &Gpt2Config) -> PyResult<Bound<'py, PyDict>> {
    Ok(json_to_py(py, &c.summary_json())?.cast_into::<PyDict>()?)
}

/// tokenizer.json (a file, or in a folder), else vocab.json + merges.txt; None if neither exists.
fn load_tokenizer(path: &std::path::Path) -> gpt_rs::Result<Option<Tokenizer>> {
    Tokenizer::load(path)
}

/// A Python object as JSON (through Python's `json.dumps`, so anything JSON-serializable works).
fn py_to_json(py: Python<'_>, obj: &Bound<'_, PyAny>, what: &str) -> PyResult<serde_json::Value> {
    let text: String = py
        .import("json")?
        .call_method1("dumps", (obj,))
        .map_err(|e| crate::errors::type_error(format!("{what} must be JSON-serializable: {e}")))?
        .extract()?;
    serde_json::from_str(&text).map_err(|e| crate::errors::value_error(format!("{what}: {e}")))
}

/// Renders a chat with the tokenizer's template: messages and extra variables from Python.
pub(crate) fn render_chat(
    py: Python<'_>,
    tok: &Tokenizer,
    messages: &Bound<'_, PyAny>,
    add_generation_prompt: bool,
    kwargs: Option<&Bound<'_, PyDict>>,
) -> PyResult<String> {
    let messages = py_to_json(py, messages, "messages")?;
    let extra = match kwargs {
        Some(k) => match py_to_json(py, k.as_any(), "chat template variables")? {
            serde_json::Value::Object(m) => m,
            _ => serde_json::Map::new(),
        },
        None => serde_json::Map::new(),
    };
    tok.apply_chat_template(&messages, add_generation_prompt, &extra)
        .map_err(to_py)
}

/// A loaded causal language model (GPT-2 or a Llama-family decoder).
#[pyclass(name = "Model", module = "gpt_rs", frozen)]
pub struct PyModel {
    pub(crate) model: Arc<dyn CausalLm>,
    pub(crate) tokenizer: Option<Arc<Tokenizer>>,
    path: PathBuf,
    pinned: Mutex<Option<BackendKind>>,
    /// `logits`/`forward_tokens`, which keep the last call's KV cache for the next.
    scorer: Arc<Scorer>,
}

/// Keyword arguments shared by the generation methods.
pub(crate) struct GenArgs {
    pub params: SamplingParams,
    pub stop: StopCriteria,
}

impl PyModel {
    pub(crate) fn backend_kind(&self) -> BackendKind {
        self.pinned
            .lock()
            .map(|g| *g)
            .ok()
            .flatten()
            .unwrap_or_else(backend::current)
    }

    pub(crate) fn tokenizer(&self) -> PyResult<&Arc<Tokenizer>> {
        self.tokenizer.as_ref().ok_or_else(|| {
            crate::errors::value_error(format!(
                "{} has no tokenizer files (tokenizer.json, or vocab.json + merges.txt); use the *_tokens methods with ids",
                self.path.display()
            ))
        })
    }

    /// The generation arguments: `max_new_tokens` and the parsed `**options`, with the
    /// model's default stop tokens when the caller named none.
    pub(crate) fn gen_args(&self, max_new_tokens: Int, options: GenOptions) -> PyResult<GenArgs> {
        let max_new_tokens = max_new_tokens.within("max_new_tokens", 0, u32::MAX as i128)? as usize;
        let stop_token_ids = options.stop_token_ids.unwrap_or_else(|| {
            StopCriteria::default_stop_ids(self.model.info(), self.tokenizer.as_deref())
        });
        Ok(GenArgs {
            params: options.params,
            stop: StopCriteria {
                max_new_tokens,
                stop_token_ids,
                stop_strings: options.stop,
            },
        })
    }

    /// One forward pass over `ids` (no generation), GIL released; returns the logits rows.
    fn run_forward(
        &self,
        py: Python<'_>,
        ids: Vec<u32>,
        which: Logits,
        what: &'static str,
    ) -> PyResult<Vec<f32>> {
        let (scorer, be) = (
            self.scorer.clone(),
            self.backend_kind().get().map_err(to_py)?,
        );
        crate::errors::run(py, usize::MAX, move || {
            threads::install(|| scorer.logits(be, &ids, which, what))
        })
    }

    /// The new text after each prompt (cut at a stop string when there are any).
    fn complete(
        &self,
        py: Python<'_>,
        tok: &Tokenizer,
        prompts: Vec<Vec<u32>>,
        max_new_tokens: Int,
        options: GenOptions,
    ) -> PyResult<Vec<String>> {
        let has_stop = !options.stop.is_empty();
        let args = self.gen_args(max_new_tokens, options)?;
        let gen = self.run_generator(py, prompts, args, has_stop)?;
        gen.seqs
            .iter()
            .map(|s| {
                if has_stop {
                    Ok(s.text.clone())
                } else {
                    tok.decode_generated(s.new_tokens())
                }
            })
            .collect::<gpt_rs::Result<Vec<_>>>()
            .map_err(to_py)
    }

    /// A text stream of the continuation of `ids`.
    fn stream_ids(
        &self,
        ids: Vec<u32>,
        tok: Arc<Tokenizer>,
        args: GenArgs,
    ) -> PyResult<TextStreamIter> {
        let gen = Generator::new(
            self.model.clone(),
            Some(tok),
            &[ids],
            &args.params,
            args.stop,
            true,
        )
        .map_err(to_py)?;
        Ok(TextStreamIter {
            gen: Mutex::new(gen),
            backend: self.backend_kind(),
        })
    }

    /// Runs generation to the end with the GIL released, checking for Ctrl-C between tokens.
    fn run_generator(
        &self,
        py: Python<'_>,
        prompts: Vec<Vec<u32>>,
        args: GenArgs,
        keep_text: bool,
    ) -> PyResult<Generator> {
        let (model, tok, be) = (
            self.model.clone(),
            self.tokenizer.clone(),
            self.backend_kind().get().map_err(to_py)?,
        );
        let mut gen = Generator::new(model, tok, &prompts, &args.params, args.stop, keep_text)
            .map_err(to_py)?;
        let mut interrupt: Option<PyErr> = None;
        let result = py.detach(|| {
            crate::errors::catch_panics(|| {
                threads::install(|| {
                    gen.run(be, &mut || {
                        Python::attach(|py| py.check_signals()).map_err(|e| {
                            interrupt = Some(e);
                            Error::Interrupted
                        })
                    })
                })
            })
        });
        if let Some(e) = interrupt {
            return Err(e);
        }
        result.map_err(to_py)?;
        Ok(gen)
    }
}

#[pymethods]
impl PyModel {
    /// Loads a Hugging Face model folder (``config.json``, ``model.safetensors`` or a sharded
    /// index, and, if present, ``tokenizer.json`` or ``vocab.json`` + ``merges.txt``). Use
    /// ``gpt_rs.load_model``, which also resolves hub model ids from the local cache.
    #[staticmethod]
    #[pyo3(signature = (path, dtype = "auto"))]
    fn from_dir(py: Python<'_>, path: PathBuf, dtype: &str) -> PyResult<Self> {
        let be = backend::current();
        let dtype = LoadDtype::parse(dtype).map_err(to_py)?;
        let p = path.clone();
        let (model, tok) =
            crate::errors::run(py, usize::MAX, move || gpt_rs::models::load(&p, be, dtype))?;
        Ok(Self {
            scorer: Arc::new(Scorer::new(model.clone())),
            model,
            tokenizer: tok.map(Arc::new),
            path,
            pinned: Mutex::new(None),
        })
    }

    /// Logits for every position of ``ids``: float32 array of shape ``(T, vocab_size)``.
    fn forward_tokens<'py>(
        &self,
        py: Python<'py>,
        ids: Vec<Int>,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let ids = ids_from_py(ids, "forward_tokens")?;
        let t = ids.len();
        let logits = self.run_forward(py, ids, Logits::All, "forward_tokens")?;
        let arr = numpy::ndarray::Array2::from_shape_vec((t, self.model.info().vocab_size), logits)
            .map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
        Ok(PyArray2::from_owned_array(py, arr))
    }

    /// Logits of the last position: float32 array of shape ``(vocab_size,)`` (only that row
    /// goes through the output projection).
    fn logits<'py>(&self, py: Python<'py>, ids: Vec<Int>) -> PyResult<Bound<'py, PyArray1<f32>>> {
        let ids = ids_from_py(ids, "logits")?;
        Ok(PyArray1::from_vec(
            py,
            self.run_forward(py, ids, Logits::Last, "logits")?,
        ))
    }

    /// Generates token ids.
    ///
    /// Args:
    ///     prompt_ids: the prompt's token ids.
    ///     max_new_tokens: how many tokens to generate at most (prompt + this must fit the context).
    ///     **options: sampling and stopping (``gpt_rs.GenerateOptions`` without ``stop``):
    ///         ``temperature`` (0 for greedy decoding; otherwise logits are divided by it),
    ///         ``top_k`` (keep the k most likely tokens), ``top_p`` (keep the smallest set of
    ///         tokens whose probability reaches top_p), ``min_p`` (keep tokens with probability
    ///         >= min_p * the top probability), ``repetition_penalty`` (> 1 penalizes tokens
    ///         already present, Hugging Face semantics), ``seed`` (makes sampling
    ///         reproducible), ``stop_token_ids`` (ids that end generation; default: the model's
    ///         end-of-sequence tokens, [] for none).
    ///
    /// Returns:
    ///     list[int]: the prompt followed by the new tokens (a stop token is not included).
    #[pyo3(
        signature = (prompt_ids, max_new_tokens, **options),
        text_signature = "($self, prompt_ids, max_new_tokens, **options)"
    )]
    fn generate_tokens(
        &self,
        py: Python<'_>,
        prompt_ids: Vec<Int>,
        max_new_tokens: Int,
        options: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Vec<u32>> {
        let prompt = ids_from_py(prompt_ids, "prompt_ids")?;
        let options = GenOptions::parse("generate_tokens", options, false)?;
        let args = self.gen_args(max_new_tokens, options)?;
        let gen = self.run_generator(py, vec![prompt], args, false)?;
        Ok(gen.seqs[0].tokens.clone())
    }

    /// Generates text after ``prompt`` and returns only the new text.
    ///
    /// Takes the options of ``generate_tokens``, plus ``stop``: strings that end generation
    /// (the text is cut before the first one).
    #[pyo3(
        signature = (prompt, max_new_tokens=Int(50), **options),
        text_signature = "($self, prompt, max_new_tokens=50, **options)"
    )]
    fn generate(
        &self,
        py: Python<'_>,
        prompt: &str,
        max_new_tokens: Int,
        options: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<String> {
        let options = GenOptions::parse("generate", options, true)?;
        let tok = self.tokenizer()?.clone();
        let ids = tok.encode(prompt).map_err(to_py)?;
        Ok(self
            .complete(py, &tok, vec![ids], max_new_tokens, options)?
            .remove(0))
    }

    /// Generates continuations of several prompts at once (one batched forward per step);
    /// each result equals what ``generate`` gives for that prompt alone.
    #[pyo3(
        signature = (prompts, max_new_tokens=Int(50), **options),
        text_signature = "($self, prompts, max_new_tokens=50, **options)"
    )]
    fn generate_batch(
        &self,
        py: Python<'_>,
        prompts: Vec<String>,
        max_new_tokens: Int,
        options: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Vec<String>> {
        let options = GenOptions::parse("generate_batch", options, true)?;
        let tok = self.tokenizer()?.clone();
        let ids = prompts
            .iter()
            .map(|p| tok.encode(p))
            .collect::<gpt_rs::Result<Vec<_>>>()
            .map_err(to_py)?;
        self.complete(py, &tok, ids, max_new_tokens, options)
    }

    /// Like ``generate``, but yields text pieces as they are decoded (joined, they equal what
    /// ``generate`` returns; a multi-byte character is never split).
    #[pyo3(
        signature = (prompt, max_new_tokens=Int(50), **options),
        text_signature = "($self, prompt, max_new_tokens=50, **options)"
    )]
    fn stream(
        &self,
        prompt: &str,
        max_new_tokens: Int,
        options: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<TextStreamIter> {
        let options = GenOptions::parse("stream", options, true)?;
        let tok = self.tokenizer()?.clone();
        let ids = tok.encode(prompt).map_err(to_py)?;
        self.stream_ids(ids, tok, self.gen_args(max_new_tokens, options)?)
    }

    /// Replies to a conversation: the messages go through the model's chat template (with
    /// the assistant header added), and the reply's text is returned. Takes ``generate``'s
    /// options; generation stops at the model's end-of-turn tokens (``eos_token_ids``)
    /// unless ``stop_token_ids`` says otherwise.
    ///
    /// Raises:
    ///     ValueError: the model has no chat template.
    #[pyo3(
        signature = (messages, max_new_tokens=Int(256), **options),
        text_signature = "($self, messages, max_new_tokens=256, **options)"
    )]
    fn chat(
        &self,
        py: Python<'_>,
        messages: &Bound<'_, PyAny>,
        max_new_tokens: Int,
        options: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<String> {
        let options = GenOptions::parse("chat", options, true)?;
        let tok = self.tokenizer()?.clone();
        let text = render_chat(py, &tok, messages, true, None)?;
        let ids = tok.encode_chat(&text).map_err(to_py)?;
        Ok(self
            .complete(py, &tok, vec![ids], max_new_tokens, options)?
            .remove(0))
    }

    /// Like ``chat``, but yields the reply's text pieces as they are decoded.
    #[pyo3(
        signature = (messages, max_new_tokens=Int(256), **options),
        text_signature = "($self, messages, max_new_tokens=256, **options)"
    )]
    fn chat_stream(
        &self,
        py: Python<'_>,
        messages: &Bound<'_, PyAny>,
        max_new_tokens: Int,
        options: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<TextStreamIter> {
        let options = GenOptions::parse("chat_stream", options, true)?;
        let tok = self.tokenizer()?.clone();
        let text = render_chat(py, &tok, messages, true, None)?;
        let ids = tok.encode_chat(&text).map_err(to_py)?;
        self.stream_ids(ids, tok, self.gen_args(max_new_tokens, options)?)
    }

    /// The model's hyper-parameters, as in ``config.json``.
    #[getter]
    fn config<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        json_to_py(py, &self.model.config_json())
    }

    /// The model family: ``config.json``'s ``model_type`` (``"gpt2"``, ``"llama"``, ``"qwen2"`` ...).
    #[getter]
    fn family(&self) -> String {
        self.model.info().family.clone()
    }

    /// How the linear layers' weights are stored: ``"f32"`` or ``"bf16"``.
    #[getter]
    fn dtype(&self) -> &'static str {
        self.model.info().dtype.name()
    }

    /// The longest sequence (prompt + generated tokens) the model takes.
    #[getter]
    fn context_length(&self) -> usize {
        self.model.info().context
    }

    /// Number of token ids the model scores (its output width).
    #[getter]
    fn vocab_size(&self) -> usize {
        self.model.info().vocab_size
    }

    /// Token ids that end generation by default (``generation_config.json``'s
    /// ``eos_token_id``, else ``config.json``'s, else the tokenizer's end-of-text token).
    #[getter]
    fn eos_token_ids(&self) -> Vec<u32> {
        self.model.info().eos_token_ids.clone()
    }

    /// Bytes the weights take in memory.
    #[getter]
    fn weight_bytes(&self) -> usize {
        self.model.weight_bytes()
    }

    /// The tokenizer found with the checkpoint, or None.
    #[getter(tokenizer)]
    fn tokenizer_py(&self) -> Option<PyTokenizer> {
        self.tokenizer
            .as_ref()
            .map(|t| PyTokenizer { inner: t.clone() })
    }

    /// The backend the model runs on: the global one (``gpt_rs.get_backend()``) unless set here.
    #[getter]
    fn backend(&self) -> &'static str {
        self.backend_kind().name()
    }

    #[setter]
    fn set_backend(&self, name: Option<&str>) -> PyResult<()> {
        let kind = name.map(BackendKind::parse).transpose().map_err(to_py)?;
        *self
            .pinned
            .lock()
            .map_err(|_| PyRuntimeError::new_err("model lock poisoned"))? = kind;
        Ok(())
    }

    /// Number of parameters (the tied output projection counted once).
    #[getter]
    fn num_parameters(&self) -> usize {
        self.model.num_parameters()
    }

    fn __repr__(&self) -> String {
        let c = self.model.info();
        if c.family == "gpt2" {
            return format!(
                "Model(gpt2, n_layer={}, n_head={}, n_embd={}, vocab_size={}, n_positions={}, parameters={:.1}M, dtype={}, backend={}, path='{}')",
                c.n_layer, c.n_head, c.hidden_size, c.vocab_size, c.context,
                self.model.num_parameters() as f64 / 1e6, c.dtype.name(), self.backend_kind(), self.path.display()
            );
        }
        format!(
            "Model({}, layers={}, heads={}, kv_heads={}, hidden={}, vocab_size={}, context={}, parameters={:.1}M, dtype={}, backend={}, path='{}')",
            c.family, c.n_layer, c.n_head, c.n_kv_head, c.hidden_size, c.vocab_size, c.context,
            self.model.num_parameters() as f64 / 1e6, c.dtype.name(), self.backend_kind(), self.path.display()
        )
    }
}

/// Iterator returned by ``Model.stream``: yields decoded text pieces.
///
/// Safe to share between threads: each piece goes to exactly one consumer, and the stream's
/// lock is only ever waited for with the GIL released (a thread holding the lock never waits
/// for the GIL), so concurrent consumers cannot deadlock the interpreter.
#[pyclass(name = "TextStream", module = "gpt_rs", frozen)]
pub struct TextStreamIter {
    gen: Mutex<Generator>,
    backend: BackendKind,
}

impl TextStreamIter {
    /// Runs `f` on the generator under its lock, taken with the GIL released.
    fn with_gen<T: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut Generator) -> gpt_rs::Result<T> + Send,
    ) -> PyResult<T> {
        py.detach(|| {
            crate::errors::catch_panics(|| {
                let mut gen = self
                    .gen
                    .lock()
                    .map_err(|_| Error::Internal("the stream was used after a failure".into()))?;
                f(&mut gen)
            })
        })
        .map_err(to_py)
    }
}

#[pymethods]
impl TextStreamIter {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    /// Tokens generated so far (a stop token is not counted).
    #[getter]
    fn num_tokens(&self, py: Python<'_>) -> PyResult<usize> {
        self.with_gen(py, |gen| Ok(gen.seqs[0].new_tokens().len()))
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<String>> {
        let be = self.backend.get().map_err(to_py)?;
        loop {
            py.check_signals()?;
            // Some(item) ends the call: a piece, or None when the stream is exhausted.
            let item = self.with_gen(py, |gen| {
                let piece = gen.take_text(0);
                if !piece.is_empty() {
                    return Ok(Some(Some(piece)));
                }
                if gen.is_done() {
                    return Ok(Some(None));
                }
                threads::install(|| gen.step(be))?;
                Ok(None)
            })?;
            if let Some(item) = item {
                return Ok(item);
            }
        }
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyTokenizer>()?;
    m.add_class::<PyModel>()?;
    m.add_class::<TextStreamIter>()?;
    Ok(())
}
