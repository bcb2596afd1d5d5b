"""f16 and bf16 tensors: bit-exact round trips through NumPy and DLPack, conversions that
match NumPy's and ml_dtypes' rounding, and every functional op and layer computing in f32 and
returning the input's dtype (or raising the documented TypeError)."""

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gpt_rs
from gpt_rs import Tensor, nn
from gpt_rs import functional as F

BF16 = np.dtype(ml_dtypes.bfloat16)
HALF = {"f16": np.dtype(np.float16), "bf16": BF16}
ALL_BITS = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)


@pytest.mark.parametrize("name", ["f16", "bf16"])
@pytest.mark.parametrize("copy", [True, False])
def test_every_bit_pattern_round_trips_through_numpy(name, copy):
    a = ALL_BITS.view(HALF[name])  # every value: NaN payloads, infinities, subnormals, -0
    t = Tensor.from_numpy(a, copy=copy)
    assert t.dtype == name and t.shape == [1 << 16]
    out = t.numpy()
    assert out.dtype == HALF[name]
    np.testing.assert_array_equal(out.view(np.uint16), ALL_BITS)
    assert np.shares_memory(out, a) == (not copy)


@pytest.mark.parametrize("name", ["f16", "bf16"])
def test_shared_memory_both_ways(name):
    a = np.zeros((3, 4), HALF[name])
    t = Tensor.from_numpy(a, copy=False)
    a[1, 2] = 1.5
    assert float(t.numpy()[1, 2]) == 1.5
    t.numpy()[0, 0] = -2.0
    assert float(a[0, 0]) == -2.0


@pytest.mark.parametrize("name", ["f16", "bf16"])
def test_strided_and_byteswapped_arrays_are_copied_exactly(name):
    base = ALL_BITS.view(HALF[name]).reshape(256, 256)
    for a in (base[::3, ::-2], base.T, np.asfortranarray(base)):
        np.testing.assert_array_equal(
            Tensor.from_numpy(a).numpy().view(np.uint16), a.view(np.uint16)
        )
    with pytest.raises(ValueError, match="C-contiguous"):
        Tensor.from_numpy(base[:, ::2], copy=False)
    if name == "f16":
        swapped = base.astype(base.dtype.newbyteorder(">"))
        np.testing.assert_array_equal(
            Tensor.from_numpy(swapped).numpy().view(np.uint16), base.view(np.uint16)
        )


@pytest.mark.parametrize("name", ["f16", "bf16"])
def test_dlpack_round_trip_is_exact_and_shares_memory(name):
    a = ALL_BITS.view(HALF[name]).reshape(16, 4096).copy()
    t = Tensor.from_numpy(a, copy=False)
    back = gpt_rs.from_dlpack(t)
    assert back.dtype == name
    np.testing.assert_array_equal(back.numpy().view(np.uint16), a.view(np.uint16))
    if name == "f16":  # NumPy speaks DLPack for float16 (it has no bfloat16 in DLPack)
        view = np.from_dlpack(t)
        assert view.dtype == np.float16 and np.shares_memory(view, a)
        imported = gpt_rs.from_dlpack(a[:, ::2])  # strided: gathered by the binding
        np.testing.assert_array_equal(imported.numpy().view(np.uint16), a[:, ::2].view(np.uint16))


def test_bf16_tensors_convert_to_ml_dtypes_arrays():
    t = Tensor.from_numpy(np.ones(3, np.float32)).to("bf16")
    assert t.numpy().dtype == BF16 and np.asarray(t).dtype == BF16
    assert t.tolist() == [1.0, 1.0, 1.0]
    assert "dtype=bf16" in repr(t)


@pytest.mark.parametrize("name", ["f16", "bf16"])
def test_to_rounds_like_numpy_and_ml_dtypes(name):
    rng = np.random.default_rng(0)
    x = np.concatenate(  # values past f16's range overflow to inf in both
        [
            rng.standard_normal(5000).astype(np.float32) * 10.0 ** rng.integers(-8, 6, 5000),
            np.array([0.0, -0.0, np.inf, -np.inf, 65504.0, 65520.0, 1e-8, 3.4e38], np.float32),
        ]
    ).astype(np.float32)
    got = Tensor.from_numpy(x).to(name).numpy()
    with np.errstate(over="ignore"):
        want = x.astype(HALF[name])
    np.testing.assert_array_equal(got.view(np.uint16), want.view(np.uint16))
    # Widening is exact, and the aliases all name the same types.
    np.testing.assert_array_equal(
        Tensor.from_numpy(want).to("f32").numpy(), want.astype(np.float32)
    )
    for alias in ({"f16": "float16", "bf16": "bfloat16"}[name], HALF[name]):
        assert Tensor.from_numpy(x).astype(alias).dtype == name


