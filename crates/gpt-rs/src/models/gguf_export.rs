//! Writing a Hugging Face folder as a GGUF file with quantized weights (`gpt-rs quantize`):
//! the inverse of `models::gguf`, laid out as llama.cpp's converter lays it out (llama q/k
//! rows permuted for interleaved RoPE, Gemma's `+1` folded into its norms, Llama 3 frequency
//! factors as `rope_freqs.weight`), so llama.cpp and gpt_rs both load the result.
//!
//! A `Recipe` names each matrix's block type: one type for all (q4_0, q4_1, q5_0, q5_1, q8_0
//! round to nearest; q4_k, q5_k, q6_k search their scales), or llama.cpp's mixes q4_k_m and
//! q5_k_m (more bits where they matter most, `Recipe::type_for`). Rows that are not whole
//! K blocks take the 32-weight type llama.cpp falls back to; other odd rows, norms and biases
//! stay F32. The tokenizer is written from `tokenizer.json` (byte-level BPE vocabularies),
//! with the chat template of `tokenizer_config.json`.

use std::path::Path;

use serde_json::Value as Json;

use super::gemma3::Gemma3Config;
use super::llama::{LlamaConfig, RopeScaling};
use super::weights::Checkpoint;
use crate::backend::quant::QuantType;
use crate::checkpoint::gguf::GgufWriter;
use crate::checkpoint::read_text_file;
use crate::error::{Error, Result};

/// The block type of every matrix written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recipe {
    /// Every matrix in one type.
    Uniform(QuantType),
    /// llama.cpp's `_M` mixes over a K base type (Q4_K for q4_k_m, Q5_K for q5_k_m).
    KMix(QuantType),
}

