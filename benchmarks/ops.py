"""Benchmark: every op on every backend vs NumPy (and PyTorch if installed), same run.

Prints time per call (median of repeats) and the ratio NumPy time / gpt_rs time (> 1 means
gpt_rs is faster), for 1 and 2 threads. Not a test: the numbers depend on the machine's load.

    python benchmarks/ops.py               # 1 and 2 threads (each in its own process)
    python benchmarks/ops.py --threads 2   # one thread count
    python benchmarks/ops.py --quick       # fewer repeats (CI smoke run)
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time


def parse():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=0, help="thread count (default: 1 and 2)")
    p.add_argument("--quick", action="store_true", help="fewer repeats")
    return p.parse_args()


def bench(fn, repeats, min_time=0.05):
    """Median seconds per call over `repeats` batches, each at least `min_time` long."""
    fn()
    t0 = time.perf_counter()
    fn()
    one = max(time.perf_counter() - t0, 1e-7)
    inner = max(1, int(min_time / one))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        times.append((time.perf_counter() - t0) / inner)
    times.sort()
    return times[len(times) // 2]


def fmt(s):
    return f"{s * 1e6:9.1f}us" if s < 1e-3 else f"{s * 1e3:9.2f}ms"


def run(threads: int, quick: bool) -> None:
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "GPT_RS_NUM_THREADS"):
        os.environ[var] = str(threads)
    import numpy as np

    import gpt_rs

    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:
        torch = None
    gpt_rs.set_num_threads(threads)
    rng = np.random.default_rng(0)
    repeats = 3 if quick else 7

    def arr(*s):
        return rng.standard_normal(s).astype(np.float32)

    cases = []
    for m, k, n in [
        (1, 768, 3072),
        (1, 3072, 768),
        (1, 768, 50257),
        (128, 768, 768),
        (1024, 1024, 1024),
    ]:
        a, b = arr(m, k), arr(k, n)
        cases.append(
            (
                f"matmul {m}x{k}x{n}",
                (a, b),
                lambda F, a, b: F.matmul(a, b),
                lambda a, b: a @ b,
                lambda a, b: a @ b,
            )
        )
    x = arr(12, 128, 128)

    def np_softmax(x):
        e = np.exp(x - x.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    cases.append(
        (
            "softmax [12,128,128]",
            (x,),
            lambda F, x: F.softmax_last_dim(x),
            np_softmax,
            lambda x: torch.softmax(x, -1),
        )
    )
    x, g, b = arr(128, 768), arr(768), arr(768)

    def np_ln(x, g, b):
        mu = x.mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(x.var(-1, keepdims=True) + 1e-5) * g + b

    cases.append(
        (
            "layer_norm [128,768]",
            (x, g, b),
            lambda F, x, g, b: F.layer_norm(x, g, b),
            np_ln,
            lambda x, g, b: torch.nn.functional.layer_norm(x, (768,), g, b),
        )
    )
    x = arr(128, 3072)
    c = np.float32(np.sqrt(2 / np.pi))

    def np_gelu(x):  # NumPy has no erf; the tanh form is what NumPy code uses
        return 0.5 * x * (1 + np.tanh(c * (x + np.float32(0.044715) * x**3)))

    cases.append(
        (
            "gelu [128,3072]",
            (x,),
            lambda F, x: F.gelu(x),
            np_gelu,
            lambda x: torch.nn.functional.gelu(x),
        )
    )
    x4 = arr(4)
    cases.append(
        (
            "gelu [4] (call overhead)",
            (x4,),
            lambda F, x: F.gelu(x),
            np_gelu,
            lambda x: torch.nn.functional.gelu(x),
        )
    )

    backends = gpt_rs.list_backends()
    head = f"{'op':<26}{'numpy':>11}" + ("" if torch is None else f"{'torch':>11}")
    head += "".join(f" {b:>12}{'np/x':>8}" for b in backends)
    print(f"\n### {threads} thread(s)\n")
    print(head)
    for name, args, ours, theirs, tor in cases:
        t_np = bench(lambda theirs=theirs, args=args: theirs(*args), repeats)
        row = f"{name:<26}{fmt(t_np):>11}"
        if torch is not None:
            targs = [torch.from_numpy(a) for a in args]
            row += f"{fmt(bench(lambda tor=tor, targs=targs: tor(*targs), repeats)):>11}"
        tens = [gpt_rs.Tensor.from_numpy(a) for a in args]
        # OpenBLAS / OpenMP worker threads spin for a while after a call and would take a core
        # from whatever is timed next: let them go to sleep first.
        time.sleep(0.3 if threads > 1 else 0)
        for be in backends:
            if be == "cpu-portable" and "1024x1024" in name:
                row += f" {'(skipped)':>12}{'':>8}"
                continue
            gpt_rs.set_backend(be)
            t = bench(lambda ours=ours, tens=tens: ours(gpt_rs.functional, *tens), repeats)
            row += f" {fmt(t):>12}{t_np / t:>8.2f}"
        gpt_rs.set_backend("cpu")
        print(row, flush=True)

    big = np.ones(25 * 1024 * 1024, dtype=np.float32)  # 100 MB
    rt = bench(lambda: gpt_rs.Tensor.from_numpy(big, copy=False).numpy(), repeats)
    dl = bench(lambda: np.from_dlpack(gpt_rs.from_dlpack(big)), repeats)
    cp = bench(lambda: gpt_rs.Tensor.from_numpy(big).numpy(), 3)
    print(
        f"\n100 MB round trip NumPy -> Tensor -> NumPy: zero-copy {fmt(rt)}, via DLPack {fmt(dl)}, "
        f"with a copy {fmt(cp)}"
    )


def main():
    args = parse()
    if args.threads:
        run(args.threads, args.quick)
        return
    import gpt_rs

    print(
        f"gpt_rs {gpt_rs.__version__} | {platform.processor() or platform.machine()} | "
        f"{os.cpu_count()} cores | simd {gpt_rs.get_simd_level()} | "
        f"python {platform.python_version()}"
    )
    print("times are per call (median); np/x = NumPy time / backend time (> 1: faster than NumPy)")
    for t in (1, 2):
        cmd = [sys.executable, __file__, "--threads", str(t)] + (["--quick"] if args.quick else [])
        subprocess.run(cmd, check=True)


if __name__ == "__main__":
    main()
