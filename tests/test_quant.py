"""GGML block formats against the `gguf` package's reference (`gguf.quants`).

Dequantization of every type must be bit-identical to `gguf.quants.dequantize` on random
blocks, including extreme and non-finite f16 scales; the round-to-nearest quantizers must
produce the same bytes as `gguf.quants.quantize`; and the quantized matmul of every backend
and SIMD level must equal the product it defines (see `_quant_matmul`).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

import gpt_rs
from gpt_rs import _native, quant

gguf = pytest.importorskip("gguf")
# The reference's own arithmetic on inf/NaN scales warns; the values are what is compared.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")
import gguf_files  # noqa: E402
from gguf import quants  # noqa: E402

# The block formats (gguf_files.TYPES also has the float types).
TYPES = {name: t for name, t in gguf_files.TYPES.items() if name.startswith("q")}
# Byte offsets of each block's f16 scale fields (d, and dmin / m where there is one).
SCALE_OFFSETS = {
    "q4_0": [0],
    "q4_1": [0, 2],
    "q5_0": [0],
    "q5_1": [0, 2],
    "q8_0": [0],
    "q2_k": [80, 82],
    "q3_k": [108],
    "q4_k": [0, 2],
    "q5_k": [0, 2],
    "q6_k": [208],
}
EXTREME_F16 = np.array(
    [65504.0, -65504.0, 6e-8, -6e-8, 0.0, -0.0, np.inf, -np.inf, np.nan, 1e-3, 3.0],
    dtype=np.float16,
)


def block_size(name):
    return gguf.GGML_QUANT_SIZES[TYPES[name]]


def random_blocks(rng, name, n_blocks):
    """Random bytes, with the scale fields of the first blocks set to extreme f16 values."""
    _, size = block_size(name)
    raw = np.frombuffer(rng.bytes(n_blocks * size), dtype=np.uint8).reshape(n_blocks, size).copy()
    for i, v in enumerate(EXTREME_F16):
        for off in SCALE_OFFSETS[name]:
            raw[i, off : off + 2] = np.frombuffer(v.tobytes(), dtype=np.uint8)
    # Ordinary scales elsewhere, so most values are finite and meaningful.
    for off in SCALE_OFFSETS[name]:
        ok = rng.standard_normal(n_blocks - len(EXTREME_F16)).astype(np.float16) * 0.01
        raw[len(EXTREME_F16) :, off : off + 2] = ok.view(np.uint8).reshape(-1, 2)
    return raw


def test_quant_types_lists_every_format():
    assert sorted(quant.quant_types()) == sorted(TYPES)


@pytest.mark.parametrize("name", list(TYPES))
def test_dequantize_bit_identical_to_gguf(rng, name):
    raw = random_blocks(rng, name, 64)
    want = quants.dequantize(raw, TYPES[name]).astype(np.float32).reshape(-1)
    got = quant.dequantize(raw.tobytes(), name)
    assert got.dtype == np.float32 and got.shape == want.shape
    # Bit for bit, NaNs included (their payloads come from the same f32 operations).
    same = (got.view(np.uint32) == want.view(np.uint32)) | (np.isnan(got) & np.isnan(want))
    assert same.all(), f"{name}: {np.count_nonzero(~same)} of {got.size} values differ"
    assert (~np.isfinite(got)).any(), "the extreme scales did not reach the output"


@pytest.mark.parametrize("name", ["q4_0", "q4_1", "q5_0", "q5_1", "q8_0"])
def test_quantize_bit_identical_to_gguf(rng, name):
    elems, _ = block_size(name)
    x = rng.standard_normal((48, elems)).astype(np.float32)
    x[0] = 0.0  # an all-zero block
    x[1, 3] = 1e4  # an outlier
    x[2] = -np.abs(x[2])  # all negative
    x[3] = 1e-30  # tiny
    x[4, :] = 0.5  # constant (max == min)
    want = quants.quantize(x, TYPES[name]).tobytes()
    got = quant.quantize(x.reshape(-1), name)
    assert got == want


K_TYPES = ("q4_k", "q5_k", "q6_k")
KQUANT_FIXTURE = Path(__file__).parent / "fixtures" / "gguf" / "kquant_weights.npz"


def kquant_mse(x: np.ndarray, name: str) -> float:
    """Mean squared error of gpt_rs's blocks of `x`, dequantized by the `gguf` reference."""
    blocks = np.frombuffer(quant.quantize(x.reshape(-1), name), np.uint8)
    y = quants.dequantize(blocks.reshape(x.shape[0], -1), TYPES[name]).reshape(x.shape)
    return float(np.mean((y - x) ** 2.0, dtype=np.float64))


@pytest.mark.parametrize("name", K_TYPES)
def test_k_quantizers_no_worse_than_llama_cpp(name):
    """MSE of the dequantized weights against llama.cpp's quantizer on the same weights
    (recorded by scripts/record_kquant_llama_cpp.py): six distributions, from Gaussian to
    heavy-tailed, outliers, all-positive and rows of very different scales."""
    f = np.load(KQUANT_FIXTURE)
    dists = [k for k in f.files if "." not in k]
    assert len(dists) == 6
    for dist in dists:
        x = f[dist].astype(np.float32)
        ours, theirs = kquant_mse(x, name), float(f[f"{dist}.{name}.mse"])
        assert ours <= theirs, f"{name} on {dist}: mse {ours:.4e} > llama.cpp's {theirs:.4e}"
        # Not better by being degenerate: within reach of the format's resolution.
        assert ours >= 0.5 * theirs, f"{name} on {dist}: {ours:.4e} vs {theirs:.4e}"


