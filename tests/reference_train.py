"""Float64 NumPy reference for training GPT-2: every op's forward and hand-written backward,
the whole model's loss and gradients, and PyTorch's AdamW. Independent of gpt_rs; the tests
check it against central finite differences, then check gpt_rs against it."""

from __future__ import annotations

import math

import numpy as np

GELU_C = math.sqrt(2.0 / math.pi)


# ---- ops: forward returns (out, cache); backward returns input gradients ----------------------


def linear_fwd(x, w, b):
    return x @ w + b, x


def linear_bwd(dout, x, w):
    """-> dx, dw, db"""
    return dout @ w.T, x.T @ dout, dout.sum(axis=0)


def layer_norm_fwd(x, w, b, eps=1e-5):
    mean = x.mean(-1, keepdims=True)
    rstd = 1.0 / np.sqrt(x.var(-1, keepdims=True) + eps)
    xhat = (x - mean) * rstd
    return xhat * w + b, (xhat, rstd)


def layer_norm_bwd(dout, cache, w):
    xhat, rstd = cache
    dxhat = dout * w
    dx = rstd * (
        dxhat - dxhat.mean(-1, keepdims=True) - xhat * (dxhat * xhat).mean(-1, keepdims=True)
    )
    return dx, (dout * xhat).sum(axis=0), dout.sum(axis=0)


def gelu_fwd(x):
    return 0.5 * x * (1.0 + np.tanh(GELU_C * (x + 0.044715 * x**3)))


def gelu_bwd(dout, x):
    t = np.tanh(GELU_C * (x + 0.044715 * x**3))
    du = GELU_C * (1.0 + 3 * 0.044715 * x**2)
    return dout * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du)


