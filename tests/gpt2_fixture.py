"""Builds small GPT-2 checkpoints for tests, with no downloads: random weights in Hugging Face
layout written with `safetensors`, and a byte-level BPE tokenizer trained with `tokenizers` on
local text (this repository's docs and Python standard-library sources)."""

from __future__ import annotations

import json
import struct
import sysconfig
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
EOS = "<|endoftext|>"
UNICODE_TEXT = (
    "Ünïcödé téxt: naïve café, Straße, 日本語のテキスト, 中文文本, 한국어, Ελληνικά, русский, "
    "emoji 🙂🚀👩‍💻, math ∑∫√∞≈, tabs\tand  double  spaces\nnew\r\nlines.\n"
)


def corpus() -> list[str]:
    """Local text: docs of this repo and a few standard-library modules."""
    texts = [
        p.read_text(encoding="utf-8")
        for p in sorted(ROOT.glob("**/README.md"))
        if ".venv" not in p.parts and "target" not in p.parts
    ]
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for name in ("textwrap.py", "heapq.py", "bisect.py", "string.py", "fnmatch.py", "colorsys.py"):
        f = stdlib / name
        if f.exists():
            texts.append(f.read_text(encoding="utf-8"))
    texts.append(UNICODE_TEXT * 20)
    return texts


def train_tokenizer(vocab_size: int = 512):
    from tokenizers import ByteLevelBPETokenizer

    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(
        corpus(), vocab_size=vocab_size, min_frequency=2, special_tokens=[EOS], show_progress=False
    )
    return tok


def random_gpt2_params(n_layer, n_head, n_embd, n_positions, vocab_size, seed=0, scale=0.15):
    """GPT-2 weights named as in Hugging Face checkpoints (without the `transformer.` prefix)."""
    rng = np.random.default_rng(seed)
    c = n_embd

    def w(*shape, s=scale):
        return (rng.standard_normal(shape) * s).astype(np.float32)

    p = {
        "wte.weight": w(vocab_size, c, s=0.5),
        "wpe.weight": w(n_positions, c, s=0.3),
        "ln_f.weight": 1 + w(c, s=0.1),
        "ln_f.bias": w(c, s=0.1),
    }
    for i in range(n_layer):
        p |= {
            f"h.{i}.ln_1.weight": 1 + w(c, s=0.1),
            f"h.{i}.ln_1.bias": w(c, s=0.1),
            f"h.{i}.attn.c_attn.weight": w(c, 3 * c),
            f"h.{i}.attn.c_attn.bias": w(3 * c, s=0.05),
            f"h.{i}.attn.c_proj.weight": w(c, c),
            f"h.{i}.attn.c_proj.bias": w(c, s=0.05),
            f"h.{i}.ln_2.weight": 1 + w(c, s=0.1),
            f"h.{i}.ln_2.bias": w(c, s=0.1),
            f"h.{i}.mlp.c_fc.weight": w(c, 4 * c),
            f"h.{i}.mlp.c_fc.bias": w(4 * c, s=0.05),
            f"h.{i}.mlp.c_proj.weight": w(4 * c, c, s=scale / 2),
            f"h.{i}.mlp.c_proj.bias": w(c, s=0.05),
        }
    return p


def to_bf16_bits(a: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (round to nearest even)."""
    u = a.astype(np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def from_bf16_bits(b: np.ndarray) -> np.ndarray:
    return (b.astype(np.uint32) << 16).view(np.float32)


def write_safetensors(path: Path, tensors: dict[str, np.ndarray], dtype: str) -> None:
    """Writes F32/F16 with the `safetensors` library, BF16 by hand (NumPy has no bfloat16)."""
    if dtype in ("float32", "float16"):
        from safetensors.numpy import save_file

        save_file(
            {k: np.ascontiguousarray(v.astype(dtype)) for k, v in tensors.items()},
            str(path),
            metadata={"format": "pt"},
        )
        return
    header, blobs, off = {"__metadata__": {"format": "pt"}}, [], 0
    for k, v in tensors.items():
        b = to_bf16_bits(v).tobytes()
        header[k] = {"dtype": "BF16", "shape": list(v.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    path.write_bytes(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def stored_values(params: dict[str, np.ndarray], dtype: str) -> dict[str, np.ndarray]:
    """The weights as the checkpoint holds them (rounded to f16/bf16), for the reference."""
    if dtype == "float16":
        return {k: v.astype(np.float16).astype(np.float64) for k, v in params.items()}
    if dtype == "bfloat16":
        return {k: from_bf16_bits(to_bf16_bits(v)).astype(np.float64) for k, v in params.items()}
    return {k: v.astype(np.float64) for k, v in params.items()}


def make_gpt2_folder(
    path: Path,
    tokenizer=None,
    *,
    n_layer=2,
    n_head=4,
    n_embd=64,
    n_positions=128,
    vocab_size=None,
    dtype="float32",
    prefix=True,
    tokenizer_files="json",
    extra_keys=False,
    seed=0,
    config_overrides=None,
):
    """Writes a Hugging Face GPT-2 folder; returns the float32 parameters (no prefix)."""
    path.mkdir(parents=True, exist_ok=True)
    if tokenizer is not None and vocab_size is None:
        vocab_size = tokenizer.get_vocab_size()
    params = random_gpt2_params(n_layer, n_head, n_embd, n_positions, vocab_size, seed)
    keyed = {("transformer." + k if prefix else k): v for k, v in params.items()}
    if extra_keys:  # buffers of old checkpoints, to be ignored
        for i in range(n_layer):
            mask = np.tril(np.ones((n_positions, n_positions), np.float32))[None, None]
            keyed[f"transformer.h.{i}.attn.bias" if prefix else f"h.{i}.attn.bias"] = mask
            keyed[
                f"transformer.h.{i}.attn.masked_bias" if prefix else f"h.{i}.attn.masked_bias"
            ] = np.array(-1e4, np.float32)
    write_safetensors(path / "model.safetensors", keyed, dtype)
    eos = tokenizer.token_to_id(EOS) if tokenizer is not None else vocab_size - 1
    config = {
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "vocab_size": vocab_size,
        "n_positions": n_positions,
        "n_ctx": n_positions,
        "n_embd": n_embd,
        "n_layer": n_layer,
        "n_head": n_head,
        "n_inner": None,
        "layer_norm_epsilon": 1e-5,
        "activation_function": "gelu_new",
        "bos_token_id": eos,
        "eos_token_id": eos,
    }
    config.update(config_overrides or {})
    (path / "config.json").write_text(json.dumps(config, indent=2))
    if tokenizer is not None and tokenizer_files == "json":
        tokenizer.save(str(path / "tokenizer.json"))
    elif tokenizer is not None and tokenizer_files == "vocab":
        tokenizer.save_model(str(path))
    return params


def make_fake_hub(root: Path, tokenizer, name: str = "gpt2") -> Path:
    """A local Hugging Face hub cache holding a tiny random model under `name`; returns the
    cache folder (set HF_HUB_CACHE to it)."""
    repo = root / ("models--" + name.replace("/", "--"))
    make_gpt2_folder(repo / "snapshots" / "0000", tokenizer)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text("0000")
    return root
