"""GGUF files: random-weight files of every supported architecture (written by
tests/gguf_files.py with the `gguf` package, in llama.cpp's converter layout) against the
same models loaded from Hugging Face folders; every block type in place; the tokenizer from
the metadata; malformed files (clear errors, never a crash), and a fuzz run over mutated
files."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import families as fam
import numpy as np
import pytest

import gpt_rs

gguf = pytest.importorskip("gguf")
import gguf_files as gf  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

# Cases whose every setting survives the GGUF metadata (Mistral's sliding window and
# query_pre_attn_scalar != head_dim do not: llama.cpp's files cannot hold them).
CASES = [
    "llama_gqa",
    "llama3_tied",
    "llama_linear_mqa_bias",
    "qwen2_tied",
    "qwen3_headdim",
    "gemma3_old",
    "gemma3_window",
]


def case_config(name: str) -> dict:
    cfg = fam.config_for(name)
    if cfg["model_type"] == "gemma3_text":
        cfg["query_pre_attn_scalar"] = cfg["head_dim"]  # what llama.cpp uses for Gemma 3
    return cfg


def hf_folder(path: Path, cfg: dict, weights: dict) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(cfg))
    fam.write_safetensors(path / "model.safetensors", weights, bf16=False)
    return path


def scaled_err(got, want):
    return float(np.max(np.abs(got - want))) / max(1.0, float(np.abs(want).max()))


def pair(tmp_path, name, cfg=None, qtype=lambda n, s: "f32", seed=0):
    """(GGUF model, HF-folder model) of the same weights."""
    cfg = cfg or case_config(name)
    weights = fam.weights_for(name, cfg=cfg)
    stored = gf.write_gguf(tmp_path / f"{name}.gguf", cfg, weights, qtype, seed)
    folder = hf_folder(tmp_path / name, cfg, stored)
    return gpt_rs.load_model(tmp_path / f"{name}.gguf"), gpt_rs.load_model(folder)


@pytest.mark.parametrize("name", CASES)
def test_f32_gguf_matches_hf_folder_on_every_backend(tmp_path, name):
    g, h = pair(tmp_path, name)
    assert g.config["model_type"] == h.config["model_type"]
    assert_same_model(g, h, fam.prompt_ids(name), name)


def assert_same_model(g, h, ids, what):
    """Logits equal to f32 rounding on every backend, the same greedy tokens."""
    for backend in gpt_rs.list_backends():
        g.backend = h.backend = backend
        err = scaled_err(g.forward_tokens(ids), h.forward_tokens(ids))
        assert err <= 1e-5, f"{what} on {backend}: {err:.2e}"
    g.backend = h.backend = None
    assert g.generate_tokens(ids[:5], 12, temperature=0) == h.generate_tokens(
        ids[:5], 12, temperature=0
    )


LEGACY_MIX = {
    "q_proj": "q8_0",
    "k_proj": "q5_0",
    "v_proj": "q4_0",
    "o_proj": "q4_1",
    "gate_proj": "q5_1",
    "up_proj": "q8_0",
    "down_proj": "q4_0",
    "embed_tokens": "q8_0",
    "lm_head": "f16",
}


def mix(table):
    def pick(name, shape):
        for key, t in table.items():
            if key in name:
                return t
        return "f32"

    return pick


@pytest.mark.parametrize("name", ["llama_gqa", "qwen2_tied", "gemma3_old"])
def test_quantized_gguf_matches_dequantized_folder(tmp_path, name):
    """q, k and v in three different block types (one fused projection of three parts)."""
    g, h = pair(tmp_path, name, qtype=mix(LEGACY_MIX))
    assert g.dtype == "q8_0"
    ids = fam.prompt_ids(name)
    h.backend = "cpu-portable"
    want = h.forward_tokens(ids)
    check_quantized(g, ids, want, name)


def check_quantized(g, ids, want, what):
    """Backends that dequantize (f32 activations) give the dequantized folder's logits; `cpu`
    multiplies int8-quantized activations, as llama.cpp does: its SIMD kernels must agree with
    its scalar reference at the model level too, and stay near the f32 result.

    The kernels equal the reference to f32 rounding (`test_quant.py`, `backends.rs`), but at
    the model level a last-bit difference in one activation can move its int8 level, and the
    next layer amplifies that: SIMD and scalar runs agree only to a fraction of the int8 error
    itself (measured: 1e-3 of scaled error where the int8 error is 6e-2, with the f32 parts
    of the model alone changing between levels). A wrong kernel is off by the int8 error's
    order or more."""
    for backend in gpt_rs.list_backends():
        if backend != "cpu":
            g.backend = backend
            err = scaled_err(g.forward_tokens(ids), want)
            assert err <= 1e-4, f"{what} on {backend}: {err:.2e}"
    g.backend = "cpu"
    got = {}
    previous = gpt_rs.get_simd_level()
    try:
        for level in ("avx512", "avx2", "scalar"):
            gpt_rs.set_simd_level(level)
            got[level] = g.forward_tokens(ids)
    finally:
        gpt_rs.set_simd_level(previous)
    int8_err = scaled_err(got["scalar"], want)
    for level in ("avx512", "avx2"):
        err = scaled_err(got[level], got["scalar"])
        assert err <= 0.15 * int8_err + 1e-5, f"{what}: cpu at {level} vs scalar: {err:.2e}"
    agree = (got["avx512"].argmax(-1) == want.argmax(-1)).mean()
    assert agree >= 0.75, f"{what}: int8 activations agree on top-1 for {agree:.0%}"
    g.backend = None


K_CONFIG = dict(
    hidden_size=256,
    intermediate_size=512,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=64,
)
K_MIX = {
    "q_proj": "q4_k",
    "k_proj": "q5_k",
    "v_proj": "q6_k",
    "o_proj": "q3_k",
    "gate_proj": "q2_k",
    "up_proj": "q4_k",
    "down_proj": "q6_k",
    "embed_tokens": "q6_k",
}


def test_k_quant_gguf_matches_dequantized_folder(tmp_path):
    cfg = fam.config_for("qwen2_tied")
    cfg.update(K_CONFIG)
    g, h = pair(tmp_path, "qwen2_tied", cfg=cfg, qtype=mix(K_MIX))
    ids = fam.prompt_ids("qwen2_tied")
    h.backend = "cpu-portable"
    want = h.forward_tokens(ids)
    check_quantized(g, ids, want, "k-quants")


@pytest.mark.parametrize("qtype", ["q8_0", "q4_0", "q5_0", "q4_1", "q5_1"])
def test_quantize_at_load_equals_the_gguf_quantizer(tmp_path, qtype):
    """load_model(folder, dtype=q) gives the blocks `gguf.quants.quantize` writes: the same
    logits as the GGUF file of those blocks, on the `cpu` kernels."""
    name = "qwen2_tied"  # no q/k permutation: the same rows in the same order
    cfg = case_config(name)
    weights = fam.weights_for(name, cfg=cfg)
    gf.write_gguf(tmp_path / "q.gguf", cfg, weights, lambda n, s: qtype)
    folder = hf_folder(tmp_path / "f32", cfg, weights)
    q = gpt_rs.load_model(folder, dtype=qtype)
    g = gpt_rs.load_model(tmp_path / "q.gguf")
    assert q.dtype == g.dtype == qtype
    ids = fam.prompt_ids(name)
    np.testing.assert_array_equal(q.forward_tokens(ids), g.forward_tokens(ids))


def test_dtype_conversions_of_a_quantized_file(tmp_path):
    g, _ = pair(tmp_path, "qwen2_tied", qtype=mix(LEGACY_MIX))
    path = tmp_path / "qwen2_tied.gguf"
    ids = fam.prompt_ids("qwen2_tied")
    f32 = gpt_rs.load_model(path, dtype="f32")
    assert f32.dtype == "f32"
    # Dequantized to f32 on the f32 kernels: the portable backend's quantized result.
    g.backend = "cpu-portable"
    assert scaled_err(f32.forward_tokens(ids), g.forward_tokens(ids)) <= 1e-5
    with pytest.raises(ValueError, match="dtype must be"):
        gpt_rs.load_model(path, dtype="q4_k_m")


GPT2_SHAPE = dict(n_layer=2, n_head=4, n_embd=64, n_positions=32, vocab_size=257)
GPT2_IDS = [3, 100, 7, 256, 41, 200, 9, 18, 77, 5]


def gpt2_pair(tmp_path, qtype=lambda n, s: "f32"):
    """(GGUF model, HF-folder model) of the same GPT-2 weights."""
    import gpt2_fixture as g2

    s = GPT2_SHAPE
    params = g2.random_gpt2_params(**s, seed=3)
    stored = gf.write_gpt2_gguf(tmp_path / "gpt2.gguf", params, s["n_head"], 32, qtype)
    folder = tmp_path / "gpt2"
    folder.mkdir()
    g2.write_safetensors(folder / "model.safetensors", stored, "float32")
    config = dict(s, model_type="gpt2", layer_norm_epsilon=1e-5, eos_token_id=256)
    (folder / "config.json").write_text(json.dumps(config))
    return gpt_rs.load_model(tmp_path / "gpt2.gguf"), gpt_rs.load_model(folder)


def test_gpt2_gguf_matches_hf_folder_on_every_backend(tmp_path):
    g, h = gpt2_pair(tmp_path)
    assert g.config["model_type"] == "gpt2" and g.config["n_embd"] == 64
    assert g.eos_token_ids == h.eos_token_ids == [256]
    assert_same_model(g, h, GPT2_IDS, "gpt2")
    tok = g.tokenizer
    # GPT-2's split: "a", "  " (a run of spaces but its last), " b": one merge.
    assert tok.encode("a   b") == [ord("a"), 256, 32, ord("b")]
    assert tok.decode(tok.encode("héllo\n")) == "héllo\n"


GPT2_MIX = {
    "c_attn": "q8_0",
    "attn.c_proj": "q5_0",
    "c_fc": "q4_1",
    "mlp.c_proj": "q4_0",
    "wte": "q8_0",
    "wpe": "f16",
}


def test_quantized_gpt2_gguf_matches_dequantized_folder(tmp_path):
    g, h = gpt2_pair(tmp_path, mix(GPT2_MIX))
    assert g.dtype == "q8_0"
    ids = GPT2_IDS
    h.backend = "cpu-portable"
    check_quantized(g, ids, h.forward_tokens(ids), "gpt2")


def test_tokenizer_and_metadata_from_the_file(tmp_path):
    g, _ = pair(tmp_path, "qwen2_tied")
    tok = g.tokenizer
    assert tok is not None and tok.vocab_size == 256
    text = "héllo wörld\n  tabs\tand 123"
    ids = tok.encode(text)
    assert ids == list(text.encode())  # a byte vocabulary without merges
    assert tok.decode(ids) == text
    assert g.config["bos_token_id"] == 1 and g.config["eos_token_id"] == 2


# ---------------------------------------------------------------- malformed files


def small_file(tmp_path) -> bytes:
    cfg = case_config("qwen2_tied")
    gf.write_gguf(tmp_path / "ok.gguf", cfg, fam.weights_for("qwen2_tied", cfg=cfg))
    return (tmp_path / "ok.gguf").read_bytes()


def load_bytes(tmp_path, data: bytes, name="bad.gguf"):
    p = tmp_path / name
    p.write_bytes(data)
    return gpt_rs.load_model(p)


def header_end(data: bytes) -> int:
    """Offset of the first tensor info (after the metadata)."""
    return data.index(b"token_embd.weight") - 8


def test_malformed_headers(tmp_path):
    data = small_file(tmp_path)
    cases = {
        "magic": (b"GGUX" + data[4:], "magic"),
        "version 1": (data[:4] + struct.pack("<I", 1) + data[8:], "version 1"),
        "version 4": (data[:4] + struct.pack("<I", 4) + data[8:], "version 4"),
        "tensor count": (data[:8] + struct.pack("<Q", 1 << 60) + data[16:], "tensor count"),
        "metadata count": (data[:16] + struct.pack("<Q", 1 << 60) + data[24:], "metadata count"),
        "empty": (b"", "magic"),
        "header only": (data[:20], "more than the 4 bytes left"),
    }
    # The first key's string length, made larger than the file.
    cases["string length"] = (data[:24] + struct.pack("<Q", 1 << 40) + data[32:], "length")
    for what, (bad, message) in cases.items():
        with pytest.raises(ValueError, match=message) as e:
            load_bytes(tmp_path, bad)
        assert "bad.gguf" in str(e.value), what


def test_truncated_anywhere(tmp_path):
    data = small_file(tmp_path)
    for cut in sorted({1, 3, 4, 8, 23, 24, 100, 1000, len(data) // 2, len(data) - 1}):
        with pytest.raises(ValueError, match="bad.gguf"):
            load_bytes(tmp_path, data[:cut])


def patch_tensor(data: bytes, name: str, dims=None, ggml_type=None, offset=None) -> bytes:
    """The file with one tensor info's dims / type / offset replaced (same rank)."""
    key = name.encode()
    i = data.index(struct.pack("<Q", len(key)) + key) + 8 + len(key)
    (n_dims,) = struct.unpack_from("<I", data, i)
    out = bytearray(data)
    j = i + 4
    if dims is not None:
        assert len(dims) == n_dims
        struct.pack_into(f"<{n_dims}Q", out, j, *dims)
    j += 8 * n_dims
    if ggml_type is not None:
        struct.pack_into("<I", out, j, ggml_type)
    if offset is not None:
        struct.pack_into("<Q", out, j + 4, offset)
    return bytes(out)


