//! Backends: one trait of f32 kernels over contiguous row-major slices, and the registry.
//!
//! Shapes are validated by `ops` before a kernel is called; kernels may assume slice lengths
//! match the sizes they are given. Adding a backend is one new file plus one registry line.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::error::{Error, Result};

#[cfg(feature = "c-backend")]
pub mod c;
pub mod cpu;
pub mod decoder;
#[cfg(feature = "faer")]
pub mod faer;
pub mod panels;
pub mod portable;
pub mod quant;

pub use decoder::GateAct;
pub use panels::{Panels, QuantLayout, SourceDtype, WeightFormat, WeightSource, PANEL};

/// The kernels every backend provides. All buffers are row-major and contiguous.
pub trait Backend: Send + Sync {
    fn kind(&self) -> BackendKind;

    /// `c[m, n] = a[m, k] @ b[k, n] (+ bias[n])`.
    fn matmul(
        &self,
        a: &[f32],
        b: &[f32],
        bias: Option<&[f32]>,
        c: &mut [f32],
        m: usize,
        k: usize,
        n: usize,
    );

    /// `c[m, n] = a[m, k] @ b[n, k]^T (+ bias[n])`: the second operand stored row-major as
    /// `[n, k]` (PyTorch's `nn.Linear` layout, and a tied embedding table used as the output
    /// projection). For one to 15 rows, each row's result must not depend on how many rows
    /// share the call (batched decoding relies on it).
    fn matmul_nt(
        &self,
        a: &[f32],
        b: &[f32],
        bias: Option<&[f32]>,
        c: &mut [f32],
        m: usize,
        k: usize,
        n: usize,
    );

    /// `c[m, n] = a[m, k] @ W (+ bias[n])` with `W` (`[k, n]`) prepared as `Panels`: how a
    /// model's linear layers run. For one to 15 rows, each row's result must not depend on
    /// how many rows share the call (as for `matmul_nt`). The default multiplies panel by
    /// panel through `matmul`; `cpu` reads the panels in place.
    fn matmul_panels(&self, a: &[f32], w: &Panels, bias: Option<&[f32]>, c: &mut [f32], m: usize) {
        panels::matmul_by_panel(self, a, w, bias, c, m)
    }

    /// `c[m, n] += a[k, m]^T @ b[k, n]`: the weight gradient of a linear layer (`x^T @ dout`),
    /// accumulated. The default transposes `a` and calls `matmul`; `cpu` packs `a` directly.
    fn matmul_tn_acc(&self, a: &[f32], b: &[f32], c: &mut [f32], m: usize, k: usize, n: usize) {
        let mut at = vec![0.0f32; m * k];
        for (p, row) in a.chunks_exact(m.max(1)).enumerate().take(k) {
            for (i, &v) in row.iter().enumerate() {
                at[i * k + p] = v;
            }
        }
        let mut tmp = vec![0.0f32; m * n];
        self.matmul(&at, b, None, &mut tmp, m, k, n);
        for (ci, ti) in c.iter_mut().zip(&tmp) {
            *ci += ti;
        }
    }

    /// RMSNorm of each row of `weight.len()`: `x / sqrt(mean(x^2) + eps) * (offset + weight)`
    /// (`offset` 1 for Gemma), in f32.
    fn rms_norm(&self, x: &[f32], weight: &[f32], out: &mut [f32], eps: f32, offset: f32) {
        decoder::rms_norm(x, weight, out, eps, offset)
    }

    /// Rotary position embedding, in place: see `decoder::rope`.
    fn rope(
        &self,
        x: &mut [f32],
        stride: usize,
        offset: usize,
        heads: usize,
        d: usize,
        cos: &[f32],
        sin: &[f32],
        interleaved: bool,
    ) {
        decoder::rope(x, stride, offset, heads, d, cos, sin, interleaved)
    }

    /// A gated MLP's activation: `out = act(gate) * up` for rows `[gate | up]` of `2 * inter`.
    fn gated(&self, gu: &[f32], out: &mut [f32], inter: usize, act: GateAct) {
        decoder::gated(gu, out, inter, act)
    }

    /// Softmax over each row of length `cols`.
    fn softmax_rows(&self, x: &[f32], out: &mut [f32], cols: usize);

    /// Exact GELU: `0.5 x (1 + erf(x / sqrt 2))`.
    fn gelu(&self, x: &[f32], out: &mut [f32]);

    /// GPT-2's tanh GELU: `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`.
    fn gelu_tanh(&self, x: &[f32], out: &mut [f32]);

    /// Layer normalization of each row of length `cols` (biased variance, as PyTorch).
    fn layer_norm(
        &self,
        x: &[f32],
        weight: &[f32],
        bias: &[f32],
        out: &mut [f32],
        cols: usize,
        eps: f32,
    );

