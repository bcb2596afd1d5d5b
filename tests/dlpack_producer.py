"""A hand-made DLPack producer (ctypes), to feed gpt_rs.from_dlpack capsules with any field
set to anything: valid ones, and the inconsistent ones a buggy or hostile producer could make."""

from __future__ import annotations

import ctypes
from ctypes import POINTER, c_int32, c_int64, c_uint8, c_uint16, c_uint64, c_void_p
from typing import Optional

import numpy as np

CPU, FLOAT, INT = 1, 2, 0


class DLDevice(ctypes.Structure):
    _fields_ = [("device_type", c_int32), ("device_id", c_int32)]


class DLDataType(ctypes.Structure):
    _fields_ = [("code", c_uint8), ("bits", c_uint8), ("lanes", c_uint16)]


class DLTensor(ctypes.Structure):
    _fields_ = [
        ("data", c_void_p),
        ("device", DLDevice),
        ("ndim", c_int32),
        ("dtype", DLDataType),
        ("shape", POINTER(c_int64)),
        ("strides", POINTER(c_int64)),
        ("byte_offset", c_uint64),
    ]


class DLManagedTensor(ctypes.Structure):
    _fields_ = [("dl_tensor", DLTensor), ("manager_ctx", c_void_p), ("deleter", c_void_p)]


_DELETER = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
# Producers whose capsule was handed out, until the consumer calls the deleter (a real
# producer's memory lives until then, whoever still refers to the producer object).
_ALIVE: dict[int, Producer] = {}


@_DELETER
def _deleter(managed_address):
    m = DLManagedTensor.from_address(managed_address)
    _ALIVE.pop(m.manager_ctx or 0, None)


_new_capsule = ctypes.pythonapi.PyCapsule_New
_new_capsule.restype = ctypes.py_object
_new_capsule.argtypes = [c_void_p, ctypes.c_char_p, c_void_p]


class Producer:
    """``__dlpack__`` returns a capsule describing ``data`` (a NumPy array it keeps alive) with
    the given fields; ``data=None`` gives a NULL data pointer. The producer stays alive until
    the consumer calls the capsule's deleter."""

    def __init__(
        self,
        data: Optional[np.ndarray],
        shape: Optional[list[int]],
        strides: Optional[list[int]] = None,
        *,
        ndim: Optional[int] = None,
        code: int = FLOAT,
        bits: int = 32,
        lanes: int = 1,
        byte_offset: int = 0,
        pointer_offset: int = 0,
        device: int = CPU,
    ):
        self.data = data
        self.shape_arr = (c_int64 * len(shape))(*shape) if shape is not None else None
        self.strides_arr = (c_int64 * len(strides))(*strides) if strides is not None else None
        ptr = None if data is None else data.ctypes.data + pointer_offset
        self.managed = DLManagedTensor()
        t = self.managed.dl_tensor
        t.data = ptr
        t.device = DLDevice(device, 0)
        t.ndim = ndim if ndim is not None else (len(shape) if shape is not None else 0)
        t.dtype = DLDataType(code, bits, lanes)
        t.shape = ctypes.cast(self.shape_arr, POINTER(c_int64)) if self.shape_arr else None
        t.strides = ctypes.cast(self.strides_arr, POINTER(c_int64)) if self.strides_arr else None
        t.byte_offset = byte_offset

    def __dlpack__(self, **kwargs):
        _ALIVE[id(self)] = self
        self.managed.manager_ctx = id(self)
        self.managed.deleter = ctypes.cast(_deleter, c_void_p)
        return _new_capsule(ctypes.addressof(self.managed), b"dltensor", None)

    def __dlpack_device__(self):
        return (self.managed.dl_tensor.device.device_type, 0)
