"""The `gpt-rs` command end to end (run as `python -m gpt_rs`, which is the console script)."""

import os
import subprocess
import sys

import gpt2_fixture as fx
import pytest

import gpt_rs


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli") / "model"
    fx.make_gpt2_folder(d, fx.train_tokenizer())
    return d


def gpt_rs_cmd(*args, **env):
    e = dict(os.environ, **env)
    return subprocess.run(
        [sys.executable, "-m", "gpt_rs", *args], capture_output=True, text=True, env=e, timeout=300
    )


def test_generate_streams_text_and_reports_speed(model_dir):
    r = gpt_rs_cmd(
        "generate",
        "--model",
        str(model_dir),
        "--prompt",
        "def add(a, b):",
        "--max-new-tokens",
        "20",
        "--temperature",
        "0.8",
        "--top-k",
        "40",
        "--top-p",
        "0.95",
        "--seed",
        "1",
        "--backend",
        "c",
        "--threads",
        "1",
    )
    assert r.returncode == 0, r.stderr
    model = gpt_rs.load_model(model_dir)
    want = model.generate("def add(a, b):", 20, temperature=0.8, top_k=40, top_p=0.95, seed=1)
    assert r.stdout == "def add(a, b):" + want + "\n"
    assert "tokens/s" in r.stderr and "backend c" in r.stderr and "1 threads" in r.stderr


def test_default_model_completes_python():
    if "(none installed)" in gpt_rs_cmd("info").stdout:
        pytest.skip("no default model in this build")
    prompt = "def fibonacci(n):"
    r = gpt_rs_cmd("generate", "--prompt", prompt, "--max-new-tokens", "48", "--seed", "0")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(prompt)
    body = r.stdout[len(prompt) :]
    # Recognisable Python: an indented block follows the signature, with code keywords.
    assert body.startswith("\n    ") or body.startswith("\n        "), body
    assert any(k in body for k in ("return", "if ", "self", "for ", "= ")), body


def test_generate_without_model_says_how_to_get_one(tmp_path, model_dir):
    # The default model's location pointed at an empty folder: as a build without one.
    missing = {"GPT_RS_DEFAULT_MODEL": str(tmp_path / "no-model")}
    assert "default model: (none installed)" in gpt_rs_cmd("info", **missing).stdout
    r = gpt_rs_cmd("generate", "--prompt", "hi", **missing)
    assert r.returncode != 0 and "Pass --model DIR" in r.stderr and "Traceback" not in r.stderr
    # and pointed at a model, that model is the default
    r = gpt_rs_cmd(
        "generate", "--prompt", "hi", "--max-new-tokens", "3", GPT_RS_DEFAULT_MODEL=str(model_dir)
    )
    assert r.returncode == 0 and r.stdout.startswith("hi"), r.stderr


def test_generate_errors_are_messages_not_tracebacks(model_dir, tmp_path):
    r = gpt_rs_cmd("generate", "--model", str(tmp_path / "missing"), "--prompt", "x")
    assert r.returncode == 2 and "gpt-rs: error:" in r.stderr and "Traceback" not in r.stderr
    r = gpt_rs_cmd("generate", "--model", str(model_dir), "--prompt", "x", "--top-p", "7")
    assert r.returncode == 2 and "top_p must be in (0, 1]" in r.stderr


def test_info_and_bench(model_dir):
    r = gpt_rs_cmd("info")
    assert r.returncode == 0 and "backends:" in r.stdout and "cpu features" in r.stdout
    assert gpt_rs.__version__ in r.stdout
    r = gpt_rs_cmd("bench", "--model", str(model_dir), "--repeats", "1", "--decode-tokens", "8")
    assert r.returncode == 0, r.stderr
    assert "prefill T=128" in r.stdout and "decode:" in r.stdout and "tokens/s" in r.stdout
