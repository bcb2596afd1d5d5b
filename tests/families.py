"""Tiny random models of the Llama-shaped families, in Hugging Face layout (config.json +
model.safetensors, key names as transformers saves them), built with NumPy alone.

`scripts/record_families.py` (run once in the peers venv, with torch and transformers) loads
each of these folders into transformers, checks that it finds exactly the keys it expects, and
records its logits and greedy ids into `tests/fixtures/families/`; `tests/test_families.py`
compares gpt_rs against those recordings without torch.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

VOCAB = 256
PROMPT_LEN = 16  # ids scored by forward_tokens
GREEDY_PROMPT = 5
GREEDY_NEW = 20

# name -> (model_type, config overrides, options). Every case differs from the plain Llama in
# what its family adds; sizes stay tiny (C = 64, 2 layers) so fixtures are a few KB.
CASES: dict[str, dict] = {
    # GQA (4 query heads, 2 key/value heads), untied head, default RoPE, transformers 5 keys.
    "llama_gqa": dict(model_type="llama", config=dict(num_key_value_heads=2), style="v5"),
    # Llama 3.1 frequency scaling (active: short original context), tied head, older keys.
    "llama3_tied": dict(
        model_type="llama",
        config=dict(
            num_key_value_heads=2,
            tie_word_embeddings=True,
            rope_scaling=dict(
                rope_type="llama3",
                factor=8.0,
                low_freq_factor=1.0,
                high_freq_factor=4.0,
                original_max_position_embeddings=16,
            ),
            rope_theta=500000.0,
        ),
        style="old",
    ),
    # Linear RoPE scaling, biases everywhere (attention_bias, mlp_bias), one key/value head.
    "llama_linear_mqa_bias": dict(
        model_type="llama",
        config=dict(
            num_key_value_heads=1,
            attention_bias=True,
            mlp_bias=True,
            rope_scaling=dict(type="linear", factor=2.0),
        ),
        style="old",
    ),
    # Mistral with a sliding window shorter than the scored prompt.
    "mistral_window": dict(
        model_type="mistral", config=dict(num_key_value_heads=2, sliding_window=6), style="v5"
    ),
    # Qwen2.5: biases on q/k/v only, tied head.
    "qwen2_tied": dict(
        model_type="qwen2",
        config=dict(num_key_value_heads=2, tie_word_embeddings=True, rope_theta=1000000.0),
        style="old",
    ),
    # Qwen3: per-head q/k RMSNorm, head_dim (24) independent of hidden_size / heads (16).
    "qwen3_headdim": dict(
        model_type="qwen3", config=dict(num_key_value_heads=2, head_dim=24), style="v5"
    ),
    # Gemma 3, transformers 5 keys: local layers (window 6 < the prompt, RoPE base 1e4) around
    # a global one (base 1e6, linear scaling), head_dim 32 != C / H, query_pre_attn_scalar 24,
    # logit softcapping, tied head.
    "gemma3_window": dict(
        model_type="gemma3_text",
        config=dict(
            num_hidden_layers=3,
            num_key_value_heads=2,
            head_dim=32,
            query_pre_attn_scalar=24,
            sliding_window=6,
            layer_types=["sliding_attention", "full_attention", "sliding_attention"],
            final_logit_softcapping=30.0,
            tie_word_embeddings=True,
            rope_parameters=dict(
                full_attention=dict(rope_type="linear", factor=2.0, rope_theta=1000000.0),
                sliding_attention=dict(rope_type="default", rope_theta=10000.0),
            ),
        ),
        style="v5",
    ),
    # Gemma 3, older keys: sliding_window_pattern, rope_local_base_freq; untied head, MQA.
    "gemma3_old": dict(
        model_type="gemma3_text",
        config=dict(
            num_key_value_heads=1,
            head_dim=16,
            query_pre_attn_scalar=16,
            sliding_window=6,
            sliding_window_pattern=2,
            rope_theta=1000000.0,
            rope_local_base_freq=10000.0,
        ),
        style="old",
    ),
    # The GQA Llama stored in bf16 (kept 16-bit by dtype="auto").
    "llama_bf16": dict(
        model_type="llama", config=dict(num_key_value_heads=2), style="v5", dtype="bf16"
    ),
    # Qwen2.5 stored in bf16 (the README's stand-in for Qwen2.5-0.5B-Instruct).
    "qwen2_bf16": dict(
        model_type="qwen2",
        config=dict(num_key_value_heads=2, tie_word_embeddings=True, rope_theta=1000000.0),
        style="old",
        dtype="bf16",
    ),
    # The GQA Llama in two shards with model.safetensors.index.json.
    "llama_sharded": dict(
        model_type="llama", config=dict(num_key_value_heads=2), style="old", shards=2
    ),
}

ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "gemma3_text": "Gemma3ForCausalLM",
}


def config_for(name: str) -> dict:
    case = CASES[name]
    mt = case["model_type"]
    cfg = dict(
        model_type=mt,
        architectures=[ARCHITECTURES[mt]],
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
        rms_norm_eps=1e-6,
        hidden_act="silu",
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        rope_theta=10000.0,
    )
    if mt == "gemma3_text":
        del cfg["hidden_act"]
        cfg["hidden_activation"] = "gelu_pytorch_tanh"
        cfg.update(bos_token_id=2, eos_token_id=1, pad_token_id=0)
    cfg.update(case["config"])
    dtype = "bfloat16" if case.get("dtype") == "bf16" else "float32"
    if mt == "gemma3_text":
        # Its rope settings are per layer kind already in rope_parameters (v5), or flat (old).
        if case["style"] == "v5":
            del cfg["rope_theta"]
        cfg["dtype" if case["style"] == "v5" else "torch_dtype"] = dtype
    elif case["style"] == "v5":
        # transformers 5: rope settings in rope_parameters, the dtype under "dtype".
        rope = dict(rope_type="default", rope_theta=cfg.pop("rope_theta"))
        rope.update(cfg.pop("rope_scaling", None) or {})
        cfg["rope_parameters"] = rope
        cfg["dtype"] = dtype
    else:
        cfg["torch_dtype"] = dtype
    return cfg


def weights_for(name: str, seed: int = 0, cfg: dict | None = None) -> dict[str, np.ndarray]:
    """Random float32 weights with the checkpoint's key names and shapes (of `cfg`, by
    default the case's own config)."""
    cfg = cfg or config_for(name)
    rng = np.random.default_rng([seed, sum(map(ord, name))])
    c, i, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    h, hk = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    d = cfg.get("head_dim") or c // h
    mt = cfg["model_type"]
    qkv_bias = mt == "qwen2" or cfg.get("attention_bias", False)

    def w(*shape, scale=0.15):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    gemma = mt == "gemma3_text"

    def norm(n):
        # Gemma's norms scale by (1 + w): their weights sit around 0, the others' around 1.
        return ((0.0 if gemma else 1.0) + 0.2 * rng.standard_normal(n)).astype(np.float32)

    p = {"model.embed_tokens.weight": w(v, c, scale=1.0)}
    for layer in range(cfg["num_hidden_layers"]):
        pre = f"model.layers.{layer}."
        p[pre + "input_layernorm.weight"] = norm(c)
        p[pre + "post_attention_layernorm.weight"] = norm(c)
        if gemma:
            p[pre + "pre_feedforward_layernorm.weight"] = norm(c)
            p[pre + "post_feedforward_layernorm.weight"] = norm(c)
        for proj, out in (("q_proj", h * d), ("k_proj", hk * d), ("v_proj", hk * d)):
            p[pre + f"self_attn.{proj}.weight"] = w(out, c)
            if qkv_bias:
                p[pre + f"self_attn.{proj}.bias"] = w(out, scale=0.3)
        p[pre + "self_attn.o_proj.weight"] = w(c, h * d)
        if cfg.get("attention_bias", False):
            p[pre + "self_attn.o_proj.bias"] = w(c, scale=0.3)
        if mt in ("qwen3", "gemma3_text"):
            p[pre + "self_attn.q_norm.weight"] = norm(d)
            p[pre + "self_attn.k_norm.weight"] = norm(d)
        p[pre + "mlp.gate_proj.weight"] = w(i, c)
        p[pre + "mlp.up_proj.weight"] = w(i, c)
        p[pre + "mlp.down_proj.weight"] = w(c, i)
        if cfg.get("mlp_bias", False):
            for proj, out in (("gate_proj", i), ("up_proj", i), ("down_proj", c)):
                p[pre + f"mlp.{proj}.bias"] = w(out, scale=0.3)
    p["model.norm.weight"] = norm(c)
    if not cfg["tie_word_embeddings"]:
        p["lm_head.weight"] = w(v, c, scale=0.3)
    return p


