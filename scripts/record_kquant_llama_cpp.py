"""Records llama.cpp's K-quant quantizer on fixed weights into tests/fixtures/gguf/, so
tests/test_quant.py can hold gpt_rs's quantizers to it without llama-cpp-python installed:

- `kquant_weights.npz`: weight matrices of six distributions (stored as f16 values), and for
  each the mean squared error of llama.cpp's Q4_K, Q5_K and Q6_K (`ggml_quantize_chunk`, the
  function `llama-quantize` calls, no importance matrix), dequantized with `gguf.quants`;
- `kquant_mixes.json`: the type llama.cpp's `llama_model_quantize` gives each tensor of two
  small models (tied qwen2 and untied llama, 8 layers, a 640-wide MLP whose rows are not
  whole 256-weight blocks) for q4_k_m and q5_k_m.

Run in the peers venv (llama-cpp-python built from its sdist):
    /work/peers/bin/python scripts/record_kquant_llama_cpp.py
"""

from __future__ import annotations

import ctypes
import json
import sys
import tempfile
from pathlib import Path

import gguf
import llama_cpp
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
OUT = ROOT / "tests" / "fixtures" / "gguf"
K_TYPES = ("q4_k", "q5_k", "q6_k")
FTYPES = {"q4_k_m": 15, "q5_k_m": 17}


def ggml() -> ctypes.CDLL:
    lib = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"))
    f = lib.ggml_quantize_chunk
    f.restype = ctypes.c_size_t
    f.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
    f.argtypes += [ctypes.c_int64] * 3 + [ctypes.c_void_p]
    return lib


def llama_quantize(lib: ctypes.CDLL, x: np.ndarray, name: str) -> np.ndarray:
    """llama.cpp's blocks of the rows of `x` (float32), as uint8 rows."""
    t = gguf.GGMLQuantizationType[name.upper()]
    rows, k = x.shape
    elems, size = gguf.GGML_QUANT_SIZES[t]
    out = np.zeros((rows, k // elems * size), np.uint8)
    x = np.ascontiguousarray(x, np.float32)
    lib.ggml_quantize_chunk(int(t), x.ctypes.data, out.ctypes.data, 0, rows, k, None)
    return out


def weights() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    r, k = 32, 2048
    spikes = np.where(rng.random((r, k)) < 0.005, 20.0, 1.0)
    d = {
        "gauss": rng.standard_normal((r, k)) * 0.02,
        "student3": rng.standard_t(3, (r, k)) * 0.01,
        "outliers": rng.standard_normal((r, k)) * 0.02 * spikes,
        "uniform": rng.uniform(-1, 1, (r, k)),
        "positive": rng.lognormal(0, 1, (r, k)) * 0.01,
        "rowscales": rng.standard_normal((r, k)) * np.logspace(-4, 0, r)[:, None],
    }
    return {n: x.astype(np.float16) for n, x in d.items()}


def record_mse(lib: ctypes.CDLL) -> None:
    arrays = {}
    for name, w in weights().items():
        arrays[name] = w
        x = w.astype(np.float32)
        for t in K_TYPES:
            blocks = llama_quantize(lib, x, t)
            y = gguf.quants.dequantize(blocks, gguf.GGMLQuantizationType[t.upper()])
            arrays[f"{name}.{t}.mse"] = np.array(np.mean((y - x) ** 2.0, dtype=np.float64))
            print(f"{name:10s} {t}: llama.cpp mse {float(arrays[f'{name}.{t}.mse']):.4e}")
    np.savez_compressed(OUT / "kquant_weights.npz", **arrays)


MIX_CASES = ("qwen2_tied", "llama_gqa")


def record_mixes() -> None:
    import families as fam
    import gguf_files as gf

    out: dict[str, dict[str, dict[str, str]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for case in MIX_CASES:
            cfg = fam.config_for(case)
            cfg.update(gf.MIX_SHAPE)
            src = Path(tmp) / f"{case}.gguf"
            gf.write_gguf(src, cfg, fam.weights_for(case, cfg=cfg))
            for mix, ftype in FTYPES.items():
                dst = Path(tmp) / f"{case}.{mix}.gguf"
                params = llama_cpp.llama_model_quantize_default_params()
                params.ftype = ftype
                rc = llama_cpp.llama_model_quantize(
                    str(src).encode(), str(dst).encode(), ctypes.byref(params)
                )
                assert rc == 0, f"llama_model_quantize failed: {rc}"
                reader = gguf.GGUFReader(str(dst))
                out.setdefault(case, {})[mix] = {
                    t.name: t.tensor_type.name.lower() for t in reader.tensors
                }
    (OUT / "kquant_mixes.json").write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    record_mse(ggml())
    record_mixes()


if __name__ == "__main__":
    main()
