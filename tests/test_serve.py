"""`gpt-rs serve`: the OpenAI-compatible server, through the official `openai` client and raw
HTTP, on loopback only. Greedy answers equal `model.chat` / `model.generate`, streams join to
the same text, every error has its status code and OpenAI's shape, concurrent clients get what
one-by-one runs give, and clients that disconnect leave nothing running. Every loop is bounded."""

import json
import socket
import threading
import time
from pathlib import Path

import chat_cases as cc
import pytest

import gpt_rs

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")
from gpt_rs.server import create_app  # noqa: E402

MODEL = "tiny-qwen"
QUESTIONS = ["hello", "what is the weather", "tell me a story", "why", "who are you", "ok"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return gpt_rs.load_model(cc.make_chat_model(tmp_path_factory.mktemp("serve") / "qwen"))


class Server:
    """A server on a free loopback port, in a thread of this process."""

    def __init__(self, model, **kw):
        engine_kw = {k: kw.pop(k) for k in ("max_batch", "max_queue") if k in kw}
        self.engine = gpt_rs.Engine(model, **engine_kw)
        app = create_app(self.engine, MODEL, **kw)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.02)

    def client(self, **kw):
        return openai.OpenAI(base_url=self.url + "/v1", api_key=kw.pop("api_key", "none"), **kw)

    def stop(self):
        self.server.should_exit = True
        self.thread.join(20)
        self.engine.shutdown(1.0)

    def wait_idle(self, seconds=10.0):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            m = self.engine.metrics
            if m["running"] == 0 and m["queued"] == 0:
                return m
            time.sleep(0.01)
        raise AssertionError(f"requests still running after {seconds}s: {self.engine.metrics}")


@pytest.fixture(scope="module")
def server(model):
    s = Server(model, max_batch=8, max_queue=64, max_body_bytes=64 * 1024)
    yield s
    s.stop()


def msgs(q):
    return [{"role": "user", "content": q}]


def test_models_health_and_metrics(server):
    client = server.client()
    assert [m.id for m in client.models.list().data] == [MODEL]
    assert httpx.get(server.url + "/health").json()["status"] == "ok"
    text = httpx.get(server.url + "/metrics").text
    for key in ("running", "queued", "tokens_per_second", "kv_bytes_in_use"):
        assert f"gpt_rs_{key} " in text


def test_chat_greedy_equals_model_chat(server, model):
    client = server.client()
    for q in QUESTIONS[:3]:
        r = client.chat.completions.create(
            model=MODEL, messages=msgs(q), max_tokens=24, temperature=0
        )
        want = model.chat(msgs(q), max_new_tokens=24, temperature=0)
        assert r.choices[0].message.content == want and r.choices[0].message.role == "assistant"
        assert r.choices[0].finish_reason in ("stop", "length")
        assert r.usage.completion_tokens >= 1 and r.usage.total_tokens == (
            r.usage.prompt_tokens + r.usage.completion_tokens
        )
        # max_completion_tokens works as max_tokens does
        r2 = client.chat.completions.create(
            model=MODEL, messages=msgs(q), max_completion_tokens=24, temperature=0
        )
        assert r2.choices[0].message.content == want


