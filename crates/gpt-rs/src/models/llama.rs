//! The Llama decoder (Touvron et al. 2023) and the families built like it: Llama 2/3.x,
//! SmolLM2, TinyLlama (`llama`), Mistral (`mistral`, optional sliding window), Qwen2.5
//! (`qwen2`: biases on q/k/v), Qwen3 (`qwen3`: RMSNorm of each query/key head). Hugging Face
//! layout and key names; linear weights stored `[out, in]`.
//!
//! Shapes: R rows (the new tokens of all sequences in a step), C = hidden_size, H query heads,
//! Hk key/value heads, D = head_dim, I = intermediate_size, V vocab.
//!
//! Per block: `x += o_proj(attn(rope(q), rope(k), v))` with q/k/v from `rms_norm(x)`, then
//! `x += down_proj(silu(gate_proj(h)) * up_proj(h))` with `h = rms_norm(x)`. q, k and v are one
//! prepared projection, as are gate and up.

use std::path::Path;

use serde_json::Value;

use super::attention::AttnSpec;
use super::decoder;
use super::weights::Checkpoint;
use super::{
    add_in_place, check_inputs, grow, CausalLm, Linear, LoadDtype, Logits, ModelInfo, SeqInput,
    Workspace,
};
use crate::backend::{Backend, BackendKind, GateAct, Panels};
use crate::checkpoint::config::Keys;
use crate::error::{Error, Result};

/// The `model_type`s this file runs.
pub const FAMILIES: &[&str] = &["llama", "mistral", "qwen2", "qwen3"];

