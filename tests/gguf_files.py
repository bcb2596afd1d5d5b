"""GGUF files of the tiny random models in tests/families.py, written with the `gguf`
package's writer the way llama.cpp's converter lays them out (tensor names, q/k rows of
`llama` files permuted for interleaved RoPE, Gemma's `+1` folded into its norms, Llama 3
frequency factors as `rope_freqs.weight`), with each tensor in a chosen GGML type.

`write_gguf` returns the weights the file really holds, dequantized (with the `gguf`
package's reference), in Hugging Face layout: a folder of those is the same model.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import GGUFWriter, quants

TYPES = {
    "f32": T.F32,
    "f16": T.F16,
    "bf16": T.BF16,
    "q4_0": T.Q4_0,
    "q4_1": T.Q4_1,
    "q5_0": T.Q5_0,
    "q5_1": T.Q5_1,
    "q8_0": T.Q8_0,
    "q2_k": T.Q2_K,
    "q3_k": T.Q3_K,
    "q4_k": T.Q4_K,
    "q5_k": T.Q5_K,
    "q6_k": T.Q6_K,
}
# Byte offsets of each K block's f16 scales (the gguf package has no K quantizer: K tensors
# are random blocks with tame scales instead).
K_SCALES = {"q2_k": [80, 82], "q3_k": [108], "q4_k": [0, 2], "q5_k": [0, 2], "q6_k": [208]}
K_SCALE = {"q2_k": 0.02, "q3_k": 0.008, "q4_k": 0.004, "q5_k": 0.002, "q6_k": 0.0015}

ARCH = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gemma3_text": "gemma3"}


def gguf_name(hf: str, gemma: bool) -> str:
    top = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    }
    if hf in top:
        return top[hf]
    _, _, layer, rest = hf.split(".", 3)
    part, suffix = rest.rsplit(".", 1)
    names = {
        "input_layernorm": "attn_norm",
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "self_attn.q_norm": "attn_q_norm",
        "self_attn.k_norm": "attn_k_norm",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
        "post_attention_layernorm": "post_attention_norm" if gemma else "ffn_norm",
        "pre_feedforward_layernorm": "ffn_norm",
        "post_feedforward_layernorm": "post_ffw_norm",
    }
    return f"blk.{layer}.{names[part]}.{suffix}"


def permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's `LlamaModel.permute`: half-split RoPE rows to interleaved pairs."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    return (
        w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def llama3_factors(cfg: dict, head_dim: int) -> np.ndarray:
    """The converter's `rope_freqs.weight` for Llama 3.1 scaling."""
    rs = cfg.get("rope_scaling") or cfg.get("rope_parameters") or {}
    base = cfg.get("rope_theta") or rs.get("rope_theta")
    factor, lo, hi = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
    old = rs["original_max_position_embeddings"]
    freqs = 1.0 / (base ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
    out = []
    for f in freqs:
        wavelen = 2 * math.pi / f
        if wavelen < old / hi:
            out.append(1.0)
        elif wavelen > old / lo:
            out.append(factor)
        else:
            smooth = (old / wavelen - lo) / (hi - lo)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def byte_tokens() -> list[str]:
    """GPT-2's byte-to-unicode characters: a byte-level vocabulary of the 256 bytes."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    table = dict(zip(bs, map(chr, cs)))
    return [table[b] for b in range(256)]


SPM_TEXT = (
    "the quick brown fox jumps over the lazy dog while the cat sleeps on the warm mat and "
    "the rain falls on the plain in spain as the trains run to the station there then they "
    "think that these things are the best thing that the three of them ever thought about "
    "running jumping sleeping thinking raining training station nation notation relation"
)


def spm_vocab() -> tuple[list[str], list[float], list[int]]:
    """A small SentencePiece-style vocabulary (tokens, scores, types): <unk>, <s>, </s>, the
    256 byte tokens, then the pieces of SPM_TEXT's words (with the ▁ prefix) seen at least
    twice or of one character, more frequent first (higher score)."""
    from collections import Counter

    count: Counter = Counter()
    for word in SPM_TEXT.split():
        p = "\u2581" + word
        for i in range(len(p)):
            for j in range(i + 1, min(len(p), i + 6) + 1):
                count[p[i:j]] += 1
    pieces = [
        p for p, c in sorted(count.items(), key=lambda x: (-x[1], x[0])) if c >= 2 or len(p) == 1
    ]
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + pieces
    scores = [0.0] * 259 + [-float(i) for i in range(len(pieces))]
    types = [2, 3, 3] + [6] * 256 + [1] * len(pieces)
    return tokens, scores, types


def write_bpe_tokenizer(folder: Path) -> None:
    """A byte-level BPE tokenizer.json of the 256 byte tokens plus one merge (two spaces, the
    last id): what `gpt-rs quantize` writes into a GGUF file."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    tokens = byte_tokens()
    vocab = {t: i for i, t in enumerate(tokens[:255])}
    vocab["\u0120\u0120"] = 255
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[("\u0120", "\u0120")]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.save(str(folder / "tokenizer.json"))


def store(rng, a: np.ndarray, qtype: str) -> tuple[np.ndarray, T, np.ndarray]:
    """(what to write, its type, the values it holds as float32)."""
    t = TYPES[qtype]
    if qtype == "f32":
        return a, t, a
    if qtype == "f16":
        h = a.astype(np.float16)
        return h, t, h.astype(np.float32)
    if qtype in K_SCALES:
        elems, size = 256, {"q2_k": 84, "q3_k": 110, "q4_k": 144, "q5_k": 176, "q6_k": 210}[qtype]
        rows, k = a.shape
        n = rows * k // elems
        raw = np.frombuffer(rng.bytes(n * size), np.uint8).reshape(n, size).copy()
        for off in K_SCALES[qtype]:
            d = (K_SCALE[qtype] * (0.5 + rng.random(n))).astype(np.float16)
            raw[:, off : off + 2] = d.view(np.uint8).reshape(n, 2)
        data = raw.reshape(rows, k // elems * size)
        return data, t, quants.dequantize(data, t).astype(np.float32).reshape(a.shape)
    data = quants.quantize(a, t)
    return data, t, quants.dequantize(data, t).astype(np.float32).reshape(a.shape)


def spm_model(path: Path) -> Path:
    """A tiny `llama` GGUF file with the SentencePiece vocabulary of `spm_vocab()`."""
    import families as fam

    cfg = fam.config_for("llama_gqa")
    cfg.update(vocab_size=len(spm_vocab()[0]), tokenizer="spm")
    write_gguf(path, cfg, fam.weights_for("llama_gqa", cfg=cfg))
    return path


SPM_CORPUS = [
    "",
    "the cat",
    "The quick brown fox jumps over the lazy dog.",
    "thinking about trains in spain",
    "  leading spaces and  double  spaces ",
    "naïve café 日本 😀",
    "line one\nline two\ttab",
    "<s>hello</s> there",
    "xyzzy qwerty zzz",
]


def write_gguf(
    path: Path,
    cfg: dict,
    weights: dict[str, np.ndarray],
    qtype: Callable[[str, tuple], str] = lambda name, shape: "f32",
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Writes `weights` (Hugging Face names, float32) as a GGUF file of `cfg`'s family;
    `qtype(name, shape)` picks each matrix's type. Returns the weights as stored, in HF layout."""
    rng = np.random.default_rng(seed)
    mt = cfg["model_type"]
    arch = ARCH[mt]
    gemma = arch == "gemma3"
    h, hk, c = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["hidden_size"]
    d = cfg.get("head_dim") or c // h
    w = GGUFWriter(str(path), arch)
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg.get("max_position_embeddings", 64))
    w.add_embedding_length(c)
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(h)
    w.add_head_count_kv(hk)
    w.add_key_length(d)
    w.add_value_length(d)
    w.add_layer_norm_rms_eps(cfg.get("rms_norm_eps", 1e-6))
    rope = cfg.get("rope_parameters") or {}
    if gemma:
        glob = rope.get("full_attention", {})
        w.add_rope_freq_base(glob.get("rope_theta", cfg.get("rope_theta", 1e6)))
        if glob.get("rope_type") == "linear":
            w.add_rope_scaling_type(__import__("gguf").RopeScalingType.LINEAR)
            w.add_rope_scaling_factor(glob["factor"])
        local = rope.get("sliding_attention", {}).get("rope_theta")
        w.add_rope_freq_base_swa(local or cfg.get("rope_local_base_freq", 10000.0))
        w.add_sliding_window(cfg["sliding_window"])
        if "layer_types" in cfg:
            w.add_sliding_window_pattern([t == "sliding_attention" for t in cfg["layer_types"]])
        else:
            w.add_sliding_window_pattern(cfg.get("sliding_window_pattern", 6))
        if cfg.get("final_logit_softcapping"):
            w.add_final_logit_softcapping(cfg["final_logit_softcapping"])
    else:
        scaling = cfg.get("rope_scaling") or {
            k: v for k, v in rope.items() if k not in ("rope_theta",)
        }
        w.add_rope_freq_base(cfg.get("rope_theta") or rope.get("rope_theta", 10000.0))
        kind = scaling.get("rope_type") or scaling.get("type") or "default"
        if kind == "linear":
            w.add_rope_scaling_type(__import__("gguf").RopeScalingType.LINEAR)
            w.add_rope_scaling_factor(scaling["factor"])
    if cfg.get("tokenizer") == "spm":
        tokens, scores, types = spm_vocab()
        assert len(tokens) == cfg["vocab_size"], "vocab_size must be len(spm_vocab()[0])"
        w.add_tokenizer_model("llama")
        w.add_token_list(tokens)
        w.add_token_scores(scores)
        w.add_token_types(types)
        w.add_unk_token_id(0)
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        w.add_add_space_prefix(True)
        w.add_add_bos_token(True)
    else:
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("qwen2")
        tokens = byte_tokens() + [f"<t{i}>" for i in range(256, cfg["vocab_size"])]
        merges = []
        if cfg["vocab_size"] > 256:
            # One real merge (two spaces): llama.cpp refuses a BPE vocabulary without merges.
            tokens[256], merges = "\u0120\u0120", ["\u0120 \u0120"]
        w.add_token_list(tokens[: cfg["vocab_size"]])
        w.add_token_types([1] * cfg["vocab_size"])
        w.add_token_merges(merges)
        w.add_bos_token_id(cfg.get("bos_token_id", 1))
        w.add_eos_token_id(cfg.get("eos_token_id", 2))
    stored = {}
    for name in sorted(weights):
        a = weights[name]
        if name.endswith("norm.weight") and gemma:
            a = a + np.float32(1.0)  # the converter folds Gemma's (1 + w) into the file
        if arch == "llama" and name.endswith(("q_proj.weight", "q_proj.bias")):
            a = permute(a, h)
        if arch == "llama" and name.endswith(("k_proj.weight", "k_proj.bias")):
            a = permute(a, hk)
        kind = qtype(name, a.shape) if a.ndim == 2 else "f32"
        data, t, held = store(rng, np.ascontiguousarray(a), kind)
        if t in (T.F32, T.F16):
            w.add_tensor(gguf_name(name, gemma), data)
        else:
            w.add_tensor(gguf_name(name, gemma), data, raw_shape=data.shape, raw_dtype=t)
        if name.endswith("norm.weight") and gemma:
            held = held - np.float32(1.0)
        if arch == "llama" and name.endswith(("q_proj.weight", "q_proj.bias")):
            held = unpermute(held, h)
        if arch == "llama" and name.endswith(("k_proj.weight", "k_proj.bias")):
            held = unpermute(held, hk)
        stored[name] = held
    scaling = cfg.get("rope_scaling") or rope
    if arch == "llama" and scaling.get("rope_type") == "llama3":
        w.add_tensor("rope_freqs.weight", llama3_factors(cfg, d))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return stored


# The models scripts/record_kquant_llama_cpp.py quantizes with llama.cpp's mixes: 8 layers (so
# the mixes' per-layer choices show), an MLP of 640 (rows that are not whole K blocks).
MIX_SHAPE = dict(
    hidden_size=256,
    intermediate_size=640,
    num_hidden_layers=8,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=64,
)

GPT2_TOP = {
    "wte.weight": "token_embd.weight",
    "wpe.weight": "position_embd.weight",
    "ln_f.weight": "output_norm.weight",
    "ln_f.bias": "output_norm.bias",
    "lm_head.weight": "output.weight",
}
GPT2_LAYER = {
    "ln_1": "attn_norm",
    "attn.c_attn": "attn_qkv",
    "attn.c_proj": "attn_output",
    "ln_2": "ffn_norm",
    "mlp.c_fc": "ffn_up",
    "mlp.c_proj": "ffn_down",
}
GPT2_CONV1D = ("c_attn.weight", "c_proj.weight", "c_fc.weight")


def write_gpt2_gguf(
    path: Path,
    params: dict[str, np.ndarray],
    n_head: int,
    n_positions: int,
    qtype: Callable[[str, tuple], str] = lambda name, shape: "f32",
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Writes GPT-2 weights (`gpt2_fixture.random_gpt2_params` names, HF Conv1D layout) as a
    `gpt2` GGUF file laid out as llama.cpp's converter writes it: Conv1D matrices transposed
    to `[out, in]`, no `output.weight` (tied), a byte-level vocabulary of the 256 bytes and
    one merge (two spaces, id 256; the end-of-text id) with GPT-2's pre-tokenizer. Returns the
    weights the file holds, in HF layout."""
    rng = np.random.default_rng(seed)
    c = params["wte.weight"].shape[1]
    vocab = params["wte.weight"].shape[0]
    n_layer = sum(1 for k in params if k.endswith(".ln_1.weight"))
    w = GGUFWriter(str(path), "gpt2")
    w.add_block_count(n_layer)
    w.add_context_length(n_positions)
    w.add_embedding_length(c)
    w.add_feed_forward_length(params["h.0.mlp.c_fc.weight"].shape[1])
    w.add_head_count(n_head)
    w.add_layer_norm_eps(1e-5)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    assert vocab == 257, "the file's vocabulary is the 256 byte tokens and one merge"
    w.add_token_list(byte_tokens() + ["\u0120\u0120"])
    w.add_token_types([1] * 257)
    w.add_token_merges(["\u0120 \u0120"])
    w.add_bos_token_id(256)
    w.add_eos_token_id(256)
    stored = {}
    for name in sorted(params):
        a = params[name]
        conv = name.endswith(GPT2_CONV1D)
        if conv:
            a = a.T
        if name in GPT2_TOP:
            gname = GPT2_TOP[name]
        else:
            _, layer, rest = name.split(".", 2)
            part, suffix = rest.rsplit(".", 1)
            gname = f"blk.{layer}.{GPT2_LAYER[part]}.{suffix}"
        kind = qtype(name, a.shape) if a.ndim == 2 else "f32"
        data, t, held = store(rng, np.ascontiguousarray(a), kind)
        if t in (T.F32, T.F16):
            w.add_tensor(gname, data)
        else:
            w.add_tensor(gname, data, raw_shape=data.shape, raw_dtype=t)
        stored[name] = np.ascontiguousarray(held.T) if conv else held
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return stored
