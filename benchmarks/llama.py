"""Benchmark: a Llama-shaped model of Qwen2.5-0.5B's sizes (random bf16 weights, batch 1),
decode and prefill speed, memory bandwidth and memory use.

gpt_rs (bf16 weights kept 16-bit) next to Hugging Face transformers in bf16 and in f32 when
torch + transformers are installed, and llama.cpp on a BF16 GGUF of the same weights when
llama-cpp-python is installed and GPT_RS_LLAMA_CPP_SRC points at the `vendor/llama.cpp`
folder of its unpacked source distribution (whose converter writes the GGUF). Same weights,
same run, 1 and 2 threads (one process each); within a process every workload times the
implementations interleaved, repeat by repeat, and reports medians. Also in the same run: a
plain streaming read of memory (C, gcc) as the bandwidth decode is held against, and the
peak RSS of a process that loads the model, against the weights' bytes. Not a test: numbers
depend on the machine and its load.

    python benchmarks/llama.py                # 1 and 2 threads
    python benchmarks/llama.py --threads 1 --repeats 5
    python benchmarks/llama.py --quick        # tiny model, one repeat (CI smoke run)
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
import common  # noqa: E402

CACHE = Path(os.environ.get("GPT_RS_BENCH_DIR", Path.home() / ".cache" / "gpt_rs_bench"))

# Qwen2.5-0.5B's shapes: GQA 14/2 heads of 64, q/k/v biases, tied 151,936-token head.
FULL = dict(
    hidden_size=896,
    intermediate_size=4864,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    vocab_size=151936,
    max_position_embeddings=32768,
)
QUICK = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=1000,
    max_position_embeddings=1024,
)


def make_model(path: Path, quick: bool) -> Path:
    """Random bf16 weights in Hugging Face layout (`Qwen2ForCausalLM` keys), written tensor by
    tensor (the f32 model would not be held in memory at once)."""
    import numpy as np

    if (path / "model.safetensors").exists():
        return path
    path.mkdir(parents=True, exist_ok=True)
    s = QUICK if quick else FULL
    c, i, v = s["hidden_size"], s["intermediate_size"], s["vocab_size"]
    h, hk = s["num_attention_heads"], s["num_key_value_heads"]
    d = c // h
    shapes = {"model.embed_tokens.weight": (v, c), "model.norm.weight": (c,)}
    for layer in range(s["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        shapes |= {
            p + "input_layernorm.weight": (c,),
            p + "post_attention_layernorm.weight": (c,),
            p + "self_attn.q_proj.weight": (h * d, c),
            p + "self_attn.q_proj.bias": (h * d,),
            p + "self_attn.k_proj.weight": (hk * d, c),
            p + "self_attn.k_proj.bias": (hk * d,),
            p + "self_attn.v_proj.weight": (hk * d, c),
            p + "self_attn.v_proj.bias": (hk * d,),
            p + "self_attn.o_proj.weight": (c, h * d),
            p + "mlp.gate_proj.weight": (i, c),
            p + "mlp.up_proj.weight": (i, c),
            p + "mlp.down_proj.weight": (c, i),
        }
    header, off = {}, 0
    for k in sorted(shapes):
        n = 2 * int(np.prod(shapes[k]))
        header[k] = {"dtype": "BF16", "shape": list(shapes[k]), "data_offsets": [off, off + n]}
        off += n
    header["__metadata__"] = {"format": "pt"}
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * (-len(hb) % 8)
    rng = np.random.default_rng(0)
    tmp = path / "model.safetensors.part"
    with open(tmp, "wb") as f:
        f.write(len(hb).to_bytes(8, "little") + hb)
        for k in sorted(shapes):
            if k.endswith("norm.weight"):
                a = (1.0 + 0.1 * rng.standard_normal(shapes[k])).astype(np.float32)
            else:
                a = rng.standard_normal(shapes[k], dtype=np.float32) * np.float32(0.02)
            f.write((a.view(np.uint32) >> 16).astype("<u2").tobytes())
    tmp.rename(path / "model.safetensors")
    cfg = dict(
        model_type="qwen2",
        architectures=["Qwen2ForCausalLM"],
        hidden_act="silu",
        rms_norm_eps=1e-6,
        rope_theta=1000000.0,
        tie_word_embeddings=True,
        torch_dtype="bfloat16",
        bos_token_id=v - 1,
        eos_token_id=v - 1,
        **s,
    )
    (path / "config.json").write_text(json.dumps(cfg, indent=2))
    return path


def llama_cpp_impl(path: Path, threads: int):
    """(generate, prefill) through llama-cpp-python on a BF16 GGUF, or None."""
    return common.llama_cpp_greedy(path, path.name + "-bf16.gguf", "bf16", "qwen2", threads)


def transformers_impl(path: Path, threads: int, dtype: str):
    """(generate, prefill) through transformers in `dtype`, or None without torch."""
    try:
        import torch
        import transformers
    except ImportError:
        return None
    torch.set_num_threads(threads)
    td = {"bf16": torch.bfloat16, "f32": torch.float32}[dtype]
    hf = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=td).eval()

    def gen(ids, n):
        with torch.inference_mode():
            return hf.generate(
                torch.tensor([ids]),
                max_new_tokens=n,
                min_new_tokens=n,
                do_sample=False,
                pad_token_id=0,
            )[0].tolist()

    def prefill(ids):
        with torch.inference_mode():
            return hf(torch.tensor([ids])).logits[0, -1].float().numpy()

    return gen, prefill


def run(threads: int, repeats: int, quick: bool) -> dict:
    common.set_threads(threads)
    import numpy as np

    import gpt_rs

    path = make_model(CACHE / ("llama-tiny" if quick else "qwen2.5-0.5B-shape-bf16"), quick)
    V = json.loads((path / "config.json").read_text())["vocab_size"]
    rng = np.random.default_rng(1)
    prompt8 = rng.integers(0, V, 8).tolist()
    prompt128 = rng.integers(0, V, 128).tolist()
    new = 16 if quick else 64
    ours = gpt_rs.load_model(path)
    assert ours.dtype == "bf16", ours.dtype
    impls = {
        "gpt_rs": (
            lambda ids, n: ours.generate_tokens(ids, n, temperature=0, stop_token_ids=[]),
            lambda ids: ours.logits(ids),
        )
    }
    for dt in ("bf16", "f32"):
        t = transformers_impl(path, threads, dt)
        if t is not None:
            impls[f"transformers {dt}"] = t
    llama = llama_cpp_impl(path, threads)
    if llama is not None:
        impls["llama.cpp bf16"] = llama
    full = median_times_of(impls, lambda gen, _: gen(prompt8, new), repeats)
    one = median_times_of(impls, lambda gen, _: gen(prompt8, 1), repeats)
    pre = median_times_of(impls, lambda _, pf: pf(prompt128), repeats)
    results = {
        n: {
            "decode tok/s": (new - 1) / max(full[n] - one[n], 1e-9),
            "prefill T=128 tok/s": 128 / pre[n],
        }
        for n in impls
    }
    # Same weights: the last prompt row's logits against each peer (relative to their scale).
    ref = np.asarray(impls["gpt_rs"][1](prompt128), np.float32).reshape(-1)[-V:]
    agree = {}
    for n, (_, pf) in impls.items():
        other = np.asarray(pf(prompt128), np.float32).reshape(-1)[-V:]
        agree[n] = float(np.abs(other - ref).max() / max(1e-6, np.abs(other).max()))
    return {
        "threads": threads,
        "results": results,
        "logit_diff": agree,
        "simd": gpt_rs.get_simd_level(),
        "weight_bytes": ours.weight_bytes,
        "bandwidth": common.read_bandwidth(threads),
    }


def median_times_of(impls: dict, call, repeats: int) -> dict:
    return common.median_times(
        {n: (lambda g=g, p=p: call(g, p)) for n, (g, p) in impls.items()}, repeats
    )


def report(runs: list[dict], mem: dict, quick: bool) -> None:
    print(
        f"Qwen2.5-0.5B shapes{' (tiny: --quick)' if quick else ''}, random bf16 weights, batch 1"
        f" | {common.cpu_name()}, {os.cpu_count()} cores | {time.strftime('%Y-%m-%d')}"
    )
    for r in runs:
        print(f"\n### {r['threads']} thread(s), simd {r['simd']}\n")
        common.print_table(r["results"])
        decode = r["results"]["gpt_rs"]["decode tok/s"]
        gbs = decode * r["weight_bytes"] / 1e9
        bw = r["bandwidth"]
        mb = r["weight_bytes"] / 1e6
        line = f"\ngpt_rs decode streams {gbs:.1f} GB/s of weights ({mb:.0f} MB a token)"
        if bw:
            line += f"; a plain read of memory reaches {bw:.1f} GB/s: {100 * gbs / bw:.0f}%"
        print(line)
        print(
            "last-row logits vs gpt_rs (max diff / scale): "
            + ", ".join(f"{n} {d:.3f}" for n, d in r["logit_diff"].items() if n != "gpt_rs")
        )
    print(
        f"\nmemory: weights {mem['weights'] / 1e6:.0f} MB; a process loading them peaks at "
        f"{mem['peak'] / 1e6:.0f} MB RSS ({mem['peak'] / mem['weights']:.2f}x the weights; "
        f"{mem['base'] / 1e6:.0f} MB before loading), {mem['rss'] / 1e6:.0f} MB after"
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
    path = make_model(CACHE / ("llama-tiny" if a.quick else "qwen2.5-0.5B-shape-bf16"), a.quick)
    runs = []
    for t in (1, 2):
        cmd = [sys.executable, __file__, "--threads", str(t), "--repeats", str(a.repeats), "--json"]
        out = subprocess.run(
            cmd + (["--quick"] if a.quick else []), check=True, capture_output=True, text=True
        )
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    report(runs, common.load_rss(path), a.quick)


if __name__ == "__main__":
    main()
