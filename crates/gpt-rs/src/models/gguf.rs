//! Models from GGUF files: `general.architecture` and its `{arch}.*` keys mapped onto the
//! Hugging Face config of the same family, GGUF tensor names onto Hugging Face names, so the
//! family files build them exactly as they build a Hugging Face folder.
//!
//! Layout differences the converter introduces, undone here: `llama` files hold q/k rows
//! permuted for interleaved-pair RoPE (so RoPE rotates interleaved pairs), and `gemma3` files
//! hold norm weights with Gemma's `+1` folded in (so the norms add 0). Weights keep their
//! stored formats (quantized blocks stay quantized) unless `dtype` asks otherwise.

use std::path::Path;
use std::sync::Arc;

use serde_json::{json, Map, Value as Json};

use super::weights::Checkpoint;
use super::{gemma3, gpt2, llama, CausalLm, LoadDtype};
use crate::backend::BackendKind;
use crate::checkpoint::gguf::{GgufFile, Value};
use crate::checkpoint::Gpt2Config;
use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;

/// The `general.architecture` values gpt_rs runs.
pub const ARCHITECTURES: &[&str] = &["llama", "qwen2", "qwen3", "gemma3", "gpt2"];

/// Whole-model tensors: (GGUF name, Hugging Face name).
const TOP: [(&str, &str); 3] = [
    ("token_embd.weight", "model.embed_tokens.weight"),
    ("output_norm.weight", "model.norm.weight"),
    ("output.weight", "lm_head.weight"),
];

/// Per-layer tensors `blk.N.<gguf>` = `model.layers.N.<hf>`: (GGUF part, HF part, which
/// architectures: `Some(true)` Gemma 3 only, `Some(false)` all but Gemma 3, `None` all).
const LAYER: [(&str, &str, Option<bool>); 14] = [
    ("attn_norm", "input_layernorm", None),
    ("attn_q", "self_attn.q_proj", None),
    ("attn_k", "self_attn.k_proj", None),
    ("attn_v", "self_attn.v_proj", None),
    ("attn_output", "self_attn.o_proj", None),
    ("attn_q_norm", "self_attn.q_norm", None),
    ("attn_k_norm", "self_attn.k_norm", None),
    ("ffn_gate", "mlp.gate_proj", None),
    ("ffn_up", "mlp.up_proj", None),
    ("ffn_down", "mlp.down_proj", None),
    ("ffn_norm", "post_attention_layernorm", Some(false)),
    ("ffn_norm", "pre_feedforward_layernorm", Some(true)),
    (
        "post_attention_norm",
        "post_attention_layernorm",
        Some(true),
    ),
    ("post_ffw_norm", "post_feedforward_layernorm", Some(true)),
];

/// GPT-2's whole-model tensors (HF names without the `transformer.` prefix).
const GPT2_TOP: [(&str, &str); 5] = [
    ("token_embd.weight", "wte.weight"),
    ("position_embd.weight", "wpe.weight"),
    ("output_norm.weight", "ln_f.weight"),
    ("output_norm.bias", "ln_f.bias"),
    ("output.weight", "lm_head.weight"),
];

/// GPT-2's per-layer tensors `blk.N.<gguf>` = `h.N.<hf>` (as `LAYER`, for every GPT-2). The
/// converter stores the Conv1D matrices transposed, `[out, in]` like every other GGUF matrix.
const GPT2_LAYER: [(&str, &str, Option<bool>); 6] = [
    ("attn_norm", "ln_1", None),
    ("attn_qkv", "attn.c_attn", None),
    ("attn_output", "attn.c_proj", None),
    ("ffn_norm", "ln_2", None),
    ("ffn_up", "mlp.c_fc", None),
    ("ffn_down", "mlp.c_proj", None),
];

/// `name` translated between the two conventions: GGUF to Hugging Face (`to_hf`) or back.
/// None: a tensor the runtime does not use.
pub(crate) fn translate(arch: &str, name: &str, to_hf: bool) -> Option<String> {
    let (top, hf_prefix, layers): (&[_], _, &[_]) = if arch == "gpt2" {
        (&GPT2_TOP, "h.", &GPT2_LAYER)
    } else {
        (&TOP, "model.layers.", &LAYER)
    };
    let pick = |pair: (&'static str, &'static str)| if to_hf { pair } else { (pair.1, pair.0) };
    if let Some((_, to)) = top.iter().map(|&p| pick(p)).find(|(from, _)| *from == name) {
        return Some(to.to_string());
    }
    let (from_prefix, to_prefix) = if to_hf {
        ("blk.", hf_prefix)
    } else {
        (hf_prefix, "blk.")
    };
    let (layer, rest) = name.strip_prefix(from_prefix)?.split_once('.')?;
    layer.parse::<usize>().ok()?;
    let (part, suffix) = rest.rsplit_once('.')?;
    let gemma = arch == "gemma3";
    let (_, to) = layers
        .iter()
        .filter(|(_, _, only)| only.is_none_or(|g| g == gemma))
        .map(|&(g, h, _)| pick((g, h)))
        .find(|(from, _)| *from == part)?;
    Some(format!("{to_prefix}{layer}.{to}.{suffix}"))
}

