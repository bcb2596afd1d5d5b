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

use crate::backend::{Backend, BackendKind, Panels};
use crate::checkpoint::{Gpt2Config, SafetensorsFile};
use crate::error::{Error, Result};
use crate::storage::Storage;
use crate::tensor::{Data, Tensor};

/// A projection `y = x @ W + b`. The checkpoint stores W as `(in, out)` (HF's Conv1D); it is
/// kept as `Panels` (32 output columns at a time, each panel contiguous), the layout the `cpu`
/// backend multiplies in place: prefill skips packing W per call, and decoding streams every
/// weight once, front to back.
pub struct Proj {
    pub weight: Panels, // (in, out)
    pub bias: Tensor,   // (out)
}

impl Proj {
    fn load(
        f: &SafetensorsFile,
        name: &str,
        k: usize,
        n: usize,
        backend: BackendKind,
    ) -> Result<Self> {
        let w = f.tensor(&format!("{name}.weight"), &[k, n], backend)?;
        let weight = Panels::from_kn(w.f32s("weight")?, k, n)?;
        // The panels are what the model keeps: let the mapped pages go now, so loading never
        // holds both copies.
        drop(w);
        f.release_tensor(&format!("{name}.weight"));
        Ok(Self {
            weight,
            bias: f.tensor_owned(&format!("{name}.bias"), &[n], backend)?,
        })
    }

    fn numel(&self) -> usize {
        self.weight.k() * self.weight.n() + self.bias.numel()
    }

    /// `out[rows, out] = x[rows, in] @ W + b`. With `exact`, rows go in calls of at most 15,
    /// where every backend computes a row the same way whatever the row count (so batched
    /// decoding equals one-by-one decoding).
    fn apply(
        &self,
        be: &dyn Backend,
        x: &[f32],
        out: &mut [f32],
        rows: usize,
        exact: bool,
    ) -> Result<()> {
        let (k, n) = (self.weight.k(), self.weight.n());
        let b = self.bias.f32s("bias")?;
        let chunk = if exact { 15 } else { rows.max(1) };
        for r0 in (0..rows).step_by(chunk) {
            let r = chunk.min(rows - r0);
            be.matmul_panels(
                &x[r0 * k..(r0 + r) * k],
                &self.weight,
                Some(b),
                &mut out[r0 * n..(r0 + r) * n],
                r,
            );
        }
        Ok(())
    }
}

/// A copy of `t` in weight memory (huge pages where available: `Storage::weights_with`).
fn to_weight_memory(t: &Tensor, backend: BackendKind) -> Result<Tensor> {
    let src = t.f32s("weight")?;
    let data = Storage::weights_with(src.len(), "model weights", |d| d.copy_from_slice(src))?;
    Tensor::new(Data::F32(data), t.shape().to_vec(), backend)
}

pub struct Block {
    pub ln_1_weight: Tensor, // (C)
    pub ln_1_bias: Tensor,
    pub c_attn: Proj,      // C -> 3C
    pub attn_c_proj: Proj, // C -> C
    pub ln_2_weight: Tensor,
    pub ln_2_bias: Tensor,
    pub c_fc: Proj,       // C -> 4C
    pub mlp_c_proj: Proj, // 4C -> C
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
}

/// Per-sequence key/value cache, allocated once for `capacity` positions: for each layer,
/// `k` and `v` laid out `(H, capacity, D)`, all in one block. One large allocation comes
/// from the OS as untouched zero pages, so a cache costs memory only as positions fill it
/// (thousands of small per-layer blocks would each be cleared up front).
pub struct KvCache {
    data: Vec<f32>,
    per_layer: usize,
    capacity: usize,
    /// Positions filled so far.
    pub len: usize,
}

impl KvCache {
    /// A cache for up to `capacity` positions (at most the model's `n_positions`), or
    /// `Error::Memory`.
    pub fn new(c: &Gpt2Config, capacity: usize) -> Result<Self> {
        let capacity = capacity.min(c.n_positions);
        let per_layer = capacity * c.n_embd;
        Ok(Self {
            data: crate::memory::zeroed(2 * c.n_layer * per_layer, "the KV cache")?,
            per_layer,
            capacity,
            len: 0,
        })
    }

    /// Bytes of a cache for `capacity` positions (128-bit, for checks before allocating).
    pub fn bytes_for(c: &Gpt2Config, capacity: usize) -> u128 {
        let capacity = capacity.min(c.n_positions) as u128;
        2 * c.n_layer as u128 * capacity * c.n_embd as u128 * 4
    }

