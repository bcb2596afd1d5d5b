//! Causal language models on one runtime: the `CausalLm` trait the generator, the Python
//! `Model` and the CLI drive, and the pieces every family shares (prepared linear layers, the
//! KV cache, attention over it, scratch buffers, weight loading). A family is one file that
//! reads top to bottom like its paper, plus a config mapping.

pub mod attention;
pub mod decoder;
pub mod gemma3;
pub mod gguf;
pub mod gguf_export;
pub mod gpt2;
pub mod kv_cache;
pub mod linear;
pub mod llama;
pub mod scoring;
pub mod weights;

use std::path::Path;
use std::sync::Arc;

use crate::backend::{Backend, BackendKind, WeightFormat};
use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;

pub use kv_cache::KvCache;
pub use linear::Linear;
pub use scoring::Scorer;

/// What the runtime needs to know about a loaded model, whatever its family.
#[derive(Clone, Debug)]
pub struct ModelInfo {
    /// `config.json`'s `model_type` (`gpt2`, `llama`, `qwen2` ...).
    pub family: String,
    pub vocab_size: usize,
    /// Longest sequence the model takes (`n_positions` / `max_position_embeddings`).
    pub context: usize,
    pub hidden_size: usize,
    pub n_layer: usize,
    pub n_head: usize,
    /// Key/value heads (fewer than `n_head` with grouped-query attention).
    pub n_kv_head: usize,
    pub head_dim: usize,
    /// Token ids that end generation by default (`generation_config.json`, else `config.json`).
    pub eos_token_ids: Vec<u32>,
    pub bos_token_id: Option<u32>,
    /// How the linear layers' weights are stored.
    pub dtype: WeightFormat,
}

/// One sequence's part of a forward step: its new tokens and its cache.
pub struct SeqInput<'a> {
    pub tokens: &'a [u32],
    pub cache: &'a mut KvCache,
}

/// Which rows' logits to compute.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// Only each sequence's last row (generation).
    Last,
    /// Every row (`forward_tokens`).
    All,
}

/// A decoder-only language model.
pub trait CausalLm: Send + Sync {
    fn info(&self) -> &ModelInfo;

    /// Runs the new tokens of `seqs` through the model, appending their keys/values to each
    /// sequence's cache, and leaves logits in `ws.logits`: `(S, V)` for `Logits::Last` (one row
    /// per sequence) or `(R, V)` for `Logits::All`. Token ids and cache room are checked
    /// (`check_inputs`).
    fn forward(
        &self,
        be: &dyn Backend,
        seqs: &mut [SeqInput<'_>],
        which: Logits,
        ws: &mut Workspace,
    ) -> Result<()>;

    /// Number of parameters (a tied output projection counted once).
    fn num_parameters(&self) -> usize;

    /// Bytes the weights take in memory.
    fn weight_bytes(&self) -> usize;

    /// The hyper-parameters as `config.json` keys (what Python's `Model.config` shows).
    fn config_json(&self) -> serde_json::Value;

    /// A cache for up to `capacity` positions of one sequence.
    fn new_cache(&self, capacity: usize) -> Result<KvCache> {
        KvCache::new(self.info(), capacity)
    }
}

/// Errors for sequences that do not fit their caches or hold ids outside the vocabulary.
pub fn check_inputs(info: &ModelInfo, seqs: &[SeqInput<'_>]) -> Result<()> {
    for s in seqs {
        if s.cache.len + s.tokens.len() > s.cache.capacity() {
            return Err(Error::Value(format!(
                "sequence of {} tokens exceeds its cache of {} positions (the model's context is {})",
                s.cache.len + s.tokens.len(),
                s.cache.capacity(),
                info.context
            )));
        }
        if let Some(&t) = s.tokens.iter().find(|&&t| t as usize >= info.vocab_size) {
            return Err(Error::Value(format!(
                "token id {t} is out of range for a vocabulary of {}",
                info.vocab_size
            )));
        }
    }
    Ok(())
}

/// Scratch buffers reused across steps (grown when needed, never shrunk), so decoding does not
/// allocate per token. Families name their uses in their forward.
#[derive(Default)]
pub struct Workspace {
    pub(crate) x: Vec<f32>,
    pub(crate) h: Vec<f32>,
    pub(crate) qkv: Vec<f32>,
    pub(crate) att: Vec<f32>,
    pub(crate) q: Vec<f32>,
    pub(crate) o: Vec<f32>,
    pub(crate) mlp: Vec<f32>,
    pub(crate) mlp_act: Vec<f32>,
    pub(crate) proj: Vec<f32>,
    pub(crate) sel: Vec<f32>,
    pub logits: Vec<f32>,
}

/// The first `n` floats of a workspace buffer, grown (fallibly) when it is too short.
pub(crate) fn grow(v: &mut Vec<f32>, n: usize) -> Result<&mut [f32]> {
    crate::memory::grow(v, n, "the forward pass's activations")
}

/// `x += y` (a residual connection).
pub(crate) fn add_in_place(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// The rows whose logits are wanted, copied from `x` (`(R, C)`) into `sel`: every row, or
/// each sequence's last. Returns how many.
pub(crate) fn select_rows(
    x: &[f32],
    sel: &mut Vec<f32>,
    seqs: &[SeqInput<'_>],
    which: Logits,
    c: usize,
) -> Result<usize> {
    let rows: usize = seqs.iter().map(|s| s.tokens.len()).sum();
    let m = if which == Logits::All {
        rows
    } else {
        seqs.len()
    };
    let out = grow(sel, m * c)?;
    match which {
        Logits::All => out.copy_from_slice(&x[..rows * c]),
        Logits::Last => {
            let mut end = 0;
            for (i, s) in seqs.iter().enumerate() {
                end += s.tokens.len();
                out[i * c..(i + 1) * c].copy_from_slice(&x[(end - 1) * c..end * c]);
            }
        }
    }
    Ok(m)
}

/// `generation_config.json`'s `eos_token_id` (an id or a list), if the folder has one: the
/// default stop tokens, ahead of `config.json`'s.
pub fn generation_eos(dir: &Path) -> Result<Option<Vec<u32>>> {
    let p = dir.join("generation_config.json");
    if !p.exists() {
        return Ok(None);
    }
    let v: serde_json::Value = serde_json::from_str(&crate::checkpoint::read_text_file(&p)?)
        .map_err(|e| Error::Value(format!("{} is not valid JSON: {e}", p.display())))?;
    let obj = v
        .as_object()
        .ok_or_else(|| Error::Value(format!("{} must be a JSON object", p.display())))?;
    let ids = crate::checkpoint::config::Keys::new(obj, "generation_config.json")
        .token_ids("eos_token_id")?;
    Ok((!ids.is_empty()).then_some(ids))
}

/// How to store the linear layers' weights at load (`load_model(dtype=...)`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum LoadDtype {
    /// The checkpoint's: bf16 stays bf16; f32 and f16 become f32.
    #[default]
    Auto,
    F32,
    Bf16,
    /// Linear layers quantized to a GGML block format while loading (float checkpoints), or
    /// kept/converted for GGUF files.
    Quant(crate::backend::quant::QuantType),
}

impl LoadDtype {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Self::Auto),
            "f32" | "float32" => Ok(Self::F32),
            "bf16" | "bfloat16" => Ok(Self::Bf16),
            other => match crate::backend::quant::QuantType::parse(other) {
                Some(t) if t.can_quantize() => Ok(Self::Quant(t)),
                _ => Err(Error::Value(format!(
                    "dtype must be 'auto', 'f32', 'bf16' or a quantized type ({}), got '{other}'",
                    crate::backend::quant::QuantType::quantizable_names()
                ))),
            },
        }
    }
}

