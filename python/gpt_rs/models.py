"""Loading models: Hugging Face folders (GPT-2 and the Llama-family decoders), or model ids
already in the local hub cache."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

from ._native import Model
from .errors import MissingFileError

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
    if path.is_dir() or path.is_file():
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
    raise MissingFileError(
        f"{name!r} is neither a folder nor a model in the local Hugging Face cache "
        f"({_hub_cache()}); pass a folder holding config.json and model.safetensors"
    )


def load_model(name_or_path: Union[str, os.PathLike], dtype: str = "auto") -> Model:
    """Loads a causal language model from a Hugging Face folder or a GGUF file.

    Families (``config.json``'s ``model_type``): ``gpt2``, ``llama`` (Llama 2/3, SmolLM2,
    TinyLlama), ``mistral``, ``qwen2`` (Qwen2.5) and ``qwen3``.

    Args:
        name_or_path: a Hugging Face model folder (``config.json``, ``model.safetensors`` or a
            sharded ``model.safetensors.index.json``, and ``tokenizer.json`` or ``vocab.json`` +
            ``merges.txt``), a GGUF file (architectures ``llama``, ``qwen2``, ``qwen3``,
            ``gemma3``; tokenizer and chat template from its metadata), or a model id already
            in the local hub cache (e.g. ``"gpt2"``).
        dtype: how the linear layers' weights are kept in memory: ``"auto"`` (the checkpoint's:
            bf16 stays bf16, f32 and f16 become f32), ``"f32"`` or ``"bf16"`` (half the memory
            and the bytes each decoded token reads), or a block format (``"q8_0"``, ``"q5_1"``,
            ``"q5_0"``, ``"q4_1"``, ``"q4_0"``: quantize the linear layers while loading).
            GGUF files keep their stored formats under ``"auto"``. Activations are f32.

    Returns:
        Model: with ``generate``, ``stream``, ``generate_batch``, ``generate_tokens``,
        ``forward_tokens`` and ``logits``.

    Raises:
        FileNotFoundError: a missing folder or file.
        ValueError: a missing tensor, a wrong shape (the message names the file, the key and
            both shapes) or an invalid config.
    """
    return Model.from_dir(str(resolve_model_path(name_or_path)), dtype)
