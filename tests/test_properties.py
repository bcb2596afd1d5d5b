"""Property-based tests (hypothesis) over shapes and values, on every backend."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import gpt_rs

import reference as ref
from conftest import BACKENDS, T, assert_close

F = gpt_rs.functional
dims = st.integers(min_value=1, max_value=9)
floats = st.floats(-20, 20, width=32, allow_nan=False, allow_infinity=False)
backends = st.sampled_from(BACKENDS)


def arrays(shape):
    return hnp.arrays(np.float32, shape, elements=floats)


@settings(max_examples=150, deadline=None)
@given(backend=backends, data=st.data(), shape=hnp.array_shapes(min_dims=1, max_dims=4, max_side=9))
def test_elementwise_and_rows(backend, data, shape):
    gpt_rs.set_backend(backend)
    x = data.draw(arrays(shape))
    assert_close(F.gelu(T(x)).numpy(), ref.gelu(x), rtol=1e-5, atol=1e-6, what="gelu")
    assert_close(
        F.gelu_tanh(T(x)).numpy(), ref.gelu_tanh(x), rtol=1e-5, atol=1e-6, what="gelu_tanh"
    )
    assert_close(
        F.softmax_last_dim(T(x)).numpy(), ref.softmax(x), rtol=1e-4, atol=1e-7, what="softmax"
    )
    g, b = np.ones(shape[-1], np.float32), np.zeros(shape[-1], np.float32)
    assert_close(
        F.layer_norm(T(x), T(g), T(b)).numpy(),
        ref.layer_norm(x, g, b),
        rtol=1e-3,
        atol=2e-3,
        what="layer_norm",
    )


@settings(max_examples=150, deadline=None)
@given(backend=backends, data=st.data(), b=st.integers(0, 3), m=dims, k=st.integers(0, 40), n=dims)
def test_matmul_shapes(backend, data, b, m, k, n):
    gpt_rs.set_backend(backend)
    a_shape = (m, k) if b == 0 else (b, m, k)
    x = data.draw(arrays(a_shape))
    y = data.draw(arrays((k, n) if b < 2 else (b, k, n)))
    want = ref.f64(x) @ y
    scale = max(1.0, float(np.abs(x).max(initial=0)) * float(np.abs(y).max(initial=0)) * max(k, 1))
    assert_close(F.matmul(T(x), T(y)).numpy(), want, rtol=1e-4, atol=1e-5 * scale, what="matmul")


@settings(max_examples=100, deadline=None)
@given(
    backend=backends,
    data=st.data(),
    a=hnp.array_shapes(min_dims=0, max_dims=3, max_side=4),
    drop=st.integers(0, 3),
)
def test_broadcasting_matches_numpy(backend, data, a, drop):
    gpt_rs.set_backend(backend)
    b_shape = tuple(1 if i % 2 else s for i, s in enumerate(a[drop:]))
    x, y = data.draw(arrays(a)), data.draw(arrays(b_shape))
    assert_close((T(x) + T(y)).numpy(), ref.f64(x) + y, rtol=1e-6, atol=1e-6, what="+")
    assert_close((T(x) * T(y)).numpy(), ref.f64(x) * y, rtol=1e-6, atol=1e-6, what="*")


@settings(max_examples=60, deadline=None)
@given(
    backend=backends,
    data=st.data(),
    g=st.integers(1, 4),
    tq=dims,
    extra=st.integers(0, 5),
    d=st.sampled_from([1, 4, 8, 16]),
)
def test_attention_shapes(backend, data, g, tq, extra, d):
    gpt_rs.set_backend(backend)
    tk = tq + extra
    q = data.draw(hnp.arrays(np.float32, (g, tq, d), elements=st.floats(-3, 3, width=32)))
    k = data.draw(hnp.arrays(np.float32, (g, tk, d), elements=st.floats(-3, 3, width=32)))
    v = data.draw(hnp.arrays(np.float32, (g, tk, d), elements=st.floats(-3, 3, width=32)))
    assert_close(
        F.scaled_dot_product_attention(T(q), T(k), T(v)).numpy(),
        ref.attention(q, k, v),
        rtol=1e-4,
        atol=1e-5,
        what="sdpa",
    )
