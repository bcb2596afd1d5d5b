"""Nothing a caller does can kill the interpreter: each input that once ended the process
(abort on a refused allocation, segfault on a bad DLPack capsule, SIGBUS on a truncated file,
a deadlock across threads) now raises the documented exception or behaves as Hugging Face does.

Every crash-class case runs in its own interpreter (under an address-space limit where it is
about allocation), so a regression fails its test instead of killing pytest.
"""

from __future__ import annotations

import json
import math
import os
import resource
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import gpt2_fixture as fx
import numpy as np
import pytest
from dlpack_producer import INT, Producer

import gpt_rs

TESTS = Path(__file__).resolve().parent
LIMIT = 4 << 30  # address space of the isolated interpreters: allocations beyond it fail

PRELUDE = """
import sys, json
sys.path.insert(0, {tests!r})
import numpy as np
import gpt_rs
F, T = gpt_rs.functional, gpt_rs.Tensor.from_numpy

def outcome(f):
    try:
        f()
        print("ok")
    except Exception as e:
        # The built-in class (gpt_rs.OutOfMemoryError is a MemoryError), as the tests expect.
        builtin = next(c for c in type(e).__mro__ if c.__module__ == "builtins")
        print(builtin.__name__, "|", str(e)[:300])
"""


def run_isolated(code: str, *, limit: int = LIMIT, timeout: float = 180, args=()) -> str:
    """Runs `code` in a fresh interpreter with at most `limit` bytes of address space and
    returns what it printed. Dying by a signal, hanging or a non-zero exit fails the test."""

    def limit_memory():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    prog = PRELUDE.format(tests=str(TESTS)) + textwrap.dedent(code)
    try:
        r = subprocess.run(
            [sys.executable, "-c", prog, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            preexec_fn=limit_memory,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"hung for {timeout} s:\n{code}")
    if r.returncode < 0:
        pytest.fail(f"killed by {signal.Signals(-r.returncode).name}:\n{code}\n{r.stderr[-2000:]}")
    assert r.returncode == 0, f"exit {r.returncode}:\n{r.stderr[-2000:]}"
    return r.stdout.strip()


# --- 1. allocations that cannot fail ---------------------------------------------------------

BIG = "np.ones((1 << 20, 1), np.float32)", "np.ones((1, 1 << 20), np.float32)"
ALLOCATION_CASES = {
    "broadcast +": f"T({BIG[0]}) + T({BIG[1]})",
    "broadcast / on i32": "T(np.ones((1 << 20, 1), np.int32)) / T(np.ones((1, 1 << 20), np.int32))",
    "@": f"T({BIG[0]}) @ T({BIG[1]})",
    "F.linear": f"F.linear({BIG[0]}, {BIG[1]})",
    "F.embedding_lookup": "F.embedding_lookup(np.ones((2, 1 << 20), np.float32), "
    "np.zeros(1 << 20, np.int32))",
    "from_numpy of a zero-stride view": "T(np.broadcast_to(np.float32(0), (1 << 20, 1 << 20)))",
    "from_dlpack of a zero-stride view": "gpt_rs.from_dlpack(__import__('dlpack_producer')"
    ".Producer(np.zeros(1, np.float32), [1 << 20, 1 << 20], [0, 0]))",
    "F.gelu of a float64 zero-stride view": "F.gelu(np.broadcast_to(np.float64(0), "
    "(1 << 20, 1 << 20)))",
    # 3 GiB shared with NumPy (no copy) fits the limit; its transposed copy does not.
    "Tensor.transpose of a large tensor": "gpt_rs.Tensor.from_numpy(np.zeros((3 << 14, 1 << 14), "
    "np.float32), copy=False).transpose()",
}


@pytest.mark.parametrize("name", list(ALLOCATION_CASES))
def test_huge_outputs_raise_memory_error(name):
    out = run_isolated(f"outcome(lambda: {ALLOCATION_CASES[name]})")
    kind, _, msg = out.partition(" | ")
    assert kind == "MemoryError", out
    assert "cannot allocate" in msg and "bytes" in msg, out


def test_memory_error_names_the_op_and_the_bytes():
    out = run_isolated(f"outcome(lambda: T({BIG[0]}) @ T({BIG[1]}))")
    assert "matmul" in out and "[1048576, 1048576]" in out and "4398046511104 bytes" in out, out


@pytest.mark.parametrize(
    "call",
    [
        "gpt_rs.Tokenizer.train(['hello world'], 10**9)",
        "gpt_rs.Tokenizer.train(['hello world'], 2**70)",
        "__import__('gpt_rs.train').train.prepare_data(sys.argv[1], sys.argv[2] + '/d', "
        "vocab_size=10**9, log=lambda m: None)",
    ],
)
def test_vocab_size_has_an_upper_bound(call, tmp_path):
    (tmp_path / "c.txt").write_text("hello world " * 50)
    out = run_isolated(f"outcome(lambda: {call})", args=(str(tmp_path / "c.txt"), str(tmp_path)))
    assert out.startswith("ValueError | vocab_size must be an integer from 257 to 2097152"), out


def test_cli_train_with_an_absurd_vocab_size_is_an_error(tmp_path):
    (tmp_path / "c.txt").write_text("hello world " * 50)
    cmd = [sys.executable, "-m", "gpt_rs", "train", "--data", str(tmp_path / "c.txt")]
    cmd += ["--out", str(tmp_path / "o"), "--vocab-size", "1000000000"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "vocab_size must be" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_generate_batch_with_ten_thousand_prompts(tmp_path, hf_tok):
    fx.make_gpt2_folder(tmp_path / "m", hf_tok, n_positions=1024)
    out = run_isolated(
        f"""
        m = gpt_rs.load_model({str(tmp_path / "m")!r})
        outcome(lambda: m.generate_batch(["ab"] * 3, 1000, stop_token_ids=[]))
        # 10,000 KV caches of ~1,000 positions: 10 GB, beyond the 4 GiB limit
        outcome(lambda: m.generate_batch(["ab"] * 10_000, 1000, stop_token_ids=[]))
        """
    )
    few, many = out.splitlines()
    assert few == "ok", out
    assert many.startswith("MemoryError |") and "KV cache" in many, out


def test_first_adamw_step_of_a_large_model_under_a_limit():
    # 128M parameters: 0.5 GB of weights and 0.5 GB of gradients fit in 2 GiB of address
    # space; the optimizer's two moments (1 GB more) do not.
    out = run_isolated(
        """
        cfg = dict(vocab_size=512, n_positions=64, n_embd=1024, n_layer=10, n_head=8)
        m = gpt_rs.TrainableModel(cfg, seed=0)
        print(m.num_parameters)
        outcome(lambda: m.adamw_step(lr=1e-3))
        outcome(lambda: m.adamw_step(lr=1e-3))
        """,
        limit=2 << 30,
    )
    n, first, second = out.splitlines()
    assert int(n) > 120_000_000
    assert first.startswith("MemoryError |") and "optimizer" in first, out
    assert second.startswith("MemoryError |"), out


# --- 2. DLPack capsules ----------------------------------------------------------------------


def test_valid_capsules_are_imported_correctly():
    base = np.arange(8, dtype=np.float32)
    p = Producer(base, [8])
    t = gpt_rs.from_dlpack(p)
    np.testing.assert_array_equal(t.numpy(), base)
    base[0] = 42  # shared memory
    assert t.numpy()[0] == 42
    np.testing.assert_array_equal(gpt_rs.from_dlpack(Producer(base, [4], [2])).numpy(), base[::2])
    # a negative stride, starting at the last element
    rev = gpt_rs.from_dlpack(Producer(base, [8], [-1], pointer_offset=28))
    np.testing.assert_array_equal(rev.numpy(), base[::-1])
    ints = np.arange(6, dtype=np.int32)
    assert gpt_rs.from_dlpack(Producer(ints, [2, 3], code=INT)).numpy().tolist() == [
        [0, 1, 2],
        [3, 4, 5],
    ]
    f64 = np.arange(3, dtype=np.float64)
    np.testing.assert_array_equal(gpt_rs.from_dlpack(Producer(f64, [3], bits=64)).numpy(), f64)
    empty = gpt_rs.from_dlpack(Producer(None, [0, 5]))
    assert empty.shape == [0, 5]
    assert gpt_rs.from_dlpack(Producer(np.float32([7]), [])).numpy().item() == 7
    # The consumer calls each capsule's deleter once it is done with the memory.
    import dlpack_producer

    del t, rev, empty
    assert id(p) not in dlpack_producer._ALIVE


BAD_CAPSULES = {
    "negative dimension": (lambda b: Producer(b, [-1]), ValueError, "negative dimension"),
    "NULL data with elements": (lambda b: Producer(None, [4]), ValueError, "NULL"),
    "NULL shape with ndim > 0": (lambda b: Producer(b, None, ndim=2), ValueError, "no shape"),
    "negative ndim": (lambda b: Producer(b, [4], ndim=-1), ValueError, "ndim"),
    "ndim beyond 64": (lambda b: Producer(b, [4], ndim=100), ValueError, "ndim"),
    "byte_offset 2**60": (lambda b: Producer(b, [4], byte_offset=1 << 60), ValueError, "offset"),
    "strides outside memory": (lambda b: Producer(b, [4], [1 << 40]), ValueError, "not mapped"),
    "shape of 2**80 elements": (lambda b: Producer(b, [1 << 40, 1 << 40]), ValueError, "bytes"),
    "vector lanes": (lambda b: Producer(b, [4], lanes=4), TypeError, "lanes"),
    "zero bits": (lambda b: Producer(b, [4], bits=0), TypeError, "bits"),
    "12-bit elements": (lambda b: Producer(b, [4], bits=12), TypeError, "bits"),
    "a GPU tensor": (lambda b: Producer(b, [4], device=2), ValueError, "CPU"),
}


@pytest.mark.parametrize("name", list(BAD_CAPSULES))
def test_inconsistent_capsules_raise(name):
    # In-process: each of these once segfaulted; a regression here would end the run loudly.
    make, exc, words = BAD_CAPSULES[name]
    producer = make(np.zeros(4, np.float32))
    with pytest.raises(exc, match=words):
        gpt_rs.from_dlpack(producer)


# --- 3. memory maps of files that change -----------------------------------------------------


def test_loaded_model_is_unaffected_when_its_file_changes(tmp_path, hf_tok):
    a, b = tmp_path / "a", tmp_path / "b"
    fx.make_gpt2_folder(a, hf_tok, seed=0)
    fx.make_gpt2_folder(b, hf_tok, seed=1)
    out = run_isolated(
        f"""
        import shutil, os
        a, b = {str(a)!r}, {str(b)!r}
        m = gpt_rs.load_model(a)
        ids = [5, 17, 3, 99, 42]
        before = m.forward_tokens(ids)
        shutil.copyfile(b + "/model.safetensors", a + "/model.safetensors")  # same size
        same = m.forward_tokens(ids)
        with open(a + "/model.safetensors", "r+b") as f:  # shorter: SIGBUS for a mapped read
            f.truncate(100)
        short = m.forward_tokens(ids)
        print(json.dumps([bool((before == same).all()), bool((before == short).all())]))
        outcome(lambda: gpt_rs.load_model(a))
        """
    )
    lines = out.splitlines()
    assert lines[0] == "[true, true]", out
    assert lines[1].startswith("ValueError |") and "safetensors" in lines[1], out


def test_prepare_data_rewrites_files_beside_those_in_use(tmp_path):
    import gpt_rs.train as train

    src = tmp_path / "c.txt"
    src.write_text("the quick brown fox jumps over the lazy dog. " * 400)
    first = train.prepare_data(src, tmp_path / "d", vocab_size=300, log=lambda m: None)
    rng = np.random.default_rng(0)
    x1, _ = first.train.sample(np.random.default_rng(0), 4, 16)
    # Different settings: a new, shorter token file is written over the old name.
    src.write_text("a b " * 50)
    second = train.prepare_data(src, tmp_path / "d", vocab_size=260, log=lambda m: None)
    assert len(second.train) < len(first.train)
    x2, _ = first.train.sample(np.random.default_rng(0), 4, 16)
    np.testing.assert_array_equal(x1, x2)  # the earlier PreparedData still reads its tokens
    first.train.sample(rng, 4, 16)
    assert not list((tmp_path / "d").glob(".*tmp*"))


def test_token_file_overwritten_in_place_raises(tmp_path):
    import gpt_rs.train as train

    path = tmp_path / "train.bin"
    np.arange(1000, dtype=np.uint16).tofile(path)
    data = train.TokenData(path)
    data.sample(np.random.default_rng(0), 2, 8)
    with open(path, "r+b") as f:  # as `cp other train.bin` does: same inode, new size
        f.truncate(0)
        f.write(np.arange(10, dtype=np.uint16).tobytes())
    with pytest.raises(OSError, match="modified after it was opened"):
        data.sample(np.random.default_rng(0), 2, 8)


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "directory"])
def test_config_json_that_is_not_a_regular_file(tmp_path, hf_tok, kind):
    d = tmp_path / "m"
    fx.make_gpt2_folder(d, hf_tok)
    (d / "config.json").unlink()
    if kind == "fifo":
        os.mkfifo(d / "config.json")
    elif kind == "dev-zero":
        (d / "config.json").symlink_to("/dev/zero")
    else:
        (d / "config.json").mkdir()
    out = run_isolated(f"outcome(lambda: gpt_rs.load_model({str(d)!r}))", timeout=60)
    assert out.startswith("OSError |") and "not a regular file" in out, out


