"""gpt_rs: tensors, neural-network layers and GPT inference on the CPU, with a Rust engine.

Quick start::

    import numpy as np
    import gpt_rs

    x = gpt_rs.Tensor.from_numpy(np.ones((2, 3), dtype=np.float32))
    y = gpt_rs.functional.gelu(x)
    print(y.numpy())

Environment variables read at import:
    GPT_RS_BACKEND: initial backend (see ``list_backends()``).
    GPT_RS_NUM_THREADS: initial worker-thread count (default: the machine's cores).
    GPT_RS_SIMD: cap the SIMD level of the ``cpu`` kernels ('avx512', 'avx2', 'scalar').
    GPT_RS_PREFETCH: floats the decode kernels prefetch ahead of the weights (0 = off;
        default: off on AMD CPUs, 1024 elsewhere). Read once, on first use.
"""

from __future__ import annotations

import os as _os

from . import (  # noqa: E402  (submodules re-export the native functions)
    _native,
    errors,
    functional,
    nn,
    quant,  # noqa: E402  (gpt_rs.quant: GGML block formats)
    train,  # noqa: E402  (gpt_rs.train: training loop, data, checkpoints)
)
from ._native import (
    Engine,
    Model,
    Request,
    Tensor,
    TextStream,
    Tokenizer,
    TrainableModel,
    __version__,
    cpu_features,
    from_dlpack,
    get_backend,
    get_num_threads,
    get_simd_level,
    list_backends,
    set_backend,
    set_num_threads,
    set_simd_level,
)
from .errors import *  # noqa: F403  (gpt_rs.Error and its subclasses)
from .models import load_model  # noqa: E402
from .options import GenerateOptions, TokenOptions

__all__ = [
    "errors",
    "Engine",
    "GenerateOptions",
    "Model",
    "Request",
    "Tensor",
    "TextStream",
    "TokenOptions",
    "Tokenizer",
    "TrainableModel",
    "load_model",
    "__version__",
    "cpu_features",
    "from_dlpack",
    "functional",
    "get_backend",
    "get_num_threads",
    "get_simd_level",
    "list_backends",
    "nn",
    "quant",
    "set_backend",
    "set_num_threads",
    "set_simd_level",
    "train",
]
__all__ += errors.__all__


def _configure_from_env() -> None:
    backend = _os.environ.get("GPT_RS_BACKEND")
    if backend:
        try:
            set_backend(backend)
        except ValueError as e:
            raise errors.InvalidValueError(f"GPT_RS_BACKEND={backend!r} is invalid: {e}") from None
    threads = _os.environ.get("GPT_RS_NUM_THREADS")
    if threads:
        try:
            set_num_threads(int(threads))
        except ValueError as e:
            raise errors.InvalidValueError(
                f"GPT_RS_NUM_THREADS={threads!r} is invalid: {e}"
            ) from None


_configure_from_env()
del _native