def tensor_info(data: bytes, name: str):
    key = name.encode()
    i = data.index(struct.pack("<Q", len(key)) + key) + 8 + len(key)
    (n_dims,) = struct.unpack_from("<I", data, i)
    dims = struct.unpack_from(f"<{n_dims}Q", data, i + 4)
    t, off = struct.unpack_from("<IQ", data, i + 4 + 8 * n_dims)
    return dims, t, off


def test_malformed_tensor_infos(tmp_path):
    data = small_file(tmp_path)
    name = "blk.0.attn_q.weight"
    dims, _, off = tensor_info(data, name)
    _, _, off_k = tensor_info(data, "blk.0.attn_k.weight")
    cases = [
        (patch_tensor(data, name, dims=(1 << 62, 1 << 62)), "overflows|dimension"),
        (patch_tensor(data, name, offset=1 << 40), "past the end"),
        (patch_tensor(data, name, offset=off + 1), "alignment"),
        (patch_tensor(data, name, offset=off_k), "overlap"),
        (patch_tensor(data, name, ggml_type=16), "IQ2_XXS"),
        (patch_tensor(data, name, ggml_type=999), "type 999"),
        (patch_tensor(data, name, dims=(dims[0] + 32, dims[1] - 8)), "shape|overlap|past"),
    ]
    for bad, message in cases:
        with pytest.raises(ValueError, match=message):
            load_bytes(tmp_path, bad)


