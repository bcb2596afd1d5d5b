//! Text generation: sampling controls and the decode loop over one or many sequences.

pub mod engine;
mod sampler;

pub use engine::{Engine, EngineConfig, Event, FinishReason, Handle, Metrics, Request};
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

    /// The input of a decode step: the last token, not yet in the cache, and the cache.
    pub(crate) fn decode_input(&mut self) -> SeqInput<'_> {
        SeqInput {
            tokens: &self.tokens[self.tokens.len() - 1..],
            cache: &mut self.cache,
        }
    }

    /// A sequence for `prompt` (checked by `check_prompt`), with a KV cache for the prompt
    /// and `max_new_tokens` more.
    pub(crate) fn start(
        model: &dyn CausalLm,
        prompt: &[u32],
        params: &SamplingParams,
        max_new_tokens: usize,
    ) -> Result<Self> {
        let mut tokens = memory::with_capacity(prompt.len() + max_new_tokens, "tokens")?;
        tokens.extend_from_slice(prompt);
        Ok(Sequence {
            tokens,
            prompt_len: prompt.len(),
            text: String::new(),
            finished: max_new_tokens == 0,
            cache: model.new_cache(prompt.len() + max_new_tokens)?,
            sampler: Sampler::new(params.clone()),
            stream: TextStream::default(),
            emitted: 0,
            cut: None,
        })
    }

    /// Marks the sequence finished. Its text becomes the full decoding of the new tokens:
    /// the streaming decoder holds back bytes that do not (yet) form a character, and at the
    /// end they must come out exactly as a one-shot `decode` shows them.
    fn finish(&mut self, tok: Option<&Tokenizer>, keep_text: bool) -> Result<()> {
        self.finished = true;
        if keep_text && self.cut.is_none() {
            if let Some(tok) = tok {
                self.text = tok.decode_generated(&self.tokens[self.prompt_len..])?;
            }
        }
        Ok(())
    }

    /// Appends the sampled `next` (or finishes at a stop token, a stop string or the token
    /// limit), decoding its text when `keep_text`.
    pub(crate) fn push(
        &mut self,
        next: u32,
        stop: &StopCriteria,
        tok: Option<&Tokenizer>,
        keep_text: bool,
    ) -> Result<()> {
        if stop.stop_token_ids.contains(&next) {
            return self.finish(tok, keep_text);
        }
        self.tokens.push(next);
        if keep_text {
            let tok = tok.ok_or_else(|| Error::Value("decoding text needs a tokenizer".into()))?;
            if let Some(piece) = self.stream.step(tok, next)? {
                self.text.push_str(&piece);
                // Only the tail that the new piece could complete needs searching.
                let longest = stop.stop_strings.iter().map(|s| s.len()).max().unwrap_or(0);
                let from = self.text.len().saturating_sub(piece.len() + longest);
                let from = (0..=from)
                    .rev()
                    .find(|&k| self.text.is_char_boundary(k))
                    .unwrap_or(0);
                if let Some(at) = stop
                    .stop_strings
                    .iter()
                    .filter_map(|s| self.text[from..].find(s.as_str()).map(|p| from + p))
                    .min()
                {
                    self.cut = Some(at);
                    self.text.truncate(at);
                    self.finished = true;
                    return Ok(());
                }
            }
        }
        if self.tokens.len() - self.prompt_len >= stop.max_new_tokens {
            return self.finish(tok, keep_text);
        }
        Ok(())
    }

    /// Text not yet handed out, holding back what could still turn out to be the start of a
    /// stop string (all of it once the sequence is finished).
    pub(crate) fn take_text(&mut self, stop: &StopCriteria) -> String {
        let hold = if self.finished {
            0
        } else {
            stop.stop_strings
                .iter()
                .map(|s| s.len().saturating_sub(1))
                .max()
                .unwrap_or(0)
        };
        let mut end = self.text.len().saturating_sub(hold).max(self.emitted);
        while !self.text.is_char_boundary(end) {
            end -= 1;
        }
        let out = self.text[self.emitted..end].to_string();
        self.emitted = end;
        out
    }

    /// Whether it stopped at a stop string.
    pub fn hit_stop_string(&self) -> bool {
        self.cut.is_some()
    }
}

/// Checks a prompt (`what` names it in errors): not empty, ids in the vocabulary, and room
/// in the context for it and `max_new_tokens` more.
pub(crate) fn check_prompt(
    cfg: &ModelInfo,
    p: &[u32],
    what: &str,
    max_new_tokens: usize,
) -> Result<()> {
    if p.is_empty() {
        return Err(Error::Value(format!(
            "{what} is empty: generation needs at least one token"
        )));
    }
    if let Some(pos) = p.iter().position(|&t| t as usize >= cfg.vocab_size) {
        return Err(Error::Value(format!(
            "token id {} at position {pos} of {what} is out of range for a vocabulary of {}",
            p[pos], cfg.vocab_size
        )));
    }
    if p.len() > cfg.context {
        return Err(Error::Value(format!(
            "{what} has {} tokens, longer than the model's context of {} positions",
            p.len(),
            cfg.context
        )));
    }
    if p.len() + max_new_tokens > cfg.context {
        return Err(Error::Value(format!(
            "{what} ({} tokens) + max_new_tokens ({max_new_tokens}) exceeds the model's context of {} positions; \
             lower max_new_tokens to at most {}",
            p.len(),
            cfg.context,
            cfg.context - p.len()
        )));
    }
    Ok(())
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
            check_prompt(cfg, p, &format!("prompt {i}"), stop.max_new_tokens)?;
        }
        check_cache_memory(cfg, prompts, stop.max_new_tokens)?;
        let mut seqs = memory::with_capacity(prompts.len(), "the sequences")?;
        for p in prompts {
            seqs.push(Sequence::start(&*model, p, params, stop.max_new_tokens)?);
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
            // The unfinished sequences, in order: the rows of `active`.
            let mut inputs: Vec<SeqInput<'_>> = self
                .seqs
                .iter_mut()
                .filter(|s| !s.finished)
                .map(Sequence::decode_input)
                .collect();
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

    fn push(&mut self, i: usize, next: u32) -> Result<()> {
        let tok = self.tokenizer.as_deref();
        self.seqs[i].push(next, &self.stop, tok, self.keep_text)
    }

    /// Runs to completion; `on_step` is called after every step (e.g. to check for Ctrl-C)
    /// and can stop generation by returning an error.
    pub fn run(&mut self, be: &dyn Backend, on_step: &mut dyn FnMut() -> Result<()>) -> Result<()> {
        while self.step(be)? {
            on_step()?;
        }
        Ok(())
    }

    /// Text of sequence `i` not yet handed out (`Sequence::take_text`).
    pub fn take_text(&mut self, i: usize) -> String {
        self.seqs[i].take_text(&self.stop)
    }

    /// Whether sequence `i` stopped at a stop string.
    pub fn hit_stop_string(&self, i: usize) -> bool {
        self.seqs[i].hit_stop_string()
    }
}
