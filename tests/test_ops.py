"""Every functional op on every backend against float64 NumPy references.

Tolerances: elementwise f32 ops 1e-5 relative; reductions and matmul 1e-4 relative (atol
scaled to the magnitude of the terms summed).
"""

import numpy as np
import pytest

import gpt_rs

import reference as ref
from conftest import T, assert_close

F = gpt_rs.functional


@pytest.mark.parametrize("shape", [(1,), (7,), (2, 3), (12, 128, 128), (3, 4, 5, 6), (1, 1)])
def test_softmax(backend, rng, shape):
    x = rng.standard_normal(shape).astype(np.float32) * 5
    out = F.softmax_last_dim(T(x))
    assert out.backend == backend and out.shape == list(shape) and out.dtype == "f32"
    assert_close(out.numpy(), ref.softmax(x), rtol=1e-4, atol=1e-7, what="softmax")


@pytest.mark.parametrize("shape", [(5,), (128, 3072), (2, 3, 7)])
def test_gelu_and_gelu_tanh(backend, rng, shape):
    x = (rng.standard_normal(shape) * 4).astype(np.float32)
    assert_close(F.gelu(T(x)).numpy(), ref.gelu(x), rtol=1e-5, atol=1e-7, what="gelu")
    assert_close(
        F.gelu_tanh(T(x)).numpy(), ref.gelu_tanh(x), rtol=1e-5, atol=1e-7, what="gelu_tanh"
    )


def test_gelu_tails_and_special_values(backend):
    x = np.array(
        [-9.0, -6.0, -3.0, -1e-3, 0.0, 1e-3, 3.0, 6.0, 30.0, np.inf, -np.inf, np.nan],
        dtype=np.float32,
    )
    got = F.gelu(T(x)).numpy()
    finite = np.isfinite(x)
    assert_close(got[finite], ref.gelu(x[finite]), rtol=1e-5, atol=1e-30, what="gelu tails")
    assert got[-3] == np.inf and got[-2] in (0.0, -0.0) and np.isnan(got[-1])
    got = F.gelu_tanh(T(x)).numpy()
    assert_close(
        got[finite], ref.gelu_tanh(x[finite]), rtol=1e-5, atol=1e-30, what="gelu_tanh tails"
    )
    assert got[-3] == np.inf and got[-2] == 0.0 and np.isnan(got[-1])


@pytest.mark.parametrize("shape", [(128, 768), (3, 5), (2, 4, 16), (1, 1)])
def test_layer_norm(backend, rng, shape):
    x = (rng.standard_normal(shape) * 3 + 1).astype(np.float32)
    w = rng.standard_normal(shape[-1]).astype(np.float32)
    b = rng.standard_normal(shape[-1]).astype(np.float32)
    assert_close(
        F.layer_norm(T(x), T(w), T(b)).numpy(),
        ref.layer_norm(x, w, b),
        rtol=1e-4,
        atol=1e-4,
        what="layer_norm",
    )
    assert_close(
        F.layer_norm(T(x), T(w), T(b), eps=1e-2).numpy(),
        ref.layer_norm(x, w, b, 1e-2),
        rtol=1e-4,
        atol=1e-4,
        what="layer_norm eps",
    )


@pytest.mark.parametrize(
    "m,k,n",
    [
        (1, 768, 3072),
        (1, 3072, 768),
        (2, 3, 4),
        (5, 64, 1),
        (33, 65, 17),
        (128, 768, 768),
        (8, 8, 8),
        (100, 1, 100),
        (2, 21, 40_003),  # several column chunks of the decode path, with a ragged tail
    ],
)
def test_matmul_rank2(backend, rng, m, k, n):
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    out = F.matmul(T(a), T(b))
    assert out.shape == [m, n]
    assert_close(out.numpy(), ref.f64(a) @ b, rtol=1e-4, atol=1e-4 * np.sqrt(k), what="matmul")


def test_matmul_batched_and_broadcast(backend, rng):
    a = rng.standard_normal((3, 9, 20)).astype(np.float32)
    b = rng.standard_normal((3, 20, 7)).astype(np.float32)
    w = rng.standard_normal((20, 7)).astype(np.float32)
    assert_close(F.matmul(T(a), T(b)).numpy(), ref.f64(a) @ b, rtol=1e-4, atol=1e-4, what="bmm")
    assert_close(
        F.matmul(T(a), T(w)).numpy(), ref.f64(a) @ w, rtol=1e-4, atol=1e-4, what="[B,M,K]@[K,N]"
    )


def test_matmul_errors(backend):
    a, v = T(np.ones((2, 3), np.float32)), T(np.ones(3, np.float32))
    with pytest.raises(
        ValueError, match="matmul expects rank-2 or rank-3 tensors, got ranks 2 and 1"
    ):
        F.matmul(a, v)
    with pytest.raises(ValueError, match="inner dimensions do not match"):
        F.matmul(a, a)
    with pytest.raises(ValueError, match="batch dimensions"):
        F.matmul(T(np.ones((2, 3, 4), np.float32)), T(np.ones((3, 4, 5), np.float32)))
    with pytest.raises(TypeError, match="f32"):
        F.matmul(T(np.ones((2, 2), np.int32)), T(np.ones((2, 2), np.int32)))


