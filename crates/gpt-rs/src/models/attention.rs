//! Causal self-attention of one sequence's new rows against its KV cache, for every family:
//! grouped-query attention (each key/value head serves `n_head / n_kv_head` query heads, read
//! in place, never copied per query head), any attention scale, an optional sliding window.
//! Built on `Backend::attention`, so every backend runs it.

use super::grow;
use crate::backend::Backend;
use crate::error::Result;

/// The attention of one layer.
#[derive(Clone, Copy, Debug)]
pub struct AttnSpec {
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
    /// Scores are `q . k * scale` (`1 / sqrt(head_dim)` unless the family says otherwise).
    pub scale: f32,
    /// A query at position `i` sees keys `i - window < j <= i` (all earlier keys if None).
    pub window: Option<usize>,
}

/// Where one step's q, k and v sit in the projection rows: row `j` of `qkv` (stride `stride`)
/// holds query heads at `q`, key heads at `k`, value heads at `v` (offsets in floats).
#[derive(Clone, Copy)]
pub struct QkvLayout {
    pub stride: usize,
    pub q: usize,
    pub k: usize,
    pub v: usize,
}

/// Appends the `n` new rows' keys and values to the layer's cache (`kc`/`vc`, each
/// `(n_kv_head, cap, head_dim)`, holding `start` positions), then writes the attention output
/// of the `n` rows to `out` (`(n, n_head * head_dim)`). `qbuf`/`obuf` are scratch.
#[allow(clippy::too_many_arguments)]
pub fn attend(
    be: &dyn Backend,
    s: &AttnSpec,
    qkv: &[f32],
    lay: QkvLayout,
    n: usize,
    start: usize,
    (kc, vc, cap): (&mut [f32], &mut [f32], usize),
    qbuf: &mut Vec<f32>,
    obuf: &mut Vec<f32>,
    out: &mut [f32],
) -> Result<()> {
    let (h, hk, d) = (s.n_head, s.n_kv_head, s.head_dim);
    let g = h / hk;
    for j in 0..n {
        let row = &qkv[j * lay.stride..];
        for kh in 0..hk {
            let dst = (kh * cap + start + j) * d;
            kc[dst..dst + d].copy_from_slice(&row[lay.k + kh * d..lay.k + (kh + 1) * d]);
            vc[dst..dst + d].copy_from_slice(&row[lay.v + kh * d..lay.v + (kh + 1) * d]);
        }
    }
    // The kernels scale scores by 1/sqrt(d): another scale is folded into q.
    let mult = s.scale * (d as f32).sqrt();
    let gather = |q: &mut [f32], rows: std::ops::Range<usize>| {
        let t = rows.len();
        for (jj, j) in rows.enumerate() {
            let row = &qkv[j * lay.stride + lay.q..];
            for hh in 0..h {
                let dst = &mut q[(hh * t + jj) * d..(hh * t + jj + 1) * d];
                dst.copy_from_slice(&row[hh * d..(hh + 1) * d]);
                if mult != 1.0 {
                    dst.iter_mut().for_each(|x| *x *= mult);
                }
            }
        }
    };
    let scatter = |o: &[f32], out: &mut [f32], rows: std::ops::Range<usize>| {
        let t = rows.len();
        for (jj, j) in rows.enumerate() {
            for hh in 0..h {
                out[(j * h + hh) * d..(j * h + hh + 1) * d]
                    .copy_from_slice(&o[(hh * t + jj) * d..(hh * t + jj + 1) * d]);
            }
        }
    };
    // Rows from `split` on have more earlier keys than the window: each attends on its own to
    // the window's keys; the rows before it attend together to everything before them.
    let split = match s.window {
        Some(w) if start + n > w => w.saturating_sub(start).min(n),
        _ => n,
    };
    let heads = |q: &[f32], o: &mut [f32], t: usize, lo: usize, tk: usize, causal: bool| {
        if g == 1 {
            // One call over all heads, each reading its own cache block in place.
            be.attention(
                q,
                &kc[lo * d..],
                &vc[lo * d..],
                o,
                h,
                t,
                tk,
                d,
                cap * d,
                causal,
            );
        } else {
            // Grouped: each key/value head serves its g query heads (kv stride 0).
            for kh in 0..hk {
                let (qs, kvs) = (kh * g * t * d..(kh + 1) * g * t * d, (kh * cap + lo) * d);
                be.attention(
                    &q[qs.clone()],
                    &kc[kvs..],
                    &vc[kvs..],
                    &mut o[qs],
                    g,
                    t,
                    tk,
                    d,
                    0,
                    causal,
                );
            }
        }
    };
    if split > 0 {
        let q = grow(qbuf, h * split * d)?;
        gather(q, 0..split);
        let o = grow(obuf, h * split * d)?;
        heads(&qbuf[..h * split * d], o, split, 0, start + split, true);
        scatter(&obuf[..h * split * d], out, 0..split);
    }
    if let Some(w) = s.window {
        for j in split..n {
            let lo = start + j + 1 - w;
            let q = grow(qbuf, h * d)?;
            gather(q, j..j + 1);
            let o = grow(obuf, h * d)?;
            heads(&qbuf[..h * d], o, 1, lo, w, false);
            scatter(&obuf[..h * d], out, j..j + 1);
        }
    }
    Ok(())
}
