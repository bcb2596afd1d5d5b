"""Neural-network layers built from the functional ops.

Weights follow the GPT-2 checkpoint convention: ``Linear`` weights are ``[in, out]`` and
``y = x @ W + b``. Constructors validate their weights; ``layer(x)`` equals ``layer.forward(x)``.
"""

from ._native import (
    CausalSelfAttention,
    Embedding,
    FeedForward,
    LayerNorm,
    Linear,
    TransformerBlock,
)

__all__ = [
    "CausalSelfAttention",
    "Embedding",
    "FeedForward",
    "LayerNorm",
    "Linear",
    "TransformerBlock",
]