def test_add_bias_and_linear(backend, rng):
    x = rng.standard_normal((4, 6, 10)).astype(np.float32)
    w = rng.standard_normal((10, 3)).astype(np.float32)
    b = rng.standard_normal(3).astype(np.float32)
    bx = rng.standard_normal(10).astype(np.float32)
    assert_close(
        F.add_bias(T(x), T(bx)).numpy(), ref.f64(x) + bx, rtol=1e-6, atol=0, what="add_bias"
    )
    assert_close(
        F.linear(T(x), T(w), T(b)).numpy(), ref.linear(x, w, b), rtol=1e-4, atol=1e-4, what="linear"
    )
    assert_close(
        F.linear(T(x), T(w)).numpy(), ref.linear(x, w), rtol=1e-4, atol=1e-4, what="linear no bias"
    )
    with pytest.raises(ValueError, match="bias must be rank 1"):
        F.add_bias(T(x), T(b))
    with pytest.raises(ValueError, match="last dimension must be 10"):
        F.linear(T(w), T(w), T(b))


def test_embedding_lookup(backend, rng):
    table = rng.standard_normal((11, 5)).astype(np.float32)
    for idx in ([0, 3, 10, 3], [[1], [2]], np.array([4], np.int64), np.array([7, 0], np.int32)):
        i = np.asarray(idx).reshape(-1)
        assert_close(
            F.embedding_lookup(T(table), T(np.asarray(idx))).numpy(),
            table[i],
            rtol=0,
            atol=0,
            what="embedding",
        )
    with pytest.raises(ValueError, match="index 11 at position 1 is out of range"):
        F.embedding_lookup(T(table), T(np.array([0, 11], np.int32)))
    with pytest.raises(ValueError, match="index -1"):
        F.embedding_lookup(T(table), T(np.array([-1], np.int32)))
    with pytest.raises(ValueError, match=r"\[T\] or \[T, 1\]"):
        F.embedding_lookup(T(table), T(np.zeros((2, 2), np.int32)))
    with pytest.raises(TypeError, match="i32"):
        F.embedding_lookup(T(table), T(np.zeros(2, np.float32)))


@pytest.mark.parametrize(
    "shape_q,shape_k,causal",
    [
        ((2, 4, 10, 8), (2, 4, 10, 8), True),
        ((12, 32, 64), (12, 32, 64), True),
        ((1, 2, 1, 16), (1, 2, 9, 16), True),  # one decode step against a cache of 9
        ((2, 3, 5, 8), (2, 3, 7, 8), False),
    ],
)
def test_attention(backend, rng, shape_q, shape_k, causal):
    q = rng.standard_normal(shape_q).astype(np.float32)
    k = rng.standard_normal(shape_k).astype(np.float32)
    v = rng.standard_normal(shape_k).astype(np.float32)
    out = F.scaled_dot_product_attention(T(q), T(k), T(v), causal=causal)
    assert_close(out.numpy(), ref.attention(q, k, v, causal), rtol=1e-4, atol=1e-5, what="sdpa")


def test_attention_errors(backend):
    q = T(np.ones((2, 5, 4), np.float32))
    with pytest.raises(ValueError, match="at least as many keys"):
        F.scaled_dot_product_attention(
            q, T(np.ones((2, 3, 4), np.float32)), T(np.ones((2, 3, 4), np.float32))
        )
    with pytest.raises(ValueError, match="rank 4"):
        F.scaled_dot_product_attention(T(np.ones((5, 4), np.float32)), q, q)


def test_validation_messages(backend):
    x = T(np.ones((2, 3), np.float32))
    with pytest.raises(ValueError, match=r"weight must have shape \[3\]"):
        F.layer_norm(x, T(np.ones(2, np.float32)), T(np.ones(3, np.float32)))
    with pytest.raises(ValueError, match="eps must be a positive"):
        F.layer_norm(x, T(np.ones(3, np.float32)), T(np.ones(3, np.float32)), eps=-1.0)
    with pytest.raises(TypeError, match="gelu: input must be a f32 tensor, got i32"):
        F.gelu(T(np.ones(3, np.int32)))
    with pytest.raises(TypeError, match="must be a gpt_rs.Tensor or a numpy array, got None"):
        F.gelu(None)


def test_functional_accepts_numpy(backend, rng):
    x = rng.standard_normal((3, 4)).astype(np.float32)
    assert_close(F.gelu(x).numpy(), ref.gelu(x), rtol=1e-5, atol=1e-7, what="gelu(ndarray)")


def test_backends_agree_exactly_enough():
    """All backends agree with each other on one GPT-2-sized linear layer."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((16, 768)).astype(np.float32)
    w = (rng.standard_normal((768, 768)) * 0.02).astype(np.float32)
    outs = {}
    for name in gpt_rs.list_backends():
        gpt_rs.set_backend(name)
        outs[name] = F.matmul(T(x), T(w)).numpy()
    gpt_rs.set_backend("cpu")
    for name, o in outs.items():
        assert_close(o, outs["cpu-portable"], rtol=1e-4, atol=1e-5, what=f"{name} vs portable")
