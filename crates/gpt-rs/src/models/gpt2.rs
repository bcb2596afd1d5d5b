//! GPT-2 (Radford et al. 2019), Hugging Face layout: weights named after the checkpoint keys,
//! linear weights stored `[in, out]` (HF's Conv1D), output projection tied to `wte`.
//!
//! Shapes: R rows (the new tokens of all sequences in a step), C = n_embd, H heads,
//! D = C / H, V vocab, P n_positions.
//!
//! `forward` runs any mix of sequences at once: every linear layer is one matmul over all R
//! rows (weights are read once per step), and attention runs per sequence against its own KV
//! cache. Prefill, decode and batched decoding are the same code path.

use std::path::Path;

use super::attention::{attend, AttnSpec, QkvLayout};
use super::weights::Checkpoint;
use super::{
    add_in_place, check_inputs, grow, select_rows, CausalLm, Linear, LoadDtype, Logits, ModelInfo,
    SeqInput, Workspace,
};
use crate::backend::{Backend, BackendKind, WeightFormat};
use crate::checkpoint::Gpt2Config;
use crate::error::{Error, Result};
use crate::storage::Storage;
use crate::tensor::{Data, Tensor};

/// A copy of checkpoint tensor `name` (of `shape`) as f32 in weight memory (huge pages where
/// available: `Storage::weights_with`), its mapped pages released.
fn weight_tensor(
    ck: &Checkpoint,
    name: &str,
    shape: &[usize],
    backend: BackendKind,
) -> Result<Tensor> {
    let n = shape.iter().product();
    let mut failed = None;
    let data = Storage::weights_with(n, "model weights", |d| {
        failed = ck.read_f32(name, shape, d).err();
    })?;
    if let Some(e) = failed {
        return Err(e);
    }
    ck.release(name);
    Tensor::new(Data::F32(data), shape.to_vec(), backend)
}

pub struct Block {
    pub ln_1_weight: Tensor, // (C)
    pub ln_1_bias: Tensor,
    pub c_attn: Linear,      // C -> 3C
    pub attn_c_proj: Linear, // C -> C
    pub ln_2_weight: Tensor,
    pub ln_2_bias: Tensor,
    pub c_fc: Linear,       // C -> 4C
    pub mlp_c_proj: Linear, // 4C -> C
}

pub struct Gpt2 {
    pub config: Gpt2Config,
    pub wte: Tensor, // (V, C), also the output projection
    pub wpe: Tensor, // (P, C)
    pub h: Vec<Block>,
    pub ln_f_weight: Tensor,
    pub ln_f_bias: Tensor,
    /// A separate (untied) output projection `(V, C)`, if the checkpoint has one.
    pub lm_head: Option<Tensor>,
    info: ModelInfo,
}