/// How rotary frequencies are scaled (`rope_scaling` / `rope_parameters`).
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor` (all frequencies divided by it).
    Linear {
        factor: f64,
    },
    /// Llama 3.1's: low frequencies divided by `factor`, high ones kept, a smooth blend between.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
    /// Each frequency divided by its own factor (GGUF's `rope_freqs.weight`, Llama 3.1's
    /// scaling precomputed by the converter).
    Factors(Vec<f32>),
}

/// Rotary embedding parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct Rope {
    pub theta: f64,
    pub scaling: RopeScaling,
}

impl Rope {
    /// Reads `rope_parameters` (transformers 5) or `rope_theta` + `rope_scaling` (older).
    pub fn from_config(k: &Keys<'_>, default_theta: f64) -> Result<Self> {
        let (theta, scaling) = match k.object("rope_parameters")? {
            Some(p) => {
                let p = Keys::new(p, "rope_parameters");
                (p.f64("rope_theta", Some(default_theta))?, Some(p))
            }
            None => (
                k.f64("rope_theta", Some(default_theta))?,
                k.object("rope_scaling")?
                    .map(|o| Keys::new(o, "rope_scaling")),
            ),
        };
        Self::parse(theta, scaling)
    }

    /// Base `theta` with the scaling settings `scaling` (a `rope_scaling`-shaped object, if any).
    pub fn parse(theta: f64, scaling: Option<Keys<'_>>) -> Result<Self> {
        let scaling = match scaling {
            None => RopeScaling::None,
            Some(s) => {
                let kind = s
                    .str("rope_type")?
                    .or(s.str("type")?)
                    .unwrap_or("default")
                    .to_string();
                match kind.as_str() {
                    "default" => RopeScaling::None,
                    "linear" => RopeScaling::Linear {
                        factor: s.f64("factor", None)?,
                    },
                    "llama3" => RopeScaling::Llama3 {
                        factor: s.f64("factor", None)?,
                        low_freq_factor: s.f64("low_freq_factor", None)?,
                        high_freq_factor: s.f64("high_freq_factor", None)?,
                        original_max_position_embeddings: s
                            .f64("original_max_position_embeddings", None)?,
                    },
                    other => {
                        return Err(Error::Value(format!(
                            "{}: rope type '{other}' is not supported (supported: default, linear, llama3)",
                            s.name()
                        )))
                    }
                }
            }
        };
        if !(theta.is_finite() && theta > 1.0) {
            return Err(Error::Value(format!(
                "rope_theta must be a finite number > 1, got {theta}"
            )));
        }
        Ok(Self { theta, scaling })
    }

    /// The `d / 2` inverse frequencies, as Hugging Face computes them (in f32).
    pub fn inv_freq(&self, d: usize) -> Vec<f32> {
        let base: Vec<f32> = (0..d / 2)
            .map(|i| (1.0 / self.theta.powf((2 * i) as f64 / d as f64)) as f32)
            .collect();
        match &self.scaling {
            RopeScaling::None => base,
            RopeScaling::Factors(f) => base.iter().zip(f).map(|(&b, &f)| b / f).collect(),
            &RopeScaling::Linear { factor } => {
                base.iter().map(|&f| (f as f64 / factor) as f32).collect()
            }
            &RopeScaling::Llama3 {
                factor,
                low_freq_factor: lo,
                high_freq_factor: hi,
                original_max_position_embeddings: ctx,
            } => base
                .iter()
                .map(|&f| {
                    let f = f as f64;
                    let wavelen = 2.0 * std::f64::consts::PI / f;
                    let scaled = if wavelen > ctx / lo { f / factor } else { f };
                    if wavelen < ctx / hi || wavelen > ctx / lo {
                        scaled as f32
                    } else {
                        let smooth = (ctx / wavelen - lo) / (hi - lo);
                        ((1.0 - smooth) * scaled / factor + smooth * scaled) as f32
                    }
                })
                .collect(),
        }
    }
}

/// Hyper-parameters of the Llama-shaped families, from `config.json`.
#[derive(Clone, Debug)]
pub struct LlamaConfig {
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f32,
    pub rope: Rope,
    pub tie_word_embeddings: bool,
    /// Biases on q, k and v (Qwen2 always; Llama/Qwen3 with `attention_bias`).
    pub qkv_bias: bool,
    /// A bias on o_proj too (`attention_bias` in Llama and Qwen3).
    pub o_bias: bool,
    /// Biases on the MLP projections (`mlp_bias`, Llama).
    pub mlp_bias: bool,
    /// RMSNorm of each query and key head before RoPE (Qwen3).
    pub qk_norm: bool,
    pub sliding_window: Option<usize>,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    /// RoPE rotates interleaved pairs `(2i, 2i + 1)` instead of the halves `(i, i + D/2)`:
    /// llama.cpp's converter permutes the q/k rows of `llama` GGUF files that way.
    pub rope_interleaved: bool,
}

impl LlamaConfig {
    pub fn from_json(v: &Value) -> Result<Self> {
        let obj = v
            .as_object()
            .ok_or_else(|| Error::Value("config must be a JSON object".into()))?;
        let k = Keys::new(obj, "config.json");
        let model_type = k.str("model_type")?.unwrap_or("llama").to_string();
        let family = model_type.as_str();
        if !FAMILIES.contains(&family) {
            return Err(Error::Value(format!(
                "model_type '{family}' is not a Llama-family model"
            )));
        }
        let hidden_size = k.usize("hidden_size", None)?;
        let heads = k.usize("num_attention_heads", None)?;
        let kv_heads = k.usize("num_key_value_heads", Some(heads))?;
        let default_head_dim = if family == "qwen3" {
            128
        } else {
            hidden_size / heads
        };
        let head_dim = k.usize("head_dim", Some(default_head_dim))?;
        if heads % kv_heads != 0 {
            return Err(Error::Value(format!(
                "num_attention_heads ({heads}) must be a multiple of num_key_value_heads ({kv_heads})"
            )));
        }
        if head_dim % 2 != 0 {
            return Err(Error::Value(format!(
                "head_dim must be even for RoPE, got {head_dim}"
            )));
        }
        if let Some(act) = k.str("hidden_act")? {
            if act != "silu" {
                return Err(Error::Value(format!(
                    "hidden_act '{act}' is not supported for {family} (supported: silu)"
                )));
            }
        }
        let attention_bias = k.bool("attention_bias", false)?;
        if attention_bias && matches!(family, "mistral" | "qwen2") {
            return Err(Error::Value(format!(
                "attention_bias = true is not part of the {family} architecture"
            )));
        }
        let mlp_bias = k.bool("mlp_bias", false)?;
        if mlp_bias && family != "llama" {
            return Err(Error::Value(format!(
                "mlp_bias = true is not part of the {family} architecture"
            )));
        }
        let sliding_window = match family {
            "mistral" => k.opt_usize("sliding_window")?,
            _ => {
                if k.bool("use_sliding_window", false)? {
                    return Err(Error::Value(format!(
                        "use_sliding_window = true is not supported for {family} yet"
                    )));
                }
                None
            }
        };
        let eos_token_ids = k.token_ids("eos_token_id")?;
        Ok(Self {
            vocab_size: k.usize("vocab_size", None)?,
            hidden_size,
            intermediate_size: k.usize("intermediate_size", None)?,
            num_hidden_layers: k.usize("num_hidden_layers", None)?,
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            head_dim,
            max_position_embeddings: k.usize("max_position_embeddings", Some(2048))?,
            rms_norm_eps: k.eps("rms_norm_eps", 1e-6)?,
            rope: Rope::from_config(&k, 10000.0)?,
            tie_word_embeddings: k.bool("tie_word_embeddings", false)?,
            qkv_bias: family == "qwen2" || attention_bias,
            o_bias: attention_bias,
            mlp_bias,
            qk_norm: family == "qwen3",
            sliding_window,
            bos_token_id: k.token_ids("bos_token_id")?.first().copied(),
            eos_token_ids,
            model_type,
            rope_interleaved: false,
        })
    }
}

pub struct Block {
    pub input_layernorm: Vec<f32>, // (C)
    pub qkv_proj: Linear,          // C -> (H + 2 Hk) D: q_proj, k_proj, v_proj stacked
    pub q_norm: Option<Vec<f32>>,  // (D), Qwen3
    pub k_norm: Option<Vec<f32>>,  // (D), Qwen3
    pub o_proj: Linear,            // H D -> C
    pub post_attention_layernorm: Vec<f32>,
    pub gate_up_proj: Linear, // C -> 2I: gate_proj, up_proj stacked
    pub down_proj: Linear,    // I -> C
}

pub struct Llama {
    pub config: LlamaConfig,
    info: ModelInfo,
    raw_config: Value,
    /// The token embedding `(V, C)`, kept as the panels of a `C -> V` product: rows are read by
    /// column, and a tied output head is the same memory.
    pub embed_tokens: Panels,
    pub layers: Vec<Block>,
    pub norm: Vec<f32>,
    /// The output projection `C -> V` if untied (`lm_head.weight`).
    pub lm_head: Option<Panels>,
    inv_freq: Vec<f32>,
}

impl Llama {
    pub fn load(
        dir: &Path,
        config: &Value,
        _backend: BackendKind,
        dtype: LoadDtype,
    ) -> Result<Self> {
        // The config first: its errors name the key, before any weight is read.
        let cfg = LlamaConfig::from_json(config)?;
        let ck = Checkpoint::open_dir(dir)?;
        Self::from_checkpoint(&ck, cfg, config, super::generation_eos(dir)?, dtype)
    }

    /// Builds the model from `ck`'s tensors (Hugging Face names); `eos` overrides the config's
    /// stop tokens; `config` is what `config_json` reports.
    pub fn from_checkpoint(
        ck: &Checkpoint,
        cfg: LlamaConfig,
        config: &Value,
        eos: Option<Vec<u32>>,
        dtype: LoadDtype,
    ) -> Result<Self> {
        let eos = eos.unwrap_or_else(|| cfg.eos_token_ids.clone());
        let (c, h, hk, d, inter, v) = (
            cfg.hidden_size,
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
            cfg.intermediate_size,
            cfg.vocab_size,
        );
        let p = decoder::key_prefix(ck, cfg.num_hidden_layers)?;
        let embed_tokens = ck.panels(&format!("{p}embed_tokens.weight"), c, v, true, dtype)?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                let pre = format!("{p}layers.{i}.");
                let n = |s: &str| format!("{pre}{s}");
                let lin = |parts: &[(&str, usize)], k: usize, bias: bool| {
                    decoder::load_linear(ck, &pre, parts, k, bias, dtype)
                };
                Ok(Block {
                    input_layernorm: ck.vector(&n("input_layernorm.weight"), c)?,
                    qkv_proj: lin(
                        &[
                            ("self_attn.q_proj", h * d),
                            ("self_attn.k_proj", hk * d),
                            ("self_attn.v_proj", hk * d),
                        ],
                        c,
                        cfg.qkv_bias,
                    )?,
                    q_norm: cfg
                        .qk_norm
                        .then(|| ck.vector(&n("self_attn.q_norm.weight"), d))
                        .transpose()?,
                    k_norm: cfg
                        .qk_norm
                        .then(|| ck.vector(&n("self_attn.k_norm.weight"), d))
                        .transpose()?,
                    o_proj: lin(&[("self_attn.o_proj", c)], h * d, cfg.o_bias)?,
                    post_attention_layernorm: ck
                        .vector(&n("post_attention_layernorm.weight"), c)?,
                    gate_up_proj: lin(
                        &[("mlp.gate_proj", inter), ("mlp.up_proj", inter)],
                        c,
                        cfg.mlp_bias,
                    )?,
                    down_proj: lin(&[("mlp.down_proj", c)], inter, cfg.mlp_bias)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        // An lm_head is used unless the config ties it (tied checkpoints may still store a copy).
        let lm_head = if !cfg.tie_word_embeddings && ck.contains("lm_head.weight") {
            Some(ck.panels("lm_head.weight", c, v, true, dtype)?)
        } else if !cfg.tie_word_embeddings {
            return Err(Error::Value(format!(
                "{}: missing tensor 'lm_head.weight' (config.json says tie_word_embeddings = false)",
                ck.label()
            )));
        } else {
            None
        };
        let info = ModelInfo {
            family: cfg.model_type.clone(),
            vocab_size: v,
            context: cfg.max_position_embeddings,
            hidden_size: c,
            n_layer: cfg.num_hidden_layers,
            n_head: h,
            n_kv_head: hk,
            head_dim: d,
            eos_token_ids: eos,
            bos_token_id: cfg.bos_token_id,
            dtype: embed_tokens.format(),
        };
        Ok(Self {
            norm: ck.vector(&format!("{p}norm.weight"), c)?,
            inv_freq: cfg.rope.inv_freq(d),
            raw_config: config.clone(),
            config: cfg,
            info,
            embed_tokens,
            layers,
            lm_head,
        })
    }

    fn attn_spec(&self) -> AttnSpec {
        let c = &self.config;
        AttnSpec {
            n_head: c.num_attention_heads,
            n_kv_head: c.num_key_value_heads,
            head_dim: c.head_dim,
            scale: 1.0 / (c.head_dim as f32).sqrt(),
            window: c.sliding_window,
        }
    }
}

impl CausalLm for Llama {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn forward(
        &self,
        be: &dyn Backend,
        seqs: &mut [SeqInput<'_>],
        which: Logits,
        ws: &mut Workspace,
    ) -> Result<()> {
        check_inputs(&self.info, seqs)?;
        let cfg = &self.config;
        let (c, h, hk, d, inter, eps) = (
            cfg.hidden_size,
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
            cfg.intermediate_size,
            cfg.rms_norm_eps,
        );
        let rows: usize = seqs.iter().map(|s| s.tokens.len()).sum();
        let qkv_w = (h + 2 * hk) * d;
        // A decode step over several sequences: keep each row's arithmetic batch-independent.
        let batch_invariant = seqs.len() > 1 && seqs.iter().all(|s| s.tokens.len() == 1);

        // x = embed_tokens[token]                                             // (R, C)
        let x = grow(&mut ws.x, rows * c)?;
        decoder::embed(&self.embed_tokens, seqs, x, c, 1.0);
        // cos/sin of every row's position                                    // (R, D/2) each
        let half = d / 2;
        decoder::rope_angles(&self.inv_freq, seqs, grow(&mut ws.sel, 2 * rows * half)?);
        let rope = std::mem::take(&mut ws.sel);
        let (cos, sin) = rope[..2 * rows * half].split_at(rows * half);
        let spec = self.attn_spec();

        for (l, b) in self.layers.iter().enumerate() {
            // qkv = rms_norm(x) @ [q; k; v]                                  // (R, (H + 2Hk) D)
            let hbuf = grow(&mut ws.h, rows * c)?;
            be.rms_norm(&ws.x[..rows * c], &b.input_layernorm, hbuf, eps, 0.0);
            let qkv = grow(&mut ws.qkv, rows * qkv_w)?;
            b.qkv_proj
                .apply(be, &ws.h[..rows * c], qkv, rows, batch_invariant)?;
            if let (Some(qn), Some(kn)) = (&b.q_norm, &b.k_norm) {
                let tmp = &mut ws.mlp_act;
                decoder::norm_heads(be, qkv, rows, qkv_w, 0, h, qn, eps, 0.0, tmp)?;
                decoder::norm_heads(be, qkv, rows, qkv_w, h * d, hk, kn, eps, 0.0, tmp)?;
            }
            be.rope(qkv, qkv_w, 0, h, d, cos, sin, cfg.rope_interleaved);
            be.rope(qkv, qkv_w, h * d, hk, d, cos, sin, cfg.rope_interleaved);

            // Per sequence: append k, v to the cache; attend.                 // (R, H D)
            decoder::self_attention(be, &spec, seqs, l, ws)?;

            // x = x + att @ o_proj
            let proj = grow(&mut ws.proj, rows * c)?;
            b.o_proj
                .apply(be, &ws.att[..rows * h * d], proj, rows, batch_invariant)?;
            add_in_place(&mut ws.x[..rows * c], &ws.proj[..rows * c]);

            // x = x + (silu(h @ gate) * (h @ up)) @ down,  h = rms_norm(x)    // (R, 2I) inside
            let hbuf = grow(&mut ws.h, rows * c)?;
            be.rms_norm(
                &ws.x[..rows * c],
                &b.post_attention_layernorm,
                hbuf,
                eps,
                0.0,
            );
            let gu = grow(&mut ws.mlp, rows * 2 * inter)?;
            b.gate_up_proj
                .apply(be, &ws.h[..rows * c], gu, rows, batch_invariant)?;
            let act = grow(&mut ws.mlp_act, rows * inter)?;
            be.gated(&ws.mlp[..rows * 2 * inter], act, inter, GateAct::Silu);
            let proj = grow(&mut ws.proj, rows * c)?;
            b.down_proj
                .apply(be, &ws.mlp_act[..rows * inter], proj, rows, batch_invariant)?;
            add_in_place(&mut ws.x[..rows * c], &ws.proj[..rows * c]);
        }
        ws.sel = rope;

        // logits = rms_norm(x[rows wanted]) @ lm_head                          // (S|R, V)
        let head = self.lm_head.as_ref().unwrap_or(&self.embed_tokens);
        decoder::output_logits(be, seqs, which, ws, &self.norm, 0.0, eps, head)
    }

    fn num_parameters(&self) -> usize {
        let c = &self.config;
        let per_layer: usize = self
            .layers
            .iter()
            .map(|b| {
                b.input_layernorm.len()
                    + b.post_attention_layernorm.len()
                    + b.qkv_proj.numel()
                    + b.o_proj.numel()
                    + b.gate_up_proj.numel()
                    + b.down_proj.numel()
                    + b.q_norm.as_ref().map_or(0, Vec::len)
                    + b.k_norm.as_ref().map_or(0, Vec::len)
            })
            .sum();
        per_layer
            + c.vocab_size * c.hidden_size * if self.lm_head.is_some() { 2 } else { 1 }
            + c.hidden_size
    }

    fn weight_bytes(&self) -> usize {
        let lin = Linear::bytes;
        let vecs = |b: &Block| {
            4 * (b.input_layernorm.len()
                + b.post_attention_layernorm.len()
                + b.q_norm.as_ref().map_or(0, Vec::len)
                + b.k_norm.as_ref().map_or(0, Vec::len))
        };
        self.layers
            .iter()
            .map(|b| {
                lin(&b.qkv_proj)
                    + lin(&b.o_proj)
                    + lin(&b.gate_up_proj)
                    + lin(&b.down_proj)
                    + vecs(b)
            })
            .sum::<usize>()
            + self.embed_tokens.bytes()
            + self.lm_head.as_ref().map_or(0, Panels::bytes)
            + 4 * self.norm.len()
    }

    fn config_json(&self) -> Value {
        let mut v = self.raw_config.clone();
        if let Some(o) = v.as_object_mut() {
            o.insert(
                "model_type".into(),
                Value::from(self.config.model_type.clone()),
            );
        }
        v
    }
}