impl Recipe {
    /// The mixes `parse` accepts besides the quantizable block types.
    const MIXES: [(&'static str, QuantType); 2] =
        [("q4_k_m", QuantType::Q4K), ("q5_k_m", QuantType::Q5K)];

    /// The names `parse` accepts, for messages.
    pub fn names() -> String {
        let mixes: Vec<&str> = Self::MIXES.iter().map(|m| m.0).collect();
        format!("{}, {}", QuantType::quantizable_names(), mixes.join(", "))
    }

    pub fn parse(name: &str) -> Result<Self> {
        if let Some(&(_, base)) = Self::MIXES.iter().find(|m| m.0 == name) {
            return Ok(Self::KMix(base));
        }
        match QuantType::parse(name) {
            Some(t) if t.can_quantize() => Ok(Self::Uniform(t)),
            Some(t) => Err(Error::Value(format!(
                "quantizing to {} is not supported (supported: {})",
                t.name(),
                Self::names()
            ))),
            None => Err(Error::Value(format!(
                "unknown quantization type '{name}' (supported: {})",
                Self::names()
            ))),
        }
    }

    /// llama.cpp's `general.file_type` code of the file written (the uniform K types are what
    /// it calls the `_S` mixes).
    pub fn file_type(self) -> u64 {
        use QuantType as T;
        match self {
            Self::Uniform(T::Q4_0) => 2,
            Self::Uniform(T::Q4_1) => 3,
            Self::Uniform(T::Q8_0) => 7,
            Self::Uniform(T::Q5_0) => 8,
            Self::Uniform(T::Q5_1) => 9,
            Self::Uniform(T::Q4K) => 14,
            Self::KMix(T::Q4K) => 15,
            Self::Uniform(T::Q5K) => 16,
            Self::KMix(_) => 17,
            Self::Uniform(_) => 18,
        }
    }

    /// The type written for matrix `name` (GGUF's name) with rows of `k` weights, of a model
    /// with `n_layer` layers; `output` tells the matrix that produces the logits (the token
    /// embedding when it is tied). None: the matrix stays F32.
    ///
    /// The mixes give the logits' matrix Q6_K, and `attn_v` and `ffn_down` Q6_K in the first
    /// and last eighth of the layers and every third layer between (the layers llama.cpp found
    /// most sensitive), a fused `attn_qkv` one K type up; rows that are not whole 256-weight
    /// blocks fall back as llama.cpp does (Q4_K to Q5_0, Q5_K to Q5_1, Q6_K to Q8_0).
    pub fn type_for(self, name: &str, k: usize, n_layer: usize, output: bool) -> Option<QuantType> {
        let t = match self {
            Self::Uniform(t) => t,
            Self::KMix(base) => {
                let layer = name
                    .strip_prefix("blk.")
                    .and_then(|r| r.split('.').next())
                    .and_then(|i| i.parse::<usize>().ok());
                let n = n_layer;
                let more_bits = |i: usize| {
                    i < n / 8
                        || i >= 7 * n / 8
                        || (i as isize - (n / 8) as isize).rem_euclid(3) == 2
                };
                if output {
                    QuantType::Q6K
                } else if name.ends_with("attn_qkv.weight") {
                    if base == QuantType::Q4K {
                        QuantType::Q5K
                    } else {
                        QuantType::Q6K
                    }
                } else if (name.ends_with("attn_v.weight") || name.ends_with("ffn_down.weight"))
                    && layer.is_some_and(more_bits)
                {
                    QuantType::Q6K
                } else {
                    base
                }
            }
        };
        if k.is_multiple_of(t.block_elems()) {
            return Some(t);
        }
        let fallback = match t {
            QuantType::Q4K => QuantType::Q5_0,
            QuantType::Q5K => QuantType::Q5_1,
            QuantType::Q6K => QuantType::Q8_0,
            _ => return None,
        };
        k.is_multiple_of(fallback.block_elems()).then_some(fallback)
    }
}

/// The shared hyper-parameters of the families written.
struct Shape {
    arch: &'static str,
    vocab: usize,
    hidden: usize,
    inter: usize,
    layers: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    context: usize,
    eps: f32,
    bos: Option<u32>,
    eos: Option<u32>,
}

/// The `Shape` of a family config (the Llama and Gemma 3 configs share these field names).
macro_rules! shape_of {
    ($c:expr, $arch:expr) => {
        Shape {
            arch: $arch,
            vocab: $c.vocab_size,
            hidden: $c.hidden_size,
            inter: $c.intermediate_size,
            layers: $c.num_hidden_layers,
            heads: $c.num_attention_heads,
            kv_heads: $c.num_key_value_heads,
            head_dim: $c.head_dim,
            context: $c.max_position_embeddings,
            eps: $c.rms_norm_eps,
            bos: $c.bos_token_id,
            eos: $c.eos_token_ids.first().copied(),
        }
    };
}

/// Writes `dir` (a Hugging Face folder of a Llama-family, Gemma 3 or GPT-2 model) to `out` as GGUF
/// with matrices as `recipe` says; `progress` gets (tensors done, tensors in all).
pub fn export(
    dir: &Path,
    out: &Path,
    recipe: Recipe,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<()> {
    let cfg_path = dir.join("config.json");
    let config: Json = serde_json::from_str(&read_text_file(&cfg_path)?)
        .map_err(|e| Error::Value(format!("{} is not valid JSON: {e}", cfg_path.display())))?;
    let model_type = config["model_type"].as_str().unwrap_or("");
    let ck = Checkpoint::open_dir(dir)?;
    let mut w = GgufWriter::default();
    let (shape, llama) = match model_type {
        "llama" | "mistral" | "qwen2" | "qwen3" => {
            let c = LlamaConfig::from_json(&config)?;
            let arch = match model_type {
                "qwen2" => "qwen2",
                "qwen3" => "qwen3",
                _ => "llama",
            };
            let shape = shape_of!(c, arch);
            (shape, Some(c))
        }
        "gpt2" => {
            let c = crate::checkpoint::Gpt2Config::from_json(&config)?;
            let shape = Shape {
                arch: "gpt2",
                vocab: c.vocab_size,
                hidden: c.n_embd,
                inter: c.n_inner,
                layers: c.n_layer,
                heads: c.n_head,
                kv_heads: c.n_head,
                head_dim: c.head_dim(),
                context: c.n_positions,
                eps: c.layer_norm_epsilon,
                bos: c.bos_token_id,
                eos: c.eos_token_id,
            };
            (shape, None)
        }
        "gemma3_text" => {
            let c = Gemma3Config::from_json(&config)?;
            let a = "gemma3";
            w.f32(&format!("{a}.rope.freq_base_swa"), c.rope_local.theta);
            if let Some(win) = c.sliding_window {
                w.u32(&format!("{a}.attention.sliding_window"), win as u64);
            }
            if let Some(s) = c.final_logit_softcapping {
                w.f32(&format!("{a}.final_logit_softcapping"), s as f64);
            }
            w.f32(&format!("{a}.rope.freq_base"), c.rope_global.theta);
            if let RopeScaling::Linear { factor } = c.rope_global.scaling {
                w.str(&format!("{a}.rope.scaling.type"), "linear");
                w.f32(&format!("{a}.rope.scaling.factor"), factor);
            }
            w.bools(&format!("{a}.attention.sliding_window_pattern"), &c.sliding);
            let shape = shape_of!(c, a);
            (shape, None)
        }
        other => {
            return Err(Error::Value(format!(
                "{}: model_type '{other}' cannot be written as GGUF (supported: llama, \
                 mistral, qwen2, qwen3, gemma3_text, gpt2)",
                cfg_path.display()
            )))
        }
    };
    let a = shape.arch;
    let key = |k: &str| format!("{a}.{k}");
    w.str("general.architecture", a);
    let name = dir
        .file_name()
        .map_or("model".into(), |n| n.to_string_lossy().to_string());
    w.str("general.name", &name);
    w.u32("general.quantization_version", 2);
    w.u32("general.file_type", recipe.file_type());
    w.u32(&key("context_length"), shape.context as u64);
    w.u32(&key("embedding_length"), shape.hidden as u64);
    w.u32(&key("feed_forward_length"), shape.inter as u64);
    w.u32(&key("block_count"), shape.layers as u64);
    w.u32(&key("attention.head_count"), shape.heads as u64);
    w.u32(&key("attention.head_count_kv"), shape.kv_heads as u64);
    w.u32(&key("attention.key_length"), shape.head_dim as u64);
    w.u32(&key("attention.value_length"), shape.head_dim as u64);
    if a == "gpt2" {
        w.f32(&key("attention.layer_norm_epsilon"), shape.eps as f64);
    } else {
        w.f32(&key("attention.layer_norm_rms_epsilon"), shape.eps as f64);
    }
    let mut rope_factors = None;
    if let Some(c) = &llama {
        w.f32(&key("rope.freq_base"), c.rope.theta);
        w.u32(&key("rope.dimension_count"), c.head_dim as u64);
        match &c.rope.scaling {
            RopeScaling::None => {}
            RopeScaling::Linear { factor } => {
                w.str(&key("rope.scaling.type"), "linear");
                w.f32(&key("rope.scaling.factor"), *factor);
            }
            RopeScaling::Llama3 { .. } | RopeScaling::Factors(_) => {
                // The converter stores the per-frequency division as a tensor.
                let base = super::llama::Rope {
                    theta: c.rope.theta,
                    scaling: RopeScaling::None,
                };
                let f: Vec<f32> = base
                    .inv_freq(c.head_dim)
                    .iter()
                    .zip(c.rope.inv_freq(c.head_dim))
                    .map(|(b, s)| b / s)
                    .collect();
                rope_factors = Some(f);
            }
        }
    }
    tokenizer(dir, &shape, model_type, &mut w)?;

    // Tensors: every one the runtime reads, in the file's names.
    let names: Vec<String> = ck.names().iter().map(|s| s.to_string()).collect();
    let total = names.len();
    let mut done = 0;
    for hf in &names {
        done += 1;
        // GPT-2 checkpoints may prefix their keys with `transformer.`.
        let short = if a == "gpt2" {
            hf.strip_prefix("transformer.").unwrap_or(hf)
        } else {
            hf
        };
        let Some(gname) = super::gguf::translate(a, short, false) else {
            continue; // e.g. a tied lm_head copy, rotary buffers
        };
        if gname == "output.weight" && llama.as_ref().is_some_and(|c| c.tie_word_embeddings) {
            continue;
        }
        let (mut tshape, mut v) = ck.values(hf)?;
        if a == "gpt2" && short.ends_with(".weight") && tshape.len() == 2 && short.starts_with("h.")
        {
            // HF's Conv1D stores `[in, out]`; GGUF matrices are `[out, in]`.
            (tshape, v) = (
                vec![tshape[1], tshape[0]],
                transpose(&v, tshape[0], tshape[1]),
            );
        }
        if a == "llama" && (hf.contains("q_proj.") || hf.contains("k_proj.")) {
            let heads = if hf.contains("q_proj.") {
                shape.heads
            } else {
                shape.kv_heads
            };
            v = permute_rows(&v, &tshape, heads);
        }
        if a == "gemma3" && hf.ends_with("norm.weight") {
            for x in &mut v {
                *x += 1.0;
            }
        }
        let tied = llama.as_ref().is_none_or(|c| c.tie_word_embeddings);
        let output = gname == "output.weight" || (tied && gname == "token_embd.weight");
        // Position embeddings stay F32, as llama.cpp leaves them.
        let qtype = match tshape.as_slice() {
            [_, k] if gname != "position_embd.weight" => {
                recipe.type_for(&gname, *k, shape.layers, output)
            }
            _ => None,
        };
        match (qtype, tshape.as_slice()) {
            (Some(t), [rows, k]) => {
                let rb = t.row_bytes(*k);
                let mut data = crate::memory::zeroed::<u8>(rows * rb, "quantized weights")?;
                // Rows are independent; the K types' search makes this the slow part.
                let rows_per_task = (65536 / k).max(1);
                crate::threads::install(|| {
                    use rayon::prelude::*;
                    v.par_chunks(k * rows_per_task)
                        .zip(data.par_chunks_mut(rb * rows_per_task))
                        .for_each(|(x, o)| {
                            for (x, o) in x.chunks_exact(*k).zip(o.chunks_exact_mut(rb)) {
                                t.quantize_row(x, o);
                            }
                        })
                });
                w.tensor(&gname, &tshape, t.ggml_type(), data);
            }
            _ => w.tensor(&gname, &tshape, 0, f32_bytes(&v)),
        }
        ck.release(hf);
        progress(done, total);
    }
    if let Some(f) = rope_factors {
        w.tensor("rope_freqs.weight", &[f.len()], 0, f32_bytes(&f));
    }
    w.write(out)
}

/// `v` (`rows x cols`, row-major) transposed.
fn transpose(v: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; v.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = v[r * cols + c];
        }
    }
    out
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// llama.cpp's permutation of q/k rows: within each head, the half-split RoPE pairs
/// `(i, i + D/2)` become the adjacent rows `(2i, 2i + 1)`.
fn permute_rows(v: &[f32], shape: &[usize], heads: usize) -> Vec<f32> {
    let rows = shape[0];
    let cols = if shape.len() > 1 { shape[1] } else { 1 };
    let d = rows / heads;
    let mut out = vec![0.0f32; v.len()];
    for h in 0..heads {
        for i in 0..d / 2 {
            for two in 0..2 {
                let src = h * d + two * (d / 2) + i;
                let dst = h * d + 2 * i + two;
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&v[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

/// The `tokenizer.ggml.*` metadata of a byte-level BPE `tokenizer.json`.
fn tokenizer(dir: &Path, shape: &Shape, model_type: &str, w: &mut GgufWriter) -> Result<()> {
    let path = dir.join("tokenizer.json");
    if !path.is_file() {
        return Err(Error::NotFound(format!(
            "{} not found (a GGUF file carries its tokenizer)",
            path.display()
        )));
    }
    let tj: Json = serde_json::from_str(&read_text_file(&path)?)
        .map_err(|e| Error::Value(format!("{} is not valid JSON: {e}", path.display())))?;
    let model = &tj["model"];
    if model["type"] != "BPE" || model["byte_fallback"] == true {
        return Err(Error::Value(format!(
            "{}: only byte-level BPE tokenizers can be written to GGUF yet (this one is {} \
             with byte_fallback = {})",
            path.display(),
            model["type"],
            model["byte_fallback"]
        )));
    }
    let bad = |what: &str| Error::Value(format!("{}: {what}", path.display()));
    let vocab = model["vocab"]
        .as_object()
        .ok_or_else(|| bad("model.vocab is not an object"))?;
    let mut tokens: Vec<Option<String>> = vec![None; shape.vocab];
    let mut types = vec![1i64; shape.vocab];
    let mut put = |id: u64, t: &str, ty: i64| -> Result<()> {
        let slot = tokens
            .get_mut(id as usize)
            .ok_or_else(|| bad(&format!("token id {id} is past vocab_size {}", shape.vocab)))?;
        *slot = Some(t.to_string());
        types[id as usize] = ty;
        Ok(())
    };
    for (t, id) in vocab {
        put(
            id.as_u64()
                .ok_or_else(|| bad("a vocab id is not a number"))?,
            t,
            1,
        )?;
    }
    for a in tj["added_tokens"].as_array().into_iter().flatten() {
        let (Some(id), Some(t)) = (a["id"].as_u64(), a["content"].as_str()) else {
            return Err(bad("an added token has no id or content"));
        };
        put(id, t, if a["special"] == true { 3 } else { 4 })?;
    }
    // Ids the tokenizer does not use (vocab_size is often rounded up): unused padding tokens.
    let tokens: Vec<String> = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            t.unwrap_or_else(|| {
                types[i] = 5;
                format!("[PAD{i}]")
            })
        })
        .collect();
    let merges: Vec<String> = model["merges"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| match m {
            Json::String(s) => Ok(s.clone()),
            Json::Array(p) if p.len() == 2 => Ok(format!(
                "{} {}",
                p[0].as_str().unwrap_or(""),
                p[1].as_str().unwrap_or("")
            )),
            _ => Err(bad("a merge is neither \"a b\" nor [a, b]")),
        })
        .collect::<Result<_>>()?;
    // The pre-tokenizer, named as llama.cpp names it, from the split regex.
    let pre_json = tj["pre_tokenizer"].to_string();
    let pre = if pre_json.contains("\\\\p{N}{1,3}") {
        "llama-bpe"
    } else if pre_json.contains("(?i:'s") || matches!(model_type, "qwen2" | "qwen3") {
        "qwen2"
    } else {
        "gpt-2" // llama.cpp's name (it rejects "gpt2" as a pre-tokenizer)
    };
    w.str("tokenizer.ggml.model", "gpt2");
    w.str("tokenizer.ggml.pre", pre);
    w.strs("tokenizer.ggml.tokens", &tokens);
    w.i32s("tokenizer.ggml.token_type", &types);
    w.strs("tokenizer.ggml.merges", &merges);
    if let Some(b) = shape.bos {
        w.u32("tokenizer.ggml.bos_token_id", b as u64);
    }
    if let Some(e) = shape.eos {
        w.u32("tokenizer.ggml.eos_token_id", e as u64);
    }
    let tc = crate::chat::TokenizerConfig::from_dir(dir)?;
    w.bool(
        "tokenizer.ggml.add_bos_token",
        tc.add_bos_token.unwrap_or(false),
    );
    if let Some(t) = &tc.chat_template {
        w.str("tokenizer.chat_template", t);
    }
    Ok(())
}
