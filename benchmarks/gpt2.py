"""Benchmark: GPT-2 124M (random weights, f32, batch 1) decode and prefill speed.

gpt_rs next to a NumPy GPT-2 with a KV cache (always); Hugging Face transformers and a
hand-tuned PyTorch GPT-2 (`TorchGPT2`) when torch + transformers are installed; and llama.cpp
f32 when llama-cpp-python is installed and GPT_RS_LLAMA_CPP_SRC points at the
`vendor/llama.cpp` folder of its unpacked source distribution (whose converter makes the
GGUF). Same weights, same run, 1 and 2 threads (one process each); within a process every
workload times the implementations interleaved, repeat by repeat, and reports medians.
Checks that greedy tokens agree. Not a test: numbers depend on the machine and its load.

    python benchmarks/gpt2.py                # 1 and 2 threads
    python benchmarks/gpt2.py --threads 1 --repeats 5
    python benchmarks/gpt2.py --quick        # tiny model, one repeat (CI smoke run)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

CACHE = Path(os.environ.get("GPT_RS_BENCH_DIR", Path.home() / ".cache" / "gpt_rs_bench"))


def make_model(path: Path, quick: bool) -> Path:
    """A random GPT-2 (124M shapes, or tiny with --quick) in Hugging Face layout."""
    import numpy as np
    from safetensors.numpy import save_file

    if (path / "model.safetensors").exists():
        return path
    path.mkdir(parents=True, exist_ok=True)
    L, C, V, P = (2, 64, 1000, 256) if quick else (12, 768, 50257, 1024)
    rng = np.random.default_rng(0)

    def w(*s, std=0.02):
        return (rng.standard_normal(s, dtype=np.float32) * std).astype(np.float32)

    p = {
        "transformer.wte.weight": w(V, C),
        "transformer.wpe.weight": w(P, C, std=0.01),
        "transformer.ln_f.weight": np.ones(C, np.float32),
        "transformer.ln_f.bias": np.zeros(C, np.float32),
    }
    for i in range(L):
        k = f"transformer.h.{i}."
        p |= {
            k + "ln_1.weight": np.ones(C, np.float32),
            k + "ln_1.bias": np.zeros(C, np.float32),
            k + "attn.c_attn.weight": w(C, 3 * C),
            k + "attn.c_attn.bias": np.zeros(3 * C, np.float32),
            k + "attn.c_proj.weight": w(C, C),
            k + "attn.c_proj.bias": np.zeros(C, np.float32),
            k + "ln_2.weight": np.ones(C, np.float32),
            k + "ln_2.bias": np.zeros(C, np.float32),
            k + "mlp.c_fc.weight": w(C, 4 * C),
            k + "mlp.c_fc.bias": np.zeros(4 * C, np.float32),
            k + "mlp.c_proj.weight": w(4 * C, C),
            k + "mlp.c_proj.bias": np.zeros(C, np.float32),
        }
    save_file(p, str(path / "model.safetensors"), metadata={"format": "pt"})
    cfg = {
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "vocab_size": V,
        "n_positions": P,
        "n_ctx": P,
        "n_embd": C,
        "n_layer": L,
        "n_head": 12 if not quick else 4,
        "layer_norm_epsilon": 1e-5,
        "activation_function": "gelu_new",
        "bos_token_id": V - 1,
        "eos_token_id": V - 1,
    }
    (path / "config.json").write_text(json.dumps(cfg))
    return path


def synthetic_gpt2_tokenizer(path: Path, vocab_size: int) -> None:
    """GPT-2-format `vocab.json` + `merges.txt` with exactly `vocab_size` tokens (256 byte
    symbols, random valid merges, `<|endoftext|>` last). The benchmark feeds token ids, so
    the merges' content does not matter; llama.cpp's converter just needs a tokenizer of the
    model's size, and none of the real 50,257-token GPT-2 can be downloaded here."""
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


