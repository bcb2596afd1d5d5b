"""Tensor construction, dtypes, memory layouts, zero-copy views, DLPack, operators."""

import gc
import weakref

import numpy as np
import pytest

import gpt_rs
from gpt_rs import Tensor

from conftest import T, assert_close


@pytest.mark.parametrize(
    "dtype,want", [(np.float32, "f32"), (np.float64, "f32"), (np.int32, "i32"), (np.int64, "i32")]
)
def test_supported_dtypes(dtype, want):
    a = (np.arange(12).reshape(3, 4) - 5).astype(dtype)
    t = Tensor.from_numpy(a)
    assert t.dtype == want and t.shape == [3, 4] and t.ndim == 2 and t.size == 12
    np.testing.assert_array_equal(t.numpy(), a.astype(np.float32 if want == "f32" else np.int32))


@pytest.mark.parametrize(
    "dtype",
    [
        np.bool_,
        np.complex64,
        np.uint8,
        np.int8,
        np.uint32,
        np.int16,
        object,
        "U3",
        "datetime64[s]",
    ],
)
def test_unsupported_dtypes_raise_type_error(dtype):
    a = np.zeros(3, dtype=dtype)
    with pytest.raises(TypeError, match="unsupported dtype") as e:
        Tensor.from_numpy(a)
    assert "float32" in str(e.value) and "int64" in str(e.value)


def test_int64_that_does_not_fit_raises():
    with pytest.raises(OverflowError, match="2147483648 at flat index 1 does not fit in int32"):
        Tensor.from_numpy(np.array([1, 2**31], dtype=np.int64))
    t = Tensor.from_numpy(np.array([-(2**31), 2**31 - 1], dtype=np.int64))
    assert t.numpy().tolist() == [-(2**31), 2**31 - 1]


def test_strided_transposed_fortran_readonly_layouts():
    base = np.arange(60, dtype=np.float32).reshape(6, 10)
    views = {
        "strided": base[::2, 1::3],
        "transposed": base.T,
        "fortran": np.asfortranarray(base),
        "negative": base[::-1, ::-1],
        "f64 strided": base.astype(np.float64)[:, ::2],
        "i64 transposed": np.arange(12, dtype=np.int64).reshape(3, 4).T,
    }
    ro = base.copy()
    ro.flags.writeable = False
    views["readonly"] = ro
    for name, v in views.items():
        t = Tensor.from_numpy(v)
        np.testing.assert_array_equal(t.numpy(), v.astype(t.numpy().dtype), err_msg=name)


def test_misaligned_and_byteswapped_arrays():
    raw = np.zeros(4 * 6 + 1, dtype=np.uint8)
    mis = raw[1:].view(np.float32)
    mis[:] = np.arange(6, dtype=np.float32)
    assert not mis.flags.aligned
    np.testing.assert_array_equal(Tensor.from_numpy(mis).numpy(), np.arange(6, dtype=np.float32))
    big = np.arange(5, dtype=">f4")
    np.testing.assert_array_equal(Tensor.from_numpy(big).numpy(), np.arange(5, dtype=np.float32))
    with pytest.raises(ValueError, match="misaligned or byte-swapped"):
        Tensor.from_numpy(big, copy=False)


def test_lists_scalars_and_zero_size():
    assert Tensor.from_numpy([[1.0, 2.0]]).shape == [1, 2]
    assert Tensor.from_numpy([1, 2, 3]).dtype == "i32"
    z = Tensor.from_numpy(np.zeros((0, 5), np.float32))
    assert z.shape == [0, 5] and z.numpy().shape == (0, 5)
    s = Tensor.from_numpy(np.float32(3.5))
    assert s.shape == [] and s.numpy() == 3.5
    with pytest.raises(TypeError):
        Tensor.from_numpy("not numbers")