    /// Layer `l`'s keys and values.
    fn layer_mut(&mut self, l: usize) -> (&mut [f32], &mut [f32]) {
        let n = self.per_layer;
        self.data[2 * l * n..2 * (l + 1) * n].split_at_mut(n)
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }
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

/// Scratch buffers reused across steps (grown when needed, never shrunk), so decoding does not
/// allocate per token.
#[derive(Default)]
pub struct Workspace {
    x: Vec<f32>,
    h: Vec<f32>,
    qkv: Vec<f32>,
    att: Vec<f32>,
    q: Vec<f32>,
    o: Vec<f32>,
    fc: Vec<f32>,
    fc_act: Vec<f32>,
    proj: Vec<f32>,
    sel: Vec<f32>,
    pub logits: Vec<f32>,
}

/// The first `n` floats of a workspace buffer, grown (fallibly) when it is too short.
fn grow(v: &mut Vec<f32>, n: usize) -> Result<&mut [f32]> {
    crate::memory::grow(v, n, "the forward pass's activations")
}

impl Gpt2 {
    /// Loads `model.safetensors` with `config` (keys with or without the `transformer.` prefix;
    /// the causal-mask buffers of old checkpoints are ignored).
    pub fn load(weights: &Path, config: Gpt2Config, backend: BackendKind) -> Result<Self> {
        let f = SafetensorsFile::open(weights)?;
        let prefix = if f.contains("transformer.wte.weight") {
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
        // What the model keeps as is is copied out of the map (`tensor_owned`): a loaded model
        // must not change or crash when its file is later replaced or truncated.
        let get = |name: &str, shape: &[usize]| {
            f.tensor_owned(&format!("{prefix}{name}"), shape, backend)
        };
        let proj = |name: &str, k: usize, n: usize| {
            Proj::load(&f, &format!("{prefix}{name}"), k, n, backend)
        };
        if f.contains(&format!("{prefix}h.{}.ln_1.weight", config.n_layer)) {
            return Err(Error::Value(format!(
                "{}: has weights for layer h.{} but config.json says n_layer = {}",
                weights.display(),
                config.n_layer,
                config.n_layer
            )));
        }
        // The token embedding doubles as the output projection, streamed once per decoded
        // token: copy it into weight memory first (before the projections, so loading never
        // holds more than this one extra copy) and let its mapped pages go.
        let wte = to_weight_memory(
            &f.tensor(&format!("{prefix}wte.weight"), &[v, c], backend)?,
            backend,
        )?;
        f.release_tensor(&format!("{prefix}wte.weight"));
        let h = (0..config.n_layer)
            .map(|i| {
                let g = |n: &str, s: &[usize]| get(&format!("h.{i}.{n}"), s);
                Ok(Block {
                    ln_1_weight: g("ln_1.weight", &[c])?,
                    ln_1_bias: g("ln_1.bias", &[c])?,
                    c_attn: proj(&format!("h.{i}.attn.c_attn"), c, 3 * c)?,
                    attn_c_proj: proj(&format!("h.{i}.attn.c_proj"), c, c)?,
                    ln_2_weight: g("ln_2.weight", &[c])?,
                    ln_2_bias: g("ln_2.bias", &[c])?,
                    c_fc: proj(&format!("h.{i}.mlp.c_fc"), c, inner)?,
                    mlp_c_proj: proj(&format!("h.{i}.mlp.c_proj"), inner, c)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        // A separate lm_head only if the checkpoint has one that is not the tied wte.
        let lm_head = if f.contains("lm_head.weight") {
            Some(f.tensor("lm_head.weight", &[v, c], backend)?)
        } else {
            None
        };
        let lm_head = lm_head.filter(|l| l.f32s("lm_head").ok() != wte.f32s("wte").ok());
        let lm_head = lm_head.map(|l| to_weight_memory(&l, backend)).transpose()?;
        // The large tensors were copied out of the map; let their pages go.
        f.release_pages();
        Ok(Self {
            wpe: get("wpe.weight", &[p, c])?,
            ln_f_weight: get("ln_f.weight", &[c])?,
            ln_f_bias: get("ln_f.bias", &[c])?,
            wte,
            h,
            lm_head,
            config,
        })
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

    /// Runs the new tokens of `seqs` through the model, appending their keys/values to each
    /// sequence's cache, and leaves logits in `ws.logits`: `(S, V)` for `Logits::Last` (one row
    /// per sequence) or `(R, V)` for `Logits::All`. Callers validate token ids and lengths.
    pub fn forward(
        &self,
        be: &dyn Backend,
        seqs: &mut [SeqInput<'_>],
        which: Logits,
        ws: &mut Workspace,
    ) -> Result<()> {
        let cfg = &self.config;
        let (c, nh, d, inner, eps) = (
            cfg.n_embd,
            cfg.n_head,
            cfg.head_dim(),
            cfg.n_inner,
            cfg.layer_norm_epsilon,
        );
        let rows: usize = seqs.iter().map(|s| s.tokens.len()).sum();
        for s in seqs.iter() {
            if s.cache.len + s.tokens.len() > s.cache.capacity {
                return Err(Error::Value(format!(
                    "sequence of {} tokens exceeds its cache of {} positions (the model's context is {})",
                    s.cache.len + s.tokens.len(),
                    s.cache.capacity,
                    cfg.n_positions
                )));
            }
            if let Some(&t) = s.tokens.iter().find(|&&t| t as usize >= cfg.vocab_size) {
                return Err(Error::Value(format!(
                    "token id {t} is out of range for a vocabulary of {}",
                    cfg.vocab_size
                )));
            }
        }
        let wte = self.wte.f32s("wte")?;
        let wpe = self.wpe.f32s("wpe")?;
        // A decode step over several sequences: keep each row's arithmetic batch-independent.
        let exact = seqs.len() > 1 && seqs.iter().all(|s| s.tokens.len() == 1);

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
            b.c_attn.apply(be, &ws.h[..rows * c], qkv, rows, exact)?;

            // Per sequence: append k, v to the cache (H, P, D); attend; merge heads.  // (R, C)
            let att = grow(&mut ws.att, rows * c)?;
            let mut r0 = 0;
            for s in seqs.iter_mut() {
                let (n, start, p) = (s.tokens.len(), s.cache.len, s.cache.capacity);
                let (kc, vc) = s.cache.layer_mut(l);
                let q = grow(&mut ws.q, nh * n * d)?; // (H, n, D)
                for j in 0..n {
                    let row = &ws.qkv[(r0 + j) * 3 * c..(r0 + j + 1) * 3 * c];
                    for hh in 0..nh {
                        let dst = (hh * p + start + j) * d;
                        q[(hh * n + j) * d..(hh * n + j + 1) * d]
                            .copy_from_slice(&row[hh * d..(hh + 1) * d]);
                        kc[dst..dst + d].copy_from_slice(&row[c + hh * d..c + (hh + 1) * d]);
                        vc[dst..dst + d]
                            .copy_from_slice(&row[2 * c + hh * d..2 * c + (hh + 1) * d]);
                    }
                }
                let o = grow(&mut ws.o, nh * n * d)?; // (H, n, D)
                be.attention(
                    &ws.q[..nh * n * d],
                    kc,
                    vc,
                    o,
                    nh,
                    n,
                    start + n,
                    d,
                    p * d,
                    true,
                );
                for j in 0..n {
                    for hh in 0..nh {
                        att[(r0 + j) * c + hh * d..(r0 + j) * c + (hh + 1) * d]
                            .copy_from_slice(&o[(hh * n + j) * d..(hh * n + j + 1) * d]);
                    }
                }
                r0 += n;
            }

            // x = x + att @ c_proj + b
            let proj = grow(&mut ws.proj, rows * c)?;
            b.attn_c_proj
                .apply(be, &ws.att[..rows * c], proj, rows, exact)?;
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
            let fc = grow(&mut ws.fc, rows * inner)?;
            b.c_fc.apply(be, &ws.h[..rows * c], fc, rows, exact)?;
            let fc_act = grow(&mut ws.fc_act, rows * inner)?;
            be.gelu_tanh(&ws.fc[..rows * inner], fc_act);
            let proj = grow(&mut ws.proj, rows * c)?;
            b.mlp_c_proj
                .apply(be, &ws.fc_act[..rows * inner], proj, rows, exact)?;
            add_in_place(&mut ws.x[..rows * c], &ws.proj[..rows * c]);
        }

        // Final norm on the rows whose logits are wanted, then logits = x @ wte^T.   // (S|R, V)
        let m = if which == Logits::All {
            rows
        } else {
            seqs.len()
        };
        let sel = grow(&mut ws.sel, m * c)?;
        match which {
            Logits::All => sel.copy_from_slice(&ws.x[..rows * c]),
            Logits::Last => {
                let mut end = 0;
                for (i, s) in seqs.iter().enumerate() {
                    end += s.tokens.len();
                    sel[i * c..(i + 1) * c].copy_from_slice(&ws.x[(end - 1) * c..end * c]);
                }
            }
        }
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

/// `x += y` (the residual connection).
fn add_in_place(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// Loads a Hugging Face GPT-2 folder's `config.json` and `model.safetensors`.
pub fn load_dir(dir: &Path, backend: BackendKind) -> Result<Gpt2> {
    let config_path = dir.join("config.json");
    let weights = dir.join("model.safetensors");
    for f in [&config_path, &weights] {
        if !f.exists() {
            return Err(Error::NotFound(format!(
                "{} not found (a Hugging Face GPT-2 folder needs config.json and model.safetensors)",
                f.display()
            )));
        }
    }
    let config = Gpt2Config::from_file(&config_path)?;
    Gpt2::load(&weights, config, backend)
}