    /// `out[r, j] = x[r, j] + bias[j]` for rows of length `bias.len()`.
    fn add_bias(&self, x: &[f32], bias: &[f32], out: &mut [f32]);

    /// Scaled dot-product attention for `g` independent (batch, head) groups.
    /// `q`/`out` are `[g, tq, d]`; group `h` of `k`/`v` starts at `h * kv_stride` and holds
    /// `tk` rows of `d` (`kv_stride >= tk * d`, so a preallocated KV cache can be read in place).
    /// With `causal`, query `i` sees keys `j <= i + (tk - tq)` (bottom-right aligned, so a
    /// decode step with a KV cache sees every cached key).
    fn attention(
        &self,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        out: &mut [f32],
        g: usize,
        tq: usize,
        tk: usize,
        d: usize,
        kv_stride: usize,
        causal: bool,
    );
}

/// A raw pointer that parallel tasks writing disjoint elements of one buffer can share.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr(pub(crate) *mut f32);
// SAFETY: every user hands each task a disjoint set of elements (stated at each use).
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}
impl SendPtr {
    /// A method (not a field access) so closures capture the whole Send wrapper.
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}

/// Starts an `(m, n)` output from `bias` broadcast over its rows, or from zeros: the shared
/// first step of every backend's `matmul` / `matmul_nt`.
pub fn init_output(c: &mut [f32], bias: Option<&[f32]>, n: usize) {
    match bias {
        Some(bias) => c
            .chunks_exact_mut(n.max(1))
            .for_each(|row| row.copy_from_slice(bias)),
        None => c.fill(0.0),
    }
}

/// The backends gpt_rs knows, in `list_backends()` order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BackendKind {
    Cpu,
    CpuPortable,
    Faer,
    C,
}

impl BackendKind {
    pub const ALL: [BackendKind; 4] = [Self::Cpu, Self::CpuPortable, Self::Faer, Self::C];

    pub fn name(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::CpuPortable => "cpu-portable",
            Self::Faer => "faer",
            Self::C => "c",
        }
    }

    /// The cargo feature that compiles this backend in, if it has one.
    pub fn feature(self) -> Option<&'static str> {
        match self {
            Self::Faer => Some("faer"),
            Self::C => Some("c-backend"),
            _ => None,
        }
    }

    /// The backend's kernels, or an error naming the cargo feature if it was compiled out.
    pub fn get(self) -> Result<&'static dyn Backend> {
        match self {
            Self::Cpu => Ok(&cpu::Cpu),
            Self::CpuPortable => Ok(&portable::Portable),
            #[cfg(feature = "faer")]
            Self::Faer => Ok(&faer::Faer),
            #[cfg(feature = "c-backend")]
            Self::C => Ok(&c::CBackend),
            #[allow(unreachable_patterns)] // reachable only when a feature is off
            other => Err(Error::Backend(format!(
                "backend '{}' was compiled out; rebuild with the cargo feature '{}'",
                other.name(),
                other.feature().unwrap_or("?")
            ))),
        }
    }

    pub fn is_available(self) -> bool {
        self.get().is_ok()
    }

    /// Parses a backend name; unknown or unavailable names list the available ones.
    pub fn parse(name: &str) -> Result<BackendKind> {
        let available: Vec<&str> = available().iter().map(|b| b.name()).collect();
        match Self::ALL.iter().find(|b| b.name() == name) {
            Some(b) if b.is_available() => Ok(*b),
            Some(b) => Err(Error::Value(format!(
                "backend '{name}' is not available in this build (enable the cargo feature '{}'); available backends: {}",
                b.feature().unwrap_or("?"),
                available.join(", ")
            ))),
            None => Err(Error::Value(format!(
                "unknown backend '{name}'; available backends: {}",
                available.join(", ")
            ))),
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The compiled-in backends, in a stable order.
pub fn available() -> Vec<BackendKind> {
    BackendKind::ALL
        .into_iter()
        .filter(|b| b.is_available())
        .collect()
}

/// The default backend: the fastest one (`cpu`).
pub const DEFAULT: BackendKind = BackendKind::Cpu;

static CURRENT: AtomicUsize = AtomicUsize::new(0);

/// The process-wide current backend (what `gpt_rs.get_backend()` reports).
pub fn current() -> BackendKind {
    BackendKind::ALL[CURRENT.load(Ordering::Relaxed)]
}

/// Sets the process-wide current backend. Ops already running finish on their backend.
pub fn set_current(kind: BackendKind) -> Result<()> {
    kind.get()?;
    let idx = BackendKind::ALL
        .iter()
        .position(|b| *b == kind)
        .unwrap_or(0);
    CURRENT.store(idx, Ordering::Relaxed);
    Ok(())
}
