//! Gemma 3's text decoder (Gemma Team 2025), `model_type` `gemma3_text` (`Gemma3ForCausalLM`):
//! a Llama-shaped decoder with
//! - embeddings scaled by `sqrt(hidden_size)` (the tied output head reads them unscaled),
//! - RMSNorm as `x * (1 + w)`, four per block: before and after attention, before and after the
//!   MLP (the residual adds the normalized output),
//! - RMSNorm of each query and key head, and scores scaled by `query_pre_attn_scalar^-1/2`,
//! - local layers (sliding-window attention, their own RoPE base) interleaved with global ones
//!   (full attention, the global base and scaling), per `layer_types` or `sliding_window_pattern`,
//! - a GeGLU MLP (tanh GELU), and `final_logit_softcapping` (`tanh(z / c) * c`) when set.
//!
//! Shapes: R rows, C = hidden_size, H query heads, Hk key/value heads, D = head_dim,
//! I = intermediate_size, V vocab.

use std::path::Path;

use serde_json::Value;

use super::attention::AttnSpec;
use super::decoder;
use super::llama::Rope;
use super::weights::Checkpoint;
use super::{
    add_in_place, check_inputs, grow, CausalLm, Linear, LoadDtype, Logits, ModelInfo, SeqInput,
    Workspace,
};
use crate::backend::{Backend, BackendKind, GateAct, Panels, WeightFormat};
use crate::checkpoint::config::Keys;
use crate::error::{Error, Result};

pub const FAMILY: &str = "gemma3_text";

/// Gemma's norms scale by `1 + w` (Hugging Face checkpoints store `w`).
const NORM_OFFSET: f32 = 1.0;

#[derive(Clone, Debug)]
pub struct Gemma3Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f32,
    pub query_pre_attn_scalar: f64,
    pub sliding_window: Option<usize>,
    /// Per layer: true for a local (sliding-window) layer.
    pub sliding: Vec<bool>,
    /// RoPE of the global layers and of the local ones.
    pub rope_global: Rope,
    pub rope_local: Rope,
    pub final_logit_softcapping: Option<f32>,
    pub attention_bias: bool,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

impl Gemma3Config {
    pub fn from_json(v: &Value) -> Result<Self> {
        let obj = v
            .as_object()
            .ok_or_else(|| Error::Value("config must be a JSON object".into()))?;
        let k = Keys::new(obj, "config.json");
        let n_layer = k.usize("num_hidden_layers", None)?;
        let heads = k.usize("num_attention_heads", None)?;
        let kv_heads = k.usize("num_key_value_heads", Some(heads))?;
        let head_dim = k.usize("head_dim", Some(256))?;
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
        for key in ["hidden_activation", "hidden_act"] {
            if let Some(act) = k.str(key)? {
                if act != "gelu_pytorch_tanh" {
                    return Err(Error::Value(format!(
                        "{key} '{act}' is not supported for gemma3_text (supported: gelu_pytorch_tanh)"
                    )));
                }
            }
        }
        if let Some(cap) = k.opt_f64("attn_logit_softcapping")? {
            return Err(Error::Value(format!(
                "attn_logit_softcapping = {cap} is not supported (Gemma 3 has none; Gemma 2 does)"
            )));
        }
        if k.bool("use_bidirectional_attention", false)? {
            return Err(Error::Value(
                "use_bidirectional_attention = true (an embedding model) is not a causal LM".into(),
            ));
        }
        // Layer kinds: `layer_types` (transformers 5) or every `sliding_window_pattern`-th
        // layer global (older configs; 6 when neither is given).
        let sliding = match k.str_list("layer_types")? {
            Some(types) => {
                if types.len() != n_layer {
                    return Err(Error::Value(format!(
                        "config.json: 'layer_types' has {} entries for num_hidden_layers = {n_layer}",
                        types.len()
                    )));
                }
                types
                    .iter()
                    .map(|t| match *t {
                        "sliding_attention" => Ok(true),
                        "full_attention" => Ok(false),
                        other => Err(Error::Value(format!(
                            "config.json: layer_types entry '{other}' is not supported (supported: sliding_attention, full_attention)"
                        ))),
                    })
                    .collect::<Result<Vec<_>>>()?
            }
            None => {
                let pattern = k.usize("sliding_window_pattern", Some(6))?;
                if pattern == 0 {
                    return Err(Error::Value(
                        "config.json: 'sliding_window_pattern' must be at least 1".into(),
                    ));
                }
                (0..n_layer).map(|i| (i + 1) % pattern != 0).collect()
            }
        };
        let (rope_global, rope_local) = match k.object("rope_parameters")? {
            Some(p) => {
                let p = Keys::new(p, "rope_parameters");
                let part = |key: &'static str, theta: f64| -> Result<Rope> {
                    match p.object(key)? {
                        Some(o) => {
                            let o = Keys::new(o, key);
                            Rope::parse(o.f64("rope_theta", Some(theta))?, Some(o))
                        }
                        None => Rope::parse(theta, None),
                    }
                };
                (
                    part("full_attention", 1_000_000.0)?,
                    part("sliding_attention", 10_000.0)?,
                )
            }
            None => (
                Rope::parse(
                    k.f64("rope_theta", Some(1_000_000.0))?,
                    k.object("rope_scaling")?
                        .map(|o| Keys::new(o, "rope_scaling")),
                )?,
                Rope::parse(k.f64("rope_local_base_freq", Some(10_000.0))?, None)?,
            ),
        };
        let scalar = k.f64("query_pre_attn_scalar", Some(256.0))?;
        if !(scalar.is_finite() && scalar > 0.0) {
            return Err(Error::Value(format!(
                "config.json: 'query_pre_attn_scalar' must be a positive number, got {scalar}"
            )));
        }
        let softcap = k.opt_f64("final_logit_softcapping")?;
        if let Some(c) = softcap {
            if !(c.is_finite() && c > 0.0) {
                return Err(Error::Value(format!(
                    "config.json: 'final_logit_softcapping' must be a positive number, got {c}"
                )));
            }
        }
        Ok(Self {
            vocab_size: k.usize("vocab_size", None)?,
            hidden_size: k.usize("hidden_size", None)?,
            intermediate_size: k.usize("intermediate_size", None)?,
            num_hidden_layers: n_layer,
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            head_dim,
            max_position_embeddings: k.usize("max_position_embeddings", Some(131_072))?,
            rms_norm_eps: k.eps("rms_norm_eps", 1e-6)?,
            query_pre_attn_scalar: scalar,
            sliding_window: k.opt_usize("sliding_window")?,
            sliding,
            rope_global,
            rope_local,
            final_logit_softcapping: softcap.map(|c| c as f32),
            attention_bias: k.bool("attention_bias", false)?,
            tie_word_embeddings: k.bool("tie_word_embeddings", true)?,
            bos_token_id: k.token_ids("bos_token_id")?.first().copied(),
            eos_token_ids: k.token_ids("eos_token_id")?,
        })
    }
}

