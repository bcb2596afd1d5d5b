"""gpt_rs.Engine: continuous batching. Requests join and leave the batch at every step, and
each one gets exactly what generating it alone gives (greedy and seeded sampling), while the
queue, the batch and the KV memory stay bounded. Every wait here is bounded in time."""

import asyncio
import random
import threading
import time

import families as fam
import gpt2_fixture as fx
import pytest

import gpt_rs

PROMPTS = [
    "def add(a, b):",
    "The quick brown fox",
    "import numpy as np\n",
    "class Stack:\n    def",
    "x = [1, 2, 3]\nfor",
    "Once upon a time",
    "return",
    "while True:\n    if x",
]


@pytest.fixture(scope="module")
def model(tmp_path_factory, hf_tok):
    d = tmp_path_factory.mktemp("engine") / "gpt2"
    fx.make_gpt2_folder(d, hf_tok, n_positions=256)
    return gpt_rs.load_model(d)


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    d = tmp_path_factory.mktemp("engine") / "llama"
    fam.make_folder("llama_gqa", d)
    return gpt_rs.load_model(d)


def wait_idle(engine, seconds=10.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        m = engine.metrics
        if m["running"] == 0 and m["queued"] == 0:
            return m
        time.sleep(0.01)
    raise AssertionError(f"engine not idle after {seconds}s: {engine.metrics}")


@pytest.mark.parametrize("clients", [8, 32])
def test_concurrent_greedy_requests_equal_one_by_one_runs(model, clients):
    engine = gpt_rs.Engine(model, max_batch=8, max_queue=64)
    rng = random.Random(clients)
    jobs = [(PROMPTS[i % len(PROMPTS)], rng.randint(1, 40)) for i in range(clients)]
    want = [model.generate(p, n, temperature=0) for p, n in jobs]
    requests = [engine.submit(p, n, temperature=0) for p, n in jobs]
    got = [r.result() for r in requests]
    assert got == want
    for r, (_, n) in zip(requests, jobs):
        assert r.finish_reason in ("stop", "length")
        u = r.usage
        assert u["completion_tokens"] == len(r.tokens) <= n
        assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
        assert u["time_to_first_token"] > 0
    m = wait_idle(engine)
    assert m["kv_bytes_in_use"] == 0 and m["requests_total"] == clients
    assert m["generated_tokens_total"] == sum(len(r.tokens) for r in requests)


def test_seeded_sampling_and_stop_strings_match_generate(model):
    engine = gpt_rs.Engine(model, max_batch=4)
    opts = [
        dict(temperature=0.9, top_k=40, seed=s, stop=["\n\n"] if s % 2 else None) for s in range(6)
    ]
    want = [model.generate(PROMPTS[i], 30, **o) for i, o in enumerate(opts)]
    got = [engine.submit(PROMPTS[i], 30, **o) for i, o in enumerate(opts)]
    assert [r.result() for r in got] == want


def test_a_gqa_llama_batches_too(llama):
    engine = gpt_rs.Engine(llama, max_batch=3)
    prompts = [fam.prompt_ids("llama_gqa")[: 3 + i] for i in range(5)]
    want = [llama.generate_tokens(p, 12, temperature=0)[len(p) :] for p in prompts]
    reqs = [engine.submit(p, 12, temperature=0) for p in prompts]
    for r in reqs:
        r.result()
    assert [r.tokens for r in reqs] == want


def test_chunked_prefill_gives_the_same_tokens(model, hf_tok):
    prompt = " ".join(PROMPTS)
    n = len(hf_tok.encode(prompt).ids)
    assert n > 40
    engine = gpt_rs.Engine(model, prefill_chunk=16)
    r = engine.submit(prompt, 20, temperature=0)
    assert r.result() == model.generate(prompt, 20, temperature=0)


def test_streamed_pieces_join_to_the_text(model):
    engine = gpt_rs.Engine(model)
    r = engine.submit(PROMPTS[0], 40, temperature=0)
    pieces = list(r)
    assert "".join(pieces) == r.text == model.generate(PROMPTS[0], 40, temperature=0)
    assert list(r) == [] and r.next_piece() is None  # ended: nothing more


def test_async_iteration(model):
    engine = gpt_rs.Engine(model, max_batch=4)

    async def collect(p):
        return "".join([piece async for piece in engine.submit(p, 25, temperature=0)])

    async def main():
        return await asyncio.wait_for(asyncio.gather(*(collect(p) for p in PROMPTS)), 60)

    assert asyncio.run(main()) == [model.generate(p, 25, temperature=0) for p in PROMPTS]


def test_cancel_frees_the_sequence_within_a_step(model):
    engine = gpt_rs.Engine(model, max_batch=2)
    long = engine.submit(PROMPTS[1], 200, temperature=0, stop_token_ids=[])
    assert long.next_piece(timeout=10) is not None  # it is running
    long.cancel()
    assert long.result() is not None and long.finish_reason == "cancelled"
    assert len(long.tokens) < 200
    # dropping a request cancels it too
    r = engine.submit(PROMPTS[2], 200, temperature=0, stop_token_ids=[])
    r.next_piece(timeout=10)
    del r
    assert wait_idle(engine)["kv_bytes_in_use"] == 0


def test_full_queue_is_refused_with_busy_error(model):
    engine = gpt_rs.Engine(model, max_batch=1, max_queue=1)
    running = engine.submit(PROMPTS[0], 200, temperature=0, stop_token_ids=[])
    running.next_piece(timeout=10)
    queued = engine.submit(PROMPTS[1], 5, temperature=0)
    with pytest.raises(gpt_rs.BusyError, match="queue is full"):
        engine.submit(PROMPTS[2], 5)
    assert isinstance(gpt_rs.BusyError("x"), RuntimeError)
    running.cancel()
    assert queued.result() == model.generate(PROMPTS[1], 5, temperature=0)


def test_kv_memory_is_bounded_and_reported(model):
    engine = gpt_rs.Engine(model, max_batch=8, max_kv_bytes=200_000)
    with pytest.raises(MemoryError, match="KV cache"):
        engine.submit(PROMPTS[0], 240)
    # Requests that fit only a few at a time still all complete, never over the limit.
    reqs = [engine.submit(p, 30, temperature=0) for p in PROMPTS]
    peak = 0
    while any(r.finish_reason is None for r in reqs):
        peak = max(peak, engine.metrics["kv_bytes_in_use"])
        for r in reqs:
            r.next_piece(timeout=10)
    assert 0 < peak <= 200_000
    assert [r.text for r in reqs] == [model.generate(p, 30, temperature=0) for p in PROMPTS]


def test_bad_requests_raise_clear_errors(model):
    engine = gpt_rs.Engine(model)
    with pytest.raises(ValueError, match="context"):
        engine.submit("hi", 10_000)
    with pytest.raises(ValueError, match="empty"):
        engine.submit([], 5)
    with pytest.raises(ValueError, match="out of range"):
        engine.submit([10**6], 5)
    with pytest.raises(TypeError, match="temprature"):
        engine.submit("hi", 5, temprature=0)
    with pytest.raises(TypeError, match="prompt must be"):
        engine.submit(3.5, 5)
    with pytest.raises(ValueError, match="max_batch"):
        gpt_rs.Engine(model, max_batch=0)


def test_soak_with_disconnects_leaves_nothing_behind(model):
    engine = gpt_rs.Engine(model, max_batch=8, max_queue=1000)
    rng = random.Random(0)
    reqs = []
    for i in range(200):
        r = engine.submit(PROMPTS[i % len(PROMPTS)], rng.randint(1, 30), temperature=0.8, seed=i)
        reqs.append((r, rng.random() < 0.25))
    deadline = time.monotonic() + 120
    for r, disconnect in reqs:
        if disconnect:
            r.cancel()
        else:
            while r.next_piece(timeout=max(0.0, deadline - time.monotonic())) is not None:
                pass
    m = wait_idle(engine, 30)
    assert m["kv_bytes_in_use"] == 0 and m["running"] == 0 and m["queued"] == 0
    finished = [r for r, d in reqs if not d]
    assert all(r.finish_reason in ("stop", "length") for r in finished)
    assert engine.submit("hi", 3, temperature=0).result() == model.generate("hi", 3, temperature=0)


def test_shutdown_drains_then_refuses(model):
    engine = gpt_rs.Engine(model, max_batch=2)
    reqs = [engine.submit(p, 20, temperature=0) for p in PROMPTS[:4]]
    t = threading.Thread(target=engine.shutdown, args=(30.0,))
    t.start()
    t.join(60)
    assert not t.is_alive()
    # Every request ran to its end before the engine stopped.
    assert [r.result() for r in reqs] == [model.generate(p, 20, temperature=0) for p in PROMPTS[:4]]
    assert all(r.finish_reason in ("stop", "length") for r in reqs)
    with pytest.raises(gpt_rs.BusyError, match="shutting down"):
        engine.submit("hi", 3)