def attention_fwd(qkv, b, t, h):
    """Causal multi-head attention over packed rows [q | k | v] -> (out [b*t, c], cache)."""
    c = qkv.shape[-1] // 3
    d = c // h
    q, k, v = (
        qkv[:, i * c : (i + 1) * c].reshape(b, t, h, d).transpose(0, 2, 1, 3) for i in range(3)
    )
    s = q @ k.transpose(0, 1, 3, 2) / math.sqrt(d)
    s = np.where(np.tril(np.ones((t, t), dtype=bool)), s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    y = (p @ v).transpose(0, 2, 1, 3).reshape(b * t, c)
    return y, (q, k, v, p)


def attention_bwd(dout, cache, b, t, h):
    q, k, v, p = cache
    c = dout.shape[-1]
    d = c // h
    dy = dout.reshape(b, t, h, d).transpose(0, 2, 1, 3)
    dp = dy @ v.transpose(0, 1, 3, 2)
    dv = p.transpose(0, 1, 3, 2) @ dy
    ds = p * (dp - (dp * p).sum(-1, keepdims=True)) / math.sqrt(d)
    dq = ds @ k
    dk = ds.transpose(0, 1, 3, 2) @ q
    merge = lambda g: g.transpose(0, 2, 1, 3).reshape(b * t, c)  # noqa: E731
    return np.concatenate([merge(dq), merge(dk), merge(dv)], axis=1)


def cross_entropy_fwd(logits, targets):
    """Mean of -log softmax(logits)[target] -> (loss, probs)."""
    m = logits.max(-1, keepdims=True)
    p = np.exp(logits - m)
    p /= p.sum(-1, keepdims=True)
    n = len(targets)
    return -np.log(p[np.arange(n), targets]).mean(), p


def cross_entropy_bwd(probs, targets):
    d = probs.copy()
    d[np.arange(len(targets)), targets] -= 1.0
    return d / len(targets)


# ---- the model -------------------------------------------------------------------------------


def gpt2_loss_and_grads(params, cfg, x, y, want_grads=True):
    """Mean next-token loss of GPT-2 (tied embeddings) on x/y [b, t], and d loss / d params."""
    P = {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}
    b, t = x.shape
    h, eps = cfg["n_head"], cfg.get("layer_norm_epsilon", 1e-5)
    xs, ys = x.reshape(-1), y.reshape(-1)
    res = P["wte.weight"][xs] + P["wpe.weight"][np.tile(np.arange(t), b)]
    caches = []
    for i in range(cfg["n_layer"]):
        g = lambda n, i=i: P[f"h.{i}.{n}"]  # noqa: E731
        ln1, c1 = layer_norm_fwd(res, g("ln_1.weight"), g("ln_1.bias"), eps)
        qkv, _ = linear_fwd(ln1, g("attn.c_attn.weight"), g("attn.c_attn.bias"))
        att, ca = attention_fwd(qkv, b, t, h)
        res2 = res + linear_fwd(att, g("attn.c_proj.weight"), g("attn.c_proj.bias"))[0]
        ln2, c2 = layer_norm_fwd(res2, g("ln_2.weight"), g("ln_2.bias"), eps)
        fc, _ = linear_fwd(ln2, g("mlp.c_fc.weight"), g("mlp.c_fc.bias"))
        act = gelu_fwd(fc)
        out = res2 + linear_fwd(act, g("mlp.c_proj.weight"), g("mlp.c_proj.bias"))[0]
        caches.append((res, ln1, c1, qkv, att, ca, res2, ln2, c2, fc, act))
        res = out
    lnf, cf = layer_norm_fwd(res, P["ln_f.weight"], P["ln_f.bias"], eps)
    logits = lnf @ P["wte.weight"].T
    loss, probs = cross_entropy_fwd(logits, ys)
    if not want_grads:
        return loss, None
    G = {k: np.zeros_like(v) for k, v in P.items()}
    dlogits = cross_entropy_bwd(probs, ys)
    dlnf = dlogits @ P["wte.weight"]
    G["wte.weight"] += dlogits.T @ lnf
    dres, G["ln_f.weight"], G["ln_f.bias"] = layer_norm_bwd(dlnf, cf, P["ln_f.weight"])
    for i in reversed(range(cfg["n_layer"])):
        g = lambda n, i=i: P[f"h.{i}.{n}"]  # noqa: E731
        res_in, ln1, c1, qkv, att, ca, res2, ln2, c2, fc, act = caches[i]
        pre = f"h.{i}."
        dact, G[pre + "mlp.c_proj.weight"], G[pre + "mlp.c_proj.bias"] = linear_bwd(
            dres, act, g("mlp.c_proj.weight")
        )
        dfc = gelu_bwd(dact, fc)
        dln2, G[pre + "mlp.c_fc.weight"], G[pre + "mlp.c_fc.bias"] = linear_bwd(
            dfc, ln2, g("mlp.c_fc.weight")
        )
        dx, G[pre + "ln_2.weight"], G[pre + "ln_2.bias"] = layer_norm_bwd(
            dln2, c2, g("ln_2.weight")
        )
        dres = dres + dx
        datt, G[pre + "attn.c_proj.weight"], G[pre + "attn.c_proj.bias"] = linear_bwd(
            dres, att, g("attn.c_proj.weight")
        )
        dqkv = attention_bwd(datt, ca, b, t, h)
        dln1, G[pre + "attn.c_attn.weight"], G[pre + "attn.c_attn.bias"] = linear_bwd(
            dqkv, ln1, g("attn.c_attn.weight")
        )
        dx, G[pre + "ln_1.weight"], G[pre + "ln_1.bias"] = layer_norm_bwd(
            dln1, c1, g("ln_1.weight")
        )
        dres = dres + dx
    np.add.at(G["wte.weight"], xs, dres)
    np.add.at(G["wpe.weight"], np.tile(np.arange(t), b), dres)
    return loss, G


# ---- optimization ----------------------------------------------------------------------------


def clip_grads(grads, max_norm):
    norm = math.sqrt(sum(float((g**2).sum()) for g in grads.values()))
    coef = max_norm / (norm + 1e-6)
    if coef < 1.0:
        for g in grads.values():
            g *= coef
    return norm


class AdamW:
    """torch.optim.AdamW (single-tensor form), decay only on 2-D tensors."""

    def __init__(self, params, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1):
        self.m = {k: np.zeros_like(v) for k, v in params.items()}
        self.v = {k: np.zeros_like(v) for k, v in params.items()}
        self.b1, self.b2, self.eps, self.wd, self.t = beta1, beta2, eps, weight_decay, 0

    def step(self, params, grads, lr):
        self.t += 1
        bc1 = 1 - self.b1**self.t
        bc2 = 1 - self.b2**self.t
        for k, p in params.items():
            g = grads[k]
            if p.ndim == 2:
                p *= 1 - lr * self.wd
            self.m[k] = self.b1 * self.m[k] + (1 - self.b1) * g
            self.v[k] = self.b2 * self.v[k] + (1 - self.b2) * g * g
            p -= (lr / bc1) * self.m[k] / (np.sqrt(self.v[k]) / math.sqrt(bc2) + self.eps)
