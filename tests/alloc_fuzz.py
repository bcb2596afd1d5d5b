"""Allocation-sized arguments to every public op, layer and generation entry point, run by
tests/test_alloc_fuzz.py in an interpreter with limited address space (as `ulimit -v`).

Sizes go from 2**20 to 2**62 elements: real inputs that broadcast to huge outputs, zero-stride
NumPy views (and DLPack capsules) that cost nothing to make and everything to copy, huge
counts (prompts, tokens, vocabularies, model sizes). Each call must return or raise
MemoryError / ValueError / TypeError / OverflowError; a signal kills this process and fails
the test. Prints a JSON summary: calls made, outcomes by exception type, the unexpected ones.

Usage: python tests/alloc_fuzz.py MODEL_DIR
"""

# Each lambda below is called at once by `call`, inside its loop iteration: B023's late
# binding cannot bite.
# ruff: noqa: B023
from __future__ import annotations

import collections
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dlpack_producer import Producer  # noqa: E402

import gpt_rs  # noqa: E402

F, nn, T = gpt_rs.functional, gpt_rs.nn, gpt_rs.Tensor.from_numpy
EXPECTED = (MemoryError, ValueError, TypeError, OverflowError)
# 2**20 and 2**24 elements fit the limit (real work is done); from 2**30 nothing does.
EXPONENTS = [20, 24] + list(range(30, 63))
outcomes: collections.Counter = collections.Counter()
unexpected: list[str] = []


def call(name: str, f) -> None:
    t0 = time.perf_counter()
    try:
        f()
        outcomes["ok"] += 1
    except EXPECTED as e:
        # Counted by built-in class (gpt_rs.OutOfMemoryError is a MemoryError).
        builtin = next(c for c in type(e).__mro__ if c.__module__ == "builtins")
        outcomes[builtin.__name__] += 1
    except Exception as e:  # RuntimeError = an internal failure: not allowed
        unexpected.append(f"{name}: {type(e).__name__}: {str(e)[:200]}")
    finally:
        slow = time.perf_counter() - t0
        if slow > 0.5:
            print(f"slow call: {name} on {gpt_rs.get_backend()}: {slow:.1f} s", file=sys.stderr)


def view(*shape, dtype=np.float32):
    """A zero-stride view of `shape`: any size, no memory. None if NumPy refuses it, or for
    sizes between 2**24 and 2**30 elements: those fit the limit, and copying them would be
    seconds of work per call without reaching a refusal."""
    n = int(np.prod(shape, dtype=object))
    if (1 << 24) < n < (1 << 30):
        return None
    try:
        return np.broadcast_to(np.ones((), dtype), shape)
    except ValueError:
        return None


def call_with(name: str, f, *args) -> None:
    """`call(name, f(*args))` unless `view` gave no argument."""
    if all(a is not None for a in args):
        call(name, lambda: f(*args))


def split(k: int, parts: int) -> tuple[int, ...]:
    """2**k elements as `parts` dimensions (powers of two, the first ones largest)."""
    base, extra = divmod(k, parts)
    return tuple(1 << (base + (i < extra)) for i in range(parts))


def small(n: int, *shape_tail: int) -> np.ndarray:
    return np.ones((n, *shape_tail), np.float32)


def ops_with_views(k: int) -> None:
    """Every functional op and tensor constructor given zero-stride views of 2**k elements."""
    for rank in (1, 2, 3):
        shape = split(k, rank)
        x = view(*shape)
        if x is None:
            continue
        last = shape[-1]
        w1 = np.ones(min(last, 1 << 20), np.float32)
        call("from_numpy", lambda: T(x))
        call("from_numpy copy=False", lambda: gpt_rs.Tensor.from_numpy(x, copy=False))
        call_with("from_numpy f64", T, view(*shape, dtype=np.float64))
        call_with("from_numpy i64", T, view(*shape, dtype=np.int64))
        capsule = Producer(np.ones(1, np.float32), list(shape), [0] * rank)
        call("from_dlpack", lambda: gpt_rs.from_dlpack(capsule))
        call("gelu", lambda: F.gelu(x))
        call("gelu_tanh", lambda: F.gelu_tanh(x))
        call("softmax", lambda: F.softmax_last_dim(x))
        call("layer_norm", lambda: F.layer_norm(x, w1, w1))
        call("add_bias", lambda: F.add_bias(x, w1))
        call("embedding_lookup", lambda: F.embedding_lookup(x, np.zeros(4, np.int32)))
        call("tensor + view", lambda: T(np.ones(1, np.float32)) + x)
        call_with("Linear(view)", nn.Linear, view(last, 4))
        call_with("Embedding(view)", nn.Embedding, x)
        call_with("LayerNorm(view)", nn.LayerNorm, view(last), view(last))
        if k >= 30:  # products whose inputs fit would be minutes of arithmetic, not a test
            call("matmul", lambda: F.matmul(x, x))
            call_with("linear", F.linear, x, view(last, 4), None)
            call("attention", lambda: F.scaled_dot_product_attention(x, x, x))


