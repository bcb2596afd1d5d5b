"""The exception hierarchy: every engine error is a `gpt_rs.Error` and still the built-in it
used to be, so `except ValueError` (etc.) keeps working."""

from __future__ import annotations

import numpy as np
import pytest

import gpt_rs
from gpt_rs import errors

BASES = {
    errors.ShapeError: ValueError,
    errors.InvalidValueError: ValueError,
    errors.DTypeError: TypeError,
    errors.SizeOverflowError: OverflowError,
    errors.FileReadError: OSError,
    errors.MissingFileError: FileNotFoundError,
    errors.OutOfMemoryError: MemoryError,
    errors.BusyError: RuntimeError,
    errors.BackendError: RuntimeError,
    errors.InternalError: RuntimeError,
}


def test_every_class_is_an_error_and_its_builtin():
    assert set(errors.__all__) == {c.__name__ for c in BASES} | {"Error"}
    for cls, builtin in BASES.items():
        assert issubclass(cls, gpt_rs.Error) and issubclass(cls, builtin), cls
        assert getattr(gpt_rs, cls.__name__) is cls


def t(*shape):
    return gpt_rs.Tensor.from_numpy(np.ones(shape, np.float32))


@pytest.mark.parametrize(
    "call, cls",
    [
        (lambda: gpt_rs.functional.matmul(t(2, 3), t(2, 3)), errors.ShapeError),
        (lambda: gpt_rs.quant.dequantize(b"\0" * 33, "q8_0"), errors.InvalidValueError),
        (lambda: gpt_rs.quant.dequantize(b"\0" * 34, "q9_9"), errors.InvalidValueError),
        (lambda: gpt_rs.load_model("/nonexistent/model"), errors.MissingFileError),
        (lambda: gpt_rs.set_backend("no-such-backend"), errors.Error),
    ],
)
def test_engine_errors_raise_the_hierarchy(call, cls):
    with pytest.raises(cls) as info:
        call()
    assert isinstance(info.value, gpt_rs.Error)
    assert str(info.value)  # a message saying what was wrong


def test_missing_gguf_file_and_bad_dtype(tmp_path):
    with pytest.raises(errors.MissingFileError):
        gpt_rs.load_model(tmp_path / "absent.gguf")
    (tmp_path / "bad.gguf").write_bytes(b"GGUF" + b"\0" * 12)
    with pytest.raises(errors.InvalidValueError, match="bad.gguf"):
        gpt_rs.load_model(tmp_path / "bad.gguf")
    with pytest.raises(ValueError):  # the old contract holds
        gpt_rs.load_model(tmp_path / "bad.gguf")


@pytest.mark.parametrize(
    "call, cls",
    [
        (lambda: gpt_rs.Tensor.from_numpy([1.0], copy=False), errors.InvalidValueError),
        (lambda: gpt_rs.Tensor.from_numpy(np.array([2**40])), errors.SizeOverflowError),
        (lambda: gpt_rs.Tensor.from_numpy(np.ones(2, np.complex64)), errors.DTypeError),
        (lambda: gpt_rs.set_num_threads(-1), errors.InvalidValueError),
        (lambda: gpt_rs.set_simd_level("sse9"), errors.InvalidValueError),
        (lambda: t(2).to("f8"), errors.InvalidValueError),
        (lambda: t(2).transpose(0), errors.InvalidValueError),
        (lambda: gpt_rs.from_dlpack(3), errors.DTypeError),
    ],
)
def test_the_bindings_own_checks_raise_the_same_classes(call, cls):
    with pytest.raises(cls) as e:
        call()
    assert isinstance(e.value, gpt_rs.Error) and str(e.value)
