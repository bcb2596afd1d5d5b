"""Bad input to every public function and layer: the right result, or ValueError / TypeError /
OverflowError with a message. Never a crash, an abort, a RuntimeError (an internal failure)
or silent garbage. Hypothesis draws the arguments; the number of cases run is printed.

The normal run draws 1000 examples per test (about 20,000 calls in all, GPT_RS_FUZZ_EXAMPLES
changes it); the long run, 20 times more, is behind the `slow` marker:
`pytest -m slow -s tests/test_bad_inputs.py`.
"""

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gpt_rs

F = gpt_rs.functional
nn = gpt_rs.nn
EXAMPLES = int(os.environ.get("GPT_RS_FUZZ_EXAMPLES", "1000"))
ALLOWED = (ValueError, TypeError, OverflowError)
COUNTS: dict[str, list[int]] = {}

DTYPES = [
    np.bool_,
    np.int8,
    np.uint8,
    np.int16,
    np.uint16,
    np.int32,
    np.uint32,
    np.int64,
    np.uint64,
    np.float16,
    np.float32,
    np.float64,
    np.complex64,
    object,
    "U3",
    "datetime64[s]",
]


@st.composite
def arrays(draw):
    dtype = draw(st.sampled_from(DTYPES))
    rank = draw(st.integers(0, 6))
    shape = tuple(draw(st.lists(st.integers(0, 4), min_size=rank, max_size=rank)))
    n = int(np.prod(shape))
    if dtype is object:
        a = np.asarray(np.array([None] * n, dtype=object).reshape(shape))
    elif dtype == "U3":
        a = np.full(shape, "abc")
    elif dtype == "datetime64[s]":
        a = np.zeros(shape, dtype="datetime64[s]")
    else:
        vals = draw(st.sampled_from(["small", "special", "huge"]))
        a = np.arange(n).reshape(shape) % 7 - 3
        a = (
            a.astype(dtype)
            if np.dtype(dtype).kind in "biu" or vals == "small"
            else a.astype(np.float64)
        )
        if np.dtype(dtype).kind in "fc" and vals == "special" and n:
            a.flat[0] = np.nan
            a.flat[-1] = np.inf
        if vals == "huge" and np.dtype(dtype).kind in "iu" and np.dtype(dtype).itemsize == 8 and n:
            a.flat[0] = np.iinfo(dtype).max
        a = a.astype(dtype)
    a = np.array(a, copy=False) if isinstance(a, np.ndarray) else np.asarray(a)  # not a scalar
    a = a.reshape(shape)
    layout = draw(st.sampled_from(["c", "f", "reversed", "strided", "readonly", "misaligned"]))
    if layout == "f":
        a = np.asfortranarray(a)
    elif layout == "reversed" and a.ndim:
        a = a[::-1]
    elif layout == "strided" and a.ndim:
        a = np.repeat(a, 2, axis=-1)[..., ::2]
    elif layout == "readonly":
        a = np.array(a)  # an array, even for rank 0
        a.flags.writeable = False
    elif layout == "misaligned" and a.dtype.kind in "fiu" and a.size:
        raw = np.zeros(a.nbytes + 1, np.uint8)[1:].view(a.dtype)[: a.size].reshape(a.shape)
        raw[...] = a
        a = raw
    return a


def args():
    """An argument: an array, a Tensor made from one (when it converts), or a wrong thing."""
    wrong = st.sampled_from([None, "text", 3, 2.5, [1.0, 2.0], [[1, 2], [3]], {"a": 1}, object()])

    def tensor_or_array(a):
        try:
            return gpt_rs.Tensor.from_numpy(a)
        except ALLOWED:
            return a

    return st.one_of(arrays(), arrays().map(tensor_or_array), wrong)


def check(name, fn, *a, **kw):
    """Calls fn; it must return or raise an allowed exception with a message."""
    c = COUNTS.setdefault(name, [0, 0])
    c[0] += 1
    try:
        out = fn(*a, **kw)
    except ALLOWED as e:
        c[1] += 1
        assert str(e), f"{name}: {type(e).__name__} without a message"
        return None
    return out


