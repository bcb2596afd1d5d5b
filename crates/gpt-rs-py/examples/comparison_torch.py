"""Compares every gpt_rs op and layer with PyTorch on every backend.

Needs PyTorch (``pip install torch --index-url https://download.pytorch.org/whl/cpu``).
Without it, prints how to install it and exits 0.
"""

import sys

import numpy as np

import gpt_rs

try:
    import torch
    import torch.nn.functional as TF
except ImportError:
    print(
        "PyTorch is not installed; install it to run this comparison:\n"
        "  pip install torch --index-url https://download.pytorch.org/whl/cpu"
    )
    sys.exit(0)

rng = np.random.default_rng(0)


def arr(*shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


x, w, b = arr(16, 64), arr(64, 32, scale=0.1), arr(32)
g, beta = arr(64), arr(64)
q, k, v = arr(2, 4, 10, 8), arr(2, 4, 10, 8), arr(2, 4, 10, 8)
table, idx = arr(100, 64), np.array([1, 5, 99, 0], dtype=np.int32)
a3, b3 = arr(3, 7, 11), arr(3, 11, 5)
w_in, w_out = arr(64, 128, scale=0.1), arr(128, 64, scale=0.1)
tt = torch.from_numpy
cases = {
    "softmax_last_dim": (lambda F, T: F.softmax_last_dim(T(x)), lambda: torch.softmax(tt(x), -1)),
    "gelu": (lambda F, T: F.gelu(T(x)), lambda: TF.gelu(tt(x))),
    "gelu_tanh": (lambda F, T: F.gelu_tanh(T(x)), lambda: TF.gelu(tt(x), approximate="tanh")),
    "layer_norm": (
        lambda F, T: F.layer_norm(T(x), T(g), T(beta)),
        lambda: TF.layer_norm(tt(x), (64,), tt(g), tt(beta), 1e-5),
    ),
    "matmul": (lambda F, T: F.matmul(T(x), T(w)), lambda: tt(x) @ tt(w)),
    "matmul (batched)": (lambda F, T: F.matmul(T(a3), T(b3)), lambda: tt(a3) @ tt(b3)),
    "add_bias": (lambda F, T: F.add_bias(T(x @ w), T(b)), lambda: tt(x @ w) + tt(b)),
    "linear": (lambda F, T: F.linear(T(x), T(w), T(b)), lambda: tt(x) @ tt(w) + tt(b)),
    "embedding_lookup": (
        lambda F, T: F.embedding_lookup(T(table), T(idx)),
        lambda: TF.embedding(tt(idx).long(), tt(table)),
    ),
    "sdpa (causal)": (
        lambda F, T: F.scaled_dot_product_attention(T(q), T(k), T(v), causal=True),
        lambda: TF.scaled_dot_product_attention(tt(q), tt(k), tt(v), is_causal=True),
    ),
    "nn.Linear": (lambda F, T: gpt_rs.nn.Linear(T(w), T(b))(T(x)), lambda: tt(x) @ tt(w) + tt(b)),
    "nn.LayerNorm": (
        lambda F, T: gpt_rs.nn.LayerNorm(T(g), T(beta))(T(x)),
        lambda: TF.layer_norm(tt(x), (64,), tt(g), tt(beta), 1e-5),
    ),
    "nn.FeedForward": (
        lambda F, T: gpt_rs.nn.FeedForward(T(w_in), T(w_out))(T(x)),
        lambda: TF.gelu(tt(x) @ tt(w_in)) @ tt(w_out),
    ),
    "nn.Embedding": (
        lambda F, T: gpt_rs.nn.Embedding(T(table))(T(idx)),
        lambda: TF.embedding(tt(idx).long(), tt(table)),
    ),
}

worst = 0.0
print(f"{'op':<20}" + "".join(f"{name:>14}" for name in gpt_rs.list_backends()))
for op, (ours, theirs) in cases.items():
    ref = theirs().numpy()
    row = f"{op:<20}"
    for name in gpt_rs.list_backends():
        gpt_rs.set_backend(name)
        got = ours(gpt_rs.functional, gpt_rs.Tensor.from_numpy).numpy()
        err = float(np.max(np.abs(got - ref)) / max(1.0, float(np.max(np.abs(ref)))))
        worst = max(worst, err)
        row += f"{err:>14.2e}"
    print(row)
gpt_rs.set_backend("cpu")
print(f"max relative error vs PyTorch: {worst:.2e}")
sys.exit(0 if worst < 1e-4 else 1)
