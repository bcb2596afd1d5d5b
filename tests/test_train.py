"""Training: gradients against finite differences and a float64 NumPy reference, AdamW steps
against the reference, overfitting a tiny corpus, checkpoints, resuming, data and CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import reference_train as ref
from gpt2_fixture import UNICODE_TEXT, corpus

import gpt_rs
from gpt_rs import train

from conftest import assert_close

TINY = dict(vocab_size=23, n_positions=8, n_embd=12, n_layer=2, n_head=3)


def tiny_model(seed=0, scale=0.3, **overrides):
    """A tiny model with large random weights (so every gradient is far from zero)."""
    cfg = {**TINY, **overrides}
    m = train.new_model(**cfg, seed=seed)
    rng = np.random.default_rng(seed)
    for name, p in m.parameters().items():
        m.set_parameter(name, (p + rng.standard_normal(p.shape) * scale).astype(np.float32))
    return m, cfg


def tiny_batch(cfg, b=2, t=6, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, cfg["vocab_size"], size=(b, t))
    y = rng.integers(0, cfg["vocab_size"], size=(b, t))
    return x, y


# ---- the reference itself against central finite differences ---------------------------------


def numeric_grad(f, x, idx, eps=1e-5):
    old = x[idx]
    x[idx] = old + eps
    up = f()
    x[idx] = old - eps
    down = f()
    x[idx] = old
    return (up - down) / (2 * eps)


def check_fd(f, arrays, grads, rng, samples=6):
    """Checks analytic gradients of scalar f at a few random coordinates of each array."""
    for name, a in arrays.items():
        for _ in range(samples):
            idx = tuple(rng.integers(0, s) for s in a.shape)
            num = numeric_grad(f, a, idx)
            got = grads[name][idx]
            assert abs(got - num) <= 1e-3 * abs(num) + 1e-9, f"{name}{idx}: {got} vs {num}"


def test_reference_op_backwards_match_finite_differences(rng):
    n, c, h, t, b = 10, 12, 3, 5, 2
    r = lambda *s: rng.standard_normal(s)  # noqa: E731
    x, w, bias, dout = r(n, c), r(c), r(c), r(n, c)
    f = lambda: (ref.layer_norm_fwd(x, w, bias)[0] * dout).sum()  # noqa: E731
    dx, dw, db = ref.layer_norm_bwd(dout, ref.layer_norm_fwd(x, w, bias)[1], w)
    check_fd(f, {"x": x, "w": w, "b": bias}, {"x": dx, "w": dw, "b": db}, rng)

    f = lambda: (ref.gelu_fwd(x) * dout).sum()  # noqa: E731
    check_fd(f, {"x": x}, {"x": ref.gelu_bwd(dout, x)}, rng)

    W, B, d2 = r(c, 7), r(7), r(n, 7)
    f = lambda: (ref.linear_fwd(x, W, B)[0] * d2).sum()  # noqa: E731
    gx, gw, gb = ref.linear_bwd(d2, x, W)
    check_fd(f, {"x": x, "w": W, "b": B}, {"x": gx, "w": gw, "b": gb}, rng)

    qkv, dy = r(b * t, 3 * c), r(b * t, c)
    f = lambda: (ref.attention_fwd(qkv, b, t, h)[0] * dy).sum()  # noqa: E731
    g = ref.attention_bwd(dy, ref.attention_fwd(qkv, b, t, h)[1], b, t, h)
    check_fd(f, {"qkv": qkv}, {"qkv": g}, rng, samples=20)

    logits, tgt = r(n, 9), rng.integers(0, 9, n)
    f = lambda: ref.cross_entropy_fwd(logits, tgt)[0]  # noqa: E731
    g = ref.cross_entropy_bwd(ref.cross_entropy_fwd(logits, tgt)[1], tgt)
    check_fd(f, {"logits": logits}, {"logits": g}, rng)


def test_reference_model_gradients_match_finite_differences(rng):
    m, cfg = tiny_model()
    params = {k: v.astype(np.float64) for k, v in m.parameters().items()}
    x, y = tiny_batch(cfg)
    _, grads = ref.gpt2_loss_and_grads(params, cfg, x, y)
    f = lambda: ref.gpt2_loss_and_grads(params, cfg, x, y, want_grads=False)[0]  # noqa: E731
    check_fd(f, params, grads, rng, samples=3)


# ---- gpt_rs against the reference ------------------------------------------------------------


def test_initialization_follows_gpt2(rng):
    m = train.new_model(vocab_size=2000, n_positions=64, n_embd=64, n_layer=4, n_head=4, seed=3)
    p = m.parameters()
    assert m.num_parameters == sum(v.size for v in p.values())
    assert abs(p["wte.weight"].std() - 0.02) < 1e-3
    assert abs(p["h.0.attn.c_attn.weight"].std() - 0.02) < 1e-3
    assert abs(p["h.2.mlp.c_proj.weight"].std() - 0.02 / np.sqrt(8)) < 1e-3
    assert np.all(p["h.1.ln_2.weight"] == 1) and np.all(p["h.1.mlp.c_fc.bias"] == 0)
    again = train.new_model(vocab_size=2000, n_positions=64, n_embd=64, n_layer=4, n_head=4, seed=3)
    assert all(np.array_equal(v, again.parameters()[k]) for k, v in p.items())


def test_loss_and_logits_match_reference(backend):
    m, cfg = tiny_model()
    x, y = tiny_batch(cfg)
    params = {k: v.astype(np.float64) for k, v in m.parameters().items()}
    want, _ = ref.gpt2_loss_and_grads(params, cfg, x, y, want_grads=False)
    assert abs(m.loss(x, y) - want) <= 1e-5 * abs(want)
    logits = m.logits(x)
    assert logits.shape == (2, 6, cfg["vocab_size"]) and logits.dtype == np.float32


@pytest.mark.parametrize("shape", [(2, 6), (1, 8), (3, 1)])
def test_gradients_match_reference(backend, shape):
    m, cfg = tiny_model()
    x, y = tiny_batch(cfg, *shape)
    params = {k: v.astype(np.float64) for k, v in m.parameters().items()}
    want_loss, want = ref.gpt2_loss_and_grads(params, cfg, x, y)
    m.zero_grad()
    loss = m.forward_backward(x, y)
    assert abs(loss - want_loss) <= 1e-5 * want_loss
    got = m.gradients()
    assert set(got) == set(want)
    for name, g in got.items():
        w = want[name]
        err = np.linalg.norm(g - w) / max(np.linalg.norm(w), 1e-30)
        assert err <= 1e-3, f"{name}: relative error {err:.2e}"
        assert_close(g, w, rtol=1e-2, atol=1e-3 * np.abs(w).max(), what=name)


def test_gradients_accumulate_with_loss_scale():
    m, cfg = tiny_model()
    x, y = tiny_batch(cfg)
    m.zero_grad()
    m.forward_backward(x, y)
    once = m.gradients()
    m.zero_grad()
    m.forward_backward(x, y, 0.25)
    m.forward_backward(x, y, 0.75)
    for k, g in m.gradients().items():
        assert_close(g, once[k], rtol=1e-5, atol=1e-7, what=k)


def test_gradients_do_not_depend_on_thread_count():
    m, cfg = tiny_model()
    x, y = tiny_batch(cfg, 4, 8)
    grads = []
    for n in (1, 2):
        gpt_rs.set_num_threads(n)
        m.zero_grad()
        m.forward_backward(x, y)
        grads.append(m.gradients())
    for k in grads[0]:
        assert_close(
            grads[0][k], grads[1][k], rtol=1e-5, atol=1e-6 * np.abs(grads[0][k]).max(), what=k
        )


def write_tokens(path: Path, n: int, vocab: int, seed=0) -> train.TokenData:
    np.random.default_rng(seed).integers(0, vocab, n).astype(np.uint16).tofile(path)
    return train.TokenData(path)


def test_adamw_steps_match_reference(tmp_path):
    m, cfg = tiny_model(scale=0.5)
    data = train.DataSplit(write_tokens(tmp_path / "t.bin", 500, cfg["vocab_size"]), None)
    tc = train.TrainConfig(
        steps=10,
        batch_size=2,
        grad_accum=2,
        context=6,
        lr=3e-2,
        warmup=3,
        grad_clip=1.0,
        weight_decay=0.1,
    )
    params = {k: v.astype(np.float64) for k, v in m.parameters().items()}
    opt = ref.AdamW(params, tc.beta1, tc.beta2, tc.eps, tc.weight_decay)
    trainer = train.Trainer(m, data, tc)
    clipped = 0
    for step in range(10):
        grads = {k: np.zeros_like(v) for k, v in params.items()}
        want = 0.0
        for micro in range(tc.grad_accum):
            x, y = trainer.batch(step, micro)
            loss, g = ref.gpt2_loss_and_grads(params, cfg, x, y)
            want += loss / tc.grad_accum
            for k in grads:
                grads[k] += g[k] / tc.grad_accum
        norm = ref.clip_grads(grads, tc.grad_clip)
        clipped += norm > tc.grad_clip
        opt.step(params, grads, train.lr_at(step, tc))
        r = trainer.train_step()
        assert abs(r.loss - want) <= 1e-4 * want, f"step {step}: {r.loss} vs {want}"
        assert abs(r.grad_norm - norm) <= 1e-3 * norm
    assert clipped > 0, "the test should exercise clipping"
    assert m.optimizer_steps == 10
    c = cfg["n_embd"]
    for k, v in m.parameters().items():
        if k.endswith("c_attn.bias"):
            # The key bias's true gradient is exactly 0 (it shifts every score of a query
            # equally); Adam turns the rounding noise of both sides into +-lr steps.
            v, params[k] = np.delete(v, np.s_[c : 2 * c]), np.delete(params[k], np.s_[c : 2 * c])
        # Adam divides by sqrt(v): near-zero gradients amplify f32 rounding, hence atol 2e-3
        # against a total movement of about lr * steps = 0.3.
        assert_close(v, params[k], rtol=1e-3, atol=2e-3, what=k)


def test_lr_schedule():
    tc = train.TrainConfig(steps=110, lr=1.0, min_lr=0.1, warmup=10)
    lrs = [train.lr_at(s, tc) for s in range(110)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[10] == pytest.approx(1.0) and lrs[-1] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[60] == pytest.approx(0.1 + 0.45 * (1 + np.cos(np.pi * 50 / 99)))


# ---- data, tokenizer, end to end -------------------------------------------------------------


def test_tokenizer_training_matches_hf_tokenizers(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    tok = gpt_rs.Tokenizer.train(corpus(), 400)
    assert tok.vocab_size == 400 and tok.eos_token_id == 0
    tok.save(str(tmp_path))
    assert {p.name for p in tmp_path.iterdir()} >= {"tokenizer.json", "vocab.json", "merges.txt"}
    hf = tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    for text in [UNICODE_TEXT, "def f(x):\n    return x  # ok", " leading", "", "\x00\x01 bytes"]:
        ids = tok.encode(text)
        assert ids == hf.encode(text).ids
        assert tok.decode(ids) == text
    arr = tok.encode_documents(["a b", "c"])
    assert arr.dtype == np.uint32
    assert list(arr) == tok.encode("a b") + [0] + tok.encode("c") + [0]
    with pytest.raises(ValueError, match="vocab_size"):
        gpt_rs.Tokenizer.train(["abc"], 10)
    with pytest.raises(ValueError, match="empty"):
        gpt_rs.Tokenizer.train(["", ""], 300)


def small_corpus(folder: Path) -> Path:
    folder.mkdir()
    for i, text in enumerate(corpus()):
        (folder / f"doc{i}.txt").write_text(text, encoding="utf-8")
    (folder / "binary.bin").write_bytes(b"\x00\x01\x02" * 100)
    (folder / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    return folder


def test_prepare_data_splits_and_reuses(tmp_path):
    src = small_corpus(tmp_path / "corpus")
    logs = []
    d = train.prepare_data(
        src, tmp_path / "data", vocab_size=300, val_fraction=0.2, log=logs.append
    )
    assert any("2 binary or non-UTF-8 files skipped" in m for m in logs)
    n_docs = len(corpus())
    assert d.info["documents"] == {
        "train": n_docs - round(n_docs * 0.2),
        "val": round(n_docs * 0.2),
    }
    assert len(d.train) == d.info["tokens"]["train"] > 1000 and d.val is not None and len(d.val) > 0
    assert d.train.tokens.dtype == np.uint16 and isinstance(d.train.tokens, np.memmap)
    assert d.train.tokens.max() < 300
    logs.clear()
    again = train.prepare_data(
        src, tmp_path / "data", vocab_size=300, val_fraction=0.2, log=logs.append
    )
    assert logs == [f"using the data prepared in {tmp_path / 'data'}"]
    assert np.array_equal(again.train.tokens, d.train.tokens)
    x, y = d.train.sample(np.random.default_rng(0), 3, 16)
    assert x.shape == y.shape == (3, 16) and np.array_equal(x[:, 1:], y[:, :-1])


def test_bad_data_gets_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        train.prepare_data(tmp_path / "missing", tmp_path / "d")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.txt").write_text("  \n")
    with pytest.raises(ValueError, match="empty"):
        train.prepare_data(tmp_path / "empty", tmp_path / "d")
    with pytest.raises(ValueError, match="no files matching"):
        train.prepare_data(tmp_path / "empty", tmp_path / "d", pattern="*.py")
    (tmp_path / "tiny.txt").write_text("just a few words here")
    d = train.prepare_data(tmp_path / "tiny.txt", tmp_path / "d2", vocab_size=260, val_fraction=0.0)
    m = train.new_model(vocab_size=260, n_positions=64, n_embd=16, n_layer=1, n_head=2)
    with pytest.raises(ValueError, match="fewer than context"):
        train.Trainer(m, d, train.TrainConfig(context=64))
    with pytest.raises(ValueError, match="exceeds the model's n_positions"):
        train.Trainer(m, d, train.TrainConfig(context=65))
    with pytest.raises(ValueError, match="steps"):
        train.Trainer(m, d, train.TrainConfig(steps=0, context=2))


def test_bad_batches_get_clear_errors():
    m, cfg = tiny_model()
    x, y = tiny_batch(cfg)
    with pytest.raises(ValueError, match="out of range"):
        m.forward_backward(x, np.full_like(y, cfg["vocab_size"]))
    with pytest.raises(ValueError, match="negative"):
        m.loss(-x - 1, y)
    with pytest.raises(ValueError, match="same shape"):
        m.forward_backward(x, y[:, :-1])
    with pytest.raises(ValueError, match="context"):
        big = np.zeros((1, cfg["n_positions"] + 1), dtype=np.int64)
        m.loss(big, big)
    with pytest.raises(ValueError, match="empty batch"):
        m.loss(x[:0], y[:0])
    with pytest.raises(TypeError):
        m.loss(x.astype(np.float32), y)
    with pytest.raises(ValueError, match="AdamW"):
        m.adamw_step(-1.0)
    with pytest.raises(ValueError, match="n_embd"):
        train.new_model(vocab_size=10, n_embd=10, n_head=3)
    with pytest.raises(ValueError, match="no parameter"):
        m.set_parameter("nope", np.zeros(3, np.float32))


def test_oversized_models_and_batches_are_refused_not_fatal():
    with pytest.raises(ValueError, match="GB"):
        train.new_model(vocab_size=2_000_000, n_embd=32768, n_head=8, n_layer=64)
    m = train.new_model(vocab_size=50_000, n_embd=8, n_head=2, n_layer=1, n_positions=8)
    x = np.zeros((200_000, 8), dtype=np.int64)  # logits alone would need 320 GB
    with pytest.raises(ValueError, match="lower the batch size"):
        m.forward_backward(x, x)
    assert m.loss(x[:2], x[:2]) > 0  # still usable


def test_overfits_a_tiny_corpus(tmp_path):
    text = "the quick brown fox jumps over the lazy dog. " * 40
    (tmp_path / "c.txt").write_text(text)
    d = train.prepare_data(
        tmp_path / "c.txt", tmp_path / "d", vocab_size=300, val_fraction=0.1, log=lambda m: None
    )
    m = train.new_model(
        vocab_size=d.tokenizer.vocab_size, n_positions=32, n_embd=32, n_layer=2, n_head=2, seed=0
    )
    tc = train.TrainConfig(
        steps=150, batch_size=8, context=32, lr=1e-2, warmup=10, eval_interval=1000
    )
    t = train.Trainer(m, d, tc)
    t0 = time.perf_counter()
    first = t.train_step().loss
    for _ in range(tc.steps - 1):
        last = t.train_step().loss
    print(f"overfit: loss {first:.3f} -> {last:.4f} in {time.perf_counter() - t0:.1f} s")
    assert first > 4.0 and last < 0.1
    assert t.evaluate() < 0.2  # the held-out tail is the same sentence


def test_checkpoint_reloads_with_identical_logits(tmp_path):
    m, cfg = tiny_model(vocab_size=300, n_positions=16, eos_token_id=0)
    data = train.DataSplit(write_tokens(tmp_path / "t.bin", 400, 300), None)
    tok = gpt_rs.Tokenizer.train(corpus(), 300)
    t = train.Trainer(m, data, train.TrainConfig(steps=3, batch_size=2, context=16), tokenizer=tok)
    for _ in range(3):
        t.train_step()
    out = t.save(tmp_path / "ck")
    names = {p.name for p in out.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "vocab.json",
        "merges.txt",
    } <= names
    assert {"optimizer.safetensors", "trainer_state.json"} <= names
    conf = json.loads((out / "config.json").read_text())
    assert conf["model_type"] == "gpt2" and conf["n_embd"] == 12 and conf["eos_token_id"] == 0
    ids = np.array([[5, 17, 42, 299, 0, 3, 8, 1]])
    want = m.logits(ids)[0]
    assert np.array_equal(train.load_model(out).logits(ids)[0], want)
    model = gpt_rs.load_model(out)
    got = model.forward_tokens(ids[0].tolist())
    assert_close(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max(), what="load_model logits")
    assert model.tokenizer.vocab_size == 300
    assert isinstance(model.generate("the", max_new_tokens=5, temperature=0), str)


def test_resume_continues_exactly(tmp_path):
    data = train.DataSplit(write_tokens(tmp_path / "t.bin", 600, 23), None)
    tc = train.TrainConfig(steps=6, batch_size=2, context=8, lr=1e-2, warmup=2)
    straight = train.Trainer(tiny_model()[0], data, tc)
    losses = [straight.train_step().loss for _ in range(6)]
    first = train.Trainer(tiny_model()[0], data, tc)
    part = [first.train_step().loss for _ in range(3)]
    first.save(tmp_path / "ck")
    resumed = train.Trainer.resume(tmp_path / "ck", data)
    assert resumed.step == 3 and resumed.model.optimizer_steps == 3
    part += [resumed.train_step().loss for _ in range(3)]
    assert part == losses
    for k, v in straight.model.parameters().items():
        assert np.array_equal(v, resumed.model.parameters()[k]), k
    with pytest.raises(FileNotFoundError, match="trainer_state"):
        train.Trainer.resume(tmp_path, data)


def run_cli(*args, **kw):
    return subprocess.run(
        [sys.executable, "-m", "gpt_rs", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
        **kw,
    )


def test_cli_train_then_generate(tmp_path):
    src = small_corpus(tmp_path / "corpus")
    out = tmp_path / "run"
    r = run_cli(
        "train", "--data", src, "--out", out, "--vocab-size", 300, "--n-layer", 1, "--n-head", 2,
        "--n-embd", 32, "--context", 32, "--steps", 20, "--batch-size", 4, "--eval-interval", 10,
        "--threads", 1, "--seed", 3,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "val loss" in r.stderr and "sample:" in r.stderr and "tok/s" in r.stderr
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["step"] == 20
    g = run_cli("generate", "--model", out, "--prompt", "def ", "--max-new-tokens", 8, "--seed", 1)
    assert g.returncode == 0, g.stderr
    assert g.stdout.startswith("def ")
    # Resuming a finished run with more steps continues from step 20.
    r = run_cli(
        "train", "--data", src, "--out", out, "--vocab-size", 300, "--steps", 25, "--resume"
    )
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "trainer_state.json").read_text())["step"] == 25


def test_cli_train_bad_data(tmp_path):
    (tmp_path / "e").mkdir()
    r = run_cli("train", "--data", tmp_path / "e", "--out", tmp_path / "o")
    assert r.returncode != 0 and "no files matching" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "e" / "a.txt").write_text("")
    r = run_cli("train", "--data", tmp_path / "e", "--out", tmp_path / "o")
    assert r.returncode != 0 and "empty" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "s.txt").write_text("short text " * 5)
    r = run_cli(
        "train",
        "--data",
        tmp_path / "s.txt",
        "--out",
        tmp_path / "o2",
        "--vocab-size",
        260,
        "--context",
        128,
    )
    assert r.returncode != 0 and "fewer than context" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.skipif(os.name != "posix", reason="SIGINT delivery")
def test_cli_ctrl_c_saves_a_checkpoint(tmp_path):
    src = small_corpus(tmp_path / "corpus")
    out = tmp_path / "run"
    args = ["--data", src, "--out", out, "--vocab-size", 300, "--n-layer", 1, "--n-embd", 32]
    args += ["--n-head", 2, "--context", 32, "--steps", 100000]
    cmd = [sys.executable, "-m", "gpt_rs", "train", *map(str, args)]
    p = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / "data.json").exists() and not (out / "data" / "data.json").exists():
        assert p.poll() is None and time.time() < deadline
        time.sleep(0.2)
    time.sleep(2.0)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert "checkpoint saved" in err and "Traceback" not in err
    step = json.loads((out / "trainer_state.json").read_text())["step"]
    assert 0 < step < 100000
    assert gpt_rs.load_model(out).num_parameters > 0
