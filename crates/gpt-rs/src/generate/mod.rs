//! Text generation: sampling controls and the decode loop over one or many sequences.

mod sampler;

pub use sampler::{Sampler, SamplingParams};

use std::sync::Arc;

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::memory;
use crate::models::{CausalLm, KvCache, Logits, ModelInfo, SeqInput, Workspace};
use crate::tokenizer::{TextStream, Tokenizer};

/// What ends a sequence.
#[derive(Clone, Debug, Default)]
pub struct StopCriteria {
    pub max_new_tokens: usize,
    /// Token ids that end the sequence (not included in the output).
    pub stop_token_ids: Vec<u32>,
    /// Strings that end the sequence; the text is cut before the first one (needs a tokenizer).
    pub stop_strings: Vec<String>,
}

impl StopCriteria {
    /// The stop tokens a model ends generation at when the caller names none: its
    /// end-of-sequence ids (`generation_config.json`'s, else `config.json`'s), else the
    /// tokenizer's end-of-text token.
    pub fn default_stop_ids(info: &ModelInfo, tokenizer: Option<&Tokenizer>) -> Vec<u32> {
        if info.eos_token_ids.is_empty() {
            tokenizer
                .and_then(|t| t.eos_token_id())
                .into_iter()
                .collect()
        } else {
            info.eos_token_ids.clone()
        }
    }
}

/// Refuses, before anything is allocated, KV caches that together exceed this machine's
/// physical memory: the allocator would grant them lazily (overcommit) and the OOM killer
/// would end the process once generation touched them.
fn check_cache_memory(cfg: &ModelInfo, prompts: &[Vec<u32>], max_new_tokens: usize) -> Result<()> {
    let total: u128 = prompts
        .iter()
        .map(|p| KvCache::bytes_for(cfg, p.len() + max_new_tokens))
        .sum();
    match memory::physical_bytes() {
        Some(ram) if total > ram => Err(Error::Memory(format!(
            "generation: the KV caches of {} sequences need {} ({total} bytes), more than this \
             machine's {} of memory; generate fewer prompts at once or lower max_new_tokens",
            prompts.len(),
            memory::human(total),
            memory::human(ram)
        ))),
        _ => Ok(()),
    }
}

/// One sequence being generated.
pub struct Sequence {
    /// Prompt followed by the generated tokens.
    pub tokens: Vec<u32>,
    pub prompt_len: usize,
    /// Text decoded so far (only kept when stop strings or streaming need it).
    pub text: String,
    pub finished: bool,
    cache: KvCache,
    sampler: Sampler,
    stream: TextStream,
    /// Bytes of `text` already handed out by `take_text` (streaming).
    emitted: usize,
    /// Length of `text` up to a stop string, once one is found.
    cut: Option<usize>,
}

impl Sequence {
    pub fn new_tokens(&self) -> &[u32] {
        &self.tokens[self.prompt_len..]
    }
}

/// Generates continuations of several prompts together: one forward per step over all
/// unfinished sequences. Each sequence gets its own sampler seeded with the same seed, so
/// sequence `i` is exactly what generating prompt `i` alone would give.
pub struct Generator {
    model: Arc<dyn CausalLm>,
    tokenizer: Option<Arc<Tokenizer>>,
    pub seqs: Vec<Sequence>,
    stop: StopCriteria,
    ws: Workspace,
    started: bool,
    keep_text: bool,
}

