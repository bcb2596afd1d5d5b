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


def test_cpu_features_and_version():
    assert isinstance(gpt_rs.cpu_features(), list)
    assert gpt_rs.__version__.count(".") == 2


def test_gil_is_released_during_long_ops():
    """A Python thread keeps running while a large matmul runs in another thread."""
    import threading
    import time

    x = T(np.ones((1024, 1024), np.float32))
    counter = [0]
    done = threading.Event()

    def spin():
        while not done.is_set():
            counter[0] += 1
            time.sleep(0)

    th = threading.Thread(target=spin)
    th.start()
    for _ in range(3):
        gpt_rs.functional.matmul(x, x)
    done.set()
    th.join()
    assert counter[0] > 10
