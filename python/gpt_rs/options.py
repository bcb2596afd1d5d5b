"""The keyword options every generation method takes, listed once.

``Model.generate``, ``generate_batch``, ``stream``, ``chat`` and ``chat_stream`` take
``**options: GenerateOptions``; ``generate_tokens`` takes ``TokenOptions`` (no ``stop``:
it returns ids, so there is no text to match stop strings against). An unknown keyword is a
TypeError, a value out of range a ValueError naming it. These are ``TypedDict`` classes, so
type checkers and editors know each key; at run time, pass them as keyword arguments::

    model.generate("Once", 20, temperature=0.8, top_p=0.9, seed=1)
    opts: gpt_rs.GenerateOptions = {"temperature": 0.0, "stop": ["\\n"]}
    model.generate("Once", 20, **opts)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional, TypedDict, Union

__all__ = ["GenerateOptions", "TokenOptions"]


class TokenOptions(TypedDict, total=False):
    """Sampling and stop tokens (``Model.generate_tokens``)."""

    temperature: float
    """0 decodes greedily; otherwise the logits are divided by it (default 1.0)."""
    top_k: Optional[int]
    """Keep the k most likely tokens."""
    top_p: Optional[float]
    """Keep the smallest set of tokens whose probability reaches top_p."""
    min_p: Optional[float]
    """Keep tokens with probability >= min_p times the top probability."""
    repetition_penalty: Optional[float]
    """> 1 penalizes tokens already in the sequence (Hugging Face semantics)."""
    seed: Optional[int]
    """Makes sampling reproducible (0 to 2**64 - 1)."""
    stop_token_ids: Optional[Sequence[int]]
    """Ids that end generation (default: the model's end-of-sequence ids; [] for none)."""


class GenerateOptions(TokenOptions, total=False):
    """``TokenOptions`` plus stop strings (the text methods)."""

    stop: Union[str, Sequence[str], None]
    """Strings that end generation; the text is cut before the first one."""