def test_to_i32_truncates_and_refuses_what_has_no_int():
    t = Tensor.from_numpy(np.array([1.9, -1.9, 2.5, 1e9], np.float32))
    assert t.to("i32").tolist() == [1, -1, 2, 1000000000]
    for bad in (np.nan, np.inf, 3e9):
        with pytest.raises(ValueError, match="int32"):
            Tensor.from_numpy(np.array([0.0, bad], np.float32)).to(np.int32)
    with pytest.raises(ValueError, match="unknown dtype 'f8'"):
        t.to("f8")
    with pytest.raises(TypeError, match="dtype"):
        t.to(object())


def _cast(a, name):
    return a.astype(np.float32).astype(HALF[name])


def _reference(fn, arrays, name):
    """The op on the f32 values of the 16-bit inputs, rounded to the 16-bit type."""
    out = fn(*[Tensor.from_numpy(a.astype(np.float32)) for a in arrays]).numpy()
    with np.errstate(over="ignore"):  # an f32 result past f16's range rounds to inf, as ours
        return out.astype(HALF[name])


OPS = {
    "softmax_last_dim": (F.softmax_last_dim, [(3, 7)]),
    "gelu": (F.gelu, [(4, 5)]),
    "gelu_tanh": (F.gelu_tanh, [(4, 5)]),
    "layer_norm": (F.layer_norm, [(3, 8), (8,), (8,)]),
    "matmul": (F.matmul, [(3, 6), (6, 5)]),
    "batched matmul": (F.matmul, [(2, 3, 6), (2, 6, 5)]),
    "add_bias": (F.add_bias, [(3, 5), (5,)]),
    "linear": (F.linear, [(2, 3, 6), (6, 4), (4,)]),
    "sdpa": (F.scaled_dot_product_attention, [(1, 2, 5, 4), (1, 2, 5, 4), (1, 2, 5, 4)]),
    "+": (lambda a, b: a + b, [(3, 4), (4,)]),
    "-": (lambda a, b: a - b, [(3, 4), (3, 1)]),
    "*": (lambda a, b: a * b, [(3, 4), (3, 4)]),
    "/": (lambda a, b: a / b, [(3, 4), (3, 4)]),
    "@": (lambda a, b: a @ b, [(3, 4), (4, 2)]),
    "neg": (lambda a: -a, [(3, 4)]),
    "T": (lambda a: a.T, [(3, 4)]),
    "transpose": (lambda a: a.transpose(0, 1), [(2, 3, 4)]),
    "reshape": (lambda a: a.reshape(4, 3), [(3, 4)]),
}


@pytest.mark.parametrize("backend", gpt_rs.list_backends())
@pytest.mark.parametrize("name", ["f16", "bf16"])
@pytest.mark.parametrize("op", OPS)
def test_ops_compute_in_f32_and_return_the_input_dtype(backend, name, op):
    gpt_rs.set_backend(backend)
    fn, shapes = OPS[op]
    rng = np.random.default_rng(len(op))
    arrays = [_cast(rng.standard_normal(s) + (2.0 if op == "/" else 0.0), name) for s in shapes]
    out = fn(*[Tensor.from_numpy(a) for a in arrays])
    assert out.dtype == name
    got = out.numpy()
    np.testing.assert_array_equal(got.view(np.uint16), _reference(fn, arrays, name).view(np.uint16))


@pytest.mark.parametrize("name", ["f16", "bf16"])
def test_promotion_follows_numpy_and_torch(name):
    h = Tensor.from_numpy(np.ones((2, 3), HALF[name]))
    f = Tensor.from_numpy(np.ones((2, 3), np.float32))
    assert (h + f).dtype == "f32"  # a full-size float operand wins
    assert (h * 2.0).dtype == name and (3 - h).dtype == name  # Python scalars do not decide
    other = "bf16" if name == "f16" else "f16"
    assert (h + h.to(other)).dtype == "f32"  # two different 16-bit types meet in f32
    assert (h + Tensor.from_numpy(np.ones(3, np.int32))).dtype == name


