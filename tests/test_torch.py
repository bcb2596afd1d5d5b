"""Tensor.from_torch / Tensor.to_torch: the original bindings' interop tests (shape, dtype,
values) and zero-copy both ways. Skipped when torch is not installed (it is never a
dependency); run them in the peers venv: `/work/peers/bin/python -m pytest tests/test_torch.py`."""

import numpy as np
import pytest

import gpt_rs
from gpt_rs import Tensor

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch

DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16, "i32": torch.int32}


# The original bindings' tests.
def test_from_torch_shape_and_dtype():
    x = torch.randn(3, 4)
    t = Tensor.from_torch(x)
    assert t.shape == list(x.shape)
    assert t.dtype == "f32"


def test_to_torch_dtype_and_values():
    a = np.random.default_rng(0).standard_normal((5, 2)).astype(np.float32)
    y = Tensor.from_numpy(a).to_torch()
    assert y.dtype == torch.float32
    np.testing.assert_array_equal(y.numpy(), a)


@pytest.mark.parametrize("name", list(DTYPES))
def test_zero_copy_both_ways(name):
    x = torch.zeros(4, 6, dtype=DTYPES[name])
    t = Tensor.from_torch(x)
    assert t.dtype == name
    x[1, 2] = 3
    assert float(t.to("f32").numpy()[1, 2]) == 3.0  # gpt_rs sees torch's write
    y = t.to_torch()
    assert y.dtype == DTYPES[name] and y.data_ptr() == x.data_ptr()
    y[0, 0] = 7
    assert float(x[0, 0]) == 7.0  # torch sees the write through the exported tensor
    back = Tensor.from_torch(y)
    assert back.to_torch().data_ptr() == x.data_ptr()


@pytest.mark.parametrize("name", ["f16", "bf16"])
def test_every_16_bit_pattern_round_trips_bit_exactly(name):
    bits = torch.arange(1 << 16, dtype=torch.int32).to(torch.int16)
    x = bits.view(DTYPES[name])
    back = Tensor.from_torch(x).to_torch()
    assert torch.equal(back.view(torch.int16), bits)
    # and through NumPy too (bf16 via ml_dtypes), to the same bits
    arr = Tensor.from_torch(x).numpy()
    np.testing.assert_array_equal(arr.view(np.int16), bits.numpy())


def test_non_contiguous_and_other_dtypes_are_copied():
    x = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    for v in (x.t(), x[:, ::2], x.flip(0)):
        t = Tensor.from_torch(v)
        np.testing.assert_array_equal(t.numpy(), v.numpy())
        assert t.to_torch().data_ptr() != x.data_ptr()
    assert Tensor.from_torch(x.double()).dtype == "f32"
    assert Tensor.from_torch(torch.arange(5)).dtype == "i32"  # int64 -> i32
    with pytest.raises(OverflowError):
        Tensor.from_torch(torch.tensor([2**40]))
    with pytest.raises(TypeError, match="dtype"):
        Tensor.from_torch(torch.ones(2, dtype=torch.complex64))
    # requires_grad and negated views work (detached, resolved)
    g = torch.ones(3, requires_grad=True)
    np.testing.assert_array_equal(Tensor.from_torch(g).numpy(), np.ones(3, np.float32))
    np.testing.assert_array_equal(Tensor.from_torch(torch.ones(3)._neg_view()).numpy(), -np.ones(3))


def test_other_devices_and_other_objects_are_refused():
    with pytest.raises(ValueError, match=r"\.cpu\(\)"):
        Tensor.from_torch(torch.empty(2, device="meta"))
    with pytest.raises(TypeError, match="torch.Tensor"):
        Tensor.from_torch(np.ones(2))


def test_read_only_memory_is_copied_for_torch():
    a = np.ones(4, np.float32)
    a.flags.writeable = False
    t = Tensor.from_numpy(a, copy=False)
    y = t.to_torch()
    y[0] = 5  # writes to torch's copy, never to the read-only buffer
    assert a[0] == 1.0


def test_ops_on_torch_tensors_match_torch():
    x = torch.randn(3, 8, dtype=torch.bfloat16)
    w = torch.randn(8, 5, dtype=torch.bfloat16)
    got = gpt_rs.functional.matmul(Tensor.from_torch(x), Tensor.from_torch(w)).to_torch()
    assert got.dtype == torch.bfloat16
    want = (x.float() @ w.float()).to(torch.bfloat16)
    assert torch.equal(got, want)
