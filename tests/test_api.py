"""Backend registry, environment variables, threads and the SIMD fallbacks."""

import os
import subprocess
import sys

import numpy as np
import pytest

import gpt_rs

import reference as ref
from conftest import T, assert_close


def test_list_backends_is_stable_and_complete():
    assert gpt_rs.list_backends() == ["cpu", "cpu-portable", "faer", "c"]
    assert gpt_rs.list_backends() == gpt_rs.list_backends()


def test_set_get_backend():
    for name in gpt_rs.list_backends():
        gpt_rs.set_backend(name)
        assert gpt_rs.get_backend() == name
        assert T(np.ones(1, np.float32)).backend == name
    gpt_rs.set_backend("cpu")
    with pytest.raises(ValueError, match="unknown backend 'cuda'; available backends: cpu, "):
        gpt_rs.set_backend("cuda")
    assert gpt_rs.get_backend() == "cpu"


def run_python(code, **env):
    e = dict(os.environ, **env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=e)


def test_default_backend_and_environment_variables():
    r = run_python(
        "import gpt_rs; print(gpt_rs.get_backend(), gpt_rs.get_num_threads())",
        GPT_RS_BACKEND="",
        GPT_RS_NUM_THREADS="",
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[0] == "cpu" and int(r.stdout.split()[1]) == os.cpu_count()
    r = run_python(
        "import gpt_rs; print(gpt_rs.get_backend(), gpt_rs.get_num_threads())",
        GPT_RS_BACKEND="c",
        GPT_RS_NUM_THREADS="1",
    )
    assert r.stdout.split() == ["c", "1"], r.stderr
    r = run_python("import gpt_rs", GPT_RS_BACKEND="tpu")
    assert r.returncode != 0 and "GPT_RS_BACKEND='tpu' is invalid" in r.stderr
    r = run_python("import gpt_rs; print(gpt_rs.get_simd_level())", GPT_RS_SIMD="scalar")
    assert r.stdout.strip() == "scalar", r.stderr


def test_threads():
    n = gpt_rs.get_num_threads()
    try:
        gpt_rs.set_num_threads(1)
        assert gpt_rs.get_num_threads() == 1
        x = np.random.default_rng(0).standard_normal((64, 256)).astype(np.float32)
        one = gpt_rs.functional.matmul(T(x), T(x.T)).numpy()
        gpt_rs.set_num_threads(3)
        three = gpt_rs.functional.matmul(T(x), T(x.T)).numpy()
        assert_close(one, three, rtol=1e-5, atol=1e-5, what="1 vs 3 threads")
        for bad in (0, -1, 100000):
            with pytest.raises(ValueError, match="num_threads"):
                gpt_rs.set_num_threads(bad)
    finally:
        gpt_rs.set_num_threads(n)


@pytest.mark.parametrize("level", ["avx512", "avx2", "scalar"])
def test_simd_fallbacks_are_correct(level, rng):
    """Forces each dispatch level (capped at what the CPU has) and checks the cpu kernels."""
    gpt_rs.set_backend("cpu")
    used = gpt_rs.set_simd_level(level)
    try:
        x = (rng.standard_normal((37, 300)) * 3).astype(np.float32)
        w = rng.standard_normal((300, 70)).astype(np.float32)
        g, b = (
            rng.standard_normal(300).astype(np.float32),
            rng.standard_normal(300).astype(np.float32),
        )
        F = gpt_rs.functional
        assert_close(F.matmul(T(x), T(w)).numpy(), ref.f64(x) @ w, rtol=1e-4, atol=1e-3, what=used)
        assert_close(
            F.matmul(T(x[:1]), T(w)).numpy(),
            ref.f64(x[:1]) @ w,
            rtol=1e-4,
            atol=1e-3,
            what=f"{used} gemv",
        )
        assert_close(F.gelu(T(x)).numpy(), ref.gelu(x), rtol=1e-5, atol=1e-7, what=used)
        assert_close(F.gelu_tanh(T(x)).numpy(), ref.gelu_tanh(x), rtol=1e-5, atol=1e-7, what=used)
        assert_close(
            F.softmax_last_dim(T(x)).numpy(), ref.softmax(x), rtol=1e-4, atol=1e-8, what=used
        )
        assert_close(
            F.layer_norm(T(x), T(g), T(b)).numpy(),
            ref.layer_norm(x, g, b),
            rtol=1e-4,
            atol=1e-4,
            what=used,
        )
    finally:
        gpt_rs.set_simd_level("avx512")
    with pytest.raises(ValueError, match="unknown SIMD level"):
        gpt_rs.set_simd_level("sse9")


# gpt_rs's feature names -> /proc/cpuinfo's flags.
CPUINFO_FLAGS = {
    "sse4.2": "sse4_2",
    "avx": "avx",
    "avx2": "avx2",
    "fma": "fma",
    "f16c": "f16c",
    "avx512f": "avx512f",
    "avx512bw": "avx512bw",
    "avx512vl": "avx512vl",
    "avx512vnni": "avx512_vnni",
    "avx512bf16": "avx512_bf16",
}


def test_cpu_features_and_version():
    """The features gpt_rs detects are exactly those of the ones it probes that the kernel
    reports, and the version is the installed package's."""
    import importlib.metadata
    import platform
    from pathlib import Path

    assert gpt_rs.__version__ == importlib.metadata.version("gpt_rs")
    features = gpt_rs.cpu_features()
    assert len(set(features)) == len(features) and set(features) <= set(CPUINFO_FLAGS)
    cpuinfo = Path("/proc/cpuinfo")
    if platform.machine() != "x86_64" or not cpuinfo.exists():
        assert features == [] or platform.machine() == "x86_64"
        return
    line = next(x for x in cpuinfo.read_text().splitlines() if x.startswith("flags"))
    flags = set(line.split(":", 1)[1].split())
    assert set(features) == {f for f, c in CPUINFO_FLAGS.items() if c in flags}
    # The SIMD level follows from them.
    level = gpt_rs.get_simd_level()
    if "avx512f" in features and "avx512bw" in features:
        assert level in ("avx512", "avx2", "scalar")  # capped by GPT_RS_SIMD at most
    elif "avx2" in features and "fma" in features:
        assert level in ("avx2", "scalar")
    else:
        assert level == "scalar"


def test_gil_is_released_during_long_ops():
    """A Python thread keeps running while a large matmul runs in another thread: it makes
    progress all through the op (were the GIL held, it could not run at all until the op
    returned)."""
    import threading
    import time

    x = T(np.ones((1536, 1536), np.float32))
    stamps: list[float] = []
    done = threading.Event()

    def spin():
        while not done.is_set():
            stamps.append(time.perf_counter())
            time.sleep(0)

    th = threading.Thread(target=spin)
    th.start()
    while not stamps:
        time.sleep(0.001)
    t0 = time.perf_counter()
    gpt_rs.functional.matmul(x, x)
    t1 = time.perf_counter()
    done.set()
    th.join()
    d = t1 - t0
    during = [t for t in stamps if t0 <= t <= t1]
    assert len(during) >= 10, f"the other thread ran {len(during)} times in {d * 1e3:.1f} ms"
    # Progress throughout: no gap longer than half the op (the OS may still preempt it).
    edges = [t0] + during + [t1]
    gap = max(b - a for a, b in zip(edges, edges[1:]))
    assert gap <= 0.5 * d, f"the other thread stalled {gap * 1e3:.1f} ms of {d * 1e3:.1f} ms"
