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
use super::params::{self, Layout, LinearAt, NormAt};
use crate::backend::{self, Backend};
use crate::checkpoint::{write_atomically, Gpt2Config, SafetensorsFile};
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

/// Resizes a buffer to `n` zeros, reporting an allocation failure instead of aborting.
fn sized(v: &mut Vec<f32>, n: usize) -> Result<()> {
    if v.len() != n {
        *v = Vec::new();
        *v = crate::memory::zeroed(
            n,
            "the training activations (lower the batch size or context)",
        )?;
    }
    Ok(())
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
        let params = params::init(&layout, &config, seed)?;
        Self::with_params(config, layout, params)
    }

    fn with_params(config: Gpt2Config, layout: Layout, params: Vec<f32>) -> Result<Self> {
        let grads = crate::memory::zeroed(layout.total, "the gradients")?;
        Ok(Self {
            config,
            layout,
            params,
            grads,
            acts: Activations::default(),
            shape: (0, 0),
        })
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
        let mut params = crate::memory::zeroed(layout.total, "the model's parameters")?;
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
        Self::with_params(config, layout, params)
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
                Ok((
                    format!("transformer.{}", s.name),
                    to_le_bytes(&self.params[s.range()])?,
                    s.shape.clone(),
                ))
            })
            .collect::<Result<_>>()?;
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

    /// Sizes the activations for `b` windows of `t` tokens (kept for the next call).
    fn alloc(&mut self, b: usize, t: usize) -> Result<()> {
        if self.shape == (b, t) {
            return Ok(());
        }
        let c = &self.config;
        let (n, e, l, f, v) = (b * t, c.n_embd, c.n_layer, c.n_inner, c.vocab_size);
        // All buffers together, in 128-bit arithmetic so absurd sizes cannot overflow.
        let (n128, t128) = (n as u128, t as u128);
        let total = n128
            * ((l as u128) * (8 * e + 2 * f + 4) as u128 + (8 * e + f + 2 + v) as u128)
            + (l as u128 + 1) * b as u128 * c.n_head as u128 * t128 * t128;
        check_memory(
            total * 4,
            &format!(
                "the activations of a batch of {b} x {t} tokens (lower the batch size or context)"
            ),
        )?;
        self.shape = (0, 0);
        let a = &mut self.acts;
        sized(&mut a.res, (l + 1) * n * e)?;
        sized(&mut a.ln1, l * n * e)?;
        sized(&mut a.ln1_stats, l * n * 2)?;
        sized(&mut a.qkv, l * n * 3 * e)?;
        sized(&mut a.probs, l * b * c.n_head * t * t)?;
        sized(&mut a.atty, l * n * e)?;
        sized(&mut a.res2, l * n * e)?;
        sized(&mut a.ln2, l * n * e)?;
        sized(&mut a.ln2_stats, l * n * 2)?;
        sized(&mut a.fc, l * n * f)?;
        sized(&mut a.fc_gelu, l * n * f)?;
        sized(&mut a.lnf, n * e)?;
        sized(&mut a.lnf_stats, n * 2)?;
        sized(&mut a.logits, n * v)?;
        sized(&mut a.dres, n * e)?;
        sized(&mut a.dln, n * e)?;
        sized(&mut a.dqkv, n * 3 * e)?;
        sized(&mut a.datty, n * e)?;
        sized(&mut a.dfc, n * f)?;
        let dims = attn_dims(c, b, t);
        sized(&mut a.attn_scratch, b * c.n_head * dims.scratch_per_group())?;
        self.shape = (b, t);
        Ok(())
    }

    /// Runs the forward pass up to the logits (left in the activations).
    fn forward(&mut self, be: &dyn Backend, tokens: &[u32], b: usize, t: usize) {
        let c = &self.config;
        let (n, e, f, v, eps) = (
            b * t,
            c.n_embd,
            c.n_inner,
            c.vocab_size,
            c.layer_norm_epsilon,
        );
        let (ne, nf) = (n * e, n * f);
        let dims = attn_dims(c, b, t);
        let pl = b * c.n_head * t * t;
        let (p, lay, a) = (&self.params, &self.layout, &mut self.acts);
        let wte = &p[lay.wte..lay.wte + v * e];
        let wpe = &p[lay.wpe..lay.wpe + c.n_positions * e];
        k::embedding_forward(tokens, wte, wpe, &mut a.res[..ne], t);
        for (l, blk) in lay.blocks.iter().enumerate() {
            let (res_in, res_out) = a.res[l * ne..(l + 2) * ne].split_at_mut(ne);
            let ln1 = &mut a.ln1[l * ne..(l + 1) * ne];
            let qkv = &mut a.qkv[l * 3 * ne..(l + 1) * 3 * ne];
            let atty = &mut a.atty[l * ne..(l + 1) * ne];
            let res2 = &mut a.res2[l * ne..(l + 1) * ne];
            let ln2 = &mut a.ln2[l * ne..(l + 1) * ne];
            let fc = &mut a.fc[l * nf..(l + 1) * nf];
            let act = &mut a.fc_gelu[l * nf..(l + 1) * nf];
            // res2 = res_in + c_proj(attention(c_attn(ln_1(res_in))))
            norm_forward(
                p,
                blk.ln_1,
                res_in,
                ln1,
                &mut a.ln1_stats[l * n * 2..][..n * 2],
                eps,
            );
            linear_forward(be, p, blk.c_attn, ln1, qkv, n);
            k::attention_forward(
                be,
                qkv,
                &mut a.probs[l * pl..][..pl],
                atty,
                &mut a.attn_scratch,
                dims,
            );
            linear_forward(be, p, blk.attn_c_proj, atty, res2, n);
            k::add_assign(res2, res_in);
            // res_out = res2 + c_proj(gelu(c_fc(ln_2(res2))))
            norm_forward(
                p,
                blk.ln_2,
                res2,
                ln2,
                &mut a.ln2_stats[l * n * 2..][..n * 2],
                eps,
            );
            linear_forward(be, p, blk.c_fc, ln2, fc, n);
            be.gelu_tanh(fc, act);
            linear_forward(be, p, blk.mlp_c_proj, act, res_out, n);
            k::add_assign(res_out, res2);
        }
        let last = &a.res[lay.blocks.len() * ne..];
        norm_forward(p, lay.ln_f, last, &mut a.lnf, &mut a.lnf_stats, eps);
        // Tied output projection: logits = lnf @ wte^T.
        be.matmul_nt(&a.lnf, wte, None, &mut a.logits, n, e, v);
    }

    /// Logits `[b * t, vocab]` for `tokens` (`b` rows of `t`).
    pub fn logits(&mut self, tokens: &[u32], b: usize, t: usize) -> Result<&[f32]> {
        self.check_batch(tokens, None, b, t)?;
        self.alloc(b, t)?;
        let be = backend::current().get()?;
        crate::threads::install(|| self.forward(be, tokens, b, t));
        Ok(&self.acts.logits[..b * t * self.config.vocab_size])
    }

    /// Mean cross-entropy of predicting `targets` from `tokens`, without gradients.
    pub fn loss(&mut self, tokens: &[u32], targets: &[u32], b: usize, t: usize) -> Result<f64> {
        self.check_batch(tokens, Some(targets), b, t)?;
        self.alloc(b, t)?;
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
        self.alloc(b, t)?;
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
        let (ne, nf) = (n * e, n * f);
        let dims = attn_dims(c, b, t);
        let pl = b * c.n_head * t * t;
        let (p, g, lay, a) = (&self.params, &mut self.grads, &self.layout, &mut self.acts);
        // Tied output projection: d lnf = dlogits @ wte; d wte += dlogits^T @ lnf.
        let wte = &p[lay.wte..lay.wte + v * e];
        be.matmul(&a.logits, wte, None, &mut a.dln, n, v, e);
        be.matmul_tn_acc(&a.logits, &a.lnf, &mut g[lay.wte..lay.wte + v * e], v, n, e);
        // `dres` carries d loss / d residual stream down through the blocks.
        a.dres.fill(0.0);
        let last = &a.res[lay.blocks.len() * ne..];
        norm_backward(p, g, lay.ln_f, &a.dln, last, &a.lnf_stats, &mut a.dres);
        for (l, blk) in lay.blocks.iter().enumerate().rev() {
            let res_in = &a.res[l * ne..(l + 1) * ne];
            // MLP branch: res_out = res2 + c_proj(gelu(c_fc(ln_2(res2)))).
            let act = &a.fc_gelu[l * nf..(l + 1) * nf];
            linear_backward(be, p, g, blk.mlp_c_proj, &a.dres, act, &mut a.dfc, n);
            k::gelu_backward(&a.fc[l * nf..(l + 1) * nf], &mut a.dfc);
            linear_backward(
                be,
                p,
                g,
                blk.c_fc,
                &a.dfc,
                &a.ln2[l * ne..][..ne],
                &mut a.dln,
                n,
            );
            let res2 = &a.res2[l * ne..(l + 1) * ne];
            norm_backward(
                p,
                g,
                blk.ln_2,
                &a.dln,
                res2,
                &a.ln2_stats[l * n * 2..][..n * 2],
                &mut a.dres,
            );
            // Attention branch: res2 = res_in + c_proj(attention(c_attn(ln_1(res_in)))).
            let atty = &a.atty[l * ne..(l + 1) * ne];
            linear_backward(be, p, g, blk.attn_c_proj, &a.dres, atty, &mut a.datty, n);
            let qkv = &a.qkv[l * 3 * ne..(l + 1) * 3 * ne];
            let probs = &a.probs[l * pl..(l + 1) * pl];
            k::attention_backward(
                be,
                &a.datty,
                qkv,
                probs,
                &mut a.dqkv,
                &mut a.attn_scratch,
                dims,
            );
            linear_backward(
                be,
                p,
                g,
                blk.c_attn,
                &a.dqkv,
                &a.ln1[l * ne..][..ne],
                &mut a.dln,
                n,
            );
            norm_backward(
                p,
                g,
                blk.ln_1,
                &a.dln,
                res_in,
                &a.ln1_stats[l * n * 2..][..n * 2],
                &mut a.dres,
            );
        }
        let (dwte, dwpe) = g[lay.wte..].split_at_mut(lay.wpe - lay.wte);
        k::embedding_backward(tokens, &a.dres, dwte, &mut dwpe[..c.n_positions * e], t);
    }

    pub fn num_parameters(&self) -> usize {
        self.layout.total
    }
}

