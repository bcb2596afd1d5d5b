"""Serving throughput: aggregate generated tokens/s with 1, 4, 8 and 16 concurrent clients,
gpt_rs's server (`gpt-rs serve`, continuous batching) next to llama-cpp-python's server
(`python -m llama_cpp.server`) on the same GGUF file, same run. Every client streams a chat
completion (time to first token measured) and counts the tokens the server reports.

    python benchmarks/serve.py --model qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
    python benchmarks/serve.py --quick      # tiny random model, gpt_rs only (CI smoke run)

llama-cpp-python's server runs when its interpreter can import `llama_cpp.server`
(`--peer-python`, default: this interpreter); `--llama-server PATH` adds llama.cpp's own
`llama-server -np N` if you have built it.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import cpu_name  # noqa: E402

PROMPTS = [
    "Write a Python function that parses a CSV file and returns a list of dicts.",
    "Explain how a hash map works, with an example in C.",
    "Write a binary search in Rust with tests.",
    "Write a shell script that backs up a folder every hour.",
    "Implement a linked list class in Python with insert and delete.",
    "Write a JavaScript function that debounces another function.",
    "Explain recursion with a factorial example in Java.",
    "Write a SQL query that finds the top 5 customers by revenue.",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, seconds: float = 300) -> None:
    import httpx

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url + "/v1/models", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} not ready after {seconds}s")


def one_request(url: str, model: str, prompt: str, max_tokens: int) -> tuple[int, float, float]:
    """(completion tokens, time to first token, total seconds) of one streamed chat."""
    import httpx

    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    t0 = time.perf_counter()
    ttft, chunks, usage = None, 0, None
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            c = json.loads(line[6:])
            if c.get("usage"):
                usage = c["usage"]["completion_tokens"]
            for ch in c.get("choices", []):
                if (ch.get("delta") or {}).get("content"):
                    chunks += 1
                    if ttft is None:
                        ttft = time.perf_counter() - t0
    total = time.perf_counter() - t0
    return (usage if usage is not None else chunks), (ttft or total), total


def load(url: str, model: str, clients: int, per_client: int, max_tokens: int) -> dict:
    jobs = [PROMPTS[i % len(PROMPTS)] for i in range(clients * per_client)]
    lock = threading.Lock()
    stats: list[tuple[int, float, float]] = []

    def client(k: int) -> None:
        for p in jobs[k::clients]:
            s = one_request(url, model, p, max_tokens)
            with lock:
                stats.append(s)

    one_request(url, model, PROMPTS[0], 4)  # warm
    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    wall = time.perf_counter() - t0
    tokens = sum(s[0] for s in stats)
    ttfts = sorted(s[1] for s in stats)
    return {
        "tok_s": tokens / wall,
        "tokens": tokens,
        "ttft_median": ttfts[len(ttfts) // 2],
        "ttft_p90": ttfts[int(len(ttfts) * 0.9)],
    }


def start(cmd: list[str], env: dict | None = None) -> subprocess.Popen:
    log = tempfile.NamedTemporaryFile("w+", prefix="serve-bench-", suffix=".log", delete=False)
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)


def run_server(name: str, cmd: list[str], port: int, model_id: str, args) -> dict:
    proc = start(cmd)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc)
        out = {}
        for c in args.clients:
            out[c] = load(url, model_id, c, args.requests_per_client, args.max_tokens)
            r = out[c]
            print(
                f"  {name:<20} {c:>2} clients: {r['tok_s']:7.1f} tok/s  TTFT median "
                f"{r['ttft_median'] * 1000:6.0f} ms, p90 {r['ttft_p90'] * 1000:6.0f} ms",
                flush=True,
            )
        return out
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def quick_model(tmp: Path) -> Path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import chat_cases

    return chat_cases.make_chat_model(tmp / "tiny")


def ray_replicas(args) -> int:
    """Aggregate tok/s of 1 and 2 Ray Serve replicas, each a 1-thread engine, behind Ray's
    proxy on loopback."""
    import ray
    from ray import serve

    from gpt_rs.ray_serve import deployment

    print(f"# Ray Serve replicas, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"# CPU: {cpu_name()}, model {Path(args.model).name}, 1 thread per replica")
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    url = f"http://127.0.0.1:{port}"
    rows = {}
    try:
        for replicas in (1, 2):
            serve.run(
                deployment(
                    args.model,
                    replicas=replicas,
                    threads=1,
                    model_name="bench",
                    max_batch=max(args.clients),
                ),
                route_prefix="/",
            )
            rows[replicas] = {}
            for c in args.clients:
                r = load(url, "bench", c, args.requests_per_client, args.max_tokens)
                rows[replicas][c] = r["tok_s"]
                print(
                    f"  {replicas} replica(s), {c:>2} clients: {r['tok_s']:7.1f} tok/s", flush=True
                )
            serve.delete("default")
    finally:
        serve.shutdown()
        ray.shutdown()
    print("\n| clients | 1 replica tok/s | 2 replicas tok/s | ratio |")
    print("|---|---|---|---|")
    for c in args.clients:
        print(f"| {c} | {rows[1][c]:.1f} | {rows[2][c]:.1f} | {rows[2][c] / rows[1][c]:.2f}x |")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", help="a GGUF file (both servers) or a model folder (gpt_rs only)")
    ap.add_argument("--clients", default="1,4,8,16")
    ap.add_argument("--requests-per-client", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--peer-python", default=sys.executable, help="interpreter with llama_cpp")
    ap.add_argument("--llama-server", help="path of llama.cpp's llama-server binary")
    ap.add_argument("--quick", action="store_true", help="tiny model, gpt_rs only, 1 and 4 clients")
    ap.add_argument(
        "--ray",
        action="store_true",
        help="instead: 1 and 2 Ray Serve replicas of a 1-thread engine (needs ray[serve])",
    )
    args = ap.parse_args()
    args.clients = [int(c) for c in args.clients.split(",")]
    tmp = Path(tempfile.mkdtemp())
    if args.quick:
        args.model = str(quick_model(tmp))
        args.clients, args.requests_per_client, args.max_tokens = [1, 4], 1, 16
    if not args.model:
        ap.error("--model is required (or --quick)")
    max_batch = max(args.clients)
    if args.ray:
        return ray_replicas(args)

    print(f"# serving benchmark, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"# CPU: {cpu_name()}, {args.threads} threads, model {Path(args.model).name}")
    print(
        f"# {args.requests_per_client} requests per client, {args.max_tokens} tokens each, greedy"
    )
    results = {}
    port = free_port()
    results["gpt_rs"] = run_server(
        "gpt_rs serve",
        [
            sys.executable,
            "-m",
            "gpt_rs",
            "serve",
            "--model",
            args.model,
            "--port",
            str(port),
            "--threads",
            str(args.threads),
            "--max-batch",
            str(max_batch),
            "--model-name",
            "bench",
        ],
        port,
        "bench",
        args,
    )
    has_peer = (
        not args.quick
        and args.model.endswith(".gguf")
        and subprocess.run(
            [args.peer_python, "-c", "import llama_cpp.server"], capture_output=True
        ).returncode
        == 0
    )
    if has_peer:
        port = free_port()
        results["llama-cpp-python"] = run_server(
            "llama_cpp.server",
            [
                args.peer_python,
                "-m",
                "llama_cpp.server",
                "--model",
                args.model,
                "--port",
                str(port),
                "--n_threads",
                str(args.threads),
                "--n_ctx",
                "4096",
                "--model_alias",
                "bench",
                # Queue concurrent requests instead of letting each new one cut off the
                # running one (its default): every request then gets all its tokens.
                "--interrupt_requests",
                "False",
            ],
            port,
            "bench",
            args,
        )
    elif not args.quick:
        print("  llama_cpp.server: not importable by --peer-python; skipped")
    if args.llama_server:
        port = free_port()
        results["llama-server"] = run_server(
            f"llama-server -np {max_batch}",
            [
                args.llama_server,
                "-m",
                args.model,
                "--port",
                str(port),
                "-t",
                str(args.threads),
                "-np",
                str(max_batch),
                "-c",
                str(4096 * max_batch),
                "--alias",
                "bench",
            ],
            port,
            "bench",
            args,
        )

    print("\n| clients | " + " | ".join(f"{k} tok/s" for k in results) + " | gpt_rs vs each peer |")
    print("|---|" + "---|" * (len(results) + 1))
    for c in args.clients:
        row = [f"{results[k][c]['tok_s']:.1f}" for k in results]
        ratios = [
            f"{results['gpt_rs'][c]['tok_s'] / results[k][c]['tok_s']:.2f}x vs {k}"
            for k in results
            if k != "gpt_rs"
        ]
        print(f"| {c} | " + " | ".join(row) + f" | {', '.join(ratios) or '-'} |")
    g = results["gpt_rs"]
    if 8 in g and 1 in g:
        print(f"\ngpt_rs with 8 clients: {g[8]['tok_s'] / g[1]['tok_s']:.2f}x one client's tok/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