pub struct Block {
    pub input_layernorm: Vec<f32>,          // (C)
    pub qkv_proj: Linear,                   // C -> (H + 2 Hk) D: q_proj, k_proj, v_proj
    pub q_norm: Vec<f32>,                   // (D)
    pub k_norm: Vec<f32>,                   // (D)
    pub o_proj: Linear,                     // H D -> C
    pub post_attention_layernorm: Vec<f32>, // (C)
    pub pre_feedforward_layernorm: Vec<f32>,
    pub gate_up_proj: Linear, // C -> 2I: gate_proj, up_proj
    pub down_proj: Linear,    // I -> C
    pub post_feedforward_layernorm: Vec<f32>,
}

pub struct Gemma3 {
    pub config: Gemma3Config,
    info: ModelInfo,
    raw_config: Value,
    /// `(V, C)` as the panels of `C -> V`: looked up by column, and the tied output head.
    pub embed_tokens: Panels,
    pub layers: Vec<Block>,
    pub norm: Vec<f32>,
    pub lm_head: Option<Panels>,
    /// `sqrt(C)`, rounded to the embedding's dtype as transformers does.
    embed_scale: f32,
    inv_freq_global: Vec<f32>,
    inv_freq_local: Vec<f32>,
    /// Added to every norm weight (`NORM_OFFSET`, or 0 when the file has it folded in).
    norm_offset: f32,
}

impl Gemma3 {
    pub fn load(
        dir: &Path,
        config: &Value,
        _backend: BackendKind,
        dtype: LoadDtype,
    ) -> Result<Self> {
        // The config first: its errors name the key, before any weight is read.
        Gemma3Config::from_json(config)?;
        let ck = Checkpoint::open_dir(dir)?;
        Self::from_checkpoint(&ck, config, super::generation_eos(dir)?, dtype, NORM_OFFSET)
    }