def test_config_json_larger_than_a_config(tmp_path, hf_tok):
    d = tmp_path / "m"
    fx.make_gpt2_folder(d, hf_tok)
    with open(d / "config.json", "a") as f:
        f.write(" " * (17 << 20))
    with pytest.raises(ValueError, match="larger than 16 MiB"):
        gpt_rs.load_model(d)


# --- 4. TextStream across threads ------------------------------------------------------------


def test_stream_shared_by_threads_does_not_deadlock(tmp_path, hf_tok):
    fx.make_gpt2_folder(tmp_path / "m", hf_tok)
    out = run_isolated(
        f"""
        import threading
        m = gpt_rs.load_model({str(tmp_path / "m")!r})
        want = m.generate("def f", 60, temperature=0, stop_token_ids=[])
        s = m.stream("def f", 60, temperature=0, stop_token_ids=[])
        got, counts, errors = [], [], []
        def consume():
            try:
                for piece in s:
                    got.append(piece)
            except Exception as e:
                errors.append(e)
        def poll():
            for _ in range(200):
                counts.append(s.num_tokens)
        ts = [threading.Thread(target=f) for f in (consume, consume, poll)]
        for t in ts: t.start()
        for t in ts: t.join(60)
        alone = list(m.stream("def f", 60, temperature=0, stop_token_ids=[]))
        print(json.dumps([any(t.is_alive() for t in ts), len(errors), sorted(got) == sorted(alone),
                          "".join(alone) == want, max(counts), s.num_tokens]))
        """,
        timeout=90,
    )
    alive, errors, same_pieces, joined, max_count, final = json.loads(out)
    assert not alive and errors == 0, out
    # Each piece went to exactly one consumer: together they are the single-consumer pieces.
    assert same_pieces and joined, out
    assert max_count <= final == 60, out