def ops_with_broadcast_outputs(k: int) -> None:
    """Small real inputs whose result has 2**k elements (inputs of at most 2**21 elements)."""
    if k > 42:
        return
    a, b = split(k, 2)
    ta, tb = T(small(a, 1)), T(np.ones((1, b), np.float32))
    ia, ib = T(np.ones((a, 1), np.int32)), T(np.ones((1, b), np.int32))
    for sym, op in (
        ("+", lambda x, y: x + y),
        ("-", lambda x, y: x - y),
        ("*", lambda x, y: x * y),
        ("/", lambda x, y: x / y),
    ):
        call(f"f32 {sym}", lambda: op(ta, tb))
        call(f"i32 {sym}", lambda: op(ia, ib))
    call("@", lambda: ta @ tb)
    call("F.matmul", lambda: F.matmul(small(a, 1), np.ones((1, b), np.float32)))
    call("F.linear", lambda: F.linear(small(a, 1), np.ones((1, b), np.float32)))
    call("nn.Linear", lambda: nn.Linear(np.ones((1, b), np.float32))(small(a, 1)))
    call(
        "embedding_lookup",
        lambda: F.embedding_lookup(np.ones((2, b), np.float32), np.zeros(a, np.int32)),
    )
    call("nn.Embedding", lambda: nn.Embedding(np.ones((2, b), np.float32))(np.zeros(a, np.int32)))


def generation(k: int, model, tok_texts: list[str]) -> None:
    """Counts from user input: tokens, prompts, vocabularies, model sizes."""
    n = 1 << k
    call("generate_tokens max_new_tokens", lambda: model.generate_tokens([1, 2], n))
    call("generate max_new_tokens", lambda: model.generate("ab", n))
    call("stream max_new_tokens", lambda: next(iter(model.stream("ab", n))))
    call("top_k", lambda: model.generate_tokens([1, 2], 2, top_k=n))
    call("seed", lambda: model.generate_tokens([1, 2], 2, seed=n))
    call("stop_token_ids", lambda: model.generate_tokens([1, 2], 2, stop_token_ids=[n]))
    call("logits long prompt", lambda: model.logits(range(min(n, 1 << 20))))
    call("forward_tokens long prompt", lambda: model.forward_tokens(range(min(n, 1 << 20))))
    call("decode id", lambda: model.tokenizer.decode([n]))
    if k == 20:
        # Many prompts: 2**16 KV caches of 250 positions need 17 GB.
        call("generate_batch prompts", lambda: model.generate_batch(["ab"] * (1 << 16), 250))
    call("Tokenizer.train vocab", lambda: gpt_rs.Tokenizer.train(tok_texts, n))
    for key in ("vocab_size", "n_embd", "n_layer", "n_positions") if k >= 30 else ():
        cfg = dict(vocab_size=300, n_positions=16, n_embd=16, n_layer=1, n_head=2)
        cfg[key] = n
        if key == "n_embd":
            cfg["n_head"] = 1
        call(f"TrainableModel {key}", lambda: gpt_rs.TrainableModel(cfg))
    tm = TRAINABLE
    for shape in (split(k, 2), (1, 1 << min(k, 62))):
        ids = view(*shape, dtype=np.int64)
        if ids is not None:
            call("forward_backward", lambda: tm.forward_backward(ids * 0, ids * 0))
            call(
                "TrainableModel.logits",
                lambda: tm.logits(np.zeros(shape, np.int64)) if k <= 24 else tm.logits(ids),
            )


TRAINABLE = None


def main() -> None:
    global TRAINABLE
    model = gpt_rs.load_model(sys.argv[1])
    TRAINABLE = gpt_rs.TrainableModel(
        dict(vocab_size=300, n_positions=32, n_embd=16, n_layer=1, n_head=2)
    )
    texts = ["hello world, the quick brown fox"] * 4
    # Views fail (or succeed) in the conversion, before any backend runs: once is enough.
    for k in EXPONENTS:
        ops_with_views(k)
        generation(k, model, texts)
    for backend in gpt_rs.list_backends():  # outputs are allocated per backend's op
        gpt_rs.set_backend(backend)
        for k in EXPONENTS:
            ops_with_broadcast_outputs(k)
    print(
        json.dumps(
            {
                "calls": sum(outcomes.values()) + len(unexpected),
                "outcomes": dict(outcomes),
                "unexpected": unexpected,
            }
        )
    )


if __name__ == "__main__":
    main()