def test_missing_tensor_and_vocab_mismatch(tmp_path):
    cfg = case_config("qwen2_tied")
    weights = fam.weights_for("qwen2_tied", cfg=cfg)
    del weights["model.layers.1.mlp.up_proj.weight"]
    gf.write_gguf(tmp_path / "missing.gguf", cfg, weights)
    with pytest.raises(
        ValueError,
        match="missing tensor 'blk.1.ffn_up.weight' \\('model.layers.1.mlp.up_proj.weight'\\)",
    ):
        gpt_rs.load_model(tmp_path / "missing.gguf")
    small = dict(cfg, vocab_size=200)
    weights = fam.weights_for("qwen2_tied", cfg=cfg)
    gf.write_gguf(tmp_path / "vocab.gguf", small, weights)  # 200 tokens, 256 embedding rows
    with pytest.raises(ValueError, match="tokenizer has 200 tokens"):
        gpt_rs.load_model(tmp_path / "vocab.gguf")


def test_unknown_architecture_and_missing_file(tmp_path):
    data = small_file(tmp_path)
    bad = data.replace(b"qwen2.", b"qwenX.").replace(
        b"\x05\x00\x00\x00\x00\x00\x00\x00qwen2", b"\x05\x00\x00\x00\x00\x00\x00\x00mamba"
    )
    with pytest.raises(ValueError, match="architecture 'mamba' is not supported"):
        load_bytes(tmp_path, bad)
    with pytest.raises(FileNotFoundError):
        gpt_rs.load_model(tmp_path / "nope.gguf")


