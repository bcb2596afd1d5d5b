//! A `Tokenizer` from a GGUF file's `tokenizer.ggml.*` metadata, built as the `tokenizer.json`
//! that `tokenizers` would load for the same vocabulary, so tokenization is that library's.
//!
//! `tokenizer.ggml.model = "gpt2"`: byte-level BPE (`tokens`, `merges`), with the
//! pre-tokenizer regex llama.cpp picks for `tokenizer.ggml.pre`. `"llama"`: SentencePiece's
//! BPE (Llama 2, Gemma, Mistral v0.1 files): `▁` for spaces (one prepended with
//! `add_space_prefix`), pieces merged best `tokenizer.ggml.scores` first (expressed as BPE
//! merges ranked by the merged piece's score, as transformers converts such vocabularies),
//! unknown bytes as `<0xNN>` tokens. Tokens of type control (3) and user-defined (4) are added
//! tokens, matched whole in the text. BOS/EOS ids, `add_bos_token` and
//! `tokenizer.chat_template` come along.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde_json::{json, Value as Json};
use tokenizers::Tokenizer as HfTokenizer;

use crate::chat::ChatTemplate;
use crate::checkpoint::gguf::Value;
use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;

/// GPT-2's split: contractions, letters, digits, other symbols, whitespace.
const GPT2_SPLIT: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
/// Llama 3's (`llama-bpe`): case-insensitive contractions, digits in runs of up to three.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's: as Llama 3's, with single digits.
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The split regex for a `tokenizer.ggml.pre` value (None: GPT-2's byte-level default).
fn split_for(pre: &str) -> Result<Option<&'static str>> {
    Ok(match pre {
        "default" | "gpt2" | "gpt-2" => None,
        "llama-bpe" | "llama3" | "smaug-bpe" | "falcon3" | "pixtral" => Some(LLAMA3_SPLIT),
        "qwen2" | "deepseek-r1-qwen" | "qwen35" => Some(QWEN2_SPLIT),
        "smollm" => Some(GPT2_SPLIT),
        other => {
            return Err(Error::Value(format!(
                "tokenizer.ggml.pre '{other}' is not supported (supported: default, gpt2, \
                 llama-bpe, qwen2, smollm)"
            )))
        }
    })
}