impl Generator {
    /// Validates everything up front: ids, lengths, sampling parameters.
    pub fn new(
        model: Arc<dyn CausalLm>,
        tokenizer: Option<Arc<Tokenizer>>,
        prompts: &[Vec<u32>],
        params: &SamplingParams,
        stop: StopCriteria,
        keep_text: bool,
    ) -> Result<Self> {
        let info = model.info().clone();
        let cfg = &info;
        params.validate()?;
        if prompts.is_empty() {
            return Err(Error::Value("no prompts given".into()));
        }
        if !stop.stop_strings.is_empty() && tokenizer.is_none() {
            return Err(Error::Value("stop strings need a tokenizer".into()));
        }
        if stop.stop_strings.iter().any(|s| s.is_empty()) {
            return Err(Error::Value("stop strings must not be empty".into()));
        }
        for (i, p) in prompts.iter().enumerate() {
            if p.is_empty() {
                return Err(Error::Value(format!(
                    "prompt {i} is empty: generation needs at least one token"
                )));
            }
            if let Some(pos) = p.iter().position(|&t| t as usize >= cfg.vocab_size) {
                return Err(Error::Value(format!(
                    "token id {} at position {pos} of prompt {i} is out of range for a vocabulary of {}",
                    p[pos], cfg.vocab_size
                )));
            }
            if p.len() > cfg.context {
                return Err(Error::Value(format!(
                    "prompt {i} has {} tokens, longer than the model's context of {} positions",
                    p.len(),
                    cfg.context
                )));
            }
            if p.len() + stop.max_new_tokens > cfg.context {
                return Err(Error::Value(format!(
                    "prompt {i} ({} tokens) + max_new_tokens ({}) exceeds the model's context of {} positions; \
                     lower max_new_tokens to at most {}",
                    p.len(),
                    stop.max_new_tokens,
                    cfg.context,
                    cfg.context - p.len()
                )));
            }
        }
        check_cache_memory(cfg, prompts, stop.max_new_tokens)?;
        let mut seqs = memory::with_capacity(prompts.len(), "the sequences")?;
        for p in prompts {
            seqs.push(Sequence {
                tokens: {
                    let mut t = memory::with_capacity(p.len() + stop.max_new_tokens, "tokens")?;
                    t.extend_from_slice(p);
                    t
                },
                prompt_len: p.len(),
                text: String::new(),
                finished: stop.max_new_tokens == 0,
                cache: model.new_cache(p.len() + stop.max_new_tokens)?,
                sampler: Sampler::new(params.clone()),
                stream: TextStream::default(),
                emitted: 0,
                cut: None,
            });
        }
        let keep_text = keep_text || !stop.stop_strings.is_empty();
        Ok(Self {
            model,
            tokenizer,
            seqs,
            stop,
            ws: Workspace::default(),
            started: false,
            keep_text,
        })
    }

    pub fn is_done(&self) -> bool {
        self.seqs.iter().all(|s| s.finished)
    }

    /// One step: prefill (first call) or one new token for every unfinished sequence.
    /// Returns false when every sequence is finished.
    pub fn step(&mut self, be: &dyn Backend) -> Result<bool> {
        if self.is_done() {
            return Ok(false);
        }
        let model = self.model.clone();
        let active: Vec<usize> = (0..self.seqs.len())
            .filter(|&i| !self.seqs[i].finished)
            .collect();
        if !self.started {
            // Prefill each prompt on its own (prefill is compute-bound, so nothing is lost), so
            // that every sequence sees exactly the arithmetic of a one-by-one run.
            let v = model.info().vocab_size;
            let mut logits = memory::zeroed(active.len() * v, "the logits")?;
            for (row, &i) in active.iter().enumerate() {
                let seq = &mut self.seqs[i];
                model.forward(
                    be,
                    &mut [SeqInput {
                        tokens: &seq.tokens,
                        cache: &mut seq.cache,
                    }],
                    Logits::Last,
                    &mut self.ws,
                )?;
                logits[row * v..(row + 1) * v].copy_from_slice(&self.ws.logits[..v]);
            }
            self.ws.logits = logits;
        } else {
            let mut inputs: Vec<SeqInput<'_>> = Vec::with_capacity(active.len());
            let mut rest: &mut [Sequence] = &mut self.seqs;
            let mut offset = 0;
            for &i in &active {
                let (_, tail) = rest.split_at_mut(i - offset);
                let (seq, tail) = tail.split_first_mut().expect("active index in range");
                rest = tail;
                offset = i + 1;
                inputs.push(SeqInput {
                    tokens: &seq.tokens[seq.tokens.len() - 1..],
                    cache: &mut seq.cache,
                });
            }
            model.forward(be, &mut inputs, Logits::Last, &mut self.ws)?;
        }
        self.started = true;
        let v = model.info().vocab_size;
        for (row, &i) in active.iter().enumerate() {
            let logits = &mut self.ws.logits[row * v..(row + 1) * v];
            let seq = &mut self.seqs[i];
            let next = seq.sampler.sample(logits, &seq.tokens);
            self.push(i, next)?;
        }
        Ok(!self.is_done())
    }

