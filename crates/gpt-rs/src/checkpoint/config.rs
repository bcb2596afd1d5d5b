//! GPT-2 hyper-parameters from a Hugging Face `config.json`, with GPT2Config's defaults.

use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};

#[derive(Clone, Debug, PartialEq)]
pub struct Gpt2Config {
    pub vocab_size: usize,
    pub n_positions: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    /// Width of the MLP (`n_inner`, default 4 * n_embd).
    pub n_inner: usize,
    pub layer_norm_epsilon: f32,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
}

impl Gpt2Config {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = super::read_text_file(path)?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| Error::Value(format!("{} is not valid JSON: {e}", path.display())))?;
        Self::from_json(&v).map_err(|e| match e {
            Error::Value(m) => Error::Value(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    pub fn from_json(v: &Value) -> Result<Self> {
        let obj = v
            .as_object()
            .ok_or_else(|| Error::Value("config must be a JSON object".into()))?;
        if let Some(t) = obj.get("model_type").and_then(Value::as_str) {
            if t != "gpt2" {
                return Err(Error::Value(format!(
                    "model_type is '{t}', but only 'gpt2' checkpoints are supported"
                )));
            }
        }
        let int = |keys: &[&str], default: Option<usize>| -> Result<usize> {
            for k in keys {
                match obj.get(*k) {
                    None | Some(Value::Null) => continue,
                    Some(x) => {
                        return x
                            .as_u64()
                            .filter(|&n| n > 0 && n <= 1 << 31)
                            .map(|n| n as usize)
                            .ok_or_else(|| {
                                Error::Value(format!("'{k}' must be a positive integer, got {x}"))
                            })
                    }
                }
            }
            default.ok_or_else(|| Error::Value(format!("missing '{}'", keys[0])))
        };
        let token = |k: &str| -> Result<Option<u32>> {
            match obj.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(x) => x
                    .as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .map(Some)
                    .ok_or_else(|| Error::Value(format!("'{k}' must be a token id, got {x}"))),
            }
        };
        let n_embd = int(&["n_embd", "hidden_size"], Some(768))?;
        let cfg = Gpt2Config {
            vocab_size: int(&["vocab_size"], Some(50257))?,
            n_positions: int(
                &["n_positions", "n_ctx", "max_position_embeddings"],
                Some(1024),
            )?,
            n_embd,
            n_layer: int(&["n_layer", "num_hidden_layers"], Some(12))?,
            n_head: int(&["n_head", "num_attention_heads"], Some(12))?,
            n_inner: int(&["n_inner"], Some(4 * n_embd))?,
            layer_norm_epsilon: match obj.get("layer_norm_epsilon") {
                None | Some(Value::Null) => 1e-5,
                // Checked as the f32 the kernels use: 1e300 would be inf, 1e-300 zero.
                Some(x) => x
                    .as_f64()
                    .map(|e| e as f32)
                    .filter(|e| e.is_finite() && *e > 0.0)
                    .ok_or_else(|| {
                        Error::Value(format!(
                            "'layer_norm_epsilon' must be a positive number that is finite and \
                             non-zero as a float32 (about 1.2e-38 to 3.4e38), got {x}"
                        ))
                    })?,
            },
            bos_token_id: token("bos_token_id")?,
            eos_token_id: token("eos_token_id")?,
        };
        if let Some(act) = obj.get("activation_function").and_then(Value::as_str) {
            if !matches!(act, "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast") {
                return Err(Error::Value(format!(
                    "activation_function '{act}' is not supported (GPT-2 uses 'gelu_new', the tanh GELU)"
                )));
            }
        }
        // Attention variants of GPT2Config that this runtime does not implement: refused, so a
        // checkpoint never silently runs with attention other than the one it was trained with.
        for (key, supported) in [
            ("scale_attn_weights", true),
            ("scale_attn_by_inverse_layer_idx", false),
            ("add_cross_attention", false),
        ] {
            match obj.get(key) {
                None | Some(Value::Null) => {}
                Some(Value::Bool(b)) if *b == supported => {}
                Some(x) => {
                    return Err(Error::Value(format!(
                        "'{key}' is {x}; only {supported} is supported"
                    )))
                }
            }
        }
        if !cfg.n_embd.is_multiple_of(cfg.n_head) {
            return Err(Error::Value(format!(
                "n_embd ({}) must be divisible by n_head ({})",
                cfg.n_embd, cfg.n_head
            )));
        }
        Ok(cfg)
    }

    /// The Hugging Face `config.json` for this model (GPT2LMHeadModel, tied embeddings).
    pub fn to_json(&self) -> Value {
        // Through the shortest decimal form, so 1e-5 is written as 1e-05, not 9.99999974e-06.
        let eps: f64 = self.layer_norm_epsilon.to_string().parse().unwrap_or(1e-5);
        let n_inner = (self.n_inner != 4 * self.n_embd).then_some(self.n_inner);
        serde_json::json!({
            "model_type": "gpt2",
            "architectures": ["GPT2LMHeadModel"],
            "vocab_size": self.vocab_size,
            "n_positions": self.n_positions,
            "n_ctx": self.n_positions,
            "n_embd": self.n_embd,
            "n_layer": self.n_layer,
            "n_head": self.n_head,
            "n_inner": n_inner,
            "activation_function": "gelu_new",
            "layer_norm_epsilon": eps,
            "resid_pdrop": 0.0,
            "embd_pdrop": 0.0,
            "attn_pdrop": 0.0,
            "initializer_range": 0.02,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "tie_word_embeddings": true,
            "torch_dtype": "float32",
        })
    }

    /// The hyper-parameters as the dict Python's `Model.config` shows for GPT-2.
    pub fn summary_json(&self) -> Value {
        serde_json::json!({
            "model_type": "gpt2",
            "vocab_size": self.vocab_size,
            "n_positions": self.n_positions,
            "n_embd": self.n_embd,
            "n_layer": self.n_layer,
            "n_head": self.n_head,
            "n_inner": self.n_inner,
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
        })
    }

    pub fn head_dim(&self) -> usize {
        self.n_embd / self.n_head
    }
}

/// Typed reads of a JSON object's keys with errors that name the key, the value and the file:
/// the config mapping of every family. A key set to `null` counts as absent.
pub struct Keys<'a> {
    obj: &'a serde_json::Map<String, Value>,
    name: &'a str,
}