fn str_array<'a>(meta: &'a HashMap<String, Value>, key: &str) -> Result<Option<Vec<&'a str>>> {
    let Some(v) = meta.get(key) else {
        return Ok(None);
    };
    let arr = v
        .as_array()
        .ok_or_else(|| Error::Value(format!("{key} is not an array")))?;
    arr.iter()
        .map(|x| {
            x.as_str()
                .ok_or_else(|| Error::Value(format!("{key} holds a non-string")))
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

fn id(meta: &HashMap<String, Value>, key: &str, n: usize) -> Result<Option<u32>> {
    match meta.get(key) {
        None => Ok(None),
        Some(v) => match v.as_u64() {
            Some(i) if (i as usize) < n => Ok(Some(i as u32)),
            // llama.cpp writes -1 / u32::MAX for "none".
            Some(i) if i == u32::MAX as u64 => Ok(None),
            _ if v.as_i64() == Some(-1) => Ok(None),
            _ => Err(Error::Value(format!(
                "{key} = {v:?} is not a token id of the {n}-token vocabulary"
            ))),
        },
    }
}

/// Builds the tokenizer; None if the file has no `tokenizer.ggml.tokens`.
pub fn from_gguf(meta: &HashMap<String, Value>, label: &str) -> Result<Option<Tokenizer>> {
    let at = |e: Error| match e {
        Error::Value(m) => Error::Value(format!("{label}: {m}")),
        other => other,
    };
    build(meta).map_err(at)
}

fn build(meta: &HashMap<String, Value>) -> Result<Option<Tokenizer>> {
    let Some(tokens) = str_array(meta, "tokenizer.ggml.tokens")? else {
        return Ok(None);
    };
    let n = tokens.len();
    let model = meta
        .get("tokenizer.ggml.model")
        .and_then(Value::as_str)
        .unwrap_or("gpt2");
    if model != "gpt2" && model != "llama" {
        return Err(Error::Value(format!(
            "tokenizer.ggml.model '{model}' is not supported (supported: gpt2, the byte-level \
             BPE of Llama 3, Qwen and GPT-2 files; llama, SentencePiece BPE)"
        )));
    }
    let types: Vec<i64> = match meta.get("tokenizer.ggml.token_type") {
        None => vec![1; n],
        Some(v) => {
            let a = v
                .as_array()
                .ok_or_else(|| Error::Value("tokenizer.ggml.token_type is not an array".into()))?;
            if a.len() != n {
                return Err(Error::Value(format!(
                    "tokenizer.ggml.token_type has {} entries for {n} tokens",
                    a.len()
                )));
            }
            a.iter().map(|t| t.as_i64().unwrap_or(1)).collect()
        }
    };
    let mut vocab = serde_json::Map::new();
    let mut added = Vec::new();
    for (i, (&t, &ty)) in tokens.iter().zip(&types).enumerate() {
        if vocab.insert(t.to_string(), json!(i)).is_some() {
            return Err(Error::Value(format!(
                "tokenizer.ggml.tokens holds '{t}' twice"
            )));
        }
        if ty == 3 || ty == 4 {
            added.push(json!({
                "id": i, "content": t, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": ty == 3,
            }));
        }
    }
    let doc = if model == "gpt2" {
        byte_level_bpe(meta, vocab, added)?
    } else {
        sentencepiece_bpe(meta, &tokens, &types, vocab, added)?
    };
    let inner: HfTokenizer = serde_json::from_value::<HfTokenizer>(doc)
        .map_err(|e| Error::Value(format!("cannot build the tokenizer: {e}")))?;

    let bos = id(meta, "tokenizer.ggml.bos_token_id", n)?;
    let eos = id(meta, "tokenizer.ggml.eos_token_id", n)?;
    let add_bos = meta
        .get("tokenizer.ggml.add_bos_token")
        .map(|v| matches!(v, Value::Bool(true)))
        .unwrap_or(false);
    let mut special = BTreeMap::new();
    if let Some(b) = bos {
        special.insert("bos_token".to_string(), tokens[b as usize].to_string());
    }
    if let Some(e) = eos {
        special.insert("eos_token".to_string(), tokens[e as usize].to_string());
    }
    let chat = match meta.get("tokenizer.chat_template") {
        None => None,
        Some(v) => {
            let src = v
                .as_str()
                .ok_or_else(|| Error::Value("tokenizer.chat_template is not a string".into()))?;
            Some(Arc::new(ChatTemplate::new(src, special)?))
        }
    };
    Ok(Some(Tokenizer::from_parts(
        inner,
        eos,
        if add_bos { bos } else { None },
        chat,
    )))
}

/// The ids that end generation: EOS, EOT/EOM, and the usual end-of-turn tokens when they are
/// control tokens of this vocabulary (as llama.cpp's end-of-generation set).
pub fn stop_ids(meta: &HashMap<String, Value>) -> Result<Vec<u32>> {
    let tokens = str_array(meta, "tokenizer.ggml.tokens")?.unwrap_or_default();
    let n = tokens.len();
    let mut ids = Vec::new();
    for key in [
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.eot_token_id",
        "tokenizer.ggml.eom_token_id",
    ] {
        if let Some(i) = id(meta, key, n)? {
            if !ids.contains(&i) {
                ids.push(i);
            }
        }
    }
    let types = meta
        .get("tokenizer.ggml.token_type")
        .and_then(Value::as_array)
        .unwrap_or(&[]);
    for name in [
        "<|eot_id|>",
        "<|im_end|>",
        "<|endoftext|>",
        "<end_of_turn>",
        "<|end|>",
    ] {
        if let Some(i) = tokens.iter().position(|&t| t == name) {
            let control = types.get(i).and_then(Value::as_i64) == Some(3);
            if control && !ids.contains(&(i as u32)) {
                ids.push(i as u32);
            }
        }
    }
    Ok(ids)
}

/// A `tokenizer.json` document: the parts every GGUF tokenizer shares around its own.
fn document(
    added: Vec<Json>,
    normalizer: Json,
    pre_tokenizer: Json,
    decoder: Json,
    model: Json,
) -> Json {
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": normalizer,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": null,
        "decoder": decoder,
        "model": model,
    })
}

