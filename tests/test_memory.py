"""Memory: repeated calls keep RSS flat; dropping tensors frees memory; zero-copy views keep
their buffer alive. Bound: RSS may grow by at most 30 MiB over the repeated calls (allocator
noise), far below what one leaked buffer per call would add (>= 80 MiB)."""

import gc

import gpt2_fixture as fx
import numpy as np
import pytest

import gpt_rs

F = gpt_rs.functional
BOUND_MIB = 30


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    pytest.skip("no /proc/self/status")


def test_10000_calls_of_each_op_keep_rss_flat():
    rng = np.random.default_rng(0)
    t = gpt_rs.Tensor.from_numpy
    x = t(rng.standard_normal((16, 256)).astype(np.float32))  # 16 KiB per result
    w, g = t(rng.standard_normal((256, 256)).astype(np.float32)), t(np.ones(256, np.float32))
    idx, q = (
        t(np.arange(16, dtype=np.int32)),
        t(rng.standard_normal((2, 16, 32)).astype(np.float32)),
    )
    calls = {
        "matmul": lambda: F.matmul(x, w),
        "linear": lambda: F.linear(x, w, g),
        "softmax": lambda: F.softmax_last_dim(x),
        "gelu": lambda: F.gelu(x),
        "gelu_tanh": lambda: F.gelu_tanh(x),
        "layer_norm": lambda: F.layer_norm(x, g, g),
        "add_bias": lambda: F.add_bias(x, g),
        "embedding": lambda: F.embedding_lookup(w, idx),
        "attention": lambda: F.scaled_dot_product_attention(q, q, q),
        "add": lambda: x + x,
        "numpy view": lambda: x.numpy(),
        "dlpack": lambda: np.from_dlpack(x),
        "from_numpy": lambda: t(np.ones((16, 256), np.float32)),
    }
    for name, fn in calls.items():
        for _ in range(200):
            fn()
        gc.collect()
        before = rss_mib()
        for _ in range(10_000):
            fn()
        gc.collect()
        grown = rss_mib() - before
        print(f"{name}: RSS grew {grown:.1f} MiB over 10,000 calls")
        assert grown < BOUND_MIB, f"{name}: RSS grew {grown:.1f} MiB over 10,000 calls"


def test_1000_generate_calls_keep_rss_flat(tmp_path):
    fx.make_gpt2_folder(tmp_path / "m", fx.train_tokenizer())
    m = gpt_rs.load_model(tmp_path / "m")
    for _ in range(50):
        m.generate("def f():", 8, seed=1, stop_token_ids=[])
    before = rss_mib()
    for i in range(1000):
        m.generate("def f():", 8, seed=i, stop_token_ids=[])
    grown = rss_mib() - before
    print(f"generate: RSS grew {grown:.1f} MiB over 1,000 calls")
    assert grown < BOUND_MIB


def test_dropping_tensors_frees_memory():
    gc.collect()
    before = rss_mib()
    big = [
        F.gelu(gpt_rs.Tensor.from_numpy(np.ones(8 << 20, np.float32))) for _ in range(4)
    ]  # 128 MiB
    assert rss_mib() - before > 100
    del big
    gc.collect()
    assert rss_mib() - before < BOUND_MIB


def test_views_outlive_their_tensor():
    t = F.gelu(gpt_rs.Tensor.from_numpy(np.full(1 << 20, 2.0, np.float32)))
    v, d = t.numpy(), np.from_dlpack(t)
    del t
    gc.collect()
    for _ in range(5):  # churn the allocator so a freed buffer would be reused
        F.gelu(gpt_rs.Tensor.from_numpy(np.zeros(1 << 20, np.float32)))
    np.testing.assert_allclose(v, 1.9544997, rtol=1e-6)
    np.testing.assert_allclose(d, 1.9544997, rtol=1e-6)
