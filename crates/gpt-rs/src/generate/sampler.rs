//! Next-token choice: repetition penalty, temperature, top-k, top-p (nucleus) and min-p,
//! with a seeded ChaCha8 generator so a seed reproduces a run exactly.

use rand_chacha::rand_core::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::{Error, Result};

#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy (argmax); otherwise logits are divided by it.
    pub temperature: f32,
    pub top_k: Option<usize>,
    pub top_p: Option<f32>,
    pub min_p: Option<f32>,
    /// > 1 discourages tokens already in the sequence (CTRL / Hugging Face semantics).
    pub repetition_penalty: Option<f32>,
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_k: None,
            top_p: None,
            min_p: None,
            repetition_penalty: None,
            seed: None,
        }
    }
}

impl SamplingParams {
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(Error::Value(format!(
                "temperature must be a finite number >= 0, got {}",
                self.temperature
            )));
        }
        if self.top_k == Some(0) {
            return Err(Error::Value(
                "top_k must be >= 1 (or None to disable)".into(),
            ));
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return Err(Error::Value(format!("top_p must be in (0, 1], got {p}")));
            }
        }
        if let Some(p) = self.min_p {
            if !(0.0..=1.0).contains(&p) {
                return Err(Error::Value(format!("min_p must be in [0, 1], got {p}")));
            }
        }
        if let Some(r) = self.repetition_penalty {
            if !(r.is_finite() && r > 0.0) {
                return Err(Error::Value(format!(
                    "repetition_penalty must be a positive number, got {r}"
                )));
            }
        }
        Ok(())
    }
}

pub struct Sampler {
    params: SamplingParams,
    rng: ChaCha8Rng,
    /// Reused candidate buffer (no allocation per token once grown): scaled logits, then
    /// probabilities, in f64 so that no temperature overflows them (1 / 1e-45 is 7e44).
    cand: Vec<(f64, u32)>,
    /// Reused buffer of the history's distinct tokens (repetition penalty).
    seen: Vec<u32>,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        let seed = params.seed.unwrap_or_else(|| {
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u128(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or(0),
            );
            h.finish()
        });
        Self {
            params,
            rng: ChaCha8Rng::seed_from_u64(seed),
            cand: Vec::new(),
            seen: Vec::new(),
        }
    }

    /// A uniform f64 in [0, 1).
    fn uniform(&mut self) -> f64 {
        (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Picks the next token from `logits` (modified in place) given the sequence so far.
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        if let Some(pen) = self.params.repetition_penalty {
            // Once per distinct token, however often it occurs (Hugging Face's
            // RepetitionPenaltyLogitsProcessor gathers and scatters each id once).
            self.seen.clear();
            self.seen.extend_from_slice(history);
            self.seen.sort_unstable();
            self.seen.dedup();
            for &t in &self.seen {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l = if *l < 0.0 { *l * pen } else { *l / pen };
                }
            }
        }
        if self.params.temperature == 0.0 {
            return argmax(logits);
        }
        let t = self.params.temperature as f64;
        // Candidates sorted by logit, descending; top-k keeps only the first k.
        self.cand.clear();
        self.cand.extend(
            logits
                .iter()
                .enumerate()
                .map(|(i, &l)| (l as f64 / t, i as u32)),
        );
        let by_logit = |a: &(f64, u32), b: &(f64, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
        let k = self.params.top_k.unwrap_or(usize::MAX).min(self.cand.len());
        if k < self.cand.len() {
            self.cand.select_nth_unstable_by(k - 1, by_logit);
            self.cand.truncate(k);
        }
        self.cand.sort_unstable_by(by_logit);
        // Softmax over the candidates.
        let max = self.cand[0].0;
        let mut probs_sum = 0.0f64;
        for c in self.cand.iter_mut() {
            let p = (c.0 - max).exp();
            probs_sum += p;
            c.0 = p;
        }
        let mut keep = self.cand.len();
        if let Some(top_p) = self.params.top_p {
            let mut cum = 0.0;
            for (i, c) in self.cand.iter().enumerate() {
                cum += c.0 / probs_sum;
                if cum >= top_p as f64 {
                    keep = i + 1;
                    break;
                }
            }
        }
        if let Some(min_p) = self.params.min_p {
            let threshold = self.cand[0].0 * min_p as f64;
            keep = keep.min(
                self.cand
                    .iter()
                    .take_while(|c| c.0 >= threshold)
                    .count()
                    .max(1),
            );
        }
        let total: f64 = self.cand[..keep].iter().map(|c| c.0).sum();
        let mut u = self.uniform() * total;
        for c in &self.cand[..keep] {
            u -= c.0;
            if u < 0.0 {
                return c.1;
            }
        }
        self.cand[keep - 1].1
    }
}

