"""Loading GPT-2 checkpoints: Hugging Face folders, or model ids already in the local hub cache."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

from ._native import Model

__all__ = ["Model", "load_model", "resolve_model_path"]


def _hub_cache() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HUGGINGFACE_HUB_CACHE"):
        return Path(os.environ["HUGGINGFACE_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "huggingface"
    )
    return Path(home) / "hub"


def resolve_model_path(name_or_path: Union[str, os.PathLike]) -> Path:
    """A folder as given, or the local hub-cache snapshot of a model id such as ``"gpt2"``.

    No network access: a model id must already be in the cache (``HF_HUB_CACHE``, ``HF_HOME``
    or ``~/.cache/huggingface/hub``).

    Raises:
        FileNotFoundError: if neither a folder nor a cached model is found.
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    name = str(name_or_path)
    repo = _hub_cache() / ("models--" + name.replace("/", "--"))
    if repo.is_dir():
        ref = repo / "refs" / "main"
        snapshots = repo / "snapshots"
        if ref.is_file() and (snapshots / ref.read_text().strip()).is_dir():
            return snapshots / ref.read_text().strip()
        if snapshots.is_dir():
            candidates = sorted(snapshots.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True)
            for snap in candidates:
                if (snap / "config.json").exists():
                    return snap
    raise FileNotFoundError(
        f"{name!r} is neither a folder nor a model in the local Hugging Face cache "
        f"({_hub_cache()}); pass a folder holding config.json and model.safetensors"
    )


def load_model(name_or_path: Union[str, os.PathLike]) -> Model:
    """Loads a GPT-2 checkpoint (weights are memory-mapped, not copied).

    Args:
        name_or_path: a Hugging Face GPT-2 folder (``config.json``, ``model.safetensors``, and
            ``tokenizer.json`` or ``vocab.json`` + ``merges.txt``), or a model id already in the
            local hub cache (e.g. ``"gpt2"``).

    Returns:
        Model: with ``generate``, ``stream``, ``generate_batch``, ``generate_tokens``,
        ``forward_tokens`` and ``logits``.

    Raises:
        FileNotFoundError: a missing folder or file.
        ValueError: a missing tensor, a wrong shape (the message names the file, the key and
            both shapes) or an invalid config.
    """
    return Model.from_dir(str(resolve_model_path(name_or_path)))