def llama_cpp_gguf(path: Path) -> Path | None:
    """The model converted to an f32 GGUF by the converter in llama-cpp-python's source
    distribution (set GPT_RS_LLAMA_CPP_SRC to its unpacked `vendor/llama.cpp`), cached."""
    gguf = path.parent / (path.name + "-f32.gguf")
    if gguf.exists():
        return gguf
    src = os.environ.get("GPT_RS_LLAMA_CPP_SRC")
    if not src:
        print(
            "llama-cpp-python is installed but GPT_RS_LLAMA_CPP_SRC is not set: skipped",
            file=sys.stderr,
        )
        return None
    conv = path.parent / (path.name + "-for-gguf")
    conv.mkdir(exist_ok=True)
    for f in ("config.json", "model.safetensors"):
        if not (conv / f).exists():
            (conv / f).symlink_to(path / f)
    V = json.loads((path / "config.json").read_text())["vocab_size"]
    synthetic_gpt2_tokenizer(conv, V)
    # The converter identifies a BPE pre-tokenizer by hashing a test encoding; the synthetic
    # merges are unknown to it, but the pre-tokenizer is GPT-2's, so it is named directly.
    code = (
        "import sys; sys.path[:0] = [sys.argv[1], sys.argv[1] + '/gguf-py'];"
        "import conversion.base as b; b.TextModel.get_vocab_base_pre = lambda self, t: 'gpt-2';"
        "import convert_hf_to_gguf as c; sys.argv = ['convert', sys.argv[2], '--outfile',"
        " sys.argv[3], '--outtype', 'f32']; c.main()"
    )
    subprocess.run([sys.executable, "-c", code, src, str(conv), str(gguf)], check=True)
    return gguf


def llama_cpp_impl(path: Path, threads: int):
    """(generate, prefill) through llama-cpp-python, or None when it is not available."""
    try:
        import llama_cpp
        import numpy as np
    except ImportError:
        return None
    gguf = llama_cpp_gguf(path)
    if gguf is None:
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
        return last_logits()

    return gen, prefill


class NumpyGPT2:
    """A straightforward f32 NumPy GPT-2 with a KV cache (the NumPy peer)."""

    def __init__(self, path: Path):
        import numpy as np
        from safetensors.numpy import load_file

        self.np = np
        self.cfg = json.loads((path / "config.json").read_text())
        self.p = {
            k.removeprefix("transformer."): v
            for k, v in load_file(str(path / "model.safetensors")).items()
        }

    def forward(self, ids, cache):
        np, p, c = self.np, self.p, self.cfg
        H, C = c["n_head"], c["n_embd"]
        D, start = C // H, (cache[0][0].shape[1] if cache else 0)
        x = p["wte.weight"][ids] + p["wpe.weight"][start : start + len(ids)]

        def ln(x, w, b):
            mu = x.mean(-1, keepdims=True)
            return (x - mu) / np.sqrt(x.var(-1, keepdims=True) + 1e-5) * w + b

        new_cache = []
        for i in range(c["n_layer"]):
            k = f"h.{i}."
            qkv = (
                ln(x, p[k + "ln_1.weight"], p[k + "ln_1.bias"]) @ p[k + "attn.c_attn.weight"]
                + p[k + "attn.c_attn.bias"]
            )
            q, kk, vv = (
                qkv[:, j * C : (j + 1) * C].reshape(-1, H, D).transpose(1, 0, 2) for j in range(3)
            )
            if cache:
                kk = np.concatenate([cache[i][0], kk], 1)
                vv = np.concatenate([cache[i][1], vv], 1)
            new_cache.append((kk, vv))
            s = q @ kk.transpose(0, 2, 1) / np.float32(np.sqrt(D))
            T, Tk = q.shape[1], kk.shape[1]
            s = np.where(np.arange(Tk)[None, :] <= np.arange(T)[:, None] + (Tk - T), s, -np.inf)
            s = np.exp(s - s.max(-1, keepdims=True))
            a = (s / s.sum(-1, keepdims=True)) @ vv
            x = (
                x
                + a.transpose(1, 0, 2).reshape(-1, C) @ p[k + "attn.c_proj.weight"]
                + p[k + "attn.c_proj.bias"]
            )
            h = (
                ln(x, p[k + "ln_2.weight"], p[k + "ln_2.bias"]) @ p[k + "mlp.c_fc.weight"]
                + p[k + "mlp.c_fc.bias"]
            )
            h = (
                0.5
                * h
                * (1 + np.tanh(np.float32(0.7978845608) * (h + np.float32(0.044715) * h**3)))
            )
            x = x + h @ p[k + "mlp.c_proj.weight"] + p[k + "mlp.c_proj.bias"]
        x = ln(x[-1:], p["ln_f.weight"], p["ln_f.bias"])
        return (x @ p["wte.weight"].T)[0], new_cache

    def generate(self, ids, n):
        logits, cache = self.forward(ids, None)
        out = list(ids)
        for _ in range(n):
            out.append(int(self.np.argmax(logits)))
            if len(out) - len(ids) == n:
                break
            logits, cache = self.forward([out[-1]], cache)
        return out