def test_fuzz_mutated_files_never_crash(tmp_path):
    """Random byte flips, cuts and splices of a valid file: each load raises ValueError (or
    loads a model) and never takes the interpreter down."""
    data = small_file(tmp_path)
    rng = np.random.default_rng(99)
    header = header_end(data) + 400  # mostly the header and tensor infos
    outcomes = {"ValueError": 0, "loaded": 0}
    runs = 3000
    for i in range(runs):
        b = bytearray(data)
        for _ in range(rng.integers(1, 6)):
            kind = rng.integers(0, 4)
            at = int(rng.integers(0, header))
            if kind == 0:
                b[at] = int(rng.integers(0, 256))
            elif kind == 1:
                b[at : at + 8] = struct.pack("<Q", int(rng.integers(0, 1 << 63)))
            elif kind == 2:
                b[at : at + 4] = struct.pack("<I", int(rng.integers(0, 40)))
            else:
                del b[at : at + int(rng.integers(1, 64))]
        try:
            load_bytes(tmp_path, bytes(b), f"fuzz{i % 4}.gguf")
            outcomes["loaded"] += 1
        except ValueError:
            outcomes["ValueError"] += 1
    print(f"{runs} mutated files: {outcomes}")
    assert sum(outcomes.values()) == runs


def test_sentencepiece_tokenizer_matches_llama_cpp(tmp_path):
    """`tokenizer.ggml.model = "llama"` (SentencePiece BPE with byte fallback, as Llama 2 and
    Gemma files have): llama.cpp's ids, recorded by scripts/record_gguf_llama_cpp.py."""
    want = json.loads((Path(__file__).parent / "fixtures" / "gguf" / "spm.json").read_text())
    model = gpt_rs.load_model(gf.spm_model(tmp_path / "spm.gguf"))
    tok = model.tokenizer
    for text in gf.SPM_CORPUS:
        ids = tok.encode(text)
        assert ids[:1] == [1], "add_bos_token puts <s> first"
        assert ids[1:] == want[text], repr(text)
        if "<s>" not in text:
            assert tok.decode(ids[1:]) == text