def test_streaming_chunks_join_to_the_same_text(server, model):
    client = server.client()
    q = QUESTIONS[2]
    stream = client.chat.completions.create(
        model=MODEL,
        messages=msgs(q),
        max_tokens=30,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    parts, usage, reasons = [], None, []
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            parts.append(c.delta.content or "")
            reasons.append(c.finish_reason)
    assert "".join(parts) == model.chat(msgs(q), max_new_tokens=30, temperature=0)
    assert reasons[-1] in ("stop", "length") and usage is not None and usage.completion_tokens > 0


def test_completions_text_and_ids(server, model):
    client = server.client()
    r = client.completions.create(model=MODEL, prompt="hello world", max_tokens=12, temperature=0)
    assert r.choices[0].text == model.generate("hello world", 12, temperature=0)
    ids = model.tokenizer.encode("hello world")
    r = client.completions.create(model=MODEL, prompt=ids, max_tokens=12, temperature=0)
    assert r.choices[0].text == model.generate("hello world", 12, temperature=0)
    pieces = [
        c.choices[0].text
        for c in client.completions.create(
            model=MODEL, prompt="hello world", max_tokens=12, temperature=0, stream=True
        )
        if c.choices
    ]
    assert "".join(pieces) == r.choices[0].text


def test_seeded_sampling_is_reproducible(server, model):
    client = server.client()

    def ask():
        r = client.chat.completions.create(
            model=MODEL, messages=msgs("tell me"), max_tokens=20, temperature=0.9, seed=7
        )
        return r.choices[0].message.content

    a, b = ask(), ask()
    assert (
        a == b == model.chat(msgs("tell me"), max_new_tokens=20, temperature=0.9, seed=7, top_p=1.0)
    )


def test_stop_strings(server, model):
    client = server.client()
    full = model.chat(msgs("hello"), max_new_tokens=30, temperature=0)
    words = full.split()
    if len(words) < 3:
        pytest.skip("the reply is too short to cut")
    stop = " " + words[2]
    r = client.chat.completions.create(
        model=MODEL, messages=msgs("hello"), max_tokens=30, temperature=0, stop=stop
    )
    assert r.choices[0].message.content == full[: full.index(stop)]
    assert r.choices[0].finish_reason == "stop"


def status_of(call):
    with pytest.raises(openai.APIStatusError) as e:
        call()
    body = e.value.response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"} and body["error"]["message"]
    return e.value.status_code, body["error"]


@pytest.mark.parametrize(
    "kwargs, param",
    [
        ({"messages": []}, "messages"),
        ({"messages": [{"content": "x"}]}, "messages[0]"),
        ({"max_tokens": "ten"}, "max_tokens"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"temperature": 3.5}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"n": 2}, "n"),
        ({"seed": -1}, "seed"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"presence_penalty": 1.0}, "presence_penalty"),
        ({"logprobs": True}, "logprobs"),
        ({"stream": "yes"}, "stream"),
    ],
)
def test_invalid_fields_are_400_naming_the_field(server, kwargs, param):
    client = server.client()
    args = {"model": MODEL, "messages": msgs("hi"), "max_tokens": 5, **kwargs}
    status, err = status_of(lambda: client.chat.completions.create(**args))
    assert status == 400 and err["param"] == param and err["type"] == "invalid_request_error"


def test_prompt_longer_than_the_context_is_400(server):
    client = server.client()
    status, err = status_of(
        lambda: client.completions.create(model=MODEL, prompt=[5] * 600, max_tokens=5)
    )
    assert status == 400 and err["code"] == "context_length_exceeded"
    status, err = status_of(
        lambda: client.completions.create(model=MODEL, prompt="hello", max_tokens=10_000)
    )
    assert status == 400 and "context" in err["message"]


def test_unknown_model_and_path_are_404(server):
    client = server.client()
    status, err = status_of(
        lambda: client.chat.completions.create(model="gpt-9", messages=msgs("hi"), max_tokens=2)
    )
    assert status == 404 and err["code"] == "model_not_found"
    r = httpx.get(server.url + "/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["message"]
    r = httpx.get(server.url + "/v1/chat/completions")
    assert r.status_code == 405 and r.json()["error"]["message"]


def test_raw_http_malformed_and_oversized_bodies(server):
    url = server.url + "/v1/chat/completions"
    for body in (
        b"{not json",
        b"[1, 2]",
        b'{"model": 3}',
        "\udcff".encode("utf-8", "surrogatepass"),
    ):
        r = httpx.post(url, content=body, headers={"content-type": "application/json"})
        assert r.status_code == 400, (body, r.text)
        assert r.json()["error"]["type"] == "invalid_request_error"
    big = json.dumps({"model": MODEL, "messages": msgs("x" * 100_000)}).encode()
    r = httpx.post(url, content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "limit" in r.json()["error"]["message"]

    # Without a Content-Length (chunked): the limit holds while reading.
    def chunks():
        for _ in range(100):
            yield b" " * 1024

    r = httpx.post(url, content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_slow_client_does_not_block_others(server, model):
    # A client that sends half a request and waits: others are served meanwhile.
    s = socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1])))
    s.sendall(b'POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"mo')
    try:
        r = server.client().completions.create(
            model=MODEL, prompt="hello", max_tokens=5, temperature=0
        )
        assert r.choices[0].text == model.generate("hello", 5, temperature=0)
    finally:
        s.close()


@pytest.mark.parametrize("clients", [8, 32])
def test_concurrent_clients_get_one_by_one_results(server, model, clients):
    from concurrent.futures import ThreadPoolExecutor

    client = server.client(max_retries=0)
    jobs = [(QUESTIONS[i % len(QUESTIONS)], 8 + i % 17) for i in range(clients)]
    want = [model.chat(msgs(q), max_new_tokens=n, temperature=0) for q, n in jobs]

    def ask(job):
        q, n = job
        r = client.chat.completions.create(
            model=MODEL, messages=msgs(q), max_tokens=n, temperature=0
        )
        return r.choices[0].message.content

    with ThreadPoolExecutor(clients) as pool:
        got = list(pool.map(ask, jobs, timeout=120))
    assert got == want
    server.wait_idle()