/// GPT-2-style byte-level BPE (`tokenizer.ggml.model = "gpt2"`).
fn byte_level_bpe(
    meta: &HashMap<String, Value>,
    vocab: serde_json::Map<String, Json>,
    added: Vec<Json>,
) -> Result<Json> {
    let merges = str_array(meta, "tokenizer.ggml.merges")?.unwrap_or_default();
    let pre = meta
        .get("tokenizer.ggml.pre")
        .and_then(Value::as_str)
        .unwrap_or("default");
    let split = split_for(pre)?;
    let merges: Vec<Json> = merges.iter().map(|m| json!(m)).collect();
    let byte_level = json!({
        "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false,
        "use_regex": split.is_none(),
    });
    let pre_tokenizer = match split {
        None => byte_level,
        Some(re) => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": re}, "behavior": "Isolated", "invert": false},
            byte_level,
        ]}),
    };
    Ok(document(
        added,
        Json::Null,
        pre_tokenizer,
        json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true,
               "use_regex": true}),
        json!({"type": "BPE", "dropout": null, "unk_token": null,
               "continuing_subword_prefix": null, "end_of_word_suffix": null,
               "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
               "vocab": vocab, "merges": merges}),
    ))
}

/// SentencePiece BPE (`tokenizer.ggml.model = "llama"`): merges derived from the scores.
fn sentencepiece_bpe(
    meta: &HashMap<String, Value>,
    tokens: &[&str],
    types: &[i64],
    vocab: serde_json::Map<String, Json>,
    added: Vec<Json>,
) -> Result<Json> {
    let n = tokens.len();
    let scores: Vec<f64> = match meta.get("tokenizer.ggml.scores") {
        Some(Value::Array(a)) if a.len() == n => {
            a.iter().map(|v| v.as_f64().unwrap_or(0.0)).collect()
        }
        Some(_) => {
            return Err(Error::Value(format!(
                "tokenizer.ggml.scores is not an array of {n} numbers"
            )))
        }
        None => return Err(Error::Value("tokenizer.ggml.scores is missing".into())),
    };
    // Every split of a normal piece into two pieces is a merge, ranked by the merged piece's
    // score (best first; ties by id): SentencePiece merges the best-scoring pair first.
    let ids: HashMap<&str, usize> = tokens.iter().enumerate().map(|(i, &t)| (t, i)).collect();
    let mut merges: Vec<(f64, usize, &str, &str)> = Vec::new();
    for (id, &t) in tokens.iter().enumerate() {
        if types[id] != 1 {
            continue;
        }
        for (i, _) in t.char_indices().skip(1) {
            let (l, r) = t.split_at(i);
            let normal = |p: &str| ids.get(p).is_some_and(|&j| types[j] == 1);
            if normal(l) && normal(r) {
                merges.push((scores[id], id, l, r));
            }
        }
    }
    merges.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let merges: Vec<Json> = merges.iter().map(|&(_, _, l, r)| json!([l, r])).collect();
    let prefix = match meta.get("tokenizer.ggml.add_space_prefix") {
        Some(Value::Bool(b)) => *b,
        _ => true,
    };
    let unk = id(meta, "tokenizer.ggml.unknown_token_id", n)?
        .or_else(|| types.iter().position(|&t| t == 2).map(|i| i as u32))
        .map(|i| tokens[i as usize]);
    let replace = json!({"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"});
    let normalizer = if prefix {
        json!({"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "\u{2581}"}, replace]})
    } else {
        replace
    };
    let mut decoders = vec![
        json!({"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "}),
        json!({"type": "ByteFallback"}),
        json!({"type": "Fuse"}),
    ];
    if prefix {
        decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
    }
    Ok(document(
        added,
        normalizer,
        Json::Null,
        json!({"type": "Sequence", "decoders": decoders}),
        json!({"type": "BPE", "dropout": null, "unk_token": unk,
               "continuing_subword_prefix": null, "end_of_word_suffix": null,
               "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
               "vocab": vocab, "merges": merges}),
    ))
}