# --- 5. sampler edge cases -------------------------------------------------------------------


@pytest.fixture(scope="module")
def model(tmp_path_factory, hf_tok):
    d = tmp_path_factory.mktemp("m") / "m"
    fx.make_gpt2_folder(d, hf_tok)
    return gpt_rs.load_model(d)


@pytest.mark.parametrize("t", [1e-39, 1e-44, 1e-45])
def test_subnormal_temperatures_are_greedy(model, t):
    prompt = [10, 20, 30]
    greedy = model.generate_tokens(prompt, 20, temperature=0, stop_token_ids=[])
    for top_k in (None, 3):
        got = model.generate_tokens(prompt, 20, temperature=t, top_k=top_k, stop_token_ids=[])
        assert got == greedy, (t, top_k)


def hf_repetition_penalty(logits: np.ndarray, history: list[int], penalty: float) -> np.ndarray:
    """transformers' RepetitionPenaltyLogitsProcessor: gather the history's logits, scale
    each (x penalty if < 0, / penalty otherwise), scatter back: once per distinct id."""
    out = logits.copy()
    score = out[history]
    score = np.where(score < 0, score * penalty, score / penalty)
    out[history] = score
    return out


def test_repetition_penalty_follows_hugging_face(model):
    prompt = [7, 7, 7, 7, 9, 9, 7, 12]
    for penalty in (1.3, 3.0, 0.5):
        seq = list(prompt)
        for _ in range(12):
            logits = model.logits(seq).astype(np.float64)
            want = int(np.argmax(hf_repetition_penalty(logits.astype(np.float32), seq, penalty)))
            got = model.generate_tokens(
                seq, 1, temperature=0, repetition_penalty=penalty, stop_token_ids=[]
            )[-1]
            assert got == want, (penalty, seq)
            seq.append(got)