FUNCS_1 = {
    "softmax_last_dim": F.softmax_last_dim,
    "gelu": F.gelu,
    "gelu_tanh": F.gelu_tanh,
    "from_numpy": gpt_rs.Tensor.from_numpy,
    "from_dlpack": gpt_rs.from_dlpack,
    "Embedding": nn.Embedding,
    "Linear": nn.Linear,
}
FUNCS_2 = {
    "matmul": F.matmul,
    "add_bias": F.add_bias,
    "linear": F.linear,
    "embedding_lookup": F.embedding_lookup,
    "Linear(w, b)": nn.Linear,
    "FeedForward": nn.FeedForward,
}
FUNCS_3 = {
    "layer_norm": F.layer_norm,
    "sdpa": F.scaled_dot_product_attention,
    "linear(x, w, b)": F.linear,
    "LayerNorm": nn.LayerNorm,
}
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# The long run, behind the `slow` marker: `pytest -m slow -s tests/test_bad_inputs.py`.
LONG = settings(FUZZ, max_examples=20 * EXAMPLES)


def _one_argument_functions(backend, a):
    gpt_rs.set_backend(backend)
    for name, fn in FUNCS_1.items():
        out = check(name, fn, a)
        if name in ("gelu", "gelu_tanh", "softmax_last_dim") and out is not None:
            src = np.asarray(a if not isinstance(a, gpt_rs.Tensor) else a.numpy(), np.float64)
            got = out.numpy()
            assert got.shape == src.shape
            if name != "softmax_last_dim":  # elementwise: NaN exactly where the input is NaN
                assert (np.isnan(got) == np.isnan(src)).all()
    if isinstance(a, gpt_rs.Tensor):
        for name, fn in {
            "reshape": lambda: a.reshape(-1),
            "T": lambda: a.T,
            "transpose": lambda: a.transpose(0, -1),
            "neg": lambda: -a,
            "repr": lambda: repr(a),
            "numpy": a.numpy,
            "tolist": a.tolist,
        }.items():
            check(name, fn)


def _two_argument_functions(backend, a, b):
    gpt_rs.set_backend(backend)
    for name, fn in FUNCS_2.items():
        check(name, fn, a, b)
    if isinstance(a, gpt_rs.Tensor):
        for name, op in {
            "+": lambda: a + b,
            "-": lambda: a - b,
            "*": lambda: a * b,
            "/": lambda: a / b,
            "@": lambda: a @ b,
        }.items():
            check(name, op)


def _three_argument_functions(backend, a, b, c):
    gpt_rs.set_backend(backend)
    for name, fn in FUNCS_3.items():
        check(name, fn, a, b, c)


@FUZZ
@given(shape=st.lists(st.integers(-3, 2**62), min_size=0, max_size=6))
def test_reshape_and_overflowing_shapes(shape):
    t = gpt_rs.Tensor.from_numpy(np.zeros((2, 3), np.float32))
    check("reshape(shape)", t.reshape, shape)


def test_layers_forward_with_bad_inputs():
    rng = np.random.default_rng(0)
    w = gpt_rs.Tensor.from_numpy(rng.standard_normal((8, 24)).astype(np.float32))
    layers = {
        "Embedding.forward": nn.Embedding(w),
        "Linear.forward": nn.Linear(w),
        "LayerNorm.forward": nn.LayerNorm(np.ones(8, np.float32), np.zeros(8, np.float32)),
        "FeedForward.forward": nn.FeedForward(w, w.T),
        "CausalSelfAttention.forward": nn.CausalSelfAttention(
            nn.Linear(w), nn.Linear(np.ones((8, 8), np.float32)), 2
        ),
    }
    bad = [
        None,
        "x",
        np.zeros((0, 8), np.float32),
        np.zeros((2, 7), np.float32),
        np.zeros((2, 8), np.complex64),
        np.array([[0], [99]]),
        np.array([-1]),
        np.zeros((2, 8)),
        np.full((2, 8), np.nan, np.float32),
        np.zeros((1, 2, 3, 8), np.float32),
        5,
        [[1.0] * 8],
    ]
    for name, layer in layers.items():
        for x in bad:
            check(name, layer, x)


