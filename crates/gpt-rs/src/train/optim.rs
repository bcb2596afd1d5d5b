//! AdamW with decoupled weight decay (PyTorch's `torch.optim.AdamW` update, step for step)
//! and global-norm gradient clipping, over the flat parameter buffer.

use std::collections::HashMap;
use std::path::Path;

use rayon::prelude::*;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

use super::params::Layout;
use crate::checkpoint::write_atomically;
use crate::error::{Error, Result};

/// AdamW hyper-parameters for one step.
#[derive(Clone, Copy, Debug)]
pub struct AdamWConfig {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// Applied to the tensors the layout marks `decay` (matrices, embeddings).
    pub weight_decay: f32,
}

/// The optimizer's state: first and second moments and the step count.
pub struct AdamW {
    pub m: Vec<f32>,
    pub v: Vec<f32>,
    pub step: u64,
}

const CHUNK: usize = 1 << 14;

impl AdamW {
    /// Zero moments for `n` parameters, or `Error::Memory` (8 bytes a parameter).
    pub fn new(n: usize) -> Result<Self> {
        Ok(Self {
            m: crate::memory::zeroed(n, "the optimizer's first moments")?,
            v: crate::memory::zeroed(n, "the optimizer's second moments")?,
            step: 0,
        })
    }

    /// One update of `params` from `grads`. Per element, as PyTorch:
    /// `p *= 1 - lr*wd; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
    /// p -= lr / (1-b1^t) * m / (sqrt(v) / sqrt(1-b2^t) + eps)`.
    pub fn update(&mut self, params: &mut [f32], grads: &[f32], layout: &Layout, hp: &AdamWConfig) {
        self.step += 1;
        let t = self.step as i32;
        let bc1 = 1.0 - (hp.beta1 as f64).powi(t);
        let bc2_sqrt = (1.0 - (hp.beta2 as f64).powi(t)).sqrt() as f32;
        let step_size = (hp.lr as f64 / bc1) as f32;
        let (params, m, v) = (&mut params[..], &mut self.m[..], &mut self.v[..]);
        crate::threads::install(|| {
            for spec in &layout.specs {
                let r = spec.range();
                let shrink = if spec.decay {
                    1.0 - hp.lr * hp.weight_decay
                } else {
                    1.0
                };
                params[r.clone()]
                    .par_chunks_mut(CHUNK)
                    .zip(m[r.clone()].par_chunks_mut(CHUNK))
                    .zip(v[r.clone()].par_chunks_mut(CHUNK))
                    .zip(grads[r].par_chunks(CHUNK))
                    .for_each(|(((p, m), v), g)| {
                        for i in 0..p.len() {
                            m[i] = hp.beta1 * m[i] + (1.0 - hp.beta1) * g[i];
                            v[i] = hp.beta2 * v[i] + (1.0 - hp.beta2) * g[i] * g[i];
                            let denom = v[i].sqrt() / bc2_sqrt + hp.eps;
                            p[i] = p[i] * shrink - step_size * m[i] / denom;
                        }
                    });
            }
        });
    }

    /// Saves the moments to a safetensors file (`exp_avg`, `exp_avg_sq`; the step in metadata).
    pub fn save(&self, path: &Path) -> Result<()> {
        let (m, v) = (to_le_bytes(&self.m)?, to_le_bytes(&self.v)?);
        let n = self.m.len();
        let view = |bytes| TensorView::new(Dtype::F32, vec![n], bytes).expect("sizes match");
        let meta = HashMap::from([("step".to_string(), self.step.to_string())]);
        write_atomically(path, |tmp| {
            safetensors::serialize_to_file(
                [("exp_avg", view(&m[..])), ("exp_avg_sq", view(&v[..]))],
                Some(meta),
                tmp,
            )
            .map_err(|e| Error::Io(format!("cannot write {}: {e}", tmp.display())))
        })
    }