fn attn_dims(c: &Gpt2Config, b: usize, t: usize) -> AttnDims {
    AttnDims {
        b,
        t,
        h: c.n_head,
        d: c.head_dim(),
    }
}

fn linear_forward(be: &dyn Backend, p: &[f32], at: LinearAt, x: &[f32], out: &mut [f32], n: usize) {
    k::linear_forward(be, x, at.weight(p), at.bias(p), out, n);
}

/// `dx = dout @ W^T`; the layer's weight and bias gradients accumulate into `g`.
#[allow(clippy::too_many_arguments)]
fn linear_backward(
    be: &dyn Backend,
    p: &[f32],
    g: &mut [f32],
    at: LinearAt,
    dout: &[f32],
    x: &[f32],
    dx: &mut [f32],
    n: usize,
) {
    let (gw, gb) = at.grads(g);
    k::linear_backward(be, dout, x, at.weight(p), dx, gw, gb, n);
}

fn norm_forward(p: &[f32], at: NormAt, x: &[f32], out: &mut [f32], stats: &mut [f32], eps: f32) {
    k::layer_norm_forward(x, at.weight(p), at.bias(p), out, stats, at.c, eps);
}

/// `dx += ...` (the residual stream's gradient); weight and bias gradients into `g`.
fn norm_backward(
    p: &[f32],
    g: &mut [f32],
    at: NormAt,
    dout: &[f32],
    x: &[f32],
    stats: &[f32],
    dx: &mut [f32],
) {
    let (gw, gb) = at.grads(g);
    k::layer_norm_backward(dout, x, at.weight(p), stats, dx, gw, gb, at.c);
}

