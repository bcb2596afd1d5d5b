"""nn layers on every backend against the float64 NumPy references."""

import numpy as np
import pytest

import gpt_rs

import reference as ref
from conftest import T, assert_close

nn = gpt_rs.nn


def w(rng, *shape, scale=0.2):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def test_embedding(backend, rng):
    table = w(rng, 20, 8)
    emb = nn.Embedding(T(table))
    idx = np.array([3, 0, 19], np.int32)
    assert_close(emb.forward(T(idx)).numpy(), table[idx], rtol=0, atol=0, what="Embedding")
    assert_close(emb(idx).numpy(), table[idx], rtol=0, atol=0, what="Embedding(ndarray)")
    assert emb.weight.shape == [20, 8] and "num_embeddings=20" in repr(emb)


def test_linear(backend, rng):
    x, wt, b = w(rng, 5, 7, 16), w(rng, 16, 4), w(rng, 4)
    lin = nn.Linear(T(wt), T(b))
    assert lin.in_features == 16 and lin.out_features == 4
    assert_close(lin(T(x)).numpy(), ref.linear(x, wt, b), rtol=1e-4, atol=1e-5, what="Linear")
    assert_close(
        nn.Linear(T(wt)).forward(T(x)).numpy(),
        ref.linear(x, wt),
        rtol=1e-4,
        atol=1e-5,
        what="Linear(no bias)",
    )
    assert nn.Linear(T(wt), None).bias is None


def test_layer_norm(backend, rng):
    x, g, b = w(rng, 6, 32, scale=3), w(rng, 32), w(rng, 32)
    ln = nn.LayerNorm(T(g), T(b), eps=1e-5)
    assert_close(ln(T(x)).numpy(), ref.layer_norm(x, g, b), rtol=1e-4, atol=1e-4, what="LayerNorm")


@pytest.mark.parametrize("activation", ["gelu", "gelu_tanh"])
def test_feed_forward(backend, rng, activation):
    x, w1, b1, w2, b2 = w(rng, 9, 16), w(rng, 16, 64), w(rng, 64), w(rng, 64, 16), w(rng, 16)
    ffn = nn.FeedForward(T(w1), T(w2), b_in=T(b1), b_out=T(b2), activation=activation)
    act = ref.gelu if activation == "gelu" else ref.gelu_tanh
    assert_close(
        ffn(T(x)).numpy(),
        ref.linear(act(ref.linear(x, w1, b1)), w2, b2),
        rtol=1e-4,
        atol=1e-5,
        what="FeedForward",
    )
    assert_close(
        nn.FeedForward(T(w1), T(w2))(T(x)).numpy(),
        ref.linear(ref.gelu(ref.linear(x, w1)), w2),
        rtol=1e-4,
        atol=1e-5,
        what="FeedForward(no biases)",
    )


def gpt2_block_params(rng, c):
    return {
        "ln_1.weight": 1 + w(rng, c),
        "ln_1.bias": w(rng, c),
        "attn.c_attn.weight": w(rng, c, 3 * c),
        "attn.c_attn.bias": w(rng, 3 * c),
        "attn.c_proj.weight": w(rng, c, c),
        "attn.c_proj.bias": w(rng, c),
        "ln_2.weight": 1 + w(rng, c),
        "ln_2.bias": w(rng, c),
        "mlp.c_fc.weight": w(rng, c, 4 * c),
        "mlp.c_fc.bias": w(rng, 4 * c),
        "mlp.c_proj.weight": w(rng, 4 * c, c),
        "mlp.c_proj.bias": w(rng, c),
    }


def build_block(p, n_head):
    t = {k: T(v) for k, v in p.items()}
    attn = nn.CausalSelfAttention(
        nn.Linear(t["attn.c_attn.weight"], t["attn.c_attn.bias"]),
        nn.Linear(t["attn.c_proj.weight"], t["attn.c_proj.bias"]),
        n_head,
    )
    mlp = nn.FeedForward(
        t["mlp.c_fc.weight"],
        t["mlp.c_proj.weight"],
        t["mlp.c_fc.bias"],
        t["mlp.c_proj.bias"],
        activation="gelu_tanh",
    )
    return attn, nn.TransformerBlock(
        nn.LayerNorm(t["ln_1.weight"], t["ln_1.bias"]),
        attn,
        nn.LayerNorm(t["ln_2.weight"], t["ln_2.bias"]),
        mlp,
    )


@pytest.mark.parametrize("shape", [(7, 32), (2, 5, 32)])
def test_attention_and_transformer_block(backend, rng, shape):
    p = gpt2_block_params(rng, 32)
    attn, block = build_block(p, n_head=4)
    x = w(rng, *shape, scale=1.0)
    want_attn = ref.causal_self_attention(
        x,
        p["attn.c_attn.weight"],
        p["attn.c_attn.bias"],
        p["attn.c_proj.weight"],
        p["attn.c_proj.bias"],
        4,
    )
    assert_close(attn(T(x)).numpy(), want_attn, rtol=1e-4, atol=1e-5, what="CausalSelfAttention")
    assert_close(
        block(T(x)).numpy(),
        ref.transformer_block(x, p, 4),
        rtol=1e-4,
        atol=1e-4,
        what="TransformerBlock",
    )


def test_constructors_validate_weights(rng):
    with pytest.raises(ValueError, match="Linear: weight .* must be rank 2"):
        nn.Linear(T(w(rng, 3)))
    with pytest.raises(ValueError, match=r"bias must have shape \[4\]"):
        nn.Linear(T(w(rng, 3, 4)), T(w(rng, 5)))
    with pytest.raises(TypeError, match="f32"):
        nn.Embedding(T(np.zeros((3, 3), np.int32)))
    with pytest.raises(ValueError, match="same shape"):
        nn.LayerNorm(T(w(rng, 3)), T(w(rng, 4)))
    with pytest.raises(ValueError, match="w_out must be"):
        nn.FeedForward(T(w(rng, 4, 8)), T(w(rng, 9, 4)))
    with pytest.raises(ValueError, match="unknown activation"):
        nn.FeedForward(T(w(rng, 4, 8)), T(w(rng, 8, 4)), activation="relu")
    with pytest.raises(ValueError, match="n_head"):
        nn.CausalSelfAttention(nn.Linear(T(w(rng, 6, 18))), nn.Linear(T(w(rng, 6, 6))), 4)
    with pytest.raises(ValueError, match="input must be"):
        nn.CausalSelfAttention(nn.Linear(T(w(rng, 8, 24))), nn.Linear(T(w(rng, 8, 8))), 2)(
            T(w(rng, 3, 5))
        )
