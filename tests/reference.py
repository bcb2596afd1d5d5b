"""Independent float64 NumPy references for every op and layer (no gpt_rs code)."""

from __future__ import annotations

import math

import numpy as np

_erfc = np.vectorize(math.erfc, otypes=[np.float64])


def f64(a):
    return np.asarray(a, dtype=np.float64)


def softmax(x):
    x = f64(x)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def gelu(x):
    x = f64(x)
    # 0.5 x (1 + erf(x/sqrt2)) == 0.5 x erfc(-x/sqrt2), the latter without cancellation.
    return 0.5 * x * _erfc(-x / math.sqrt(2.0))


def gelu_tanh(x):
    # 0.5 x (1 + tanh(u)) == x / (1 + exp(-2u)); the latter keeps its precision for x << 0.
    x = f64(x)
    u = math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)
    with np.errstate(over="ignore"):
        return x / (1.0 + np.exp(-2.0 * u))


def layer_norm(x, w, b, eps=1e-5):
    x = f64(x)
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * f64(w) + f64(b)


def attention(q, k, v, causal=True):
    q, k, v = f64(q), f64(k), f64(v)
    tq, tk, d = q.shape[-2], k.shape[-2], q.shape[-1]
    s = q @ np.swapaxes(k, -1, -2) / math.sqrt(d)
    if causal:
        i = np.arange(tq)[:, None]
        j = np.arange(tk)[None, :]
        s = np.where(j <= i + (tk - tq), s, -np.inf)
    return softmax(s) @ v


def linear(x, w, b=None):
    y = f64(x) @ f64(w)
    return y if b is None else y + f64(b)


def causal_self_attention(x, w_attn, b_attn, w_proj, b_proj, n_head):
    x = f64(x)
    squeeze = x.ndim == 2
    if squeeze:
        x = x[None]
    bsz, t, c = x.shape
    d = c // n_head
    qkv = linear(x, w_attn, b_attn)
    q, k, v = (
        qkv[..., i * c : (i + 1) * c].reshape(bsz, t, n_head, d).transpose(0, 2, 1, 3)
        for i in range(3)
    )
    y = attention(q, k, v, causal=True).transpose(0, 2, 1, 3).reshape(bsz, t, c)
    y = linear(y, w_proj, b_proj)
    return y[0] if squeeze else y


def transformer_block(x, p, n_head):
    """GPT-2 block; `p` holds ln_1, attn (c_attn, c_proj), ln_2, mlp (c_fc, c_proj) weights."""
    h = layer_norm(x, p["ln_1.weight"], p["ln_1.bias"])
    x = f64(x) + causal_self_attention(
        h,
        p["attn.c_attn.weight"],
        p["attn.c_attn.bias"],
        p["attn.c_proj.weight"],
        p["attn.c_proj.bias"],
        n_head,
    )
    h = layer_norm(x, p["ln_2.weight"], p["ln_2.bias"])
    m = gelu_tanh(linear(h, p["mlp.c_fc.weight"], p["mlp.c_fc.bias"]))
    return x + linear(m, p["mlp.c_proj.weight"], p["mlp.c_proj.bias"])


def gpt2_logits(p, ids, n_layer, n_head, eps=1e-5):
    """Float64 GPT-2 forward (tanh GELU, tied output projection): logits for every position."""
    ids = np.asarray(ids)
    x = f64(p["wte.weight"])[ids] + f64(p["wpe.weight"])[np.arange(len(ids))]
    for i in range(n_layer):
        blk = {k[len(f"h.{i}.") :]: v for k, v in p.items() if k.startswith(f"h.{i}.")}
        x = transformer_block(x, blk, n_head)
    x = layer_norm(x, p["ln_f.weight"], p["ln_f.bias"], eps)
    return x @ f64(p["wte.weight"]).T


def gpt2_greedy(p, ids, n_new, n_layer, n_head):
    """Greedy decoding by recomputing the full forward each step (no cache: independent)."""
    ids = list(ids)
    for _ in range(n_new):
        ids.append(int(np.argmax(gpt2_logits(p, ids, n_layer, n_head)[-1])))
    return ids