# 4 MiB and up is copied into huge-page memory, smaller into a plain vector.
@pytest.mark.parametrize("n", [4, (4 << 20) // 4 + 3])
def test_from_numpy_copies_by_default(n):
    a = np.arange(n, dtype=np.float32)
    t = Tensor.from_numpy(a)
    a[0] = 9
    a[-1] = -1
    got = t.numpy()
    assert got[0] == 0 and got[-1] == n - 1 and not np.shares_memory(got, a)
    np.testing.assert_array_equal(got[1:-1], a[1:-1])
    del t
    gc.collect()
    np.testing.assert_array_equal(got, np.arange(n, dtype=np.float32))  # the view keeps it alive


def test_from_numpy_copy_false_shares_memory_and_keeps_array_alive():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    t = Tensor.from_numpy(a, copy=False)
    assert np.shares_memory(t.numpy(), a)
    a[1, 2] = -1
    assert t.numpy()[1, 2] == -1
    ref = weakref.ref(a)
    del a
    gc.collect()
    assert ref() is not None, "the tensor must keep the shared array alive"
    assert t.numpy()[1, 2] == -1
    i = np.arange(3, dtype=np.int32)
    assert np.shares_memory(Tensor.from_numpy(i, copy=False).numpy(), i)


@pytest.mark.parametrize(
    "arr", [np.ones(3, np.float64), np.ones((3, 3), np.float32).T, np.ones(3, np.int64)]
)
def test_from_numpy_copy_false_raises_when_it_cannot_share(arr):
    with pytest.raises(ValueError, match="copy=False"):
        Tensor.from_numpy(arr, copy=False)


def test_readonly_shared_array_gives_readonly_views():
    a = np.ones(3, np.float32)
    a.flags.writeable = False
    v = Tensor.from_numpy(a, copy=False).numpy()
    assert not v.flags.writeable


def test_numpy_is_a_zero_copy_view_that_outlives_the_tensor():
    t = gpt_rs.functional.gelu(T(np.linspace(-1, 1, 1000, dtype=np.float32)))
    v1, v2 = t.numpy(), t.numpy()
    assert np.shares_memory(v1, v2) and np.shares_memory(t.to_numpy(), v1)
    expected = v1.copy()
    del t
    gc.collect()
    np.testing.assert_array_equal(v1, expected)
    assert np.asarray(T(np.ones(2, np.float32))).dtype == np.float32


def test_dlpack_both_ways_shares_memory():
    a = np.arange(8, dtype=np.float32).reshape(2, 4)
    t = Tensor.from_numpy(a, copy=False)
    assert t.__dlpack_device__() == (1, 0)
    b = np.from_dlpack(t)
    assert np.shares_memory(a, b)
    t2 = gpt_rs.from_dlpack(a)
    assert np.shares_memory(t2.numpy(), a)
    t3 = gpt_rs.from_dlpack(np.arange(4, dtype=np.int32))
    assert t3.dtype == "i32" and t3.numpy().tolist() == [0, 1, 2, 3]
    # Dtypes gpt_rs does not store natively are converted (a copy).
    t4 = gpt_rs.from_dlpack(np.arange(4, dtype=np.float64)[::2])
    assert t4.dtype == "f32" and t4.numpy().tolist() == [0.0, 2.0]
    with pytest.raises(TypeError, match="__dlpack__"):
        gpt_rs.from_dlpack([1, 2])
    # The exported buffer survives the tensor.
    c = np.from_dlpack(gpt_rs.functional.gelu(T(np.ones(3, np.float32))))
    gc.collect()
    assert_close(c, np.full(3, 0.8413447460685429), rtol=1e-6, atol=0, what="dlpack keepalive")


def test_operators_broadcast_like_numpy(rng):
    a = rng.standard_normal((3, 1, 4)).astype(np.float32)
    b = rng.standard_normal((5, 1)).astype(np.float32)
    ta, tb = T(a), T(b)
    for got, want in [
        (ta + tb, a + b),
        (ta - tb, a - b),
        (ta * tb, a * b),
        (ta / tb, a / b),
        (ta + 1, a + 1),
        (2.5 * ta, 2.5 * a),
        (1 - ta, 1 - a),
        (1 / tb, 1 / b),
        (ta + b, a + b),
        (-ta, -a),
    ]:
        assert_close(got.numpy(), want, rtol=1e-6, atol=1e-7, what="operator")
    i = T(np.array([1, 2, 3], np.int32))
    assert (i + 1).dtype == "i32" and (i * i).numpy().tolist() == [1, 4, 9]
    assert (i / 2).dtype == "f32" and (i + 0.5).dtype == "f32"
    with pytest.raises(ValueError, match="could not be broadcast"):
        ta + T(np.ones((2, 3), np.float32))
    with pytest.raises(TypeError):
        ta + "x"
    m = rng.standard_normal((4, 2)).astype(np.float32)
    assert_close(
        (T(a[0]) @ T(m)).numpy(), a[0].astype(np.float64) @ m, rtol=1e-5, atol=1e-6, what="@"
    )


def test_reshape_and_transpose():
    a = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    t = T(a)
    assert t.reshape(6, 4).shape == [6, 4] and t.reshape([4, -1]).shape == [4, 6]
    assert t.reshape((24,)).shape == [24]
    np.testing.assert_array_equal(t.reshape(4, 6).numpy(), a.reshape(4, 6))
    np.testing.assert_array_equal(t.transpose(0, 2).numpy(), a.transpose(2, 1, 0))
    np.testing.assert_array_equal(t.transpose(-1, -2).numpy(), np.swapaxes(a, -1, -2))
    np.testing.assert_array_equal(t.T.numpy(), a.T)
    np.testing.assert_array_equal(t.transpose().numpy(), a.T)
    with pytest.raises(ValueError, match="cannot reshape"):
        t.reshape(5, 5)
    with pytest.raises(ValueError, match="out of range"):
        t.transpose(0, 3)


def test_repr_len_tolist():
    t = T(np.array([[1.0, 2.0]], np.float32))
    r = repr(t)
    assert "shape=[1, 2]" in r and "dtype=f32" in r and "backend=" in r and "1." in r
    assert len(t) == 1 and t.tolist() == [[1.0, 2.0]]


def test_backend_is_the_producer_and_backends_mix():
    gpt_rs.set_backend("cpu-portable")
    a = T(np.ones((2, 2), np.float32))
    assert a.backend == "cpu-portable"
    gpt_rs.set_backend("cpu")
    b = gpt_rs.functional.matmul(a, a)
    assert a.backend == "cpu-portable" and b.backend == "cpu"
    np.testing.assert_array_equal(b.numpy(), np.full((2, 2), 2.0))