@pytest.mark.parametrize("name", ["qwen2_tied", "llama_gqa", "gemma3_old"])
@pytest.mark.parametrize("qtype", ["q8_0", "q4_0"])
def test_quantize_model_writes_a_gguf_that_loads_back(tmp_path, name, qtype):
    """`gpt-rs quantize`: the written file holds the blocks `load_model(folder, dtype=q)`
    makes, under llama.cpp's layout; loaded back, the logits are the same."""
    cfg = case_config(name)
    folder = hf_folder(tmp_path / name, cfg, fam.weights_for(name, cfg=cfg))
    gf.write_bpe_tokenizer(folder)
    out = tmp_path / "out.gguf"
    gpt_rs.quant.quantize_model(folder, out, qtype)
    g = gpt_rs.load_model(out)
    q = gpt_rs.load_model(folder, dtype=qtype)
    assert g.dtype == q.dtype == qtype
    ids = fam.prompt_ids(name)
    err = scaled_err(g.forward_tokens(ids), q.forward_tokens(ids))
    assert err <= 1e-5, f"{name} {qtype}: {err:.2e}"
    from tokenizers import Tokenizer

    hf = Tokenizer.from_file(str(folder / "tokenizer.json"))
    for text in ["x    y", "tabs\t\tand  spaces   ", "héllo"]:
        assert g.tokenizer.encode(text) == hf.encode(text).ids, repr(text)
    assert 255 in g.tokenizer.encode("x    y")  # the merge applies
    # What llama.cpp reads: the gguf package's own reader agrees on names, types and shapes.
    reader = gguf.GGUFReader(str(out))
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.0.attn_q.weight"] == qtype.upper()
    assert types["blk.0.attn_norm.weight"] == "F32"
    if name == "llama_gqa":  # q/k rows permuted for interleaved RoPE, as the converter does
        q_rows = gguf.quants.dequantize(
            next(t for t in reader.tensors if t.name == "blk.0.attn_q.weight").data,
            gguf.GGMLQuantizationType[qtype.upper()],
        )
        w = fam.weights_for(name, cfg=cfg)["model.layers.0.self_attn.q_proj.weight"]
        want = gf.permute(w, cfg["num_attention_heads"])
        blocks = gguf.quants.quantize(want, gguf.GGMLQuantizationType[qtype.upper()])
        np.testing.assert_array_equal(
            q_rows, gguf.quants.dequantize(blocks, gguf.GGMLQuantizationType[qtype.upper()])
        )