# --- 6. smaller ones -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override, words",
    [
        ({"layer_norm_epsilon": 1e300}, "layer_norm_epsilon"),
        ({"layer_norm_epsilon": 1e-300}, "layer_norm_epsilon"),
        ({"scale_attn_weights": False}, "scale_attn_weights"),
        ({"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx"),
    ],
)
def test_config_values_the_runtime_cannot_honour_are_refused(tmp_path, hf_tok, override, words):
    fx.make_gpt2_folder(tmp_path / "m", hf_tok, config_overrides=override)
    with pytest.raises(ValueError, match=words):
        gpt_rs.load_model(tmp_path / "m")


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"seed": -1}, "seed"),
        ({"seed": 2**64}, "seed"),
        ({"seed": 2**200}, "out of range"),
        ({"top_k": 2**70}, "top_k"),
        ({"top_k": 0}, "top_k"),
        ({"stop_token_ids": [2**70]}, "out of range|stop_token_ids"),
        ({"stop_token_ids": [-1]}, "stop_token_ids"),
        ({"max_new_tokens": 2**70}, "max_new_tokens"),
    ],
)
def test_out_of_range_ints_are_value_errors(model, kwargs, words):
    kw = {"max_new_tokens": 2, **kwargs}
    with pytest.raises(ValueError, match=words):
        model.generate_tokens([1, 2], **kw)
    with pytest.raises(ValueError, match=words):
        model.generate("ab", **kw)


