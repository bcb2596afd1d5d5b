"""Benchmark: training throughput (tokens/s) of gpt_rs next to PyTorch, same run.

The same GPT-2-architecture config, initial weights (gpt_rs's checkpoint loaded into
transformers' GPT2LMHeadModel), batches, AdamW settings and gradient clipping. Steps of the two
alternate, at each thread count; medians are reported. Before timing, the first steps' losses
are checked to agree. Runs gpt_rs alone when torch/transformers are not installed.

    python benchmarks/train.py                       # 4 layers, 256 wide, vocab 4096
    python benchmarks/train.py --threads 1 --steps 5
    python benchmarks/train.py --quick               # tiny config, CI smoke run
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time

import numpy as np

import gpt_rs
from gpt_rs import train


def torch_side(ckpt: str, lr: float):
    try:
        import torch
        import transformers
    except ImportError:
        return None
    hf = transformers.GPT2LMHeadModel.from_pretrained(ckpt)
    hf.train()
    params = [p for p in hf.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), eps=1e-8)
    vocab = hf.config.vocab_size

    def step(x: np.ndarray, y: np.ndarray) -> float:
        opt.zero_grad(set_to_none=True)
        logits = hf(torch.from_numpy(x)).logits
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, vocab), torch.from_numpy(y).reshape(-1)
        )
        loss.backward()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
        opt.step()
        return loss.item()

    def threads(n: int) -> None:
        torch.set_num_threads(n)

    label = f"torch {torch.__version__} + transformers {transformers.__version__}"
    return step, threads, label


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--n-head", type=int, default=4)
    ap.add_argument("--n-embd", type=int, default=256)
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--vocab-size", type=int, default=4096)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=6, help="timed steps per side and thread count")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--quick", action="store_true", help="tiny config, 2 steps (smoke run)")
    a = ap.parse_args()
    if a.quick:
        a.n_layer, a.n_head, a.n_embd, a.context, a.vocab_size = 1, 2, 32, 32, 300
        a.batch_size, a.steps = 2, 2
    lr = 1e-3
    model = train.new_model(
        vocab_size=a.vocab_size,
        n_layer=a.n_layer,
        n_head=a.n_head,
        n_embd=a.n_embd,
        n_positions=a.context,
        seed=0,
    )
    tmp = tempfile.mkdtemp(prefix="gpt_rs_train_bench_")
    model.save(tmp)
    peer = torch_side(tmp, lr)
    rng = np.random.default_rng(0)
    shape = (a.batch_size, a.context)
    batches = [
        (rng.integers(0, a.vocab_size, shape), rng.integers(0, a.vocab_size, shape))
        for _ in range(4)
    ]

    def ours(x: np.ndarray, y: np.ndarray) -> float:
        model.zero_grad()
        loss = model.forward_backward(x, y)
        model.clip_grad_norm(1.0)
        model.adamw_step(lr)
        return loss

    print(
        f"{model!r}\nbatch {a.batch_size} x {a.context} tokens, AdamW + clipping; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"simd {gpt_rs.get_simd_level()}"
    )
    if peer is None:
        print("torch/transformers not installed: gpt_rs only")
    else:
        step, _, label = peer
        l0, l1 = ours(*batches[0]), step(*batches[0])
        print(f"peer: {label}; first-step loss gpt_rs {l0:.5f}, torch {l1:.5f}")
        assert abs(l0 - l1) <= 1e-4 * l1, "the two sides do not compute the same loss"
    tokens = a.batch_size * a.context
    rows = []
    for n in [int(t) for t in a.threads.split(",")]:
        gpt_rs.set_num_threads(n)
        if peer:
            peer[1](n)
        times: dict[str, list[float]] = {"gpt_rs": [], "torch": []}
        for i in range(a.steps + 1):  # the first round warms up
            x, y = batches[i % len(batches)]
            sides = [("gpt_rs", ours)] + ([("torch", peer[0])] if peer else [])
            for name, fn in sides:
                t0 = time.perf_counter()
                fn(x, y)
                if i:
                    times[name].append(time.perf_counter() - t0)
        ours_tps = tokens / statistics.median(times["gpt_rs"])
        peer_tps = tokens / statistics.median(times["torch"]) if peer else None
        rows.append((n, ours_tps, peer_tps))
    print("\n| threads | gpt_rs tok/s | torch tok/s | gpt_rs / torch |\n|---|---|---|---|")
    for n, o, p in rows:
        ratio = f"{o / p:.2f}x" if p else "-"
        print(f"| {n} | {o:,.0f} | {f'{p:,.0f}' if p else '-'} | {ratio} |")


if __name__ == "__main__":
    main()
