//! The kernels of Llama-shaped decoders beyond GPT-2's: RMSNorm, rotary embeddings and gated
//! MLP activations. Plain loops over rows, written so the compiler vectorizes them; they are
//! the `Backend` trait's defaults (every backend has them) and the `cpu` backend runs them
//! over its threads.

/// `out = x / sqrt(mean(x^2) + eps) * (offset + w)` per row of `w.len()`, in f32 (`offset` 0,
/// or 1 for Gemma's `x * (1 + w)`).
pub fn rms_norm(x: &[f32], w: &[f32], out: &mut [f32], eps: f32, offset: f32) {
    let cols = w.len();
    if cols == 0 {
        return;
    }
    for (xr, or) in x.chunks_exact(cols).zip(out.chunks_exact_mut(cols)) {
        // Sum of squares in f64: rows of thousands of values keep their precision.
        let ss: f64 = xr.iter().map(|&v| (v as f64) * (v as f64)).sum();
        let inv = 1.0 / ((ss / cols as f64) as f32 + eps).sqrt();
        for ((o, &v), &g) in or.iter_mut().zip(xr).zip(w) {
            *o = (v * inv) * (offset + g);
        }
    }
}

/// Rotates `heads` heads of `d` values, starting `offset` floats into each row of `x` (rows
/// `stride` apart), by the angles whose cosines and sines are row `r` of `cos`/`sin`
/// (`(rows, d / 2)`). `interleaved`: pairs are `(2i, 2i + 1)`; otherwise `(i, i + d/2)`
/// (the "rotate half" form of Hugging Face checkpoints).
#[allow(clippy::too_many_arguments)]
pub fn rope(
    x: &mut [f32],
    stride: usize,
    offset: usize,
    heads: usize,
    d: usize,
    cos: &[f32],
    sin: &[f32],
    interleaved: bool,
) {
    let half = d / 2;
    if half == 0 {
        return;
    }
    for (r, (c, s)) in cos
        .chunks_exact(half)
        .zip(sin.chunks_exact(half))
        .enumerate()
    {
        let row = &mut x[r * stride + offset..r * stride + offset + heads * d];
        for head in row.chunks_exact_mut(d) {
            if interleaved {
                for (i, pair) in head.chunks_exact_mut(2).enumerate() {
                    let (a, b) = (pair[0], pair[1]);
                    pair[0] = a * c[i] - b * s[i];
                    pair[1] = b * c[i] + a * s[i];
                }
            } else {
                let (lo, hi) = head.split_at_mut(half);
                for i in 0..half {
                    let (a, b) = (lo[i], hi[i]);
                    lo[i] = a * c[i] - b * s[i];
                    hi[i] = b * c[i] + a * s[i];
                }
            }
        }
    }
}

/// The activation of a gated MLP's gate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GateAct {
    /// `x * sigmoid(x)` (SwiGLU: Llama, Mistral, Qwen).
    Silu,
    /// The tanh GELU (GeGLU: Gemma).
    GeluTanh,
}

/// `out[r, i] = act(gu[r, i]) * gu[r, inter + i]` for rows of `2 * inter` (gate, then up).
pub fn gated(gu: &[f32], out: &mut [f32], inter: usize, act: GateAct) {
    if inter == 0 {
        return;
    }
    for (row, o) in gu.chunks_exact(2 * inter).zip(out.chunks_exact_mut(inter)) {
        let (g, u) = row.split_at(inter);
        match act {
            GateAct::Silu => {
                for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
                    *o = g / (1.0 + (-g).exp()) * u;
                }
            }
            GateAct::GeluTanh => {
                const C: f32 = 0.797_884_6; // sqrt(2 / pi)
                for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
                    *o = 0.5 * g * (1.0 + (C * (g + 0.044715 * g * g * g)).tanh()) * u;
                }
            }
        }
    }
}
