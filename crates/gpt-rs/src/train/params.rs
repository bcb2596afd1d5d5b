//! The parameters of a trainable GPT-2 in one flat buffer, named after the Hugging Face
//! checkpoint keys (`wte.weight`, `h.0.attn.c_attn.weight`, ...), linear weights `[in, out]`
//! as HF's Conv1D stores them, so saving is a straight copy.

use rand_chacha::rand_core::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::checkpoint::Gpt2Config;

/// One named tensor inside the flat buffer.
#[derive(Clone, Debug)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub offset: usize,
    /// Whether AdamW applies weight decay (matrices and embeddings; not biases or norms).
    pub decay: bool,
}

impl ParamSpec {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn range(&self) -> std::ops::Range<usize> {
        self.offset..self.offset + self.numel()
    }
}

/// A linear layer's place in the flat buffers: weight `[n_in, n_out]` at `w`, bias right after.
#[derive(Clone, Copy, Debug)]
pub struct LinearAt {
    pub w: usize,
    pub n_in: usize,
    pub n_out: usize,
}

impl LinearAt {
    pub fn weight<'a>(&self, buf: &'a [f32]) -> &'a [f32] {
        &buf[self.w..self.w + self.n_in * self.n_out]
    }

    pub fn bias<'a>(&self, buf: &'a [f32]) -> &'a [f32] {
        let b = self.w + self.n_in * self.n_out;
        &buf[b..b + self.n_out]
    }

    /// The weight's and the bias's slices of a gradient buffer.
    pub fn grads<'a>(&self, buf: &'a mut [f32]) -> (&'a mut [f32], &'a mut [f32]) {
        let len = self.n_in * self.n_out;
        buf[self.w..self.w + len + self.n_out].split_at_mut(len)
    }
}

/// A layer norm's place: weight `[c]` at `w`, bias right after.
#[derive(Clone, Copy, Debug)]
pub struct NormAt {
    pub w: usize,
    pub c: usize,
}

impl NormAt {
    pub fn weight<'a>(&self, buf: &'a [f32]) -> &'a [f32] {
        &buf[self.w..self.w + self.c]
    }

    pub fn bias<'a>(&self, buf: &'a [f32]) -> &'a [f32] {
        &buf[self.w + self.c..self.w + 2 * self.c]
    }

    pub fn grads<'a>(&self, buf: &'a mut [f32]) -> (&'a mut [f32], &'a mut [f32]) {
        buf[self.w..self.w + 2 * self.c].split_at_mut(self.c)
    }
}

/// One transformer block's tensors.
#[derive(Clone, Copy, Debug)]
pub struct BlockAt {
    pub ln_1: NormAt,
    pub c_attn: LinearAt,
    pub attn_c_proj: LinearAt,
    pub ln_2: NormAt,
    pub c_fc: LinearAt,
    pub mlp_c_proj: LinearAt,
}

/// Where every tensor lives in the flat parameter (and gradient, and optimizer) buffers.
#[derive(Clone, Debug)]
pub struct Layout {
    pub specs: Vec<ParamSpec>,
    pub wte: usize,
    pub wpe: usize,
    pub blocks: Vec<BlockAt>,
    pub ln_f: NormAt,
    pub total: usize,
}

/// Appends tensors to a growing layout.
#[derive(Default)]
struct Builder {
    specs: Vec<ParamSpec>,
}

impl Builder {
    fn add(&mut self, name: String, shape: Vec<usize>) -> usize {
        let offset = self.specs.last().map_or(0, |s| s.offset + s.numel());
        let decay = shape.len() == 2;
        self.specs.push(ParamSpec {
            name,
            shape,
            offset,
            decay,
        });
        offset
    }

    fn norm(&mut self, name: &str, c: usize) -> NormAt {
        let w = self.add(format!("{name}.weight"), vec![c]);
        self.add(format!("{name}.bias"), vec![c]);
        NormAt { w, c }
    }

    fn linear(&mut self, name: &str, n_in: usize, n_out: usize) -> LinearAt {
        let w = self.add(format!("{name}.weight"), vec![n_in, n_out]);
        self.add(format!("{name}.bias"), vec![n_out]);
        LinearAt { w, n_in, n_out }
    }
}

impl Layout {
    pub fn new(cfg: &Gpt2Config) -> Self {
        let (c, v, p, f) = (cfg.n_embd, cfg.vocab_size, cfg.n_positions, cfg.n_inner);
        let mut t = Builder::default();
        let wte = t.add("wte.weight".into(), vec![v, c]);
        let wpe = t.add("wpe.weight".into(), vec![p, c]);
        let blocks = (0..cfg.n_layer)
            .map(|l| BlockAt {
                ln_1: t.norm(&format!("h.{l}.ln_1"), c),
                c_attn: t.linear(&format!("h.{l}.attn.c_attn"), c, 3 * c),
                attn_c_proj: t.linear(&format!("h.{l}.attn.c_proj"), c, c),
                ln_2: t.norm(&format!("h.{l}.ln_2"), c),
                c_fc: t.linear(&format!("h.{l}.mlp.c_fc"), c, f),
                mlp_c_proj: t.linear(&format!("h.{l}.mlp.c_proj"), f, c),
            })
            .collect();
        let ln_f = t.norm("ln_f", c);
        let total = t.specs.last().map_or(0, |s| s.offset + s.numel());
        Self {
            specs: t.specs,
            wte,
            wpe,
            blocks,
            ln_f,
            total,
        }
    }

