//! A trainable GPT-2: parameters, gradients and saved activations in flat buffers; forward,
//! fused cross-entropy and backward for a batch of `b` windows of `t` tokens.
//!
//! Shapes: N = b * t rows, C = n_embd, H heads of D = C / H, F = n_inner, V = vocab_size.

use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::TensorView;
use safetensors::Dtype;

use super::kernels::{self as k, AttnDims};
use super::optim::to_le_bytes;
use super::params::{self, Layout};
use crate::backend::{self, Backend};
use crate::checkpoint::{Gpt2Config, SafetensorsFile};
use crate::error::{Error, Result};

/// Activations saved by the forward for the backward, and the backward's scratch. Sized for
/// the last batch shape; grown when a larger one comes.
#[derive(Default)]
struct Activations {
    /// Residual stream entering each block, and leaving the last: (L + 1) x [N, C].
    res: Vec<f32>,
    ln1: Vec<f32>,
    ln1_stats: Vec<f32>,
    qkv: Vec<f32>,
    probs: Vec<f32>,
    atty: Vec<f32>,
    /// Residual stream after attention: L x [N, C].
    res2: Vec<f32>,
    ln2: Vec<f32>,
    ln2_stats: Vec<f32>,
    fc: Vec<f32>,
    fc_gelu: Vec<f32>,
    lnf: Vec<f32>,
    lnf_stats: Vec<f32>,
    logits: Vec<f32>,
    dres: Vec<f32>,
    dln: Vec<f32>,
    dqkv: Vec<f32>,
    datty: Vec<f32>,
    dfc: Vec<f32>,
    /// Per (sequence, head) blocks for the attention GEMMs.
    attn_scratch: Vec<f32>,
}

fn sized(v: &mut Vec<f32>, n: usize) {
    if v.len() != n {
        *v = vec![0.0; n];
    }
}

/// A GPT-2 being trained.
pub struct TrainableGpt2 {
    pub config: Gpt2Config,
    pub layout: Layout,
    pub params: Vec<f32>,
    pub grads: Vec<f32>,
    acts: Activations,
    /// Batch shape the activations hold.
    shape: (usize, usize),
}

impl TrainableGpt2 {
    /// A new model with GPT-2's seeded initialization.
    pub fn new(config: Gpt2Config, seed: u64) -> Result<Self> {
        validate(&config)?;
        let layout = Layout::new(&config);
        let params = params::init(&layout, &config, seed);
        Ok(Self::with_params(config, layout, params))
    }

    fn with_params(config: Gpt2Config, layout: Layout, params: Vec<f32>) -> Self {
        let grads = vec![0.0; layout.total];
        Self {
            config,
            layout,
            params,
            grads,
            acts: Activations::default(),
            shape: (0, 0),
        }
    }

    /// Loads the weights of a Hugging Face GPT-2 `model.safetensors` (any dtype the loader
    /// reads; keys with or without `transformer.`). The output projection must be tied.
    pub fn load(weights: &Path, config: Gpt2Config) -> Result<Self> {
        validate(&config)?;
        let layout = Layout::new(&config);
        let f = SafetensorsFile::open(weights)?;
        let prefix = if f.contains("transformer.wte.weight") {
            "transformer."
        } else {
            ""
        };
        let mut params = vec![0.0f32; layout.total];
        let cpu = backend::BackendKind::Cpu;
        for spec in &layout.specs {
            let t = f.tensor(&format!("{prefix}{}", spec.name), &spec.shape, cpu)?;
            params[spec.range()].copy_from_slice(t.f32s(&spec.name)?);
        }
        if f.contains("lm_head.weight") {
            let head = f.tensor("lm_head.weight", &[config.vocab_size, config.n_embd], cpu)?;
            if head.f32s("lm_head")? != &params[layout.get("wte.weight").expect("wte").range()] {
                return Err(Error::Value(format!(
                    "{}: lm_head.weight differs from wte.weight; training supports GPT-2's tied output projection only",
                    weights.display()
                )));
            }
        }
        Ok(Self::with_params(config, layout, params))
    }