impl<'a> Keys<'a> {
    pub fn new(obj: &'a serde_json::Map<String, Value>, name: &'a str) -> Self {
        Self { obj, name }
    }

    pub fn name(&self) -> &str {
        self.name
    }

    fn get(&self, key: &str) -> Option<&'a Value> {
        self.obj.get(key).filter(|v| !v.is_null())
    }

    fn bad(&self, key: &str, want: &str, got: &Value) -> Error {
        Error::Value(format!("{}: '{key}' must be {want}, got {got}", self.name))
    }

    /// A positive integer (at most 2^31), or `default` when absent.
    pub fn usize(&self, key: &str, default: Option<usize>) -> Result<usize> {
        match self.get(key) {
            None => default.ok_or_else(|| Error::Value(format!("{}: missing '{key}'", self.name))),
            Some(v) => v
                .as_u64()
                .filter(|&n| n > 0 && n <= 1 << 31)
                .map(|n| n as usize)
                .ok_or_else(|| self.bad(key, "a positive integer", v)),
        }
    }

    pub fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        self.get(key).map(|_| self.usize(key, None)).transpose()
    }

    /// A finite number, or `default` when absent.
    pub fn f64(&self, key: &str, default: Option<f64>) -> Result<f64> {
        match self.get(key) {
            None => default.ok_or_else(|| Error::Value(format!("{}: missing '{key}'", self.name))),
            Some(v) => v
                .as_f64()
                .filter(|x| x.is_finite())
                .ok_or_else(|| self.bad(key, "a finite number", v)),
        }
    }

    /// A normalization epsilon: positive and non-zero as the f32 the kernels use.
    pub fn eps(&self, key: &str, default: f32) -> Result<f32> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_f64()
                .map(|e| e as f32)
                .filter(|e| e.is_finite() && *e > 0.0)
                .ok_or_else(|| self.bad(key, "a positive number, non-zero as a float32", v)),
        }
    }

    pub fn bool(&self, key: &str, default: bool) -> Result<bool> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.as_bool().ok_or_else(|| self.bad(key, "true or false", v)),
        }
    }

    pub fn str(&self, key: &str) -> Result<Option<&'a str>> {
        self.get(key)
            .map(|v| v.as_str().ok_or_else(|| self.bad(key, "a string", v)))
            .transpose()
    }

    pub fn object(&self, key: &str) -> Result<Option<&'a serde_json::Map<String, Value>>> {
        self.get(key)
            .map(|v| v.as_object().ok_or_else(|| self.bad(key, "an object", v)))
            .transpose()
    }

    /// A number, or None when absent or null.
    pub fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        self.get(key).map(|_| self.f64(key, None)).transpose()
    }

    /// A list of strings, or None when absent.
    pub fn str_list(&self, key: &str) -> Result<Option<Vec<&'a str>>> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let a = v
            .as_array()
            .ok_or_else(|| self.bad(key, "a list of strings", v))?;
        a.iter()
            .map(|e| {
                e.as_str()
                    .ok_or_else(|| self.bad(key, "a list of strings", v))
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    /// A token id or a list of them (`eos_token_id` is either); empty when absent.
    pub fn token_ids(&self, key: &str) -> Result<Vec<u32>> {
        let one = |v: &Value| {
            v.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| self.bad(key, "a token id or a list of them", v))
        };
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(a)) => a.iter().map(one).collect(),
            Some(v) => Ok(vec![one(v)?]),
        }
    }
}