impl Gpt2 {
    /// Builds the model from `ck`'s tensors under Hugging Face GPT-2 names (with or without
    /// the `transformer.` prefix; old checkpoints' causal-mask buffers are ignored).
    /// `conv1d`: projections stored `[in, out]` (HF's Conv1D) rather than `[out, in]` (GGUF).
    ///
    /// Projections are prepared as the backend's weights (`Panels`: prefill skips packing W
    /// per call, and decoding streams every weight once, front to back); what the model keeps
    /// as is is copied out of the map, so a loaded model never changes or crashes when its file
    /// is later replaced or truncated.
    pub fn from_checkpoint(
        ck: &Checkpoint,
        config: Gpt2Config,
        conv1d: bool,
        backend: BackendKind,
        dtype: LoadDtype,
    ) -> Result<Self> {
        let prefix = if ck.contains("transformer.wte.weight") {
            "transformer."
        } else {
            ""
        };
        let (c, v, p, inner) = (
            config.n_embd,
            config.vocab_size,
            config.n_positions,
            config.n_inner,
        );
        let name = |n: &str| format!("{prefix}{n}");
        let vector = |n: &str, len: usize| -> Result<Tensor> {
            Tensor::from_f32(ck.vector(&name(n), len)?, vec![len], backend)
        };
        let proj = |n: &str, k: usize, out: usize| -> Result<Linear> {
            let weight = ck.panels(&name(&format!("{n}.weight")), k, out, !conv1d, dtype)?;
            Ok(Linear::new(
                weight,
                Some(ck.vector(&name(&format!("{n}.bias")), out)?),
            ))
        };
        if ck.contains(&name(&format!("h.{}.ln_1.weight", config.n_layer))) {
            return Err(Error::Value(format!(
                "{}: has weights for layer h.{} but the config says n_layer = {}",
                ck.label(),
                config.n_layer,
                config.n_layer
            )));
        }
        // The token embedding doubles as the output projection, streamed once per decoded
        // token: copy it into weight memory first (before the projections, so loading never
        // holds more than this one extra copy).
        let wte = weight_tensor(ck, &name("wte.weight"), &[v, c], backend)?;
        let h = (0..config.n_layer)
            .map(|i| {
                Ok(Block {
                    ln_1_weight: vector(&format!("h.{i}.ln_1.weight"), c)?,
                    ln_1_bias: vector(&format!("h.{i}.ln_1.bias"), c)?,
                    c_attn: proj(&format!("h.{i}.attn.c_attn"), c, 3 * c)?,
                    attn_c_proj: proj(&format!("h.{i}.attn.c_proj"), c, c)?,
                    ln_2_weight: vector(&format!("h.{i}.ln_2.weight"), c)?,
                    ln_2_bias: vector(&format!("h.{i}.ln_2.bias"), c)?,
                    c_fc: proj(&format!("h.{i}.mlp.c_fc"), c, inner)?,
                    mlp_c_proj: proj(&format!("h.{i}.mlp.c_proj"), inner, c)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        // A separate lm_head only if the checkpoint has one that is not the tied wte.
        let lm_head = if ck.contains("lm_head.weight") {
            Some(weight_tensor(ck, "lm_head.weight", &[v, c], backend)?)
        } else {
            None
        };
        let lm_head = lm_head.filter(|l| l.f32s("lm_head").ok() != wte.f32s("wte").ok());
        let info = ModelInfo {
            family: "gpt2".into(),
            vocab_size: v,
            context: p,
            hidden_size: c,
            n_layer: config.n_layer,
            n_head: config.n_head,
            n_kv_head: config.n_head,
            head_dim: config.head_dim(),
            eos_token_ids: config.eos_token_id.into_iter().collect(),
            bos_token_id: config.bos_token_id,
            dtype: h.first().map_or(WeightFormat::F32, |b| b.c_attn.format()),
        };
        Ok(Self {
            info,
            wpe: weight_tensor(ck, &name("wpe.weight"), &[p, c], backend)?,
            ln_f_weight: vector("ln_f.weight", c)?,
            ln_f_bias: vector("ln_f.bias", c)?,
            wte,
            h,
            lm_head,
            config,
        })
    }

    /// The tokens that end a generation (the checkpoint's own, or its tokenizer's).
    pub fn set_eos(&mut self, ids: Vec<u32>) {
        self.info.eos_token_ids = ids;
    }

    /// Number of parameters (the tied output projection counted once).
    pub fn num_parameters(&self) -> usize {
        let blocks: usize = self
            .h
            .iter()
            .map(|b| {
                [&b.ln_1_weight, &b.ln_1_bias, &b.ln_2_weight, &b.ln_2_bias]
                    .iter()
                    .map(|t| t.numel())
                    .sum::<usize>()
                    + [&b.c_attn, &b.attn_c_proj, &b.c_fc, &b.mlp_c_proj]
                        .iter()
                        .map(|p| p.numel())
                        .sum::<usize>()
            })
            .sum();
        blocks
            + self.wte.numel()
            + self.wpe.numel()
            + 2 * self.config.n_embd
            + self.lm_head.as_ref().map_or(0, |t| t.numel())
    }
}

impl CausalLm for Gpt2 {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn num_parameters(&self) -> usize {
        Gpt2::num_parameters(self)
    }

    fn weight_bytes(&self) -> usize {
        let lin = Linear::bytes;
        self.h
            .iter()
            .map(|b| {
                lin(&b.c_attn)
                    + lin(&b.attn_c_proj)
                    + lin(&b.c_fc)
                    + lin(&b.mlp_c_proj)
                    + 16 * self.config.n_embd
            })
            .sum::<usize>()
            + 4 * (self.wte.numel() + self.wpe.numel() + 2 * self.config.n_embd)
            + 4 * self.lm_head.as_ref().map_or(0, |t| t.numel())
    }

    fn config_json(&self) -> serde_json::Value {
        self.config.summary_json()
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
        let (c, nh, d, inner, eps) = (
            cfg.n_embd,
            cfg.n_head,
            cfg.head_dim(),
            cfg.n_inner,
            cfg.layer_norm_epsilon,
        );
        let rows: usize = seqs.iter().map(|s| s.tokens.len()).sum();
        let wte = self.wte.f32s("wte")?;
        let wpe = self.wpe.f32s("wpe")?;
        // A decode step over several sequences: keep each row's arithmetic batch-independent.
        let batch_invariant = seqs.len() > 1 && seqs.iter().all(|s| s.tokens.len() == 1);
        let spec = AttnSpec {
            n_head: nh,
            n_kv_head: nh,
            head_dim: d,
            scale: 1.0 / (d as f32).sqrt(),
            window: None,
        };

        // x = wte[token] + wpe[position]                                      // (R, C)
        let x = grow(&mut ws.x, rows * c)?;
        let mut r = 0;
        for s in seqs.iter() {
            for (j, &t) in s.tokens.iter().enumerate() {
                let (t, pos) = (t as usize, s.cache.len + j);
                let row = &mut x[r * c..(r + 1) * c];
                for (k, xv) in row.iter_mut().enumerate() {
                    *xv = wte[t * c + k] + wpe[pos * c + k];
                }
                r += 1;
            }
        }

        for (l, b) in self.h.iter().enumerate() {
            // h = ln_1(x); qkv = h @ c_attn + b                               // (R, 3C)
            let h = grow(&mut ws.h, rows * c)?;
            be.layer_norm(
                &ws.x[..rows * c],
                b.ln_1_weight.f32s("ln_1")?,
                b.ln_1_bias.f32s("ln_1")?,
                h,
                c,
                eps,
            );
            let qkv = grow(&mut ws.qkv, rows * 3 * c)?;
            b.c_attn
                .apply(be, &ws.h[..rows * c], qkv, rows, batch_invariant)?;

            // Per sequence: append k, v to the cache (H, P, D); attend; merge heads.  // (R, C)
            let att = grow(&mut ws.att, rows * c)?;
            let mut r0 = 0;
            for s in seqs.iter_mut() {
                let (n, start, cap) = (s.tokens.len(), s.cache.len, s.cache.capacity());
                let (kc, vc) = s.cache.layer_mut(l);
                attend(
                    be,
                    &spec,
                    &ws.qkv[r0 * 3 * c..(r0 + n) * 3 * c],
                    QkvLayout {
                        stride: 3 * c,
                        q: 0,
                        k: c,
                        v: 2 * c,
                    },
                    n,
                    start,
                    (kc, vc, cap),
                    &mut ws.q,
                    &mut ws.o,
                    &mut att[r0 * c..(r0 + n) * c],
                )?;
                r0 += n;
            }

            // x = x + att @ c_proj + b
            let proj = grow(&mut ws.proj, rows * c)?;
            b.attn_c_proj
                .apply(be, &ws.att[..rows * c], proj, rows, batch_invariant)?;
            add_in_place(&mut ws.x[..rows * c], &ws.proj[..rows * c]);

            // x = x + gelu_tanh(ln_2(x) @ c_fc + b) @ c_proj + b                 // (R, 4C) inside
            let h = grow(&mut ws.h, rows * c)?;
            be.layer_norm(
                &ws.x[..rows * c],
                b.ln_2_weight.f32s("ln_2")?,
                b.ln_2_bias.f32s("ln_2")?,
                h,
                c,
                eps,
            );
            let fc = grow(&mut ws.mlp, rows * inner)?;
            b.c_fc
                .apply(be, &ws.h[..rows * c], fc, rows, batch_invariant)?;
            let fc_act = grow(&mut ws.mlp_act, rows * inner)?;
            be.gelu_tanh(&ws.mlp[..rows * inner], fc_act);
            let proj = grow(&mut ws.proj, rows * c)?;
            b.mlp_c_proj
                .apply(be, &ws.mlp_act[..rows * inner], proj, rows, batch_invariant)?;
            add_in_place(&mut ws.x[..rows * c], &ws.proj[..rows * c]);
        }

        // Final norm on the rows whose logits are wanted, then logits = x @ wte^T.   // (S|R, V)
        let m = select_rows(&ws.x, &mut ws.sel, seqs, which, c)?;
        let h = grow(&mut ws.h, m * c)?;
        be.layer_norm(
            &ws.sel[..m * c],
            self.ln_f_weight.f32s("ln_f")?,
            self.ln_f_bias.f32s("ln_f")?,
            h,
            c,
            eps,
        );
        let head = self.lm_head.as_ref().unwrap_or(&self.wte).f32s("lm_head")?;
        let v = cfg.vocab_size;
        let logits = grow(&mut ws.logits, m * v)?;
        // For generation, at most 15 rows per call: the row-count-independent (bit-identical)
        // path of matmul_nt, so a batch gives exactly the logits of one-by-one runs.
        let chunk = if which == Logits::Last { 15 } else { m.max(1) };
        for i0 in (0..m).step_by(chunk) {
            let mi = chunk.min(m - i0);
            be.matmul_nt(
                &ws.h[i0 * c..(i0 + mi) * c],
                head,
                None,
                &mut logits[i0 * v..(i0 + mi) * v],
                mi,
                c,
                v,
            );
        }
        for s in seqs.iter_mut() {
            s.cache.len += s.tokens.len();
        }
        Ok(())
    }
}

/// Loads a Hugging Face GPT-2 folder's `config.json` and `model.safetensors` (or its shards).
pub fn load_dir(dir: &Path, backend: BackendKind, dtype: LoadDtype) -> Result<Gpt2> {
    let config_path = dir.join("config.json");
    if !config_path.exists() {
        return Err(Error::NotFound(format!(
            "{} not found (a Hugging Face GPT-2 folder needs config.json and model.safetensors)",
            config_path.display()
        )));
    }
    let config = Gpt2Config::from_file(&config_path)?;
    let ck = Checkpoint::open_dir(dir)?;
    let mut g = Gpt2::from_checkpoint(&ck, config, true, backend, dtype)?;
    if let Some(eos) = super::generation_eos(dir)? {
        g.info.eos_token_ids = eos;
    }
    Ok(g)
}
