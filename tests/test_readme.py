"""The documentation cannot rot: README code blocks and the examples are executed here.

- Every ```python block of README.md runs as written.
- The original README (crates/gpt-rs-py/README.md): its Quick Start runs verbatim; the API
  fragments run verbatim with the names they assume (np_array, weight, x, ...) defined first.
- test_install.py and every example script run as subprocesses and must exit 0.
"""

import contextlib
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
SEED = ROOT / "crates" / "gpt-rs-py"


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), flags=re.S)


@pytest.fixture(scope="module")
def fake_hub(tmp_path_factory):
    """README examples load "gpt2": a tiny random model stands in for it in a local hub cache."""
    import chat_cases as cc
    import families as fam
    import gpt2_fixture as fx

    hub = fx.make_fake_hub(tmp_path_factory.mktemp("hub"), fx.train_tokenizer())
    # A tiny bf16 Qwen2 with Qwen2.5's chat template for the family examples.
    repo = hub / "models--Qwen--Qwen2.5-0.5B-Instruct"
    snap = repo / "snapshots" / "0000"
    fam.make_folder("qwen2_bf16", snap)
    cfg = json.loads((snap / "config.json").read_text())
    (snap / "config.json").write_text(json.dumps({**cfg, "max_position_embeddings": 512}))
    template = (ROOT / "tests/fixtures/chat_templates/Qwen-Qwen2.5-7B-Instruct.jinja").read_text()
    cc.write_tokenizer(snap, chat_template=template, eos_token="<|im_end|>")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0000")
    # The same tiny Qwen2 with a byte-level BPE tokenizer, for the GGUF example.
    import gguf_files

    repo = hub / "models--Qwen--Qwen2.5-Coder-0.5B-Instruct"
    snap = repo / "snapshots" / "0000"
    fam.make_folder("qwen2_bf16", snap)
    cfg = json.loads((snap / "config.json").read_text())
    (snap / "config.json").write_text(json.dumps({**cfg, "max_position_embeddings": 512}))
    gguf_files.write_bpe_tokenizer(snap)
    (snap / "tokenizer_config.json").write_text(json.dumps({"chat_template": template}))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0000")
    return hub


def shown_outputs(code: str) -> list[str]:
    """What a block says its prints show: the comment after each `print(...)` line (not the
    streaming ones), where `...` stands for any text."""
    shown = []
    for line in code.splitlines():
        m = re.match(r"\s*print\((.*)\)\s+#\s(.*)$", line)
        if m and "end=" not in m.group(1):
            shown.append(m.group(2).strip())
    return shown


def assert_shown(shown: list[str], printed: str, where: str) -> None:
    """Each shown output matches a printed line, in order."""
    lines = iter(printed.splitlines())
    for want in shown:
        pattern = re.escape(want).replace(re.escape("..."), ".*")
        assert any(re.fullmatch(pattern, ln.strip()) for ln in lines), (
            f"{where}: no printed line shows {want!r}; printed:\n{printed}"
        )


def test_shown_outputs_are_checked():
    code = 'print(x)  # [2, 3] f32\nprint(y, end="")  # streamed\nprint(z)  # a ... c\n'
    assert shown_outputs(code) == ["[2, 3] f32", "a ... c"]
    assert_shown(["[2, 3] f32", "a ... c"], "[2, 3] f32\nother\na xyz c\n", "ok")
    with pytest.raises(AssertionError):
        assert_shown(["[2, 3] f32"], "[2, 3] i32\n", "wrong dtype")
    with pytest.raises(AssertionError):
        assert_shown(["a", "b"], "b\na\n", "wrong order")