    /// Writes `model.safetensors` (f32, HF GPT2LMHeadModel keys) and `config.json` into `dir`.
    pub fn save(&self, dir: &Path, extra_config: &serde_json::Value) -> Result<()> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::Io(format!("cannot create {}: {e}", dir.display())))?;
        let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = self
            .layout
            .specs
            .iter()
            .map(|s| {
                (
                    format!("transformer.{}", s.name),
                    to_le_bytes(&self.params[s.range()]),
                    s.shape.clone(),
                )
            })
            .collect();
        let views = bytes.iter().map(|(name, b, shape)| {
            (
                name.as_str(),
                TensorView::new(Dtype::F32, shape.clone(), b).expect("sizes match"),
            )
        });
        let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
        let path = dir.join("model.safetensors");
        write_atomically(&path, |tmp| {
            safetensors::serialize_to_file(views, Some(meta), tmp)
                .map_err(|e| Error::Io(format!("cannot write {}: {e}", tmp.display())))
        })?;
        let mut cfg = self.config.to_json();
        if let (Some(obj), Some(extra)) = (cfg.as_object_mut(), extra_config.as_object()) {
            for (k, v) in extra {
                obj.insert(k.clone(), v.clone());
            }
        }
        let text = serde_json::to_string_pretty(&cfg).expect("JSON values serialize");
        write_atomically(&dir.join("config.json"), |tmp| {
            std::fs::write(tmp, text + "\n")
                .map_err(|e| Error::Io(format!("cannot write {}: {e}", tmp.display())))
        })
    }

    pub fn zero_grad(&mut self) {
        self.grads.fill(0.0);
    }

    fn check_batch(
        &self,
        tokens: &[u32],
        targets: Option<&[u32]>,
        b: usize,
        t: usize,
    ) -> Result<()> {
        let c = &self.config;
        if b == 0 || t == 0 {
            return Err(Error::Value(format!("empty batch: {b} x {t} tokens")));
        }
        if t > c.n_positions {
            return Err(Error::Value(format!(
                "sequence length {t} exceeds the model's context (n_positions = {})",
                c.n_positions
            )));
        }
        let n = b
            .checked_mul(t)
            .ok_or_else(|| Error::Overflow("batch too large".into()))?;
        if tokens.len() != n || targets.is_some_and(|y| y.len() != n) {
            return Err(Error::Shape(format!(
                "inputs and targets must both hold {b} x {t} token ids"
            )));
        }
        for ids in std::iter::once(tokens).chain(targets) {
            if let Some(&bad) = ids.iter().find(|&&i| i as usize >= c.vocab_size) {
                return Err(Error::Value(format!(
                    "token id {bad} is out of range for vocab_size {}",
                    c.vocab_size
                )));
            }
        }
        Ok(())
    }

    fn alloc(&mut self, b: usize, t: usize) {
        if self.shape == (b, t) {
            return;
        }
        let c = &self.config;
        let (n, e, l, f, v) = (b * t, c.n_embd, c.n_layer, c.n_inner, c.vocab_size);
        let a = &mut self.acts;
        sized(&mut a.res, (l + 1) * n * e);
        sized(&mut a.ln1, l * n * e);
        sized(&mut a.ln1_stats, l * n * 2);
        sized(&mut a.qkv, l * n * 3 * e);
        sized(&mut a.probs, l * b * c.n_head * t * t);
        sized(&mut a.atty, l * n * e);
        sized(&mut a.res2, l * n * e);
        sized(&mut a.ln2, l * n * e);
        sized(&mut a.ln2_stats, l * n * 2);
        sized(&mut a.fc, l * n * f);
        sized(&mut a.fc_gelu, l * n * f);
        sized(&mut a.lnf, n * e);
        sized(&mut a.lnf_stats, n * 2);
        sized(&mut a.logits, n * v);
        sized(&mut a.dres, n * e);
        sized(&mut a.dln, n * e);
        sized(&mut a.dqkv, n * 3 * e);
        sized(&mut a.datty, n * e);
        sized(&mut a.dfc, n * f);
        let dims = AttnDims {
            b,
            t,
            h: c.n_head,
            d: c.head_dim(),
        };
        sized(&mut a.attn_scratch, b * c.n_head * dims.scratch_per_group());
        self.shape = (b, t);
    }

    /// Runs the forward pass up to the logits (left in the activations).
    fn forward(&mut self, be: &dyn Backend, tokens: &[u32], b: usize, t: usize) {
        self.alloc(b, t);
        let c = &self.config;
        let (n, e, f, eps) = (b * t, c.n_embd, c.n_inner, c.layer_norm_epsilon);
        let dims = AttnDims {
            b,
            t,
            h: c.n_head,
            d: c.head_dim(),
        };
        let (p, lay, a) = (&self.params, &self.layout, &mut self.acts);
        let w = |off: usize, len: usize| &p[off..off + len];
        k::embedding_forward(
            tokens,
            w(lay.wte, c.vocab_size * e),
            w(lay.wpe, c.n_positions * e),
            &mut a.res[..n * e],
            t,
        );
        for (l, o) in lay.blocks.iter().enumerate() {
            let (ne, nf) = (n * e, n * f);
            let (res_in, res_out) = a.res[l * ne..(l + 2) * ne].split_at_mut(ne);
            let ln1 = &mut a.ln1[l * ne..(l + 1) * ne];
            k::layer_norm_forward(
                res_in,
                w(o.ln_1_w, e),
                w(o.ln_1_b, e),
                ln1,
                &mut a.ln1_stats[l * n * 2..(l + 1) * n * 2],
                e,
                eps,
            );
            let qkv = &mut a.qkv[l * 3 * ne..(l + 1) * 3 * ne];
            k::linear_forward(
                be,
                ln1,
                w(o.c_attn_w, e * 3 * e),
                w(o.c_attn_b, 3 * e),
                qkv,
                n,
            );
            let atty = &mut a.atty[l * ne..(l + 1) * ne];
            let pl = b * c.n_head * t * t;
            k::attention_forward(
                be,
                qkv,
                &mut a.probs[l * pl..(l + 1) * pl],
                atty,
                &mut a.attn_scratch,
                dims,
            );
            let res2 = &mut a.res2[l * ne..(l + 1) * ne];
            k::linear_forward(
                be,
                atty,
                w(o.attn_proj_w, e * e),
                w(o.attn_proj_b, e),
                res2,
                n,
            );
            k::add_assign(res2, res_in);
            let ln2 = &mut a.ln2[l * ne..(l + 1) * ne];
            k::layer_norm_forward(
                res2,
                w(o.ln_2_w, e),
                w(o.ln_2_b, e),
                ln2,
                &mut a.ln2_stats[l * n * 2..(l + 1) * n * 2],
                e,
                eps,
            );
            let fc = &mut a.fc[l * nf..(l + 1) * nf];
            k::linear_forward(be, ln2, w(o.c_fc_w, e * f), w(o.c_fc_b, f), fc, n);
            let g = &mut a.fc_gelu[l * nf..(l + 1) * nf];
            be.gelu_tanh(fc, g);
            k::linear_forward(
                be,
                g,
                w(o.mlp_proj_w, f * e),
                w(o.mlp_proj_b, e),
                res_out,
                n,
            );
            k::add_assign(res_out, res2);
        }
        let last = &a.res[lay.blocks.len() * n * e..];
        k::layer_norm_forward(
            last,
            w(lay.ln_f_w, e),
            w(lay.ln_f_b, e),
            &mut a.lnf,
            &mut a.lnf_stats,
            e,
            eps,
        );
        be.matmul_nt(
            &a.lnf,
            w(lay.wte, c.vocab_size * e),
            None,
            &mut a.logits,
            n,
            e,
            c.vocab_size,
        );
    }

    /// Logits `[b * t, vocab]` for `tokens` (`b` rows of `t`).
    pub fn logits(&mut self, tokens: &[u32], b: usize, t: usize) -> Result<&[f32]> {
        self.check_batch(tokens, None, b, t)?;
        let be = backend::current().get()?;
        crate::threads::install(|| self.forward(be, tokens, b, t));
        Ok(&self.acts.logits[..b * t * self.config.vocab_size])
    }

    /// Mean cross-entropy of predicting `targets` from `tokens`, without gradients.
    pub fn loss(&mut self, tokens: &[u32], targets: &[u32], b: usize, t: usize) -> Result<f64> {
        self.check_batch(tokens, Some(targets), b, t)?;
        let be = backend::current().get()?;
        let v = self.config.vocab_size;
        Ok(crate::threads::install(|| {
            self.forward(be, tokens, b, t);
            k::cross_entropy(&mut self.acts.logits, targets, v, None)
        }) / (b * t) as f64)
    }

    /// Forward and backward for one batch: returns the mean loss and adds the gradient of
    /// `loss_scale * mean loss` to `grads` (a scale of 1 / steps averages accumulated batches).
    pub fn forward_backward(
        &mut self,
        tokens: &[u32],
        targets: &[u32],
        b: usize,
        t: usize,
        loss_scale: f32,
    ) -> Result<f64> {
        self.check_batch(tokens, Some(targets), b, t)?;
        let be = backend::current().get()?;
        let n = b * t;
        let v = self.config.vocab_size;
        Ok(crate::threads::install(|| {
            self.forward(be, tokens, b, t);
            let loss = k::cross_entropy(
                &mut self.acts.logits,
                targets,
                v,
                Some(loss_scale / n as f32),
            );
            self.backward(be, tokens, b, t);
            loss
        }) / n as f64)
    }

    /// Backward from `d loss / d logits` (left in `acts.logits` by the fused cross-entropy).
    fn backward(&mut self, be: &dyn Backend, tokens: &[u32], b: usize, t: usize) {
        let c = &self.config;
        let (n, e, f, v) = (b * t, c.n_embd, c.n_inner, c.vocab_size);
        let dims = AttnDims {
            b,
            t,
            h: c.n_head,
            d: c.head_dim(),
        };
        let (p, gr, lay, a) = (&self.params, &mut self.grads, &self.layout, &mut self.acts);
        let w = |off: usize, len: usize| &p[off..off + len];
        // Tied output projection: d lnf = dlogits @ wte; d wte += (lnf^T @ dlogits)^T.
        be.matmul(&a.logits, w(lay.wte, v * e), None, &mut a.dln, n, v, e);
        be.matmul_tn_acc(
            &a.logits,
            &a.lnf,
            &mut gr[lay.wte..lay.wte + v * e],
            v,
            n,
            e,
        );
        a.dres.fill(0.0);
        let last = &a.res[lay.blocks.len() * n * e..];
        {
            let (gw, gb) = grads_pair(gr, lay.ln_f_w, lay.ln_f_b, e);
            k::layer_norm_backward(
                &a.dln,
                last,
                w(lay.ln_f_w, e),
                &a.lnf_stats,
                &mut a.dres,
                gw,
                gb,
                e,
            );
        }
        for (l, o) in lay.blocks.iter().enumerate().rev() {
            let (ne, nf) = (n * e, n * f);
            let res_in = &a.res[l * ne..(l + 1) * ne];
            // MLP: res_out = res2 + c_proj(gelu(c_fc(ln_2(res2)))).
            {
                let (gw, gb) = grads_pair(gr, o.mlp_proj_w, o.mlp_proj_b, f * e);
                let (gw, gb) = (gw, &mut gb[..e]);
                k::linear_backward(
                    be,
                    &a.dres,
                    &a.fc_gelu[l * nf..(l + 1) * nf],
                    w(o.mlp_proj_w, f * e),
                    &mut a.dfc,
                    gw,
                    gb,
                    n,
                );
            }
            k::gelu_backward(&a.fc[l * nf..(l + 1) * nf], &mut a.dfc);
            {
                let (gw, gb) = grads_pair(gr, o.c_fc_w, o.c_fc_b, e * f);
                let gb = &mut gb[..f];
                k::linear_backward(
                    be,
                    &a.dfc,
                    &a.ln2[l * ne..(l + 1) * ne],
                    w(o.c_fc_w, e * f),
                    &mut a.dln,
                    gw,
                    gb,
                    n,
                );
            }
            {
                let (gw, gb) = grads_pair(gr, o.ln_2_w, o.ln_2_b, e);
                let gb = &mut gb[..e];
                k::layer_norm_backward(
                    &a.dln,
                    &a.res2[l * ne..(l + 1) * ne],
                    w(o.ln_2_w, e),
                    &a.ln2_stats[l * n * 2..(l + 1) * n * 2],
                    &mut a.dres,
                    gw,
                    gb,
                    e,
                );
            }
            // Attention: res2 = res_in + c_proj(attn(c_attn(ln_1(res_in)))).
            {
                let (gw, gb) = grads_pair(gr, o.attn_proj_w, o.attn_proj_b, e * e);
                let gb = &mut gb[..e];
                k::linear_backward(
                    be,
                    &a.dres,
                    &a.atty[l * ne..(l + 1) * ne],
                    w(o.attn_proj_w, e * e),
                    &mut a.datty,
                    gw,
                    gb,
                    n,
                );
            }
            let pl = b * c.n_head * t * t;
            k::attention_backward(
                be,
                &a.datty,
                &a.qkv[l * 3 * ne..(l + 1) * 3 * ne],
                &a.probs[l * pl..(l + 1) * pl],
                &mut a.dqkv,
                &mut a.attn_scratch,
                dims,
            );
            {
                let (gw, gb) = grads_pair(gr, o.c_attn_w, o.c_attn_b, e * 3 * e);
                let gb = &mut gb[..3 * e];
                k::linear_backward(
                    be,
                    &a.dqkv,
                    &a.ln1[l * ne..(l + 1) * ne],
                    w(o.c_attn_w, e * 3 * e),
                    &mut a.dln,
                    gw,
                    gb,
                    n,
                );
            }
            {
                let (gw, gb) = grads_pair(gr, o.ln_1_w, o.ln_1_b, e);
                let gb = &mut gb[..e];
                k::layer_norm_backward(
                    &a.dln,
                    res_in,
                    w(o.ln_1_w, e),
                    &a.ln1_stats[l * n * 2..(l + 1) * n * 2],
                    &mut a.dres,
                    gw,
                    gb,
                    e,
                );
            }
        }
        let (dwte, dwpe) = gr[lay.wte..].split_at_mut(lay.wpe - lay.wte);
        k::embedding_backward(tokens, &a.dres, dwte, &mut dwpe[..c.n_positions * e], t);
    }

    pub fn num_parameters(&self) -> usize {
        self.layout.total
    }
}

/// The gradient slices of a weight (`len` elements at `w`) and the bias right after it at `b`.
fn grads_pair(g: &mut [f32], w: usize, b: usize, len: usize) -> (&mut [f32], &mut [f32]) {
    debug_assert_eq!(b, w + len);
    let (gw, gb) = g[w..].split_at_mut(b - w);
    (&mut gw[..len], gb)
}

fn validate(c: &Gpt2Config) -> Result<()> {
    if c.vocab_size >= u32::MAX as usize {
        return Err(Error::Value("vocab_size is too large".into()));
    }
    let total = Layout::new(c).total;
    if total > (1usize << 34) {
        return Err(Error::Value(format!(
            "a model of {total} parameters is too large to train here"
        )));
    }
    Ok(())
}

/// Writes `path` through a temporary file in the same folder, then renames it into place, so
/// an interrupted save never leaves a truncated checkpoint.
pub(crate) fn write_atomically(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = path.with_extension("tmp");
    write(&tmp)?;
    std::fs::rename(&tmp, path)
        .map_err(|e| Error::Io(format!("cannot move {} into place: {e}", path.display())))
}