@pytest.mark.parametrize("name", K_TYPES)
def test_k_quantizers_live_against_llama_cpp(name):
    """The same comparison with llama.cpp's quantizer called now (the peers venv)."""
    pytest.importorskip("llama_cpp")
    sys.path.insert(0, str(Path(__file__).parent.parent / "scripts"))
    import record_kquant_llama_cpp as rec

    lib = rec.ggml()
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((16, 4096)) * 0.03).astype(np.float32)
    x[3, 100] = 1.5
    theirs = quants.dequantize(rec.llama_quantize(lib, x, name), TYPES[name])
    assert kquant_mse(x, name) <= float(np.mean((theirs - x) ** 2.0, dtype=np.float64))


@pytest.mark.parametrize("name", K_TYPES)
def test_k_quantizers_edge_blocks(name):
    """Zero, constant, all-negative, tiny, huge and non-finite blocks: valid blocks (what
    the reference dequantizes them to is finite where the input was) and exact zeros."""
    x = np.zeros((8, 256), np.float32)
    x[1] = 0.5
    x[2] = -np.abs(np.random.default_rng(1).standard_normal(256))
    x[3] = 1e-30
    x[4] = np.random.default_rng(2).standard_normal(256) * 6e4
    x[5, 7] = np.nan
    x[6, 9] = np.inf
    x[7, ::2] = 1.0
    blocks = np.frombuffer(quant.quantize(x.reshape(-1), name), np.uint8).reshape(8, -1)
    y = quants.dequantize(blocks, TYPES[name]).reshape(x.shape)
    assert np.array_equal(y[0], x[0])
    # (Row 3's 1e-30 is below the f16 scales' range: it becomes zero, as in llama.cpp.)
    for r in (1, 2, 3, 4, 7):
        err = np.abs(y[r] - x[r]).max()
        assert np.all(np.isfinite(y[r])) and err <= 0.1 * np.abs(x[r]).max() + 1e-20, (
            f"{name} row {r}: {err}"
        )


def test_quant_errors_are_clear():
    with pytest.raises(ValueError, match="unknown quantization type 'q9_9'"):
        quant.dequantize(b"\0" * 34, "q9_9")
    with pytest.raises(ValueError, match="whole number of q8_0 blocks"):
        quant.dequantize(b"\0" * 33, "q8_0")
    with pytest.raises(ValueError, match="not supported"):
        quant.quantize(np.zeros(256, np.float32), "q2_k")
    with pytest.raises(ValueError, match="whole number"):
        quant.quantize(np.zeros(31, np.float32), "q8_0")


def q8_round_trip(a):
    """The activations as the `cpu` backend's int8 kernels see them: blocks of 32 scaled by
    max|x| / 127, rounded half away from zero."""
    blocks = a.reshape(-1, 32).astype(np.float32)
    d = np.abs(blocks).max(axis=1, keepdims=True) / np.float32(127)
    inv = np.where(d == 0, 0, 1 / np.where(d == 0, 1, d)).astype(np.float32)
    v = blocks * inv
    q = np.sign(v) * np.floor(np.abs(v) + 0.5)
    return (q * d).reshape(a.shape)


def finite_blocks(rng, name, n_blocks):
    raw = random_blocks(rng, name, n_blocks + len(EXTREME_F16))[len(EXTREME_F16) :]
    return np.ascontiguousarray(raw)


@pytest.mark.parametrize("simd", ["avx512", "avx2", "scalar"])
@pytest.mark.parametrize("name", list(TYPES))
@pytest.mark.parametrize("m", [1, 3, 17])
def test_quant_matmul_every_backend(backend, rng, name, simd, m):
    elems, _ = block_size(name)
    k, n = 2 * max(elems, 128), 45  # n: a panel and a zero-padded part
    raw = finite_blocks(rng, name, n * k // elems)
    w = quants.dequantize(raw, TYPES[name]).astype(np.float64).reshape(n, k)
    a = rng.standard_normal((m, k)).astype(np.float32)
    previous = gpt_rs.get_simd_level()
    try:
        gpt_rs.set_simd_level(simd)
        got = _native._quant_matmul(a, raw.tobytes(), name, n)
    finally:
        gpt_rs.set_simd_level(previous)
    # `cpu` multiplies int8-quantized activations; the others dequantize W and use f32 a.
    a_seen = q8_round_trip(a) if backend == "cpu" else a
    want = a_seen.astype(np.float64) @ w.T
    scale = np.abs(a_seen).astype(np.float64) @ np.abs(w.T)
    err = np.abs(got - want)
    assert (err <= 1e-5 * scale + 1e-30).all(), f"max error {err.max()} (scale {scale.max()})"