/// The `config.json` a Hugging Face folder of the same model would have.
fn hf_config(f: &GgufFile, arch: &str) -> Result<Json> {
    let key = |k: &str| format!("{arch}.{k}");
    let uint = |k: &str| -> Result<Option<u64>> {
        match f.get(&key(k)) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| Error::Value(format!("metadata {} = {v:?} is not a count", key(k)))),
        }
    };
    let need = |k: &str| -> Result<u64> {
        uint(k)?.ok_or_else(|| Error::Value(format!("metadata key {} is missing", key(k))))
    };
    let float = |k: &str| f.get(&key(k)).and_then(Value::as_f64);
    let embd = f
        .tensors
        .iter()
        .find(|t| t.name == "token_embd.weight")
        .ok_or_else(|| Error::Value("tensor 'token_embd.weight' is missing".into()))?;
    let hidden = need("embedding_length")?;
    let vocab = match embd.dims.as_slice() {
        [c, v] if *c as u64 == hidden => *v,
        d => {
            return Err(Error::Value(format!(
                "tensor 'token_embd.weight' has dims {d:?}, expected [{hidden}, vocab]"
            )))
        }
    };
    let heads = need("attention.head_count")?;
    if arch == "gpt2" {
        let mut c = json!({
            "model_type": "gpt2",
            "vocab_size": vocab,
            "n_embd": hidden,
            "n_layer": need("block_count")?,
            "n_head": heads,
            "n_inner": need("feed_forward_length")?,
            "n_positions": need("context_length")?,
        });
        if let Some(e) = float("attention.layer_norm_epsilon") {
            c["layer_norm_epsilon"] = json!(e);
        }
        for (k, hf) in [
            ("tokenizer.ggml.bos_token_id", "bos_token_id"),
            ("tokenizer.ggml.eos_token_id", "eos_token_id"),
        ] {
            if let Some(v) = f.get(k).and_then(Value::as_u64) {
                c[hf] = json!(v);
            }
        }
        return Ok(c);
    }
    let mut c = Map::new();
    let model_type = if arch == "gemma3" {
        gemma3::FAMILY
    } else {
        arch
    };
    c.insert("model_type".into(), json!(model_type));
    c.insert("vocab_size".into(), json!(vocab));
    c.insert("hidden_size".into(), json!(hidden));
    c.insert(
        "intermediate_size".into(),
        json!(need("feed_forward_length")?),
    );
    c.insert("num_hidden_layers".into(), json!(need("block_count")?));
    c.insert("num_attention_heads".into(), json!(heads));
    c.insert(
        "num_key_value_heads".into(),
        json!(uint("attention.head_count_kv")?.unwrap_or(heads)),
    );
    let head_dim = uint("attention.key_length")?.unwrap_or(hidden / heads.max(1));
    c.insert("head_dim".into(), json!(head_dim));
    if let Some(n) = uint("context_length")? {
        c.insert("max_position_embeddings".into(), json!(n));
    }
    if let Some(e) = float("attention.layer_norm_rms_epsilon") {
        c.insert("rms_norm_eps".into(), json!(e));
    }
    if let Some(t) = float("rope.freq_base") {
        c.insert("rope_theta".into(), json!(t));
    }
    let scaling = f
        .get(&key("rope.scaling.type"))
        .and_then(Value::as_str)
        .unwrap_or("none");
    match scaling {
        "none" => {}
        "linear" => {
            let factor = float("rope.scaling.factor").unwrap_or(1.0);
            c.insert(
                "rope_scaling".into(),
                json!({"rope_type": "linear", "factor": factor}),
            );
        }
        other => {
            return Err(Error::Value(format!(
                "rope scaling '{other}' ({}) is not supported (supported: none, linear, and \
                 Llama 3's frequency factors)",
                key("rope.scaling.type")
            )))
        }
    }
    let has = |name: &str| f.tensors.iter().any(|t| t.name == name);
    if matches!(arch, "llama" | "qwen3") {
        // Optional biases, known only from the tensors present (as llama.cpp loads them).
        c.insert("attention_bias".into(), json!(has("blk.0.attn_q.bias")));
    }
    if arch == "llama" {
        c.insert("mlp_bias".into(), json!(has("blk.0.ffn_up.bias")));
    }
    let tied = !has("output.weight");
    c.insert("tie_word_embeddings".into(), json!(tied));
    for (k, hf) in [
        ("tokenizer.ggml.bos_token_id", "bos_token_id"),
        ("tokenizer.ggml.eos_token_id", "eos_token_id"),
    ] {
        if let Some(v) = f.get(k).and_then(Value::as_u64) {
            c.insert(hf.into(), json!(v));
        }
    }
    if arch == "gemma3" {
        // As llama.cpp reads Gemma 3: no sliding window key, every layer global; the pattern
        // is a per-layer bool array or a period (default 6, every 6th layer global); local
        // layers use RoPE base `rope.freq_base_swa` (default 10000) without scaling; queries
        // are scaled by 1/sqrt(head_dim), except the 27B's 1/sqrt(hidden / heads).
        let n_layer = need("block_count")?;
        match uint("attention.sliding_window")? {
            Some(w) if w > 0 => {
                c.insert("sliding_window".into(), json!(w));
                match f.get(&key("attention.sliding_window_pattern")) {
                    Some(Value::Array(a)) => {
                        let types: Vec<&str> = a
                            .iter()
                            .map(|v| match v {
                                Value::Bool(true) => "sliding_attention",
                                _ => "full_attention",
                            })
                            .collect();
                        c.insert("layer_types".into(), json!(types));
                    }
                    Some(v) => {
                        let n = v.as_u64().ok_or_else(|| {
                            Error::Value(format!(
                                "metadata {} = {v:?} is not a count",
                                key("attention.sliding_window_pattern")
                            ))
                        })?;
                        c.insert("sliding_window_pattern".into(), json!(n));
                    }
                    None => {
                        c.insert("sliding_window_pattern".into(), json!(6));
                    }
                }
            }
            _ => {
                c.insert("sliding_window_pattern".into(), json!(1));
            }
        }
        let local = float("rope.freq_base_swa").unwrap_or(10000.0);
        c.insert("rope_local_base_freq".into(), json!(local));
        let scalar = if n_layer == 62 {
            hidden / heads
        } else {
            head_dim
        };
        c.insert("query_pre_attn_scalar".into(), json!(scalar));
        if let Some(s) = float("final_logit_softcapping") {
            c.insert("final_logit_softcapping".into(), json!(s));
        }
    }
    Ok(Json::Object(c))
}