def test_disconnect_mid_stream_cancels_the_sequence(server):
    body = {
        "model": MODEL,
        "messages": msgs("tell me a story"),
        "max_tokens": 400,
        "temperature": 0.8,
        "seed": 1,
        "stream": True,
    }
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=30) as r:
        lines = r.iter_lines()
        got = [next(lines) for _ in range(3)]
        assert any(ln.startswith("data: ") for ln in got)
    # the client is gone: its sequence leaves the batch within a few steps
    m = server.wait_idle(10)
    assert m["kv_bytes_in_use"] == 0


def test_api_key_and_full_queue(model):
    s = Server(model, api_key="sekret", max_batch=1, max_queue=0)
    try:
        status, err = status_of(
            lambda: s.client(api_key="wrong").chat.completions.create(
                model=MODEL, messages=msgs("hi"), max_tokens=2
            )
        )
        assert status == 401 and err["type"] == "authentication_error"
        assert httpx.get(s.url + "/v1/models").status_code == 401
        ok = s.client(api_key="sekret")
        assert ok.models.list().data[0].id == MODEL
        # One long request holds the only place; the next is refused with Retry-After.
        body = {
            "model": MODEL,
            "messages": msgs("story"),
            "max_tokens": 400,
            "stream": True,
            "temperature": 0.8,
            "seed": 2,
        }
        headers = {"authorization": "Bearer sekret"}
        with httpx.stream(
            "POST", s.url + "/v1/chat/completions", json=body, headers=headers, timeout=30
        ) as r:
            next(r.iter_lines())
            busy = httpx.post(
                s.url + "/v1/chat/completions",
                headers=headers,
                timeout=30,
                json={"model": MODEL, "messages": msgs("hi"), "max_tokens": 2},
            )
            assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
            assert busy.json()["error"]["type"] == "server_overloaded"
        s.wait_idle(10)
    finally:
        s.stop()


def test_soak_with_disconnects_stays_healthy(server, model):
    import os
    import random
    from concurrent.futures import ThreadPoolExecutor

    def rss_mb():
        with open(f"/proc/{os.getpid()}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    rng = random.Random(0)
    jobs = [(rng.choice(QUESTIONS), rng.randint(1, 20), rng.random() < 0.25, i) for i in range(300)]

    def one(job):
        q, n, disconnect, i = job
        body = {
            "model": MODEL,
            "messages": msgs(q),
            "max_tokens": n,
            "temperature": 0.7,
            "seed": i,
            "stream": True,
        }
        with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=60) as r:
            assert r.status_code == 200
            for k, _ in enumerate(r.iter_lines()):
                if disconnect and k >= 1:
                    return "cut"
        return "done"

    before = rss_mb()
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, jobs, timeout=300))
    assert results.count("done") + results.count("cut") == len(jobs)
    m = server.wait_idle(20)
    assert m["running"] == 0 and m["queued"] == 0 and m["kv_bytes_in_use"] == 0
    assert rss_mb() - before < 200  # flat: nothing per request is kept
    r = server.client().chat.completions.create(
        model=MODEL, messages=msgs("hi"), max_tokens=4, temperature=0
    )
    assert r.choices[0].message.content == model.chat(msgs("hi"), max_new_tokens=4, temperature=0)


def test_sigterm_drains_running_requests_then_exits(model, tmp_path):
    import os
    import signal
    import subprocess
    import sys

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    folder = Path(repr(model).split("path='")[1].rstrip("')"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "gpt_rs", "serve", "--model", str(folder), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None and time.monotonic() < deadline
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        name = folder.name
        body = {
            "model": name,
            "messages": msgs("story"),
            "max_tokens": 200,
            "stream": True,
            "temperature": 0.8,
            "seed": 3,
        }
        with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=30) as r:
            lines = r.iter_lines()
            next(lines)
            os.kill(proc.pid, signal.SIGTERM)  # mid-stream
            rest = list(lines)
        data = [ln for ln in rest if ln]
        assert data and data[-1] == "data: [DONE]"  # the running request finished
        assert proc.wait(30) == 0
        assert "stopped" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
