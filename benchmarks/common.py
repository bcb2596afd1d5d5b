"""Helpers the benchmarks share: interleaved timing, the CPU's name, a same-run memory
bandwidth reference, a synthetic tokenizer for llama.cpp's converter, and the report table."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def cpu_name() -> str:
    """The CPU model as /proc/cpuinfo names it (every table says which CPU it ran on)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def set_threads(threads: int) -> None:
    """Every library's thread count, set before any of them is imported."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "GPT_RS_NUM_THREADS"):
        os.environ[var] = str(threads)


def median_times(fns: dict, repeats: int, best: bool = False) -> dict:
    """Median (or, with `best`, the shortest) seconds per call of each function, interleaved:
    every repeat times each function once, in turn, so a slow spell of a shared machine hits
    all of them alike. A pause comes before each timing: BLAS and OpenMP worker threads spin
    for a while after a call and would steal the cores from whatever is timed right after
    them."""
    for fn in fns.values():
        fn()
    ts = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            time.sleep(0.3)
            t0 = time.perf_counter()
            fn()
            ts[name].append(time.perf_counter() - t0)
    return {name: sorted(v)[0 if best else len(v) // 2] for name, v in ts.items()}


# A plain streaming read of a 1 GiB buffer, one contiguous part per thread: the memory
# bandwidth a decode that reads its weights once per token can reach. Written in C (compiled
# here with gcc, -march=native) so it measures the machine, not any library under test.
_READ_C = r"""
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
int main(int argc, char **argv) {
    size_t n = (size_t)1 << 30;
    int reps = atoi(argv[1]);
    char *p = aligned_alloc(1 << 21, n);
    madvise(p, n, MADV_HUGEPAGE);
    memset(p, 1, n);
    double best = 1e30, sink = 0;
    for (int r = 0; r < reps; r++) {
        double t0 = omp_get_wtime();
        #pragma omp parallel reduction(+ : sink)
        {
            int t = omp_get_thread_num(), nt = omp_get_num_threads();
            size_t lo = n / nt * t, hi = n / nt * (t + 1);
            __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
            for (size_t i = lo; i < hi; i += 128) {
                a0 = _mm256_add_ps(a0, _mm256_load_ps((float *)(p + i)));
                a1 = _mm256_add_ps(a1, _mm256_load_ps((float *)(p + i + 32)));
                a2 = _mm256_add_ps(a2, _mm256_load_ps((float *)(p + i + 64)));
                a3 = _mm256_add_ps(a3, _mm256_load_ps((float *)(p + i + 96)));
            }
            float o[8];
            _mm256_storeu_ps(o, _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
            sink += o[0];
        }
        double dt = omp_get_wtime() - t0;
        if (dt < best) best = dt;
    }
    printf("%f %f\n", n / best / 1e9, sink);
    return 0;
}
"""


def read_bandwidth(threads: int, reps: int = 9) -> float | None:
    """GB/s of the plain streaming read on `threads` threads (best of `reps`), or None when gcc
    is missing."""
    with tempfile.TemporaryDirectory() as d:
        src, exe = Path(d) / "read.c", Path(d) / "read"
        src.write_text(_READ_C)
        cc = ["gcc", "-O3", "-march=native", "-fopenmp", str(src), "-o", str(exe)]
        try:
            subprocess.run(cc, check=True, capture_output=True)
        except (OSError, subprocess.CalledProcessError):
            return None
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), OMP_PROC_BIND="spread")
        out = subprocess.run(
            [str(exe), str(reps)], check=True, capture_output=True, text=True, env=env
        )
        return float(out.stdout.split()[0])


def synthetic_gpt2_tokenizer(path: Path, vocab_size: int) -> None:
    """GPT-2-format `vocab.json` + `merges.txt` with exactly `vocab_size` tokens (256 byte
    symbols, random valid merges, `<|endoftext|>` last). The benchmarks feed token ids, so
    the merges' content does not matter; llama.cpp's converter just needs a tokenizer of the
    model's size, and no real one can be downloaded here."""
    import numpy as np

    # GPT-2's byte-to-unicode table.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    toks = [chr(c) for c in cs]
    vocab = {t: i for i, t in enumerate(toks)}
    merges = []
    rng = np.random.default_rng(0)
    while len(vocab) < vocab_size - 1:
        a, b = toks[rng.integers(len(toks))], toks[rng.integers(256)]
        t = a + b
        if t in vocab or len(t) > 12:
            continue
        vocab[t] = len(vocab)
        toks.append(t)
        merges.append(f"{a} {b}")
    vocab["<|endoftext|>"] = vocab_size - 1
    (path / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")


def convert_to_gguf(model: Path, gguf: Path, outtype: str, pre: str) -> Path | None:
    """`model` (a Hugging Face folder) converted to GGUF by the converter of llama-cpp-python's
    source distribution (GPT_RS_LLAMA_CPP_SRC = its unpacked `vendor/llama.cpp`), with a
    synthetic tokenizer of the model's vocabulary size; cached. None when the source is not
    given."""
    if gguf.exists():
        return gguf
    src = os.environ.get("GPT_RS_LLAMA_CPP_SRC")
    if not src:
        print("GPT_RS_LLAMA_CPP_SRC is not set: llama.cpp skipped", file=sys.stderr)
        return None
    conv = gguf.parent / (gguf.stem + "-for-gguf")
    conv.mkdir(exist_ok=True)
    for f in model.iterdir():
        if f.suffix in (".json", ".safetensors") and not (conv / f.name).exists():
            (conv / f.name).symlink_to(f)
    vocab = json.loads((model / "config.json").read_text())["vocab_size"]
    synthetic_gpt2_tokenizer(conv, vocab)
    # The converter identifies a BPE pre-tokenizer by hashing a test encoding; the synthetic
    # merges are unknown to it, so the model's pre-tokenizer is named directly.
    code = (
        "import sys; sys.path[:0] = [sys.argv[1], sys.argv[1] + '/gguf-py'];"
        f"import conversion.base as b; b.TextModel.get_vocab_base_pre = lambda self, t: {pre!r};"
        "import convert_hf_to_gguf as c; sys.argv = ['convert', sys.argv[2], '--outfile',"
        f" sys.argv[3], '--outtype', {outtype!r}]; c.main()"
    )
    subprocess.run([sys.executable, "-c", code, src, str(conv), str(gguf)], check=True)
    return gguf


def llama_cpp_greedy(model: Path, gguf_name: str, outtype: str, pre: str, threads: int):
    """(generate, prefill) through llama-cpp-python on `model` converted to a GGUF of
    `outtype` by llama.cpp's own converter (cached beside it), or None without llama_cpp."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return None
    gguf = convert_to_gguf(model, model.parent / gguf_name, outtype, pre)
    if gguf is None:
        return None
    return llama_cpp_runner(gguf, threads)


def llama_cpp_runner(gguf: Path, threads: int):
    """(generate, prefill) through llama-cpp-python on the GGUF file `gguf`, or None without
    llama_cpp: greedy ids, and the last row's logits of a prompt."""
    try:
        import llama_cpp
        import numpy as np
    except ImportError:
        return None
    llm = llama_cpp.Llama(
        str(gguf),
        n_ctx=1024,
        n_batch=512,
        n_threads=threads,
        n_threads_batch=threads,
        verbose=False,
    )
    vocab = llm.n_vocab()

    def last_logits():
        # Without logits_all, llama-cpp-python keeps no scores; read the context's last row.
        return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(vocab,))

    def gen(ids, n):
        llm.reset()
        llm.eval(ids)
        out = list(ids)
        for i in range(n):
            out.append(int(np.argmax(last_logits())))
            if i < n - 1:
                llm.eval([out[-1]])
        return out

    def prefill(ids):
        llm.reset()
        llm.eval(ids)
        return np.array(last_logits())

    return gen, prefill


def print_table(res: dict) -> None:
    """One markdown table: a row per metric, a column per implementation, then gpt_rs's ratio
    to each peer (> 1 means gpt_rs is better: more tokens/s, fewer ms, less memory)."""
    peers = [n for n in res if n != "gpt_rs"]
    cols = ["workload", "gpt_rs", *peers, *(f"gpt_rs vs {p}" for p in peers)]
    print("| " + " | ".join(cols) + " |")
    print("|---" * len(cols) + "|")
    for metric in res["gpt_rs"]:
        ours = res["gpt_rs"][metric]
        cells = [f"{res[p][metric]:.1f}" if metric in res[p] else "-" for p in peers]
        ratios = [
            "-"
            if metric not in res[p]
            else f"{(ours / res[p][metric]) if 'tok/s' in metric else (res[p][metric] / ours):.2f}x"
            for p in peers
        ]
        print("| " + " | ".join([metric, f"{ours:.1f}", *cells, *ratios]) + " |")


def load_rss(path: Path) -> dict:
    """RSS before loading, peak and after (bytes) of a fresh process that imports gpt_rs and
    loads `path`, with the model's weight bytes."""
    code = (
        "import sys, gpt_rs\n"
        "def kb(key):\n"
        "    for l in open('/proc/self/status'):\n"
        "        if l.startswith(key): return int(l.split()[1]) * 1024\n"
        "base = kb('VmRSS:')\n"
        "m = gpt_rs.load_model(sys.argv[1])\n"
        "print(base, kb('VmHWM:'), kb('VmRSS:'), m.weight_bytes)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(path)], check=True, capture_output=True, text=True
    )
    base, peak, rss, wb = map(int, out.stdout.split())
    return {"base": base, "peak": peak, "rss": rss, "weights": wb}