/// Loads a GGUF file: the model, and the tokenizer its metadata describes (if any).
pub fn load(
    path: &Path,
    backend: BackendKind,
    dtype: LoadDtype,
) -> Result<(Arc<dyn CausalLm>, Option<Tokenizer>)> {
    let f = GgufFile::open(path)?;
    let label = path.display().to_string();
    let at = |e: Error| match e {
        Error::Value(m) if !m.contains(&label) => Error::Value(format!("{label}: {m}")),
        other => other,
    };
    let arch = f
        .get("general.architecture")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            at(Error::Value(
                "metadata general.architecture is missing".into(),
            ))
        })?
        .to_string();
    if !ARCHITECTURES.contains(&arch.as_str()) {
        return Err(at(Error::Value(format!(
            "architecture '{arch}' is not supported (supported: {})",
            ARCHITECTURES.join(", ")
        ))));
    }
    let config = hf_config(&f, &arch).map_err(at)?;
    let tokenizer = crate::tokenizer_gguf::from_gguf(&f.metadata, &label)?;
    let eos = crate::tokenizer_gguf::stop_ids(&f.metadata).map_err(at)?;
    let eos = (!eos.is_empty()).then_some(eos);
    let vocab = config["vocab_size"].as_u64().unwrap_or(0) as usize;
    if let Some(t) = &tokenizer {
        if t.vocab_size() != vocab {
            return Err(at(Error::Value(format!(
                "the tokenizer has {} tokens but token_embd.weight has {vocab} rows",
                t.vocab_size()
            ))));
        }
    }
    let rope_factors = f
        .tensors
        .iter()
        .find(|t| t.name == "rope_freqs.weight")
        .cloned();
    let a = arch.clone();
    let b = arch.clone();
    let ck = Checkpoint::from_gguf(
        f,
        move |n| translate(&a, n, true),
        move |n| translate(&b, n, false),
    );
    let model: Arc<dyn CausalLm> = if arch == "gpt2" {
        let cfg = Gpt2Config::from_json(&config).map_err(at)?;
        let mut g = gpt2::Gpt2::from_checkpoint(&ck, cfg, false, backend, dtype).map_err(at)?;
        if let Some(e) = eos {
            g.set_eos(e);
        }
        Arc::new(g)
    } else if arch == "gemma3" {
        Arc::new(gemma3::Gemma3::from_checkpoint(&ck, &config, eos, dtype, 0.0).map_err(at)?)
    } else {
        let mut cfg = llama::LlamaConfig::from_json(&config).map_err(at)?;
        cfg.rope_interleaved = arch == "llama";
        if let Some(t) = rope_factors {
            let d = cfg.head_dim;
            if t.dims != [d / 2] {
                return Err(at(Error::Value(format!(
                    "tensor 'rope_freqs.weight' has dims {:?}, expected [{}]",
                    t.dims,
                    d / 2
                ))));
            }
            let factors = ck.gguf_vector(&t)?;
            cfg.rope.scaling = llama::RopeScaling::Factors(factors);
        }
        Arc::new(llama::Llama::from_checkpoint(&ck, cfg, &config, eos, dtype).map_err(at)?)
    };
    drop(ck);
    crate::memory::trim_heap();
    Ok((model, tokenizer))
}