    /// Loads state saved by `save` for a model with `n` parameters.
    pub fn load(path: &Path, n: usize) -> Result<Self> {
        let bytes = std::fs::read(path)
            .map_err(|e| Error::Io(format!("cannot read {}: {e}", path.display())))?;
        let bad = |what: String| Error::Value(format!("{}: {what}", path.display()));
        let (_, meta) = SafeTensors::read_metadata(&bytes)
            .map_err(|e| bad(format!("not a valid safetensors file: {e}")))?;
        let st = SafeTensors::deserialize(&bytes)
            .map_err(|e| bad(format!("not a valid safetensors file: {e}")))?;
        let step = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get("step"))
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or_else(|| bad("missing the optimizer step in its metadata".into()))?;
        let read = |name: &str| -> Result<Vec<f32>> {
            let t = st
                .tensor(name)
                .map_err(|_| bad(format!("missing tensor '{name}'")))?;
            if t.dtype() != Dtype::F32 || t.shape() != [n] {
                return Err(bad(format!(
                    "'{name}' is {:?} {:?}, expected F32 [{n}] (was it saved for another model size?)",
                    t.dtype(),
                    t.shape()
                )));
            }
            crate::memory::collect(
                t.data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
                "the optimizer state",
            )
        };
        Ok(Self {
            m: read("exp_avg")?,
            v: read("exp_avg_sq")?,
            step,
        })
    }
}

/// The little-endian bytes of `x` (what safetensors stores), allocated fallibly.
pub(crate) fn to_le_bytes(x: &[f32]) -> Result<Vec<u8>> {
    let mut out = crate::memory::with_capacity(x.len() * 4, "the bytes to save")?;
    out.extend(x.iter().flat_map(|v| v.to_le_bytes()));
    Ok(out)
}

/// The global L2 norm of the gradients (accumulated in f64).
pub fn grad_norm(grads: &[f32]) -> f64 {
    crate::threads::install(|| {
        grads
            .par_chunks(CHUNK)
            .map(|c| c.iter().map(|&g| (g as f64) * (g as f64)).sum::<f64>())
            .sum::<f64>()
            .sqrt()
    })
}

/// Scales the gradients so their global norm is at most `max_norm` (as PyTorch's
/// `clip_grad_norm_`: factor `max_norm / (norm + 1e-6)`, capped at 1). Returns the norm before.
pub fn clip_grad_norm(grads: &mut [f32], max_norm: f32) -> f64 {
    let norm = grad_norm(grads);
    let coef = max_norm as f64 / (norm + 1e-6);
    if coef < 1.0 {
        let coef = coef as f32;
        crate::threads::install(|| {
            grads
                .par_chunks_mut(CHUNK)
                .for_each(|c| c.iter_mut().for_each(|g| *g *= coef))
        });
    }
    norm
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::Gpt2Config;

    #[test]
    fn adamw_matches_the_pytorch_formula_and_decays_only_matrices() {
        let cfg = Gpt2Config {
            vocab_size: 7,
            n_positions: 4,
            n_embd: 4,
            n_layer: 1,
            n_head: 2,
            n_inner: 8,
            layer_norm_epsilon: 1e-5,
            bos_token_id: None,
            eos_token_id: None,
        };
        let layout = Layout::new(&cfg);
        let n = layout.total;
        let mut params: Vec<f32> = (0..n).map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.1).collect();
        let grads: Vec<f32> = (0..n).map(|i| ((i * 13 % 7) as f32 - 3.0) * 0.01).collect();
        let hp = AdamWConfig {
            lr: 0.01,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
        };
        let (mut p64, mut m64, mut v64) = (
            params.iter().map(|&x| x as f64).collect::<Vec<_>>(),
            vec![0.0f64; n],
            vec![0.0f64; n],
        );
        let mut opt = AdamW::new(n).unwrap();
        for step in 1..=3 {
            opt.update(&mut params, &grads, &layout, &hp);
            for s in &layout.specs {
                for i in s.range() {
                    let g = grads[i] as f64;
                    if s.decay {
                        p64[i] *= 1.0 - 0.01 * 0.1;
                    }
                    m64[i] = 0.9 * m64[i] + 0.1 * g;
                    v64[i] = 0.95 * v64[i] + 0.05 * g * g;
                    let denom = v64[i].sqrt() / (1.0 - 0.95f64.powi(step)).sqrt() + 1e-8;
                    p64[i] -= 0.01 / (1.0 - 0.9f64.powi(step)) * m64[i] / denom;
                }
            }
        }
        assert_eq!(opt.step, 3);
        for (i, (&p, &w)) in params.iter().zip(&p64).enumerate() {
            assert!((p as f64 - w).abs() < 1e-5, "param {i}: {p} vs {w}");
        }
        let mut g = grads.clone();
        let norm = clip_grad_norm(&mut g, 0.01);
        let want: f64 = grads
            .iter()
            .map(|&x| (x as f64).powi(2))
            .sum::<f64>()
            .sqrt();
        assert!((norm - want).abs() < 1e-6 && grad_norm(&g) <= 0.01 + 1e-6);
    }
}