    /// Builds the model from `ck`'s tensors (Hugging Face names) and `config` (`config.json`
    /// keys); `eos` overrides the config's stop tokens; `norm_offset` is what each norm adds
    /// to its stored weight (1, or 0 for files whose converter folded it in, as GGUF's does).
    pub fn from_checkpoint(
        ck: &Checkpoint,
        config: &Value,
        eos: Option<Vec<u32>>,
        dtype: LoadDtype,
        norm_offset: f32,
    ) -> Result<Self> {
        let cfg = Gemma3Config::from_json(config)?;
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
        let bias = cfg.attention_bias;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                let pre = format!("{p}layers.{i}.");
                let vec = |s: &str, n: usize| ck.vector(&format!("{pre}{s}.weight"), n);
                let lin = |parts: &[(&str, usize)], k: usize, bias: bool| {
                    decoder::load_linear(ck, &pre, parts, k, bias, dtype)
                };
                Ok(Block {
                    input_layernorm: vec("input_layernorm", c)?,
                    qkv_proj: lin(
                        &[
                            ("self_attn.q_proj", h * d),
                            ("self_attn.k_proj", hk * d),
                            ("self_attn.v_proj", hk * d),
                        ],
                        c,
                        bias,
                    )?,
                    q_norm: vec("self_attn.q_norm", d)?,
                    k_norm: vec("self_attn.k_norm", d)?,
                    o_proj: lin(&[("self_attn.o_proj", c)], h * d, bias)?,
                    post_attention_layernorm: vec("post_attention_layernorm", c)?,
                    pre_feedforward_layernorm: vec("pre_feedforward_layernorm", c)?,
                    gate_up_proj: lin(
                        &[("mlp.gate_proj", inter), ("mlp.up_proj", inter)],
                        c,
                        false,
                    )?,
                    down_proj: lin(&[("mlp.down_proj", c)], inter, false)?,
                    post_feedforward_layernorm: vec("post_feedforward_layernorm", c)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let lm_head = if cfg.tie_word_embeddings {
            None
        } else {
            Some(ck.panels("lm_head.weight", c, v, true, dtype)?)
        };
        let mut embed_scale = (c as f64).sqrt() as f32;
        if embed_tokens.format() == WeightFormat::Bf16 {
            embed_scale = half::bf16::from_f32(embed_scale).to_f32();
        }
        let info = ModelInfo {
            family: FAMILY.into(),
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
            inv_freq_global: cfg.rope_global.inv_freq(d),
            inv_freq_local: cfg.rope_local.inv_freq(d),
            raw_config: config.clone(),
            config: cfg,
            info,
            embed_tokens,
            layers,
            lm_head,
            embed_scale,
            norm_offset,
        })
    }

    fn attn_spec(&self, sliding: bool) -> AttnSpec {
        let c = &self.config;
        AttnSpec {
            n_head: c.num_attention_heads,
            n_kv_head: c.num_key_value_heads,
            head_dim: c.head_dim,
            scale: c.query_pre_attn_scalar.powf(-0.5) as f32,
            window: if sliding { c.sliding_window } else { None },
        }
    }
}

impl CausalLm for Gemma3 {
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
        let batch_invariant = seqs.len() > 1 && seqs.iter().all(|s| s.tokens.len() == 1);

        // x = embed_tokens[token] * sqrt(C)                                   // (R, C)
        let x = grow(&mut ws.x, rows * c)?;
        decoder::embed(&self.embed_tokens, seqs, x, c, self.embed_scale);
        // cos/sin of every row's position, for global then local layers      // (R, D/2) x 4
        let n = rows * d / 2;
        let tables = grow(&mut ws.sel, 4 * n)?;
        let (global, local) = tables.split_at_mut(2 * n);
        decoder::rope_angles(&self.inv_freq_global, seqs, global);
        decoder::rope_angles(&self.inv_freq_local, seqs, local);
        let rope = std::mem::take(&mut ws.sel);