/// Loads a model and the tokenizer found with it: a GGUF file (model, tokenizer and chat
/// template in one), or a Hugging Face folder and the tokenizer files beside its weights
/// (`Tokenizer::load`'s search). A tokenizer with more tokens than the model scores is an
/// error: its ids would index past the output.
pub fn load(
    path: &Path,
    backend: BackendKind,
    dtype: LoadDtype,
) -> Result<(Arc<dyn CausalLm>, Option<Tokenizer>)> {
    let (model, tok) = if path.is_file() {
        gguf::load(path, backend, dtype)?
    } else {
        (load_dir(path, backend, dtype)?, Tokenizer::load(path)?)
    };
    let vocab = model.info().vocab_size;
    if let Some(t) = &tok {
        if t.vocab_size() > vocab {
            return Err(Error::Value(format!(
                "{}: the tokenizer has {} tokens but the model's vocab_size is {vocab}",
                path.display(),
                t.vocab_size()
            )));
        }
    }
    Ok((model, tok))
}

/// Loads a Hugging Face folder (`config.json` + `model.safetensors` or a sharded index),
/// choosing the family from `model_type`.
pub fn load_dir(dir: &Path, backend: BackendKind, dtype: LoadDtype) -> Result<Arc<dyn CausalLm>> {
    let config_path = dir.join("config.json");
    if !config_path.exists() {
        return Err(Error::NotFound(format!(
            "{} not found (a Hugging Face model folder needs config.json and model.safetensors)",
            config_path.display()
        )));
    }
    let text = crate::checkpoint::read_text_file(&config_path)?;
    let config: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::Value(format!("{} is not valid JSON: {e}", config_path.display())))?;
    let model_type = config
        .get("model_type")
        .and_then(|v| v.as_str())
        .unwrap_or("gpt2");
    let at = |e: Error| match e {
        Error::Value(m) if !m.contains("config.json") => {
            Error::Value(format!("{}: {m}", config_path.display()))
        }
        other => other,
    };
    match model_type {
        "gpt2" => Ok(Arc::new(gpt2::load_dir(dir, backend, dtype)?)),
        t if llama::FAMILIES.contains(&t) => Ok(Arc::new(
            llama::Llama::load(dir, &config, backend, dtype).map_err(at)?,
        )),
        gemma3::FAMILY => Ok(Arc::new(
            gemma3::Gemma3::load(dir, &config, backend, dtype).map_err(at)?,
        )),
        other => Err(Error::Value(format!(
            "{}: model_type '{other}' is not supported; supported: gpt2, {}, {}",
            config_path.display(),
            llama::FAMILIES.join(", "),
            gemma3::FAMILY
        ))),
    }
}