/// Index of the largest logit (the first one on ties); NaN never wins.
pub fn argmax(logits: &[f32]) -> u32 {
    // The largest value first, in 16 independent lanes (vectorized: a scalar compare-and-
    // branch loop is a visible share of a decode step over a 150k-entry vocabulary), then
    // its first position. NaNs never win a comparison, as in the loop below.
    let mut lanes = [f32::NEG_INFINITY; 16];
    let chunks = logits.chunks_exact(16);
    let tail = chunks.remainder();
    for c in chunks {
        for (m, &x) in lanes.iter_mut().zip(c) {
            *m = if x > *m { x } else { *m };
        }
    }
    let max = lanes
        .iter()
        .chain(tail)
        .fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m });
    if max > f32::NEG_INFINITY {
        if let Some(i) = logits.iter().position(|&x| x == max) {
            return i as u32;
        }
    }
    // All -inf or NaN: the first non-NaN, else the last.
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] || logits[best].is_nan() {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampler(p: SamplingParams) -> Sampler {
        Sampler::new(SamplingParams { seed: Some(1), ..p })
    }

    #[test]
    fn argmax_is_the_first_largest_and_skips_nans() {
        let slow = |l: &[f32]| {
            let mut best = 0;
            for (i, &x) in l.iter().enumerate() {
                if x > l[best] || l[best].is_nan() {
                    best = i;
                }
            }
            best as u32
        };
        let (nan, inf) = (f32::NAN, f32::INFINITY);
        let mut cases: Vec<Vec<f32>> = vec![
            vec![1.0],
            vec![nan],
            vec![nan, nan, nan],
            vec![-inf, -inf],
            vec![nan, -inf, nan],
            vec![nan, 2.0, 5.0, 5.0, nan],
            vec![-inf, inf, inf],
        ];
        let mut x = 12345u32;
        for n in [15, 16, 17, 40, 333] {
            let v: Vec<f32> = (0..n)
                .map(|_| {
                    x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    match x >> 28 {
                        0 => nan,
                        1 => 7.0,
                        _ => (x >> 8) as f32 / 1e6,
                    }
                })
                .collect();
            cases.push(v);
        }
        for c in &cases {
            assert_eq!(argmax(c), slow(c), "{c:?}");
        }
    }

    #[test]
    fn greedy_top_k_top_p_min_p() {
        let logits = [1.0f32, 3.0, 2.0, 0.5];
        let mut s = sampler(SamplingParams {
            temperature: 0.0,
            ..Default::default()
        });
        assert_eq!(s.sample(&mut logits.clone(), &[]), 1);
        let mut s = sampler(SamplingParams {
            top_k: Some(1),
            ..Default::default()
        });
        for _ in 0..20 {
            assert_eq!(s.sample(&mut logits.clone(), &[]), 1);
        }
        let mut s = sampler(SamplingParams {
            top_k: Some(2),
            ..Default::default()
        });
        for _ in 0..50 {
            assert!([1, 2].contains(&s.sample(&mut logits.clone(), &[])));
        }
        // p(1) = 0.64, so top_p = 0.5 keeps only token 1.
        let mut s = sampler(SamplingParams {
            top_p: Some(0.5),
            ..Default::default()
        });
        for _ in 0..20 {
            assert_eq!(s.sample(&mut logits.clone(), &[]), 1);
        }
        // min_p 0.5 keeps tokens with p >= 0.5 * p_max: tokens 1 and 2 (e^-1 = 0.37 < 0.5? no: 0.37).
        let mut s = sampler(SamplingParams {
            min_p: Some(0.3),
            ..Default::default()
        });
        for _ in 0..50 {
            assert!([1, 2].contains(&s.sample(&mut logits.clone(), &[])));
        }
    }

    #[test]
    fn repetition_penalty_and_seed() {
        let mut l = [2.0f32, -1.0, 1.9];
        let mut s = sampler(SamplingParams {
            temperature: 0.0,
            repetition_penalty: Some(2.0),
            ..Default::default()
        });
        assert_eq!(s.sample(&mut l, &[0, 1]), 2);
        assert_eq!(l, [1.0, -2.0, 1.9]);
        let draw = |seed| {
            let mut s = Sampler::new(SamplingParams {
                seed: Some(seed),
                ..Default::default()
            });
            (0..30)
                .map(|_| s.sample(&mut [0.1f32, 0.2, 0.3, 0.4], &[]))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }

    #[test]
    fn subnormal_temperatures_are_greedy_within_top_k() {
        // 1 / T overflows f32 for these (f32 subnormals); in f64 they are just very sharp.
        for t in [1e-39f32, 1e-44, 1e-45, f32::MIN_POSITIVE] {
            for top_k in [None, Some(2)] {
                let mut s = sampler(SamplingParams {
                    temperature: t,
                    top_k,
                    ..Default::default()
                });
                for _ in 0..20 {
                    let mut l = [0.5f32, 3.0, -1.0, 2.9, 1e30, -1e30];
                    l[4] = 2.0; // large but finite logits too: below
                    assert_eq!(s.sample(&mut l, &[]), 1, "T={t:e} top_k={top_k:?}");
                    let mut big = [1e30f32, -1e30, 3e30];
                    assert_eq!(s.sample(&mut big, &[]), 2, "T={t:e}");
                }
            }
        }
    }

    #[test]
    fn repetition_penalty_once_per_distinct_token() {
        // Hugging Face's RepetitionPenaltyLogitsProcessor: logit / p if >= 0, logit * p if < 0,
        // once per distinct id of the history, however often it occurs.
        let mut s = sampler(SamplingParams {
            temperature: 0.0,
            repetition_penalty: Some(2.0),
            ..Default::default()
        });
        let mut l = [4.0f32, -1.0, 3.0, 0.0];
        s.sample(&mut l, &[0, 0, 0, 1, 1, 3]);
        assert_eq!(l, [2.0, -2.0, 3.0, 0.0]);
    }

    #[test]
    fn sampling_frequencies_follow_the_distribution() {
        let mut s = sampler(SamplingParams::default());
        let mut counts = [0usize; 3];
        let logits = [0.0f32, (2.0f32).ln(), (7.0f32).ln()]; // probabilities 0.1, 0.2, 0.7
        for _ in 0..20000 {
            counts[s.sample(&mut logits.clone(), &[]) as usize] += 1;
        }
        let f: Vec<f64> = counts.iter().map(|&c| c as f64 / 20000.0).collect();
        assert!(
            (f[0] - 0.1).abs() < 0.015 && (f[1] - 0.2).abs() < 0.015 && (f[2] - 0.7).abs() < 0.015,
            "{f:?}"
        );
    }
}