fn validate(c: &Gpt2Config) -> Result<()> {
    if c.vocab_size >= u32::MAX as usize {
        return Err(Error::Value("vocab_size is too large".into()));
    }
    // Parameters, in 128-bit arithmetic (absurd configs must not overflow), then the memory
    // for parameters, gradients and AdamW's two moments.
    let [v, p, e, l, f] =
        [c.vocab_size, c.n_positions, c.n_embd, c.n_layer, c.n_inner].map(|x| x as u128);
    let params = (v + p) * e + l * (4 * e * e + 2 * e * f + 9 * e + f) + 2 * e;
    check_memory(
        params * 4 * 4,
        "the model's parameters, gradients and optimizer state",
    )
}

/// Errors when `bytes` exceed the machine's physical memory (Linux; elsewhere only absurd
/// sizes are refused), instead of letting the allocation abort or the OOM killer strike.
fn check_memory(bytes: u128, what: &str) -> Result<()> {
    let limit = physical_memory().map_or(isize::MAX as u128, u128::from);
    if bytes > limit {
        return Err(Error::Value(format!(
            "{what} would need {:.1} GB, more than this machine's {:.1} GB of memory",
            bytes as f64 / 1e9,
            limit as f64 / 1e9
        )));
    }
    Ok(())
}

fn physical_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
