"""Checks that gpt_rs is installed and every backend agrees with NumPy.

Run from anywhere after installing:  python test_install.py
Exits non-zero (with the reason) if anything is wrong.
"""

import math
import sys

import numpy as np

import gpt_rs


def check(name: str, got: np.ndarray, want: np.ndarray, tol: float) -> None:
    err = float(np.max(np.abs(got.astype(np.float64) - want))) if want.size else 0.0
    if not np.allclose(got, want, rtol=tol, atol=tol):
        sys.exit(f"FAIL {name}: max abs error {err:.3e} (tolerance {tol})")
    print(f"  ok  {name:<18} max error {err:.1e}")


def main() -> None:
    print(
        f"gpt_rs {gpt_rs.__version__}; backends: {gpt_rs.list_backends()}; "
        f"threads: {gpt_rs.get_num_threads()}; simd: {gpt_rs.get_simd_level()}"
    )
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 8)).astype(np.float32)
    w = rng.standard_normal((8, 5)).astype(np.float32)
    b = rng.standard_normal(5).astype(np.float32)
    g = rng.standard_normal(8).astype(np.float32)
    x64 = x.astype(np.float64)
    erf = np.vectorize(math.erf)
    for name in gpt_rs.list_backends():
        gpt_rs.set_backend(name)
        print(f"backend {name}:")
        t = gpt_rs.Tensor.from_numpy(x)
        assert t.backend == name and t.shape == [4, 8] and t.dtype == "f32"
        F = gpt_rs.functional
        e = np.exp(x64 - x64.max(-1, keepdims=True))
        check("softmax_last_dim", F.softmax_last_dim(t).numpy(), e / e.sum(-1, keepdims=True), 1e-5)
        check("gelu", F.gelu(t).numpy(), 0.5 * x64 * (1 + erf(x64 / math.sqrt(2))), 1e-5)
        mu, var = x64.mean(-1, keepdims=True), x64.var(-1, keepdims=True)
        check(
            "layer_norm",
            F.layer_norm(t, g, b[:1].repeat(8)).numpy(),
            (x64 - mu) / np.sqrt(var + 1e-5) * g + b[0],
            1e-4,
        )
        check("matmul", F.matmul(t, gpt_rs.Tensor.from_numpy(w)).numpy(), x64 @ w, 1e-4)
        lin = gpt_rs.nn.Linear(gpt_rs.Tensor.from_numpy(w), gpt_rs.Tensor.from_numpy(b))
        check("nn.Linear", lin(t).numpy(), x64 @ w + b, 1e-4)
    gpt_rs.set_backend("cpu")
    print("gpt_rs is installed and working.")


if __name__ == "__main__":
    main()