def test_numpy_ints_still_work_as_arguments(model):
    ids = np.array([1, 2, 3])
    assert model.generate_tokens(list(ids), np.int64(3), seed=np.uint64(5), top_k=np.int32(4))


def test_asarray_copy_false_refuses_a_conversion():
    t = gpt_rs.Tensor.from_numpy(np.ones(3, np.float32))
    with pytest.raises(ValueError, match="without a copy"):
        np.asarray(t, dtype=np.float64, copy=False)
    v = np.asarray(t, dtype=np.float32, copy=False)  # no conversion: a view
    assert np.shares_memory(v, t.numpy())
    assert np.asarray(t, dtype=np.float64).dtype == np.float64


def test_padded_vocabulary_generates_text(tmp_path, hf_tok):
    n = hf_tok.get_vocab_size()
    fx.make_gpt2_folder(tmp_path / "m", hf_tok, vocab_size=n + 256)
    m = gpt_rs.load_model(tmp_path / "m")
    kw = dict(temperature=1.5, seed=0, stop_token_ids=[])
    prompt = m.tokenizer.encode("abc")
    new = m.generate_tokens(prompt, 60, **kw)[len(prompt) :]
    assert any(i >= n for i in new), "the test should sample some ids beyond the tokenizer"
    text = m.generate("abc", 60, **kw)
    assert text == "".join(m.stream("abc", 60, **kw))
    assert text == m.tokenizer.decode([i for i in new if i < n])


def cli(*args, stdin=None, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "gpt_rs", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--seed", "-1"], "seed must be"),
        (["--seed", "18446744073709551616"], "seed must be"),
        (["--max-new-tokens", "1e20"], "invalid int value"),
        (["--max-new-tokens", "100000000000000000000"], "max_new_tokens must be"),
        (["--threads", "0"], "num_threads must be"),
    ],
)
def test_cli_bad_flags_are_one_line_errors(flags, words):
    r = cli("generate", "--prompt", "x", "--max-new-tokens", "3", *flags)
    assert r.returncode == 2 and words in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_cli_exits_quietly_when_the_reader_goes_away():
    p = subprocess.Popen(
        f"{sys.executable} -m gpt_rs generate --prompt 'def f' --max-new-tokens 200 "
        "--temperature 0 | head -c 10",
        shell=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = p.communicate(timeout=120)
    assert len(out) == 10
    assert "Broken pipe" not in err and "Traceback" not in err, err


def test_cli_resume_with_a_broken_trainer_state(tmp_path):
    (tmp_path / "c.txt").write_text("hello world, the quick brown fox. " * 300)
    out = tmp_path / "o"
    base = ["train", "--data", str(tmp_path / "c.txt"), "--out", str(out), "--vocab-size", "300"]
    small = ["--n-layer", "1", "--n-embd", "32", "--n-head", "2", "--context", "16"]
    r = cli(*base, *small, "--steps", "2", "--eval-interval", "2", "--batch-size", "2")
    assert r.returncode == 0, r.stderr
    state = out / "trainer_state.json"
    for broken in (
        {"history": []},
        {"config": {}, "step": "x"},
        {"config": {"nope": 1}, "step": 1},
    ):
        state.write_text(json.dumps(broken))
        r = cli(*base, *small, "--resume", "--steps", "3")
        assert r.returncode == 2 and "trainer_state.json" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_lr": math.nan},
        {"grad_clip": math.inf},
        {"lr": math.inf},
        {"eps": 0.0},
        {"beta2": 1.0},
        {"weight_decay": -1.0},
        {"warmup": -1},
        {"seed": -1},
    ],
)
def test_train_config_rejects_settings_that_fail_mid_run(kwargs):
    import gpt_rs.train as train

    with pytest.raises(ValueError, match=next(iter(kwargs))):
        train.TrainConfig(**kwargs).validate()
