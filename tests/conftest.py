"""Shared fixtures: run a test on every backend, compare with stated tolerances, the small
byte-level BPE tokenizer the GPT-2 test models use."""

from __future__ import annotations

import numpy as np
import pytest

import gpt_rs

BACKENDS = gpt_rs.list_backends()


@pytest.fixture(scope="session")
def hf_tok():
    """A Hugging Face byte-level BPE trained on the test corpus (`gpt2_fixture`)."""
    import gpt2_fixture as fx

    return fx.train_tokenizer()


@pytest.fixture(params=BACKENDS)
def backend(request):
    """Runs the test once per compiled-in backend, restoring the previous one afterwards."""
    previous = gpt_rs.get_backend()
    gpt_rs.set_backend(request.param)
    yield request.param
    gpt_rs.set_backend(previous)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def assert_close(got, want, *, rtol: float, atol: float, what: str = "") -> None:
    """Asserts |got - want| <= atol + rtol * |want| elementwise; reports the max error."""
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    if want.size == 0:
        return
    err = np.abs(got - want)
    bound = atol + rtol * np.abs(want)
    bad = ~((err <= bound) | (np.isnan(got) & np.isnan(want)) | (got == want))
    if bad.any():
        i = np.unravel_index(np.argmax(np.where(bad, err, -1)), err.shape)
        rel = err / np.maximum(np.abs(want), 1e-30)
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {want.size} elements off; max abs error "
            f"{np.nanmax(err):.3e}, max rel error {np.nanmax(rel):.3e}; "
            f"worst at {i}: got {got[i]!r}, want {want[i]!r} (rtol={rtol}, atol={atol})"
        )


def T(a) -> gpt_rs.Tensor:
    return gpt_rs.Tensor.from_numpy(np.asarray(a))


@pytest.fixture(autouse=True)
def _restore_global_state():
    """Tests may switch backend or threads; put them back so tests stay independent."""
    backend, threads = gpt_rs.get_backend(), gpt_rs.get_num_threads()
    yield
    gpt_rs.set_backend(backend)
    if gpt_rs.get_num_threads() != threads:
        gpt_rs.set_num_threads(threads)
