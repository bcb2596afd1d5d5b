"""Neural-network layers: Embedding, Linear, LayerNorm, FeedForward and a GPT-2 block."""

import numpy as np

import gpt_rs

rng = np.random.default_rng(0)


def tensor(*shape, scale=0.1):
    return gpt_rs.Tensor.from_numpy((rng.standard_normal(shape) * scale).astype(np.float32))


vocab, n_embd, n_head, hidden = 50, 16, 4, 64

emb = gpt_rs.nn.Embedding(tensor(vocab, n_embd))
tokens = gpt_rs.Tensor.from_numpy(np.array([3, 14, 15, 9, 2], dtype=np.int32))
x = emb.forward(tokens)
print(emb, "->", x.shape)

linear = gpt_rs.nn.Linear(tensor(n_embd, 8), tensor(8))  # weight [in, out]
print(linear, "->", linear(x).shape)

ln = gpt_rs.nn.LayerNorm(
    gpt_rs.Tensor.from_numpy(np.ones(n_embd, np.float32)),
    gpt_rs.Tensor.from_numpy(np.zeros(n_embd, np.float32)),
    eps=1e-5,
)
print(ln, "-> row means ~0:", np.round(ln(x).numpy().mean(-1), 6))

ffn = gpt_rs.nn.FeedForward(
    tensor(n_embd, hidden), tensor(hidden, n_embd), b_in=tensor(hidden), b_out=tensor(n_embd)
)
print(ffn, "->", ffn(x).shape)

# A GPT-2 transformer block assembled from layers.
attn = gpt_rs.nn.CausalSelfAttention(
    gpt_rs.nn.Linear(tensor(n_embd, 3 * n_embd), tensor(3 * n_embd)),
    gpt_rs.nn.Linear(tensor(n_embd, n_embd), tensor(n_embd)),
    n_head,
)
block = gpt_rs.nn.TransformerBlock(
    ln,
    attn,
    ln,
    gpt_rs.nn.FeedForward(
        tensor(n_embd, hidden),
        tensor(hidden, n_embd),
        tensor(hidden),
        tensor(n_embd),
        activation="gelu_tanh",
    ),
)
y = block(x)
print(block, "->", y.shape)
