//! Continuous batching: one model, many requests that join and leave the batch at every step.
//!
//! A worker thread owns the running sequences. Each step it gives waiting prompts their prefill
//! in chunks (at most `prefill_chunk` tokens a step, so running streams keep flowing while a
//! long prompt is read), then runs one forward over every decoding sequence together, samples
//! each with its own sampler, and sends the new text to its request. A finished or cancelled
//! request leaves at once and its KV cache is freed.
//!
//! Results do not depend on what else is running: a prefill chunk runs on its own (chunk
//! boundaries depend only on the prompt), and a decode step over several sequences goes through
//! the models' batch-invariant path, so each row is computed as it would be alone.
//!
//! Bounded: at most `max_batch` sequences run and `max_queue` wait; `submit` past that is
//! `Error::Busy`. The KV caches of running sequences together stay under `max_kv_bytes`: a
//! request waits for room, and one that could never fit is refused at `submit`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{check_prompt, SamplingParams, Sequence, StopCriteria};
use crate::backend::BackendKind;
use crate::error::{Error, Result};
use crate::models::{CausalLm, KvCache, Logits, SeqInput, Workspace};
use crate::tokenizer::Tokenizer;

/// Limits of an engine.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Sequences decoded together at most.
    pub max_batch: usize,
    /// Requests waiting for a place at most; `submit` beyond it is `Error::Busy`.
    pub max_queue: usize,
    /// Prompt tokens prefilled per step at most (shared by the waiting prompts).
    pub prefill_chunk: usize,
    /// Bytes the running sequences' KV caches may take together.
    pub max_kv_bytes: u128,
}

impl EngineConfig {
    pub fn validate(&self) -> Result<()> {
        let bad =
            |what: &str, v: usize| Err(Error::Value(format!("{what} must be at least 1, got {v}")));
        if self.max_batch == 0 {
            return bad("max_batch", self.max_batch);
        }
        if self.prefill_chunk == 0 {
            return bad("prefill_chunk", self.prefill_chunk);
        }
        Ok(())
    }
}

/// One generation request.
#[derive(Clone, Debug)]
pub struct Request {
    pub prompt: Vec<u32>,
    pub params: SamplingParams,
    pub stop: StopCriteria,
}

/// Why a request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// A stop token or stop string.
    Stop,
    /// `max_new_tokens` reached.
    Length,
    /// `cancel()`, or the handle was dropped.
    Cancelled,
}

impl FinishReason {
    pub fn name(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Cancelled => "cancelled",
        }
    }
}

/// What a request's handle receives, in order: pieces, then one `Done` or `Failed`.
#[derive(Clone, Debug)]
pub enum Event {
    /// A new token (None when the sampled one was a stop token) and the text it completes
    /// (empty while a character or a possible stop string is held back).
    Piece {
        token: Option<u32>,
        text: String,
    },
    Done {
        reason: FinishReason,
        prompt_tokens: usize,
        completion_tokens: usize,
        /// Seconds from `submit` to the first generated token.
        time_to_first_token: f64,
    },
    Failed(String),
}

/// The engine's state, as `/metrics` reports it.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    pub running: usize,
    pub queued: usize,
    pub kv_bytes_in_use: u128,
    pub kv_bytes_limit: u128,
    pub requests_total: u64,
    pub prompt_tokens_total: u64,
    pub generated_tokens_total: u64,
    /// Generated tokens per second over the last few seconds of work.
    pub tokens_per_second: f64,
}

/// A submitted request: receive its events, or cancel it (dropping it cancels too).
pub struct Handle {
    pub id: u64,
    rx: Receiver<Event>,
    cancel: Arc<AtomicBool>,
    shared: Arc<Shared>,
}

impl Handle {
    /// The next event, waiting at most `timeout`; None on timeout. After the final event the
    /// stream is closed and this returns `Event::Failed`.
    pub fn next_timeout(&self, timeout: Duration) -> Option<Event> {
        match self.rx.recv_timeout(timeout) {
            Ok(e) => Some(e),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => {
                Some(Event::Failed("the request has already ended".into()))
            }
        }
    }

    /// Stops the request at the next step; its handle then receives `Done` with `Cancelled`.
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Release);
        self.shared.wake.notify_all();
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.cancel();
    }
}

/// A request waiting for a place, or running.
struct Job {
    request: Request,
    /// The KV cache it will hold while running.
    kv_bytes: u128,
    tx: Sender<Event>,
    cancel: Arc<AtomicBool>,
    submitted: Instant,
}