    pub fn get(&self, name: &str) -> Option<&ParamSpec> {
        self.specs.iter().find(|s| s.name == name)
    }
}

/// GPT-2's initialization (as Hugging Face's `GPT2PreTrainedModel._init_weights`): weights and
/// embeddings N(0, 0.02), the residual projections (`c_proj`) N(0, 0.02 / sqrt(2 n_layer)),
/// biases 0, layer-norm weights 1. Deterministic for a seed, whatever the thread count.
pub fn init(layout: &Layout, cfg: &Gpt2Config, seed: u64) -> crate::Result<Vec<f32>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut params = crate::memory::zeroed(layout.total, "the model's parameters")?;
    let proj_std = 0.02 / (2.0 * cfg.n_layer as f64).sqrt();
    for spec in &layout.specs {
        let dst = &mut params[spec.range()];
        if spec.name.ends_with("ln_1.weight")
            || spec.name.ends_with("ln_2.weight")
            || spec.name == "ln_f.weight"
        {
            dst.fill(1.0);
        } else if spec.shape.len() == 2 {
            let std = if spec.name.ends_with("c_proj.weight") {
                proj_std
            } else {
                0.02
            };
            fill_normal(&mut rng, dst, std);
        }
    }
    Ok(params)
}

/// Fills `dst` with N(0, std^2) draws (Box-Muller on 53-bit uniforms).
fn fill_normal(rng: &mut ChaCha8Rng, dst: &mut [f32], std: f64) {
    let mut uniform = || ((rng.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    for pair in dst.chunks_mut(2) {
        let (u1, u2) = (uniform(), uniform());
        let r = (-2.0 * u1.ln()).sqrt() * std;
        let a = std::f64::consts::TAU * u2;
        pair[0] = (r * a.cos()) as f32;
        if let Some(x) = pair.get_mut(1) {
            *x = (r * a.sin()) as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Gpt2Config {
        Gpt2Config {
            vocab_size: 50,
            n_positions: 16,
            n_embd: 8,
            n_layer: 2,
            n_head: 2,
            n_inner: 32,
            layer_norm_epsilon: 1e-5,
            bos_token_id: None,
            eos_token_id: None,
        }
    }

    #[test]
    fn layout_is_contiguous_and_counts_gpt2_parameters() {
        let c = cfg();
        let l = Layout::new(&c);
        let mut next = 0;
        for s in &l.specs {
            assert_eq!(s.offset, next, "{}", s.name);
            next += s.numel();
        }
        let per_block = 2 * 8 + 8 * 24 + 24 + 8 * 8 + 8 + 2 * 8 + 8 * 32 + 32 + 32 * 8 + 8;
        assert_eq!(l.total, 50 * 8 + 16 * 8 + 2 * per_block + 2 * 8);
        assert!(l.get("h.1.mlp.c_proj.weight").unwrap().decay);
        assert!(!l.get("h.1.mlp.c_proj.bias").unwrap().decay);
        assert!(!l.get("ln_f.weight").unwrap().decay);
    }

    #[test]
    fn init_is_seeded_with_gpt2_statistics() {
        let c = Gpt2Config {
            vocab_size: 4000,
            n_embd: 64,
            ..cfg()
        };
        let l = Layout::new(&c);
        let a = init(&l, &c, 7).unwrap();
        assert_eq!(a, init(&l, &c, 7).unwrap());
        assert_ne!(a, init(&l, &c, 8).unwrap());
        let wte = &a[l.get("wte.weight").unwrap().range()];
        let mean = wte.iter().map(|&x| x as f64).sum::<f64>() / wte.len() as f64;
        let std =
            (wte.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / wte.len() as f64).sqrt();
        assert!(
            mean.abs() < 1e-3 && (std - 0.02).abs() < 5e-4,
            "{mean} {std}"
        );
        let proj = &a[l.get("h.0.mlp.c_proj.weight").unwrap().range()];
        let pstd =
            (proj.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / proj.len() as f64).sqrt();
        assert!((pstd - 0.01).abs() < 1e-3, "{pstd}");
        assert!(a[l.get("h.0.ln_1.weight").unwrap().range()]
            .iter()
            .all(|&x| x == 1.0));
        assert!(a[l.get("h.0.attn.c_attn.bias").unwrap().range()]
            .iter()
            .all(|&x| x == 0.0));
    }
}