@pytest.mark.parametrize("name", ["qwen2_tied", "llama_gqa"])
@pytest.mark.parametrize("recipe", ["q4_k_m", "q5_k_m"])
def test_k_mixes_give_llama_cpps_types_and_a_close_model(tmp_path, name, recipe):
    """`quantize_model(..., "q4_k_m")` picks each tensor's type as llama.cpp's
    `llama_model_quantize` does for the same model (recorded by
    scripts/record_kquant_llama_cpp.py: Q6_K logits, Q6_K attn_v/ffn_down on the sensitive
    layers, the 32-weight fallbacks for the 640-wide MLP rows), and the result runs close to
    the f32 model."""
    want = json.loads(
        (Path(__file__).parent / "fixtures" / "gguf" / "kquant_mixes.json").read_text()
    )
    cfg = fam.config_for(name)
    cfg.update(gf.MIX_SHAPE)
    folder = hf_folder(tmp_path / "m", cfg, fam.weights_for(name, cfg=cfg))
    gf.write_bpe_tokenizer(folder)
    out = tmp_path / "out.gguf"
    gpt_rs.quant.quantize_model(folder, out, recipe)
    reader = gguf.GGUFReader(str(out))
    got = {t.name: t.tensor_type.name.lower() for t in reader.tensors}
    assert got == want[name][recipe]
    file_type = reader.fields["general.file_type"]
    assert int(file_type.parts[file_type.data[0]][0]) == {"q4_k_m": 15, "q5_k_m": 17}[recipe]
    ids = fam.prompt_ids(name)
    f32 = gpt_rs.load_model(folder).forward_tokens(ids)
    q = gpt_rs.load_model(out).forward_tokens(ids)
    # The same model, not garbage (random 8-layer models amplify 4-bit noise: measured
    # correlation 0.67-0.92 with the f32 logits; an unrelated model gives about 0).
    assert np.corrcoef(q.reshape(-1), f32.reshape(-1))[0, 1] >= 0.5


def file_weights(path) -> dict[str, np.ndarray]:
    """Every matrix of a GGUF file, dequantized by the `gguf` reference."""
    reader = gguf.GGUFReader(str(path))
    return {
        t.name: gguf.quants.dequantize(t.data, t.tensor_type).reshape(-1)
        for t in reader.tensors
        if len(t.shape) == 2
    }


@pytest.mark.parametrize("recipe", ["q4_k_m", "q5_k_m"])
def test_k_mix_error_no_worse_than_llama_quantize(tmp_path, recipe):
    """The whole file's weight error against llama.cpp's `llama_model_quantize` of the same
    f32 weights (the peers venv): gpt_rs's file is no further from the f32 weights."""
    llama_cpp = pytest.importorskip("llama_cpp")
    import ctypes

    cfg = fam.config_for("qwen2_tied")
    cfg.update(gf.MIX_SHAPE)
    weights = fam.weights_for("qwen2_tied", cfg=cfg)
    gf.write_gguf(tmp_path / "f32.gguf", cfg, weights)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = {"q4_k_m": 15, "q5_k_m": 17}[recipe]
    rc = llama_cpp.llama_model_quantize(
        str(tmp_path / "f32.gguf").encode(), str(tmp_path / "l.gguf").encode(), ctypes.byref(params)
    )
    assert rc == 0
    folder = hf_folder(tmp_path / "m", cfg, weights)
    gf.write_bpe_tokenizer(folder)
    gpt_rs.quant.quantize_model(folder, tmp_path / "g.gguf", recipe)
    exact = file_weights(tmp_path / "f32.gguf")
    theirs, ours = file_weights(tmp_path / "l.gguf"), file_weights(tmp_path / "g.gguf")
    assert theirs.keys() == ours.keys() == exact.keys()
    err = lambda w: sum(float(np.sum((w[n] - exact[n]) ** 2.0)) for n in exact)  # noqa: E731
    assert err(ours) <= err(theirs), f"{recipe}: {err(ours):.4e} vs llama.cpp {err(theirs):.4e}"