struct Running {
    job: Job,
    seq: Sequence,
    /// Prompt tokens already in the KV cache.
    prefilled: usize,
    first_token: Option<f64>,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Job>,
    running: usize,
    kv_in_use: u128,
    shutdown: bool,
    /// Stop admitting and let the running requests finish (a drain).
    draining: bool,
    metrics: Metrics,
    /// (time, generated tokens) samples for `tokens_per_second`.
    rate: VecDeque<(Instant, u64)>,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic in the worker is caught and reported; the state stays consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The continuous-batching engine of one model.
pub struct Engine {
    model: Arc<dyn CausalLm>,
    config: EngineConfig,
    shared: Arc<Shared>,
    next_id: AtomicU64,
    worker: Mutex<Option<JoinHandle<()>>>,
}

impl Engine {
    /// Starts the worker thread. `backend` runs every step; the thread pool is gpt_rs's.
    pub fn new(
        model: Arc<dyn CausalLm>,
        tokenizer: Option<Arc<Tokenizer>>,
        backend: BackendKind,
        config: EngineConfig,
    ) -> Result<Self> {
        config.validate()?;
        backend.get()?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                metrics: Metrics {
                    kv_bytes_limit: config.max_kv_bytes,
                    ..Metrics::default()
                },
                ..State::default()
            }),
            wake: Condvar::new(),
        });
        let worker = Worker {
            model: model.clone(),
            tokenizer,
            backend,
            config: config.clone(),
            shared: shared.clone(),
            running: Vec::new(),
            ws: Workspace::default(),
            next_prefill: 0,
        };
        let worker = std::thread::Builder::new()
            .name("gpt_rs engine".into())
            .spawn(move || worker.run())
            .map_err(|e| Error::Internal(format!("cannot start the engine thread: {e}")))?;
        Ok(Self {
            model,
            config,
            shared,
            next_id: AtomicU64::new(1),
            worker: Mutex::new(Some(worker)),
        })
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Queues `request`; it joins the batch at a coming step. Errors: an invalid request
    /// (`Error::Value`), a full queue or a draining engine (`Error::Busy`), a request whose KV
    /// cache alone exceeds `max_kv_bytes` (`Error::Memory`).
    pub fn submit(&self, request: Request) -> Result<Handle> {
        let info = self.model.info();
        check_prompt(
            info,
            &request.prompt,
            "the prompt",
            request.stop.max_new_tokens,
        )?;
        request.params.validate()?;
        if request.stop.stop_strings.iter().any(|s| s.is_empty()) {
            return Err(Error::Value("stop strings must not be empty".into()));
        }
        let kv = KvCache::bytes_for(info, request.prompt.len() + request.stop.max_new_tokens);
        if kv > self.config.max_kv_bytes {
            return Err(Error::Memory(format!(
                "the request's KV cache needs {} ({kv} bytes), more than the engine's limit of {}; \
                 lower max_new_tokens or shorten the prompt",
                crate::memory::human(kv),
                crate::memory::human(self.config.max_kv_bytes)
            )));
        }
        let (tx, rx) = mpsc::channel();
        let cancel = Arc::new(AtomicBool::new(false));
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        {
            let mut st = self.shared.lock();
            if st.shutdown || st.draining {
                return Err(Error::Busy("the engine is shutting down".into()));
            }
            if st.queue.len() >= self.config.max_queue {
                return Err(Error::Busy(format!(
                    "the engine's queue is full ({} requests waiting, {} running); retry later",
                    st.queue.len(),
                    st.running
                )));
            }
            st.queue.push_back(Job {
                request,
                kv_bytes: kv,
                tx,
                cancel: cancel.clone(),
                submitted: Instant::now(),
            });
            st.metrics.requests_total += 1;
        }
        self.shared.wake.notify_all();
        Ok(Handle {
            id,
            rx,
            cancel,
            shared: self.shared.clone(),
        })
    }

    pub fn metrics(&self) -> Metrics {
        let st = self.shared.lock();
        let mut m = st.metrics.clone();
        m.running = st.running;
        m.queued = st.queue.len();
        m.kv_bytes_in_use = st.kv_in_use;
        m.tokens_per_second = rate(&st.rate);
        m
    }

    /// Stops admitting requests, waits up to `grace` for the running and queued ones to
    /// finish, then cancels what is left and stops the worker.
    pub fn shutdown(&self, grace: Duration) {
        let deadline = Instant::now() + grace;
        {
            let mut st = self.shared.lock();
            st.draining = true;
            while (st.running > 0 || !st.queue.is_empty()) && Instant::now() < deadline {
                let left = deadline.saturating_duration_since(Instant::now());
                st = self
                    .shared
                    .wake
                    .wait_timeout(st, left.min(Duration::from_millis(50)))
                    .map(|(g, _)| g)
                    .unwrap_or_else(|p| p.into_inner().0);
            }
            st.shutdown = true;
        }
        self.shared.wake.notify_all();
        let worker = self.worker.lock().ok().and_then(|mut w| w.take());
        if let Some(w) = worker {
            let _ = w.join();
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shutdown(Duration::ZERO);
    }
}