@pytest.mark.parametrize("i", range(len(python_blocks(ROOT / "README.md"))))
def test_readme_blocks_run(i, fake_hub, monkeypatch, tmp_path):
    """Each Python block runs as written, from a scratch folder holding a copy of the
    repository's docs (the training example reads them and writes its run there), and
    prints what its comments say it prints."""
    import io
    import shutil

    monkeypatch.setenv("HF_HUB_CACHE", str(fake_hub))
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    monkeypatch.chdir(tmp_path)
    code = python_blocks(ROOT / "README.md")[i]
    out = io.StringIO()
    with contextlib.ExitStack() as stack:
        if "127.0.0.1:8000" in code:
            # The serving example talks to `gpt-rs serve`: one runs here, on a free port.
            port = stack.enter_context(readme_server())
            code = code.replace("127.0.0.1:8000", f"127.0.0.1:{port}")
        with contextlib.redirect_stdout(out):
            exec(compile(code, f"README.md block {i}", "exec"), {})
    assert_shown(shown_outputs(code), out.getvalue(), f"README.md block {i}")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def readme_server():
    """`gpt-rs serve --model Qwen/Qwen2.5-0.5B-Instruct` on a free port (the fake hub's model),
    in a subprocess; stopped with SIGTERM, which must drain and exit cleanly."""
    import os
    import time

    import httpx

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gpt_rs", "serve", "--model", "Qwen/Qwen2.5-0.5B-Instruct"]
        + ["--port", str(port)],
        env=dict(os.environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "gpt-rs serve did not start"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        yield port
    finally:
        proc.terminate()
        try:
            code = proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert code == 0, proc.stdout.read()


def cli_lines(path: Path) -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", path.read_text(encoding="utf-8"), flags=re.S)
    return [ln.strip() for b in blocks for ln in b.splitlines() if ln.strip().startswith("gpt-rs ")]


@pytest.mark.parametrize("line", cli_lines(ROOT / "README.md"))
def test_readme_cli_examples_run(line, fake_hub):
    import os
    import shlex

    args = shlex.split(line.split(" #")[0])[1:]
    env = dict(os.environ, HF_HUB_CACHE=str(fake_hub))
    if args[0] == "serve":
        # A server runs until stopped: it must come up on the port and stop cleanly on SIGTERM.
        import httpx

        port = free_port()
        args[args.index("--port") + 1] = str(port)
        proc = subprocess.Popen([sys.executable, "-m", "gpt_rs", *args], env=env, cwd=ROOT)
        try:
            deadline = time.monotonic() + 60
            while True:
                assert proc.poll() is None and time.monotonic() < deadline, line
                try:
                    r = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=1)
                    assert r.status_code == 200 and r.json()["data"], r.text
                    break
                except httpx.HTTPError:
                    time.sleep(0.1)
        finally:
            proc.terminate()
            assert proc.wait(30) == 0, line
        return
    r = subprocess.run(
        [sys.executable, "-m", "gpt_rs", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd=ROOT,
    )
    assert r.returncode == 0, f"{line}\n{r.stdout}\n{r.stderr}"


def seed_namespace(code: str):
    """Names the seed's API fragments assume, shaped for the layer the fragment builds."""
    import gpt_rs

    rng = np.random.default_rng(0)
    f = lambda *s: gpt_rs.Tensor.from_numpy(rng.standard_normal(s).astype(np.float32))  # noqa: E731
    return {
        "np": np,
        "gpt_rs": gpt_rs,
        "np_array": rng.standard_normal((2, 3, 4)).astype(np.float32),
        "x": f(5, 4),
        "weight": f(4) if "LayerNorm" in code else f(4, 4),
        "bias": f(4),
        "indices": gpt_rs.Tensor.from_numpy(np.array([0, 3, 1], dtype=np.int32)),
        "w_in": f(4, 16),
        "w_out": f(16, 4),
    }


def test_seed_readme_quick_start_runs_verbatim_on_every_backend(capsys):
    import gpt_rs

    blocks = python_blocks(SEED / "README.md")
    quick = next(b for b in blocks if "Quick Start" in b or "import gpt_rs" in b)
    for name in gpt_rs.list_backends():
        # The snippet itself calls set_backend("cpu"); run it as written, then on each backend.
        code = quick if name == "cpu" else quick.replace('"cpu"', repr(name))
        ns: dict = {}
        exec(compile(code, f"seed Quick Start ({name})", "exec"), ns)
        assert ns["output"].shape == [2, 3] and ns["result"].shape == (2, 3)
        want = ns["x"].numpy().astype(np.float64) @ ns["weight"].numpy() + ns["bias"].numpy()
        np.testing.assert_allclose(ns["result"], want, rtol=1e-4, atol=1e-5)
    out = capsys.readouterr().out
    assert "(2, 3)" in out and "[2, 3]" in out


def _gelu(v):
    from math import erf

    return 0.5 * v * (1 + np.vectorize(erf)(v / np.sqrt(2)))


def _layer_norm(v, w, b, eps=1e-5):
    mu = v.mean(-1, keepdims=True)
    return (v - mu) / np.sqrt(((v - mu) ** 2).mean(-1, keepdims=True) + eps) * w + b


def _np(ns, name):
    return ns[name].numpy().astype(np.float64)


# What each fragment of the original README must compute, checked against NumPy; found by a
# line of the fragment. Every fragment needs an entry (a new one without a check fails).
SEED_CHECKS = {
    "result = output.numpy()": lambda ns, before: np.testing.assert_allclose(
        ns["result"], _np(ns, "x") @ _np(ns, "weight") + _np(ns, "bias"), rtol=1e-4, atol=1e-5
    ),
    "backends = gpt_rs.list_backends()": lambda ns, before: (
        assert_(ns["backends"] == ns["gpt_rs"].list_backends()),
        assert_("cpu" in ns["backends"]),
        assert_(set(ns["backends"]) <= {"cpu", "cpu-portable", "faer", "c"}),
        assert_(ns["current"] == "cpu"),
    ),
    "tensor = gpt_rs.Tensor.from_numpy(np_array)": lambda ns, before: (
        assert_(ns["shape"] == [2, 3, 4] and ns["dtype"] == "f32"),
        assert_(ns["backend"] == before["backend"]),
        np.testing.assert_array_equal(ns["np_array"], before["np_array"]),
    ),
    "embedding = gpt_rs.nn.Embedding(weight)": lambda ns, before: np.testing.assert_array_equal(
        ns["output"].numpy(), ns["weight"].numpy()[[0, 3, 1]]
    ),
    "linear = gpt_rs.nn.Linear(weight, bias=None)": lambda ns, before: np.testing.assert_allclose(
        _np(ns, "output"), _np(ns, "x") @ _np(ns, "weight"), rtol=1e-4, atol=1e-5
    ),
    "layer_norm = gpt_rs.nn.LayerNorm(weight, bias, eps=1e-5)": lambda ns, before: (
        np.testing.assert_allclose(
            _np(ns, "output"),
            _layer_norm(_np(ns, "x"), _np(ns, "weight"), _np(ns, "bias")),
            rtol=1e-4,
            atol=1e-5,
        )
    ),
    "ffn = gpt_rs.nn.FeedForward(w_in, w_out, b_in=None, b_out=None)": lambda ns, before: (
        np.testing.assert_allclose(
            _np(ns, "output"),
            _gelu(_np(ns, "x") @ _np(ns, "w_in")) @ _np(ns, "w_out"),
            rtol=1e-4,
            atol=1e-5,
        )
    ),
}


def assert_(cond):
    assert cond


@pytest.mark.parametrize("i", range(len(python_blocks(SEED / "README.md"))))
def test_seed_readme_fragments_run(i):
    import gpt_rs

    code = python_blocks(SEED / "README.md")[i]
    checks = [c for key, c in SEED_CHECKS.items() if key in code]
    assert len(checks) == 1, f"seed README block {i} needs exactly one entry in SEED_CHECKS"
    for backend in gpt_rs.list_backends():
        gpt_rs.set_backend(backend)
        ns = seed_namespace(code)
        before = {"np_array": ns["np_array"].copy(), "backend": backend}
        exec(compile(code, f"seed README block {i}", "exec"), ns)
        checks[0](ns, before)


SCRIPTS = [
    SEED / "test_install.py",
    SEED / "examples" / "basic_usage.py",
    SEED / "examples" / "nn_layers.py",
    SEED / "examples" / "comparison_torch.py",
]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_exit_zero(script):
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=SEED)
    assert r.returncode == 0, f"{script.name} failed:\n{r.stdout}\n{r.stderr}"