def test_nan_and_inf_propagate_like_numpy():
    x = np.array([[0.0, np.nan, 1.0], [np.inf, 1.0, 2.0], [-np.inf, 0.0, 1.0]], np.float32)
    t = gpt_rs.Tensor.from_numpy
    for backend in gpt_rs.list_backends():
        gpt_rs.set_backend(backend)
        sm = F.softmax_last_dim(t(x)).numpy()
        with np.errstate(invalid="ignore"):
            e = np.exp(x - x.max(-1, keepdims=True))
            want = e / e.sum(-1, keepdims=True)
        np.testing.assert_array_equal(np.isnan(sm), np.isnan(want), err_msg=backend)
        np.testing.assert_allclose(sm[2], want[2], rtol=1e-6)
        mm = F.matmul(t(x), t(np.eye(3, dtype=np.float32))).numpy()
        with np.errstate(invalid="ignore"):
            want_mm = x @ np.eye(3, dtype=np.float32)
        np.testing.assert_array_equal(np.isnan(mm), np.isnan(want_mm), err_msg=backend)
        ln = F.layer_norm(t(x), t(np.ones(3, np.float32)), t(np.zeros(3, np.float32))).numpy()
        with np.errstate(invalid="ignore"):
            mu = x.mean(-1, keepdims=True)
            want_ln = (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + 1e-5)
        np.testing.assert_array_equal(np.isnan(ln), np.isnan(want_ln), err_msg=backend)
        for op in (F.gelu, F.gelu_tanh):
            np.testing.assert_array_equal(np.isnan(op(t(x)).numpy()), np.isnan(x), err_msg=backend)


def test_a_rust_panic_becomes_runtime_error():
    from gpt_rs import _native

    for release in (False, True):
        with pytest.raises(RuntimeError, match="internal error in gpt_rs.*deliberate test panic"):
            _native._panic_for_tests(release)
    assert gpt_rs.functional.gelu(np.zeros(2, np.float32)).shape == [2]  # still usable


test_one_argument_functions = FUZZ(
    given(backend=st.sampled_from(gpt_rs.list_backends()), a=args())(_one_argument_functions)
)
test_one_argument_functions_long = pytest.mark.slow(
    LONG(given(backend=st.sampled_from(gpt_rs.list_backends()), a=args())(_one_argument_functions))
)


test_two_argument_functions = FUZZ(
    given(backend=st.sampled_from(gpt_rs.list_backends()), a=args(), b=args())(
        _two_argument_functions
    )
)
test_two_argument_functions_long = pytest.mark.slow(
    LONG(
        given(backend=st.sampled_from(gpt_rs.list_backends()), a=args(), b=args())(
            _two_argument_functions
        )
    )
)


test_three_argument_functions = FUZZ(
    given(backend=st.sampled_from(gpt_rs.list_backends()), a=args(), b=args(), c=args())(
        _three_argument_functions
    )
)
test_three_argument_functions_long = pytest.mark.slow(
    LONG(
        given(backend=st.sampled_from(gpt_rs.list_backends()), a=args(), b=args(), c=args())(
            _three_argument_functions
        )
    )
)


def test_zz_report_counts():
    """Prints how many bad-input cases ran per function (runs last in this module)."""
    total = sum(c[0] for c in COUNTS.values())
    print(f"\nbad-input calls: {total} in all")
    for name, (calls, raised) in sorted(COUNTS.items()):
        print(f"  {name:28s} {calls:6d} calls, {raised:6d} raised Value/Type/OverflowError")
    assert total > 1000