/// Tokens per second over the samples' span.
fn rate(samples: &VecDeque<(Instant, u64)>) -> f64 {
    match (samples.front(), samples.back()) {
        (Some(&(t0, n0)), Some(&(t1, n1))) if t1 > t0 => (n1 - n0) as f64 / (t1 - t0).as_secs_f64(),
        _ => 0.0,
    }
}

struct Worker {
    model: Arc<dyn CausalLm>,
    tokenizer: Option<Arc<Tokenizer>>,
    backend: BackendKind,
    config: EngineConfig,
    shared: Arc<Shared>,
    running: Vec<Running>,
    ws: Workspace,
    /// Round-robin position among prefilling sequences.
    next_prefill: usize,
}

impl Worker {
    fn run(mut self) {
        loop {
            if !self.admit() {
                break;
            }
            let result = crate::threads::install(|| {
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.step()))
                    .unwrap_or_else(|_| {
                        Err(Error::Internal("a step of the engine panicked".into()))
                    })
            });
            if let Err(e) = result {
                // A failed step fails the requests in it and frees their places; the engine
                // keeps serving.
                let mut st = self.shared.lock();
                for r in self.running.drain(..) {
                    let _ = r.job.tx.send(Event::Failed(e.to_string()));
                    st.running -= 1;
                    st.kv_in_use -= r.job.kv_bytes;
                }
            }
            self.retire();
        }
        for r in self.running.drain(..) {
            let _ = r.job.tx.send(Event::Failed("the engine stopped".into()));
        }
        let mut st = self.shared.lock();
        for job in st.queue.drain(..) {
            let _ = job.tx.send(Event::Failed("the engine stopped".into()));
        }
        st.running = 0;
        st.kv_in_use = 0;
    }

    /// Moves queued requests into the batch while there is room; waits while there is no
    /// work. False when the engine is shutting down.
    fn admit(&mut self) -> bool {
        let mut st = self.shared.lock();
        loop {
            if st.shutdown {
                return false;
            }
            // Cancelled while waiting: answered without running.
            let (gone, kept): (Vec<Job>, Vec<Job>) = st
                .queue
                .drain(..)
                .partition(|j| j.cancel.load(Ordering::Acquire));
            st.queue.extend(kept);
            for job in gone {
                let _ = job.tx.send(done(&job, FinishReason::Cancelled, 0, None));
            }
            while self.running.len() < self.config.max_batch {
                let Some(kv) = st.queue.front().map(|j| j.kv_bytes) else {
                    break;
                };
                if st.kv_in_use + kv > self.config.max_kv_bytes {
                    break; // waits for a running request to free its cache
                }
                let job = st.queue.pop_front().expect("front exists");
                match Sequence::start(
                    &*self.model,
                    &job.request.prompt,
                    &job.request.params,
                    job.request.stop.max_new_tokens,
                ) {
                    Ok(seq) => {
                        st.kv_in_use += kv;
                        st.running += 1;
                        st.metrics.prompt_tokens_total += job.request.prompt.len() as u64;
                        self.running.push(Running {
                            job,
                            seq,
                            prefilled: 0,
                            first_token: None,
                        });
                    }
                    Err(e) => {
                        let _ = job.tx.send(Event::Failed(e.to_string()));
                    }
                }
            }
            if !self.running.is_empty() {
                return true;
            }
            st = self.shared.wake.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Prefill chunks for waiting prompts, then one decode step for the others.
    fn step(&mut self) -> Result<()> {
        let be = self.backend.get()?;
        let v = self.model.info().vocab_size;
        // Prefill: round-robin over the sequences still reading their prompt, each chunk on
        // its own, within this step's token budget.
        let mut budget = self.config.prefill_chunk;
        let n = self.running.len();
        for k in 0..n {
            if budget == 0 {
                break;
            }
            let i = (self.next_prefill + k) % n;
            let r = &mut self.running[i];
            if r.prefilled >= r.seq.prompt_len || r.seq.finished {
                continue;
            }
            let take = (r.seq.prompt_len - r.prefilled).min(self.config.prefill_chunk);
            let take = take.min(budget);
            budget -= take;
            let chunk = &r.seq.tokens[r.prefilled..r.prefilled + take];
            self.model.forward(
                be,
                &mut [SeqInput {
                    tokens: chunk,
                    cache: &mut r.seq.cache,
                }],
                Logits::Last,
                &mut self.ws,
            )?;
            r.prefilled += take;
            if r.prefilled == r.seq.prompt_len {
                let logits = &mut self.ws.logits[..v];
                let next = r.seq.sampler.sample(logits, &r.seq.tokens);
                self.next_prefill = i + 1;
                push(&self.tokenizer, r, next)?;
            }
        }
        // Decode: every sequence past its prompt whose last token is not in its cache yet.
        let mut decoding = Vec::new();
        let mut inputs: Vec<SeqInput<'_>> = Vec::new();
        for (i, r) in self.running.iter_mut().enumerate() {
            let seq = &mut r.seq;
            if !seq.finished
                && r.prefilled == seq.prompt_len
                && seq.tokens.len() > seq.prompt_len
                && seq.cache.len == seq.tokens.len() - 1
            {
                decoding.push(i);
                inputs.push(seq.decode_input());
            }
        }
        if decoding.is_empty() {
            return Ok(());
        }
        self.model
            .forward(be, &mut inputs, Logits::Last, &mut self.ws)?;
        for (row, &i) in decoding.iter().enumerate() {
            let r = &mut self.running[i];
            let logits = &mut self.ws.logits[row * v..(row + 1) * v];
            let next = r.seq.sampler.sample(logits, &r.seq.tokens);
            push(&self.tokenizer, r, next)?;
        }
        Ok(())
    }

    /// Ends finished and cancelled requests, frees their caches, updates the metrics.
    fn retire(&mut self) {
        let mut st = self.shared.lock();
        let mut k = 0;
        while k < self.running.len() {
            let r = &self.running[k];
            let cancelled = r.job.cancel.load(Ordering::Acquire);
            if !(r.seq.finished || cancelled) {
                k += 1;
                continue;
            }
            let r = self.running.swap_remove(k);
            let reason = if !r.seq.finished {
                FinishReason::Cancelled
            } else if r.seq.hit_stop_string()
                || r.seq.new_tokens().len() < r.job.request.stop.max_new_tokens
            {
                FinishReason::Stop
            } else {
                FinishReason::Length
            };
            let _ = r.job.tx.send(done(
                &r.job,
                reason,
                r.seq.new_tokens().len(),
                r.first_token,
            ));
            st.running -= 1;
            st.kv_in_use -= r.job.kv_bytes;
            st.metrics.generated_tokens_total += r.seq.new_tokens().len() as u64;
        }
        // The rate counts tokens of finished requests plus those of running ones now.
        let now = Instant::now();
        let total = st.metrics.generated_tokens_total
            + self
                .running
                .iter()
                .map(|r| r.seq.new_tokens().len() as u64)
                .sum::<u64>();
        st.rate.push_back((now, total));
        while st
            .rate
            .front()
            .is_some_and(|&(t, _)| now.duration_since(t) > Duration::from_secs(5))
        {
            st.rate.pop_front();
        }
        drop(st);
        // A drain waiting in `shutdown` re-checks; cancelled handles were woken already.
        self.shared.wake.notify_all();
    }
}

/// Pushes a sampled token into `r`'s sequence and sends what it completed.
fn push(tokenizer: &Option<Arc<Tokenizer>>, r: &mut Running, next: u32) -> Result<()> {
    if r.first_token.is_none() {
        r.first_token = Some(r.job.submitted.elapsed().as_secs_f64());
    }
    let before = r.seq.tokens.len();
    let tok = tokenizer.as_deref();
    r.seq.push(next, &r.job.request.stop, tok, tok.is_some())?;
    let token = (r.seq.tokens.len() > before).then_some(next);
    let text = if tok.is_some() {
        r.seq.take_text(&r.job.request.stop)
    } else {
        String::new()
    };
    if token.is_some() || !text.is_empty() {
        // A dropped handle is noticed by its cancel flag; nothing to do here.
        let _ = r.job.tx.send(Event::Piece { token, text });
    }
    Ok(())
}

fn done(job: &Job, reason: FinishReason, completion: usize, ttft: Option<f64>) -> Event {
    Event::Done {
        reason,
        prompt_tokens: job.request.prompt.len(),
        completion_tokens: completion,
        time_to_first_token: ttft.unwrap_or_else(|| job.submitted.elapsed().as_secs_f64()),
    }
}