    /// Marks sequence `i` finished. Its text becomes the full decoding of the new tokens:
    /// the streaming decoder holds back bytes that do not (yet) form a character, and at the
    /// end they must come out exactly as a one-shot `decode` shows them.
    fn finish(&mut self, i: usize) -> Result<()> {
        let seq = &mut self.seqs[i];
        seq.finished = true;
        if self.keep_text && seq.cut.is_none() {
            if let Some(tok) = self.tokenizer.as_deref() {
                seq.text = tok.decode_generated(&seq.tokens[seq.prompt_len..])?;
            }
        }
        Ok(())
    }

    fn push(&mut self, i: usize, next: u32) -> Result<()> {
        let seq = &mut self.seqs[i];
        if self.stop.stop_token_ids.contains(&next) {
            return self.finish(i);
        }
        seq.tokens.push(next);
        if self.keep_text {
            let tok = self
                .tokenizer
                .as_deref()
                .ok_or_else(|| Error::Value("decoding text needs a tokenizer".into()))?;
            if let Some(piece) = seq.stream.step(tok, next)? {
                seq.text.push_str(&piece);
                // Only the tail that the new piece could complete needs searching.
                let from = seq.text.len().saturating_sub(
                    piece.len()
                        + self
                            .stop
                            .stop_strings
                            .iter()
                            .map(|s| s.len())
                            .max()
                            .unwrap_or(0),
                );
                let from = (0..=from)
                    .rev()
                    .find(|&k| seq.text.is_char_boundary(k))
                    .unwrap_or(0);
                if let Some(at) = self
                    .stop
                    .stop_strings
                    .iter()
                    .filter_map(|s| seq.text[from..].find(s.as_str()).map(|p| from + p))
                    .min()
                {
                    seq.cut = Some(at);
                    seq.text.truncate(at);
                    seq.finished = true;
                    return Ok(());
                }
            }
        }
        if seq.tokens.len() - seq.prompt_len >= self.stop.max_new_tokens {
            return self.finish(i);
        }
        Ok(())
    }

    /// Runs to completion; `on_step` is called after every step (e.g. to check for Ctrl-C)
    /// and can stop generation by returning an error.
    pub fn run(&mut self, be: &dyn Backend, on_step: &mut dyn FnMut() -> Result<()>) -> Result<()> {
        while self.step(be)? {
            on_step()?;
        }
        Ok(())
    }

    /// Text of sequence `i` not yet handed out, holding back what could still turn out to be
    /// the start of a stop string (all of it once the sequence is finished).
    pub fn take_text(&mut self, i: usize) -> String {
        let hold = if self.seqs[i].finished {
            0
        } else {
            self.stop
                .stop_strings
                .iter()
                .map(|s| s.len().saturating_sub(1))
                .max()
                .unwrap_or(0)
        };
        let seq = &mut self.seqs[i];
        let mut end = seq.text.len().saturating_sub(hold).max(seq.emitted);
        while !seq.text.is_char_boundary(end) {
            end -= 1;
        }
        let out = seq.text[seq.emitted..end].to_string();
        seq.emitted = end;
        out
    }

    /// Whether sequence `i` stopped at a stop string.
    pub fn hit_stop_string(&self, i: usize) -> bool {
        self.seqs[i].cut.is_some()
    }
}