class TorchGPT2:
    """GPT-2 written directly in PyTorch for speed (the "hand-tuned torch" peer).

    What a careful PyTorch user would do without leaving eager mode: weights stored `[out, in]`
    once (so every projection is one `F.linear`, i.e. addmm / sgemv), a KV cache allocated once
    and written in place, `scaled_dot_product_attention`, fused tanh GELU, `inference_mode`.
    """

    def __init__(self, path: Path, capacity: int = 1024):
        import torch
        import torch.nn.functional as F
        from safetensors.torch import load_file

        self.torch, self.F = torch, F
        self.cfg = c = json.loads((path / "config.json").read_text())
        p = {
            k.removeprefix("transformer."): v
            for k, v in load_file(str(path / "model.safetensors")).items()
        }
        for k in list(p):
            if k.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight")):
                p[k] = p[k].t().contiguous()  # Conv1D [in, out] -> Linear [out, in]
        self.p = p
        L, H, C = c["n_layer"], c["n_head"], c["n_embd"]
        shape = (L, 1, H, capacity, C // H)
        self.k_cache, self.v_cache = torch.zeros(shape), torch.zeros(shape)
        self.pos = 0

    def forward(self, ids: list[int]):
        """Appends `ids` to the cache; the last position's logits."""
        torch, F, p, c = self.torch, self.F, self.p, self.cfg
        H, C = c["n_head"], c["n_embd"]
        T, s = len(ids), self.pos
        x = p["wte.weight"][torch.tensor(ids)] + p["wpe.weight"][s : s + T]
        for i in range(c["n_layer"]):
            k = f"h.{i}."
            h = F.layer_norm(x, (C,), p[k + "ln_1.weight"], p[k + "ln_1.bias"])
            qkv = F.linear(h, p[k + "attn.c_attn.weight"], p[k + "attn.c_attn.bias"])
            q, kk, vv = qkv.view(1, T, 3, H, C // H).permute(2, 0, 3, 1, 4)
            self.k_cache[i, :, :, s : s + T] = kk
            self.v_cache[i, :, :, s : s + T] = vv
            a = F.scaled_dot_product_attention(
                q,
                self.k_cache[i, :, :, : s + T],
                self.v_cache[i, :, :, : s + T],
                is_causal=T > 1 and s == 0,
            )
            a = a.transpose(1, 2).reshape(T, C)
            x = x + F.linear(a, p[k + "attn.c_proj.weight"], p[k + "attn.c_proj.bias"])
            h = F.layer_norm(x, (C,), p[k + "ln_2.weight"], p[k + "ln_2.bias"])
            h = F.gelu(
                F.linear(h, p[k + "mlp.c_fc.weight"], p[k + "mlp.c_fc.bias"]), approximate="tanh"
            )
            x = x + F.linear(h, p[k + "mlp.c_proj.weight"], p[k + "mlp.c_proj.bias"])
        self.pos += T
        x = F.layer_norm(x[-1], (C,), p["ln_f.weight"], p["ln_f.bias"])
        return F.linear(x, p["wte.weight"])

    def generate(self, ids, n):
        with self.torch.inference_mode():
            self.pos = 0
            out = list(ids)
            logits = self.forward(ids)
            for i in range(n):
                out.append(int(logits.argmax()))
                if i < n - 1:
                    logits = self.forward(out[-1:])
            return out

    def prefill(self, ids):
        with self.torch.inference_mode():
            self.pos = 0
            return self.forward(ids)


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


def run(threads: int, repeats: int, quick: bool) -> dict:
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "GPT_RS_NUM_THREADS"):
        os.environ[var] = str(threads)
    import numpy as np

    import gpt_rs

    path = make_model(CACHE / ("tiny" if quick else "gpt2-124M-random"), quick)
    rng = np.random.default_rng(1)
    V = json.loads((path / "config.json").read_text())["vocab_size"]
    prompt8 = rng.integers(0, V, 8).tolist()
    prompts = {T: rng.integers(0, V, T).tolist() for T in (128, 512)}
    new = 64
    impls = {"gpt_rs": None, "numpy": None}
    ours = gpt_rs.load_model(path)
    npm = NumpyGPT2(path)
    impls = {
        "gpt_rs": (
            lambda ids, n: ours.generate_tokens(ids, n, temperature=0, stop_token_ids=[]),
            lambda ids: ours.logits(ids),
        ),
        "numpy": (npm.generate, lambda ids: npm.forward(ids, None)),
    }
    try:
        import torch
        import transformers

        torch.set_num_threads(threads)
        hf = transformers.GPT2LMHeadModel.from_pretrained(path).eval()

        def hf_gen(ids, n):
            with torch.inference_mode():
                return hf.generate(
                    torch.tensor([ids]),
                    max_new_tokens=n,
                    min_new_tokens=n,
                    do_sample=False,
                    pad_token_id=0,
                )[0].tolist()

        def hf_prefill(ids):
            with torch.inference_mode():
                return hf(torch.tensor([ids])).logits

        impls["transformers"] = (hf_gen, hf_prefill)
        tuned = TorchGPT2(path)
        impls["torch"] = (tuned.generate, tuned.prefill)
    except ImportError:
        pass
    llama = llama_cpp_impl(path, threads)
    if llama is not None:
        impls["llama.cpp"] = llama
    # Each workload: all implementations interleaved, repeat by repeat.
    full = median_times(
        {n: (lambda gen=gen: gen(prompt8, new)) for n, (gen, _) in impls.items()}, repeats
    )
    one = median_times(
        {n: (lambda gen=gen: gen(prompt8, 1)) for n, (gen, _) in impls.items()}, repeats
    )
    results = {n: {"decode tok/s": (new - 1) / max(full[n] - one[n], 1e-9)} for n in impls}
    for T, ids in prompts.items():
        if T <= (256 if quick else 1024):
            t = median_times(
                {n: (lambda ids=ids, pf=pf: pf(ids)) for n, (_, pf) in impls.items()}, repeats
            )
            for n in impls:
                results[n][f"prefill T={T} ms"] = 1e3 * t[n]
    tokens = {n: gen(prompt8, new) for n, (gen, _) in impls.items()}
    agree = {n: sum(a == b for a, b in zip(t[8:], tokens["gpt_rs"][8:])) for n, t in tokens.items()}
    # sgemm peak of this machine in this run (1024^3, the best of gpt_rs, NumPy's BLAS and
    # torch's when installed), and the prefill's achieved rate: 2 flops per multiply-add of
    # the projections and attention.
    m = np.random.default_rng(0).standard_normal((1024, 1024), dtype=np.float32)
    tm = gpt_rs.Tensor.from_numpy(m)
    flop = 2 * 1024**3
    products = {"gpt_rs": lambda: gpt_rs.functional.matmul(tm, tm), "numpy": lambda: m @ m}
    if "torch" in results:
        import torch

        tt = torch.from_numpy(m)
        products["torch"] = lambda: torch.mm(tt, tt)
    # A peak: the best of the repeats (a VM's second core is sometimes taken away for a while,
    # and a median over few repeats then halves every library's 2-thread rate alike).
    peaks = {
        n: flop / t / 1e9 for n, t in median_times(products, max(repeats, 7), best=True).items()
    }
    cfg = json.loads((path / "config.json").read_text())
    L, C = cfg["n_layer"], cfg["n_embd"]
    gflops = {}
    for key in results["gpt_rs"]:
        if key.startswith("prefill"):
            T = int(key.split("=")[1].split()[0])
            flop = 2 * T * L * 12 * C * C + 2 * L * T * T * C + 2 * C * cfg["vocab_size"]
            gflops[T] = flop / (results["gpt_rs"][key] / 1e3) / 1e9
    return {
        "threads": threads,
        "results": results,
        "agree": agree,
        "simd": gpt_rs.get_simd_level(),
        "peaks": peaks,
        "prefill_gflops": gflops,
    }


def report(all_runs: list[dict]) -> None:
    print(
        "GPT-2 (124M shapes unless --quick) f32, random weights, batch 1 | "
        f"{platform.machine()} {os.cpu_count()} cores | "
        f"python {platform.python_version()} | {time.strftime('%Y-%m-%d')}"
    )
    for run_ in all_runs:
        res = run_["results"]
        peers = [n for n in res if n != "gpt_rs"]
        print(f"\n### {run_['threads']} thread(s), simd {run_['simd']}\n")
        print(
            "| workload | gpt_rs | "
            + " | ".join(peers)
            + " | "
            + " | ".join(f"gpt_rs vs {p}" for p in peers)
            + " |"
        )
        print("|---" * (2 + 2 * len(peers)) + "|")
        for metric in res["gpt_rs"]:
            ours = res["gpt_rs"][metric]
            row = (
                f"| {metric} | {ours:.1f} | "
                + " | ".join(f"{res[p][metric]:.1f}" for p in peers)
                + " | "
            )
            # Ratio > 1 means gpt_rs is better (more tokens/s, or fewer ms).
            ratios = [
                (ours / res[p][metric]) if "tok/s" in metric else (res[p][metric] / ours)
                for p in peers
            ]
            print(row + " | ".join(f"{x:.2f}x" for x in ratios) + " |")
        print(
            "\ngreedy tokens agreeing with gpt_rs (of 64): "
            + ", ".join(f"{n} {a}" for n, a in run_["agree"].items() if n != "gpt_rs")
        )
        peak = max(run_["peaks"].values())
        print(
            "sgemm 1024^3 GFLOP/s: "
            + ", ".join(f"{n} {g:.1f}" for n, g in run_["peaks"].items())
            + "; gpt_rs prefill: "
            + ", ".join(
                f"T={t} {g:.1f} GFLOP/s ({100 * g / peak:.0f}% of peak)"
                for t, g in run_["prefill_gflops"].items()
            )
        )


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.quick:
        a.repeats = 1
    if a.threads:
        r = run(a.threads, a.repeats, a.quick)
        print(json.dumps(r) if a.json else r)
        return
    runs = []
    for t in (1, 2):
        cmd = [sys.executable, __file__, "--threads", str(t), "--repeats", str(a.repeats), "--json"]
        out = subprocess.run(
            cmd + (["--quick"] if a.quick else []), check=True, capture_output=True, text=True
        )
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    report(runs)


if __name__ == "__main__":
    main()