def bf16_round(a: np.ndarray) -> np.ndarray:
    """float32 values rounded to the nearest bfloat16 (ties to even), as float32."""
    bits = a.astype(np.float32).view(np.uint32).astype(np.uint64)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16 << 16
    return bits.astype(np.uint32).view(np.float32)


def bf16_bytes(a: np.ndarray) -> np.ndarray:
    """The bfloat16 bit patterns of `a` (rounded), as uint16."""
    return (bf16_round(a).view(np.uint32) >> 16).astype(np.uint16)


def write_safetensors(path: Path, tensors: dict[str, np.ndarray], bf16: bool) -> None:
    """A safetensors file written by hand (the `safetensors` package has no bfloat16 in NumPy)."""
    header, blobs, off = {}, [], 0
    for k in sorted(tensors):
        a = tensors[k]
        data = bf16_bytes(a).tobytes() if bf16 else np.ascontiguousarray(a, "<f4").tobytes()
        header[k] = {
            "dtype": "BF16" if bf16 else "F32",
            "shape": list(a.shape),
            "data_offsets": [off, off + len(data)],
        }
        blobs.append(data)
        off += len(data)
    header["__metadata__"] = {"format": "pt"}
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(len(h).to_bytes(8, "little") + h)
        for b in blobs:
            f.write(b)


def make_folder(name: str, folder: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """Writes case `name` into `folder`; returns its float32 weights (bf16-rounded if bf16)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    case = CASES[name]
    p = weights_for(name, seed)
    bf16 = case.get("dtype") == "bf16"
    (folder / "config.json").write_text(json.dumps(config_for(name), indent=2))
    (folder / "generation_config.json").write_text(
        json.dumps({"bos_token_id": 1, "eos_token_id": [2, 3]})
    )
    shards = case.get("shards", 1)
    if shards == 1:
        write_safetensors(folder / "model.safetensors", p, bf16)
    else:
        keys = sorted(p)
        weight_map = {}
        for s in range(shards):
            fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
            part = {k: p[k] for k in keys[s::shards]}
            write_safetensors(folder / fname, part, bf16)
            weight_map.update({k: fname for k in part})
        (folder / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {}, "weight_map": weight_map}, indent=2)
        )
    return {k: bf16_round(a) for k, a in p.items()} if bf16 else p


def prompt_ids(name: str) -> list[int]:
    rng = np.random.default_rng([7, sum(map(ord, name))])
    return rng.integers(0, VOCAB, PROMPT_LEN).tolist()
