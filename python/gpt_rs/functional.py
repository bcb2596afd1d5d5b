"""Functional ops: stateless functions over tensors, run on the current backend.

Every function accepts ``gpt_rs.Tensor`` arguments (NumPy arrays are converted with a copy),
validates ranks, shapes and dtypes, and returns a new ``Tensor``.
"""

from ._native import (
    add_bias,
    embedding_lookup,
    gelu,
    gelu_tanh,
    layer_norm,
    linear,
    matmul,
    scaled_dot_product_attention,
    softmax_last_dim,
)

__all__ = [
    "add_bias",
    "embedding_lookup",
    "gelu",
    "gelu_tanh",
    "layer_norm",
    "linear",
    "matmul",
    "scaled_dot_product_attention",
    "softmax_last_dim",
]
