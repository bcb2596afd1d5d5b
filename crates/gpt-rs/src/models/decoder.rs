//! The steps every Llama-shaped family takes in the same way (Llama, Mistral, Qwen, Gemma):
//! the embedding lookup, the rotary angles of each row, RMSNorm of each head, self-attention of
//! every sequence against its cache, the output head. Families call them from their forward,
//! which keeps what differs (norm placement, activations, scales) in the family's own file.

use super::attention::{attend, AttnSpec, QkvLayout};
use super::weights::Checkpoint;
use super::{grow, select_rows, Linear, LoadDtype, Logits, SeqInput, Workspace};
use crate::backend::{Backend, Panels};
use crate::error::Result;

/// Rows of the embedding table for every new token of `seqs`, times `scale`.   // (R, C)
pub fn embed(table: &Panels, seqs: &[SeqInput<'_>], x: &mut [f32], c: usize, scale: f32) {
    let mut r = 0;
    for s in seqs {
        for &t in s.tokens {
            let row = &mut x[r * c..(r + 1) * c];
            table.column(t as usize, row);
            if scale != 1.0 {
                row.iter_mut().for_each(|v| *v *= scale);
            }
            r += 1;
        }
    }
}

/// The cosines then the sines of every row's rotary angles `position * inv_freq[i]`, into
/// `out` (`2 * R * D/2`); positions continue each sequence's cache.
pub fn rope_angles(inv_freq: &[f32], seqs: &[SeqInput<'_>], out: &mut [f32]) {
    let half = inv_freq.len();
    let rows: usize = seqs.iter().map(|s| s.tokens.len()).sum();
    let (cos, sin) = out[..2 * rows * half].split_at_mut(rows * half);
    let mut r = 0;
    for s in seqs {
        for j in 0..s.tokens.len() {
            // Angles in f32, as Hugging Face computes them: positions times inv_freq.
            let pos = (s.cache.len + j) as f32;
            for (i, &f) in inv_freq.iter().enumerate() {
                let a = pos * f;
                cos[r * half + i] = a.cos();
                sin[r * half + i] = a.sin();
            }
            r += 1;
        }
    }
}

/// RMSNorm (weight `(D)`, `x * (offset + w)`) of `heads` heads at `offset` in every row of `x`
/// (rows `stride` apart): the per-head q/k norm of Qwen3 and Gemma 3.
#[allow(clippy::too_many_arguments)]
pub fn norm_heads(
    be: &dyn Backend,
    x: &mut [f32],
    rows: usize,
    stride: usize,
    offset: usize,
    heads: usize,
    w: &[f32],
    eps: f32,
    w_offset: f32,
    tmp: &mut Vec<f32>,
) -> Result<()> {
    let n = heads * w.len();
    let t = grow(tmp, n)?;
    for r in 0..rows {
        let seg = &mut x[r * stride + offset..r * stride + offset + n];
        t.copy_from_slice(seg);
        be.rms_norm(t, w, seg, eps, w_offset);
    }
    Ok(())
}

/// Layer `l`'s attention for every sequence: its rows of `ws.qkv` (q, k, v heads side by side,
/// `(H + 2 Hk) D` a row) append k and v to its cache and attend; output in `ws.att` (`(R, H D)`).
pub fn self_attention(
    be: &dyn Backend,
    spec: &AttnSpec,
    seqs: &mut [SeqInput<'_>],
    l: usize,
    ws: &mut Workspace,
) -> Result<()> {
    let (h, hk, d) = (spec.n_head, spec.n_kv_head, spec.head_dim);
    let qkv_w = (h + 2 * hk) * d;
    let rows: usize = seqs.iter().map(|s| s.tokens.len()).sum();
    let att = grow(&mut ws.att, rows * h * d)?;
    let mut r0 = 0;
    for s in seqs.iter_mut() {
        let (n, start, cap) = (s.tokens.len(), s.cache.len, s.cache.capacity());
        let (kc, vc) = s.cache.layer_mut(l);
        attend(
            be,
            spec,
            &ws.qkv[r0 * qkv_w..(r0 + n) * qkv_w],
            QkvLayout {
                stride: qkv_w,
                q: 0,
                k: h * d,
                v: (h + hk) * d,
            },
            n,
            start,
            (kc, vc, cap),
            &mut ws.q,
            &mut ws.o,
            &mut att[r0 * h * d..(r0 + n) * h * d],
        )?;
        r0 += n;
    }
    Ok(())
}

/// The final norm and output head: `ws.logits = rms_norm(x[rows wanted]) @ head`, `(S|R, V)`;
/// then each cache counts its new positions.
#[allow(clippy::too_many_arguments)]
pub fn output_logits(
    be: &dyn Backend,
    seqs: &mut [SeqInput<'_>],
    which: Logits,
    ws: &mut Workspace,
    norm: &[f32],
    norm_offset: f32,
    eps: f32,
    head: &Panels,
) -> Result<()> {
    let c = norm.len();
    let m = select_rows(&ws.x, &mut ws.sel, seqs, which, c)?;
    let hbuf = grow(&mut ws.h, m * c)?;
    be.rms_norm(&ws.sel[..m * c], norm, hbuf, eps, norm_offset);
    let logits = grow(&mut ws.logits, m * head.n())?;
    super::linear::apply(
        be,
        head,
        None,
        &ws.h[..m * c],
        logits,
        m,
        which == Logits::Last,
    );
    for s in seqs.iter_mut() {
        s.cache.len += s.tokens.len();
    }
    Ok(())
}

/// One prepared linear layer of layer `prefix` from the checkpoint projections `parts`
/// (`(name, out_features)`, stacked in order: q/k/v or gate/up), each `k` inputs wide.
pub fn load_linear(
    ck: &Checkpoint,
    prefix: &str,
    parts: &[(&str, usize)],
    k: usize,
    bias: bool,
    dtype: LoadDtype,
) -> Result<Linear> {
    let names: Vec<(String, usize)> = parts
        .iter()
        .map(|(s, o)| (format!("{prefix}{s}"), *o))
        .collect();
    let refs: Vec<(&str, usize)> = names.iter().map(|(s, o)| (s.as_str(), *o)).collect();
    ck.linear(&refs, k, bias, dtype)
}

/// The key prefix of a decoder checkpoint (`model.` as `*ForCausalLM` saves it, or none as a
/// bare `*Model` does), after checking that it holds no layer past `n_layer`.
pub fn key_prefix(ck: &Checkpoint, n_layer: usize) -> Result<&'static str> {
    let p = if ck.contains("model.embed_tokens.weight") {
        "model."
    } else {
        ""
    };
    if ck.contains(&format!("{p}layers.{n_layer}.input_layernorm.weight")) {
        return Err(crate::error::Error::Value(format!(
            "{}: has weights for layer {n_layer} but config.json says num_hidden_layers = {n_layer}",
            ck.label(),
        )));
    }
    Ok(p)
}
