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

sys.path.insert(0, str(Path(__file__).parent))
import common  # noqa: E402

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


def llama_cpp_impl(path: Path, threads: int):
    """(generate, prefill) through llama-cpp-python on an f32 GGUF, or None."""
    return common.llama_cpp_greedy(path, path.name + "-f32.gguf", "f32", "gpt-2", threads)


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


def run(threads: int, repeats: int, quick: bool) -> dict:
    common.set_threads(threads)
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
    full = common.median_times(
        {n: (lambda gen=gen: gen(prompt8, new)) for n, (gen, _) in impls.items()}, repeats
    )
    one = common.median_times(
        {n: (lambda gen=gen: gen(prompt8, 1)) for n, (gen, _) in impls.items()}, repeats
    )
    results = {n: {"decode tok/s": (new - 1) / max(full[n] - one[n], 1e-9)} for n in impls}
    for T, ids in prompts.items():
        if T <= (256 if quick else 1024):
            t = common.median_times(
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
        n: flop / t / 1e9
        for n, t in common.median_times(products, max(repeats, 7), best=True).items()
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
        f"{common.cpu_name()}, {os.cpu_count()} cores | "
        f"python {platform.python_version()} | {time.strftime('%Y-%m-%d')}"
    )
    for run_ in all_runs:
        res = run_["results"]
        print(f"\n### {run_['threads']} thread(s), simd {run_['simd']}\n")
        common.print_table(res)
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