        for (l, b) in self.layers.iter().enumerate() {
            let sliding = cfg.sliding[l];
            let t = &rope[if sliding { 2 * n } else { 0 }..];
            let (cos, sin) = (&t[..n], &t[n..2 * n]);

            // qkv = norm(x) @ [q; k; v]; q, k = norm per head, rotated       // (R, (H + 2Hk) D)
            let hbuf = grow(&mut ws.h, rows * c)?;
            be.rms_norm(
                &ws.x[..rows * c],
                &b.input_layernorm,
                hbuf,
                eps,
                self.norm_offset,
            );
            let qkv = grow(&mut ws.qkv, rows * qkv_w)?;
            b.qkv_proj
                .apply(be, &ws.h[..rows * c], qkv, rows, batch_invariant)?;
            let tmp = &mut ws.mlp_act;
            decoder::norm_heads(
                be,
                qkv,
                rows,
                qkv_w,
                0,
                h,
                &b.q_norm,
                eps,
                self.norm_offset,
                tmp,
            )?;
            let k0 = h * d;
            decoder::norm_heads(
                be,
                qkv,
                rows,
                qkv_w,
                k0,
                hk,
                &b.k_norm,
                eps,
                self.norm_offset,
                tmp,
            )?;
            be.rope(qkv, qkv_w, 0, h, d, cos, sin, false);
            be.rope(qkv, qkv_w, h * d, hk, d, cos, sin, false);

            // att = attention (windowed on local layers)                     // (R, H D)
            decoder::self_attention(be, &self.attn_spec(sliding), seqs, l, ws)?;

            // x = x + norm(att @ o_proj)
            let proj = grow(&mut ws.proj, rows * c)?;
            b.o_proj
                .apply(be, &ws.att[..rows * h * d], proj, rows, batch_invariant)?;
            self.add_normed(be, ws, &b.post_attention_layernorm, rows)?;

            // x = x + norm(gelu_tanh(h @ gate) * (h @ up)) @ down,  h = norm(x)
            let hbuf = grow(&mut ws.h, rows * c)?;
            be.rms_norm(
                &ws.x[..rows * c],
                &b.pre_feedforward_layernorm,
                hbuf,
                eps,
                self.norm_offset,
            );
            let gu = grow(&mut ws.mlp, rows * 2 * inter)?;
            b.gate_up_proj
                .apply(be, &ws.h[..rows * c], gu, rows, batch_invariant)?;
            let act = grow(&mut ws.mlp_act, rows * inter)?;
            be.gated(&ws.mlp[..rows * 2 * inter], act, inter, GateAct::GeluTanh);
            let proj = grow(&mut ws.proj, rows * c)?;
            b.down_proj
                .apply(be, &ws.mlp_act[..rows * inter], proj, rows, batch_invariant)?;
            self.add_normed(be, ws, &b.post_feedforward_layernorm, rows)?;
        }
        ws.sel = rope;

        // logits = softcap(norm(x[rows wanted]) @ lm_head)                   // (S|R, V)
        let m = if which == Logits::All {
            rows
        } else {
            seqs.len()
        };
        let head = self.lm_head.as_ref().unwrap_or(&self.embed_tokens);
        decoder::output_logits(be, seqs, which, ws, &self.norm, self.norm_offset, eps, head)?;
        if let Some(cap) = cfg.final_logit_softcapping {
            for z in &mut ws.logits[..m * cfg.vocab_size] {
                *z = (*z / cap).tanh() * cap;
            }
        }
        Ok(())
    }

    fn num_parameters(&self) -> usize {
        let c = &self.config;
        let per_layer: usize = self
            .layers
            .iter()
            .map(|b| {
                4 * c.hidden_size
                    + 2 * c.head_dim
                    + b.qkv_proj.numel()
                    + b.o_proj.numel()
                    + b.gate_up_proj.numel()
                    + b.down_proj.numel()
            })
            .sum();
        per_layer
            + c.vocab_size * c.hidden_size * if self.lm_head.is_some() { 2 } else { 1 }
            + c.hidden_size
    }

    fn weight_bytes(&self) -> usize {
        let c = &self.config;
        let lin = Linear::bytes;
        self.layers
            .iter()
            .map(|b| {
                lin(&b.qkv_proj)
                    + lin(&b.o_proj)
                    + lin(&b.gate_up_proj)
                    + lin(&b.down_proj)
                    + 4 * (4 * c.hidden_size + 2 * c.head_dim)
            })
            .sum::<usize>()
            + self.embed_tokens.bytes()
            + self.lm_head.as_ref().map_or(0, Panels::bytes)
            + 4 * self.norm.len()
    }

    fn config_json(&self) -> Value {
        let mut v = self.raw_config.clone();
        if let Some(o) = v.as_object_mut() {
            o.insert("model_type".into(), Value::from(FAMILY));
        }
        v
    }
}

impl Gemma3 {
    /// `x += rms_norm(ws.proj)`: the residual adds a sub-layer's normalized output.
    fn add_normed(
        &self,
        be: &dyn Backend,
        ws: &mut Workspace,
        w: &[f32],
        rows: usize,
    ) -> Result<()> {
        let c = self.config.hidden_size;
        let hbuf = grow(&mut ws.h, rows * c)?;
        be.rms_norm(
            &ws.proj[..rows * c],
            w,
            hbuf,
            self.config.rms_norm_eps,
            self.norm_offset,
        );
        add_in_place(&mut ws.x[..rows * c], &ws.h[..rows * c]);
        Ok(())
    }
}