@pytest.mark.parametrize("name", ["f16", "bf16"])
def test_embedding_keeps_the_table_dtype_and_refuses_float_indices(name):
    table = _cast(np.random.default_rng(1).standard_normal((10, 4)), name)
    out = F.embedding_lookup(table, np.array([3, 0, 9], np.int32))
    assert out.dtype == name
    np.testing.assert_array_equal(out.numpy().view(np.uint16), table[[3, 0, 9]].view(np.uint16))
    with pytest.raises(TypeError, match=f"indices must be an i32 tensor, got {name}"):
        F.embedding_lookup(table, np.array([1, 2], HALF[name]))


@pytest.mark.parametrize("backend", gpt_rs.list_backends())
@pytest.mark.parametrize("name", ["f16", "bf16"])
def test_layers_accept_16_bit_weights_and_inputs(backend, name):
    gpt_rs.set_backend(backend)
    rng = np.random.default_rng(2)
    c = 8

    def w(*shape):
        return _cast(rng.standard_normal(shape) * 0.3, name)

    x = w(2, 5, c)
    ln = lambda: nn.LayerNorm(w(c), w(c))  # noqa: E731
    attn = lambda: nn.CausalSelfAttention(  # noqa: E731
        nn.Linear(w(c, 3 * c), w(3 * c)), nn.Linear(w(c, c), w(c)), n_head=2
    )
    layers = {
        "Linear": lambda: nn.Linear(w(c, 6), w(6)),
        "LayerNorm": ln,
        "FeedForward": lambda: nn.FeedForward(w(c, 16), w(16, c), w(16), w(c)),
        "CausalSelfAttention": attn,
        "TransformerBlock": lambda: nn.TransformerBlock(
            ln(), attn(), ln(), nn.FeedForward(w(c, 16), w(16, c))
        ),
    }
    for label, make in layers.items():
        layer = make()
        out = layer(x)
        assert out.dtype == name, label
        assert np.isfinite(out.numpy().astype(np.float32)).all(), label
    emb = nn.Embedding(w(10, c))
    assert emb(np.array([1, 2], np.int32)).dtype == name
    with pytest.raises(TypeError, match="float tensor"):
        nn.Linear(np.ones((3, 2), np.int32))


def test_layer_matches_f32_layer_within_16_bit_rounding():
    rng = np.random.default_rng(3)
    wt, b = (
        rng.standard_normal((8, 6)).astype(np.float32),
        rng.standard_normal(6).astype(np.float32),
    )
    x = rng.standard_normal((4, 8)).astype(np.float32)
    want = nn.Linear(wt, b)(x).numpy()
    got = nn.Linear(wt.astype(np.float16), b.astype(np.float16))(x.astype(np.float16)).numpy()
    np.testing.assert_allclose(got.astype(np.float32), want, rtol=2e-2, atol=2e-2)


@settings(max_examples=60, deadline=None)
@given(
    name=st.sampled_from(["f16", "bf16"]),
    shape=st.lists(st.integers(1, 5), min_size=1, max_size=4),
    scale=st.sampled_from([1e-3, 1.0, 300.0]),
    seed=st.integers(0, 2**32 - 1),
    op=st.sampled_from(["gelu", "gelu_tanh", "softmax_last_dim", "+", "*", "/"]),
)
def test_elementwise_ops_over_random_shapes_and_scales(name, shape, scale, seed, op):
    rng = np.random.default_rng(seed)
    fn = {
        "gelu": F.gelu,
        "gelu_tanh": F.gelu_tanh,
        "softmax_last_dim": F.softmax_last_dim,
        "+": lambda a, b: a + b,
        "*": lambda a, b: a * b,
        "/": lambda a, b: a / b,
    }[op]
    n_args = 2 if op in "+*/" else 1
    arrays = [_cast(rng.standard_normal(shape) * scale, name) for _ in range(n_args)]
    out = fn(*[Tensor.from_numpy(a) for a in arrays])
    assert out.dtype == name and out.shape == list(shape)
    want = _reference(fn, arrays, name)
    np.testing.assert_array_equal(out.numpy().view(np.uint16), want.view(np.uint16))