def test_quantize_model_writes_gpt2(tmp_path):
    """A GPT-2 folder (Conv1D `[in, out]` weights, `transformer.` keys) as a `gpt2` GGUF file:
    matrices transposed to `[out, in]` and quantized as the gguf package's quantizer does,
    position embeddings F32, the head tied; loaded back it is the same model to Q8_0 error,
    and llama.cpp runs it (where installed)."""
    import gpt2_fixture as g2

    folder = tmp_path / "gpt2"
    params = g2.make_gpt2_folder(folder, vocab_size=256, n_positions=32)
    gf.write_bpe_tokenizer(folder)
    out = tmp_path / "gpt2.gguf"
    gpt_rs.quant.quantize_model(folder, out, "q8_0")
    reader = gguf.GGUFReader(str(out))
    tensors = {t.name: t for t in reader.tensors}
    assert "output.weight" not in tensors
    assert tensors["position_embd.weight"].tensor_type.name == "F32"
    qkv = tensors["blk.1.attn_qkv.weight"]
    assert qkv.tensor_type.name == "Q8_0" and list(qkv.shape) == [64, 192]
    want = gguf.quants.quantize(
        np.ascontiguousarray(params["h.1.attn.c_attn.weight"].T), gguf.GGMLQuantizationType.Q8_0
    )
    np.testing.assert_array_equal(qkv.data.reshape(-1), want.reshape(-1))
    g, f32 = gpt_rs.load_model(out), gpt_rs.load_model(folder)
    assert g.config["model_type"] == "gpt2" and g.dtype == "q8_0"
    ids = [5, 99, 17, 255, 3, 64, 200, 31]
    ours = g.forward_tokens(ids)
    assert scaled_err(ours, f32.forward_tokens(ids)) <= 0.05
    assert g.tokenizer.encode("x    y") == f32.tokenizer.encode("x    y")
    try:
        import llama_cpp
    except ImportError:
        return
    llm = llama_cpp.Llama(str(out), n_ctx=32, logits_all=True, verbose=False)
    llm.eval(ids)
    assert scaled_err(ours, np.array(llm.scores[: len(ids)])) <= 0.05


def test_quantize_model_errors(tmp_path):
    cfg = case_config("qwen2_tied")
    folder = hf_folder(tmp_path / "m", cfg, fam.weights_for("qwen2_tied", cfg=cfg))
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        gpt_rs.quant.quantize_model(folder, tmp_path / "o.gguf", "q8_0")
    gf.write_bpe_tokenizer(folder)
    with pytest.raises(ValueError, match="quantizing to q2_k is not supported"):
        gpt_rs.quant.quantize_model(folder, tmp_path / "o.gguf", "q2_k")
    with pytest.raises(ValueError, match="unknown quantization type 'q4_k_x'.*q4_k_m"):
        gpt_rs.quant.quantize_model(folder, tmp_path / "o.gguf", "q4_k_x")
    assert not (tmp_path / "o.gguf").exists()


def test_quantized_file_loads_in_llama_cpp(tmp_path):
    """Round trip through llama.cpp, where llama-cpp-python is installed (the peers venv)."""
    llama_cpp = pytest.importorskip("llama_cpp")
    cfg = case_config("qwen2_tied")
    folder = hf_folder(tmp_path / "m", cfg, fam.weights_for("qwen2_tied", cfg=cfg))
    gf.write_bpe_tokenizer(folder)
    out = tmp_path / "out.gguf"
    gpt_rs.quant.quantize_model(folder, out, "q8_0")
    llm = llama_cpp.Llama(str(out), n_ctx=64, logits_all=True, verbose=False)
    ids = fam.prompt_ids("qwen2_tied")
    llm.eval(ids)
    theirs = np.array(llm.scores[: len(ids)])
    ours = gpt_rs.load_model(out).forward_tokens(ids)
    assert (theirs.argmax(-1) == ours.argmax(-1)).mean() >= 0.9
    assert scaled_err(ours, theirs) <= 5e-2


@pytest.mark.parametrize("quantized", [False, True])
def test_gpt2_gguf_matches_llama_cpp(tmp_path, quantized):
    """The `gpt2` file as llama.cpp runs it, where llama-cpp-python is installed (the peers
    venv): the same logits to f16 rounding (llama.cpp keeps its KV cache in f16) for the f32
    file, to int8-activation error for the quantized one."""
    llama_cpp = pytest.importorskip("llama_cpp")
    g, _ = gpt2_pair(tmp_path, mix(GPT2_MIX) if quantized else (lambda n, s: "f32"))
    llm = llama_cpp.Llama(str(tmp_path / "gpt2.gguf"), n_ctx=32, logits_all=True, verbose=False)
    ids = GPT2_IDS
    llm.eval(ids)
    theirs = np.array(llm.scores[: len(ids)])
    ours = g.forward_tokens(ids)
    assert (theirs.argmax(-1) == ours.argmax(-1)).mean() >= 0.9
    assert scaled_err(ours, theirs) <= (5e-2 if quantized else 2e-3)
