"""The ``gpt-rs`` command: generate text, show build/CPU info, measure speed.

gpt-rs generate --model DIR --prompt "Hello" [--max-new-tokens N --temperature T --top-k K
                --top-p P --seed S --backend B --threads N]
gpt-rs info
gpt-rs bench --model DIR
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import Optional

import gpt_rs

NO_DEFAULT_MODEL = (
    "no model given and no default model is installed with this build of gpt_rs.\n"
    "Pass --model DIR: a Hugging Face GPT-2 folder (config.json, model.safetensors and "
    "tokenizer.json or vocab.json + merges.txt), e.g. one written by "
    "transformers' save_pretrained(), or a model id already in the local Hugging Face cache."
)


def _default_model() -> Optional[str]:
    from importlib import resources

    try:
        path = resources.files("gpt_rs") / "default_model"
        return str(path) if path.joinpath("config.json").is_file() else None
    except (ModuleNotFoundError, FileNotFoundError):
        return None


def _setup(args: argparse.Namespace) -> None:
    if getattr(args, "backend", None):
        gpt_rs.set_backend(args.backend)
    if getattr(args, "threads", None):
        gpt_rs.set_num_threads(args.threads)


def _load(args: argparse.Namespace) -> gpt_rs.Model:
    path = args.model or _default_model()
    if path is None:
        raise SystemExit(f"gpt-rs: {NO_DEFAULT_MODEL}")
    return gpt_rs.load_model(path)


def cmd_generate(args: argparse.Namespace) -> int:
    _setup(args)
    model = _load(args)
    t0 = time.perf_counter()
    stream = model.stream(
        args.prompt,
        args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        min_p=args.min_p,
        repetition_penalty=args.repetition_penalty,
        seed=args.seed,
    )
    sys.stdout.write(args.prompt)
    for piece in stream:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    dt = time.perf_counter() - t0
    n = stream.num_tokens
    prompt_tokens = len(model.tokenizer.encode(args.prompt))
    print(
        f"[{n} tokens in {dt:.2f}s, {n / max(dt, 1e-9):.1f} tokens/s (including the "
        f"{prompt_tokens}-token prompt); backend {model.backend}, "
        f"{gpt_rs.get_num_threads()} threads]",
        file=sys.stderr,
    )
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    print(f"gpt_rs {gpt_rs.__version__}")
    print(f"backends:    {', '.join(gpt_rs.list_backends())} (current: {gpt_rs.get_backend()})")
    print(f"threads:     {gpt_rs.get_num_threads()}")
    print(f"simd level:  {gpt_rs.get_simd_level()}")
    print(f"cpu features: {' '.join(gpt_rs.cpu_features()) or '(none detected)'}")
    print(f"default model: {_default_model() or '(none installed)'}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    import numpy as np

    _setup(args)
    model = _load(args)
    cfg = model.config
    rng = np.random.default_rng(0)
    print(f"{model!r}\nthreads {gpt_rs.get_num_threads()}, simd {gpt_rs.get_simd_level()}")
    for t in (128, 512):
        if t > cfg["n_positions"]:
            continue
        ids = rng.integers(0, cfg["vocab_size"], t).tolist()
        model.logits(ids)
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            model.logits(ids)
            times.append(time.perf_counter() - t0)
        print(f"prefill T={t}: {1e3 * float(np.median(times)):.1f} ms")
    prompt = rng.integers(0, cfg["vocab_size"], 8).tolist()
    new = min(args.decode_tokens, cfg["n_positions"] - 8)
    model.generate_tokens(prompt, 4, temperature=0, stop_token_ids=[])
    rates = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        model.generate_tokens(prompt, 1, temperature=0, stop_token_ids=[])
        t1 = time.perf_counter()
        model.generate_tokens(prompt, new + 1, temperature=0, stop_token_ids=[])
        t2 = time.perf_counter()
        rates.append(new / ((t2 - t1) - (t1 - t0)))
    print(
        f"decode: {float(np.median(rates)):.1f} tokens/s "
        f"({new} tokens after an 8-token prompt, greedy)"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gpt-rs", description="GPT inference on the CPU with gpt_rs.")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--model", help="Hugging Face GPT-2 folder or cached model id")
        sp.add_argument("--backend", choices=gpt_rs.list_backends(), help="compute backend")
        sp.add_argument("--threads", type=int, help="worker threads (default: all cores)")

    g = sub.add_parser("generate", help="stream generated text to stdout")
    common(g)
    g.add_argument("--prompt", required=True, help="text to continue")
    g.add_argument("--max-new-tokens", type=int, default=50)
    g.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    g.add_argument("--top-k", type=int)
    g.add_argument("--top-p", type=float)
    g.add_argument("--min-p", type=float)
    g.add_argument("--repetition-penalty", type=float)
    g.add_argument("--seed", type=int)
    g.set_defaults(func=cmd_generate)

    i = sub.add_parser("info", help="version, backends, CPU features, threads")
    i.set_defaults(func=cmd_info)

    b = sub.add_parser("bench", help="prefill and decode speed of a model")
    common(b)
    b.add_argument("--repeats", type=int, default=3)
    b.add_argument("--decode-tokens", type=int, default=64)
    b.set_defaults(func=cmd_bench)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, OSError, TypeError) as e:
        print(f"gpt-rs: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ngpt-rs: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
