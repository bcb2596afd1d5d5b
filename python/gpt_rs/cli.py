"""The ``gpt-rs`` command: generate text, show build/CPU info, measure speed.

gpt-rs generate --model DIR --prompt "Hello" [--max-new-tokens N --temperature T --top-k K
                --top-p P --seed S --backend B --threads N]
gpt-rs info
gpt-rs bench --model DIR
gpt-rs serve --model PATH [--host 127.0.0.1 --port 8000 --max-batch N --api-key KEY --threads N]
gpt-rs quantize IN_DIR OUT.gguf [--type q8_0|q6_k|q5_k_m|q5_k|q5_1|q5_0|q4_k_m|q4_k|q4_1|q4_0]
gpt-rs train --data PATH --out DIR [--n-layer --n-head --n-embd --context --steps --batch-size
             --lr --seed --threads --resume ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import gpt_rs

NO_DEFAULT_MODEL = (
    "no model given and no default model is installed with this build of gpt_rs.\n"
    "Pass --model DIR: a Hugging Face GPT-2 folder (config.json, model.safetensors and "
    "tokenizer.json or vocab.json + merges.txt), e.g. one written by "
    "transformers' save_pretrained(), or a model id already in the local Hugging Face cache."
)


def _default_model() -> Optional[str]:
    """The model used without --model: GPT_RS_DEFAULT_MODEL's folder when that is set, else
    the one shipped inside the package; None when the chosen folder holds no model."""
    from importlib import resources

    override = os.environ.get("GPT_RS_DEFAULT_MODEL")
    if override:
        return override if Path(override, "config.json").is_file() else None
    try:
        path = resources.files("gpt_rs") / "default_model"
        return str(path) if path.joinpath("config.json").is_file() else None
    except (ModuleNotFoundError, FileNotFoundError):
        return None


def _setup(args: argparse.Namespace) -> None:
    if getattr(args, "backend", None):
        gpt_rs.set_backend(args.backend)
    if getattr(args, "threads", None) is not None:
        gpt_rs.set_num_threads(args.threads)  # ValueError for 0 or a negative count


def _load(args: argparse.Namespace) -> gpt_rs.Model:
    path = args.model or _default_model()
    if path is None:
        raise SystemExit(f"gpt-rs: {NO_DEFAULT_MODEL}")
    return gpt_rs.load_model(path, dtype=getattr(args, "dtype", None) or "auto")


def _sampling(args: argparse.Namespace) -> dict:
    return dict(
        temperature=args.temperature,
        top_k=args.top_k or None,
        top_p=args.top_p,
        min_p=args.min_p,
        repetition_penalty=args.repetition_penalty,
        seed=args.seed,
    )


def cmd_chat(args: argparse.Namespace) -> int:
    """An interactive multi-turn chat: one line per user turn, the reply streamed."""
    _setup(args)
    model = _load(args)
    if model.tokenizer is None or not model.tokenizer.has_chat_template:
        raise ValueError(f"{args.model or 'the default model'} has no chat template; use generate")
    history: list = []
    if args.system:
        history.append({"role": "system", "content": args.system})
    first = list(history)
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"{model!r}\n/reset starts over, Ctrl-D quits.", file=sys.stderr)
    while True:
        try:
            line = input("> " if interactive else "")
        except EOFError:
            if interactive:
                print(file=sys.stderr)
            return 0
        if line.strip() == "/reset":
            history = list(first)
            print("[history cleared]", file=sys.stderr)
            continue
        if not line.strip():
            continue
        history.append({"role": "user", "content": line})
        reply = []
        for piece in model.chat_stream(history, args.max_new_tokens, **_sampling(args)):
            reply.append(piece)
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        sys.stdout.flush()
        history.append({"role": "assistant", "content": "".join(reply)})


def cmd_generate(args: argparse.Namespace) -> int:
    _setup(args)
    model = _load(args)
    t0 = time.perf_counter()
    stream = model.stream(args.prompt, args.max_new_tokens, **_sampling(args))
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
    if args.model:
        _setup(args)
        m = _load(args)
        c = m.config
        size = f"{m.num_parameters / 1e6:.1f}M parameters"
        print(f"model:       {m.family}, {size}, weights {m.dtype}")
        layers = c.get("num_hidden_layers", c.get("n_layer"))
        hidden = c.get("hidden_size", c.get("n_embd"))
        heads = c.get("num_attention_heads", c.get("n_head"))
        kv = c.get("num_key_value_heads", heads)
        print(
            f"  layers {layers}, hidden {hidden}, heads {heads} (key/value {kv}),"
            f" vocab {m.vocab_size}, context {m.context_length}"
        )
        print(f"  weight memory {m.weight_bytes / 2**20:.1f} MiB; stop tokens {m.eos_token_ids}")
        tok = m.tokenizer
        print(
            f"  tokenizer: {'yes' if tok else 'none'}"
            f"{', chat template' if tok and tok.has_chat_template else ''}"
        )
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    import numpy as np

    _setup(args)
    model = _load(args)
    rng = np.random.default_rng(0)
    print(f"{model!r}\nthreads {gpt_rs.get_num_threads()}, simd {gpt_rs.get_simd_level()}")
    for t in (128, 512):
        if t > model.context_length:
            continue
        ids = rng.integers(0, model.vocab_size, t).tolist()
        model.logits(ids)
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            model.logits(ids)
            times.append(time.perf_counter() - t0)
        print(f"prefill T={t}: {1e3 * float(np.median(times)):.1f} ms")
    prompt = rng.integers(0, model.vocab_size, 8).tolist()
    new = min(args.decode_tokens, model.context_length - 8)
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


def cmd_train(args: argparse.Namespace) -> int:
    from . import train

    _setup(args)
    out = Path(args.out)
    data = train.prepare_data(
        args.data,
        out / "data",
        vocab_size=args.vocab_size,
        val_fraction=args.val_fraction,
        pattern=args.glob,
        exclude_dirs=args.exclude_dir,
        seed=args.seed,
    )
    overrides = {
        k: v
        for k, v in {
            "steps": args.steps,
            "batch_size": args.batch_size,
            "grad_accum": args.grad_accum,
            "context": args.context,
            "lr": args.lr,
            "min_lr": args.min_lr,
            "warmup": args.warmup,
            "weight_decay": args.weight_decay,
            "grad_clip": args.grad_clip,
            "eval_interval": args.eval_interval,
            "eval_batches": args.eval_batches,
            "seed": args.seed,
        }.items()
        if v is not None
    }
    if args.resume and (out / "trainer_state.json").is_file():
        trainer = train.Trainer.resume(out, data)
        trainer.config = dataclasses.replace(trainer.config, **overrides)
        trainer.config.validate()
        print(f"resuming {out} at step {trainer.step}", file=sys.stderr)
    else:
        context = args.context or 256
        model = train.new_model(
            vocab_size=data.tokenizer.vocab_size,
            n_layer=args.n_layer,
            n_head=args.n_head,
            n_embd=args.n_embd,
            n_positions=context,
            seed=args.seed or 0,
            eos_token_id=data.tokenizer.eos_token_id,
        )
        config = train.TrainConfig(**{**overrides, "context": context})
        trainer = train.Trainer(model, data, config)
    cfg = trainer.config
    print(
        f"{trainer.model!r}\n{cfg.steps} steps of {cfg.batch_size} x {trainer.context} tokens"
        f" (x{cfg.grad_accum} accumulation), lr {cfg.lr}, {gpt_rs.get_num_threads()} threads,"
        f" backend {gpt_rs.get_backend()}",
        file=sys.stderr,
    )
    t0 = time.perf_counter()
    start = trainer.step
    try:
        trainer.fit(out_dir=out, sample_prompt=args.sample_prompt)
    except KeyboardInterrupt:
        print(f"resume with: gpt-rs train --data {args.data} --out {out} --resume", file=sys.stderr)
        return 130
    dt = time.perf_counter() - t0
    tokens = (trainer.step - start) * cfg.batch_size * cfg.grad_accum * trainer.context
    print(
        f"done: {trainer.step} steps in {dt:.0f} s ({tokens / max(dt, 1e-9):,.0f} tokens/s); "
        f"model saved to {out}",
        file=sys.stderr,
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gpt-rs", description="GPT inference on the CPU with gpt_rs.")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--model", help="Hugging Face model folder, GGUF file, or cached model id")
        sp.add_argument("--backend", choices=gpt_rs.list_backends(), help="compute backend")
        sp.add_argument("--threads", type=int, help="worker threads (default: all cores)")
        sp.add_argument(
            "--dtype",
            choices=["auto", "f32", "bf16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0"],
            default="auto",
            help="weights in memory (default auto: the checkpoint's; q*: quantize at load)",
        )

    def sampling(sp: argparse.ArgumentParser, temperature: float = 0.8) -> None:
        sp.add_argument(
            "--temperature",
            type=float,
            default=temperature,
            help=f"0 = greedy (default {temperature})",
        )
        sp.add_argument("--top-k", type=int, default=40, help="0 = no top-k filter (default 40)")
        sp.add_argument("--top-p", type=float)
        sp.add_argument("--min-p", type=float)
        sp.add_argument("--repetition-penalty", type=float)
        sp.add_argument("--seed", type=int)

    g = sub.add_parser("generate", help="stream generated text to stdout")
    common(g)
    g.add_argument("--prompt", required=True, help="text to continue")
    g.add_argument("--max-new-tokens", type=int, default=50)
    sampling(g)
    g.set_defaults(func=cmd_generate)

    c = sub.add_parser(
        "chat",
        help="interactive chat with a model that has a chat template",
        description="One line per turn; the reply streams. /reset clears the history, "
        "Ctrl-D quits. Reads turns from stdin when it is not a terminal.",
    )
    common(c)
    c.add_argument("--system", help="a system message to start the conversation with")
    c.add_argument("--max-new-tokens", type=int, default=512)
    sampling(c, temperature=0.7)
    c.set_defaults(func=cmd_chat)

    i = sub.add_parser("info", help="version, backends, CPU features, threads; a model's sizes")
    common(i)
    i.set_defaults(func=cmd_info)

    b = sub.add_parser("bench", help="prefill and decode speed of a model")
    common(b)
    b.add_argument("--repeats", type=int, default=3)
    b.add_argument("--decode-tokens", type=int, default=64)
    b.set_defaults(func=cmd_bench)
    t = sub.add_parser(
        "train",
        help="train a GPT-2-architecture model on text",
        description="Trains a byte-level BPE tokenizer and a GPT-2-architecture model on a text "
        "file or folder; writes a Hugging Face GPT-2 folder to --out (checkpointed every "
        "--eval-interval steps and on Ctrl-C).",
    )
    t.add_argument("--data", required=True, help="a text file or a folder of them")
    t.add_argument("--out", required=True, help="output folder (checkpoint, tokenizer, data)")
    t.add_argument("--glob", default="*", help="file-name pattern inside a folder (default: *)")
    t.add_argument(
        "--exclude-dir",
        action="append",
        default=[],
        metavar="NAME",
        help="skip folders with this name (repeatable)",
    )
    t.add_argument("--vocab-size", type=int, default=4096)
    t.add_argument("--val-fraction", type=float, default=0.05)
    t.add_argument("--n-layer", type=int, default=4)
    t.add_argument("--n-head", type=int, default=4)
    t.add_argument("--n-embd", type=int, default=256)
    t.add_argument("--context", type=int, help="tokens per window = n_positions (default 256)")
    t.add_argument("--steps", type=int, help="optimizer steps (default 1000)")
    t.add_argument("--batch-size", type=int, help="windows per step (default 8)")
    t.add_argument("--grad-accum", type=int, help="batches accumulated per step (default 1)")
    t.add_argument("--lr", type=float, help="peak learning rate (default 1e-3)")
    t.add_argument("--min-lr", type=float, help="final learning rate (default lr/10)")
    t.add_argument("--warmup", type=int, help="warmup steps (default min(100, steps/10))")
    t.add_argument("--weight-decay", type=float, help="AdamW weight decay (default 0.1)")
    t.add_argument("--grad-clip", type=float, help="max gradient norm (default 1.0)")
    t.add_argument("--eval-interval", type=int, help="steps between eval/checkpoints (default 200)")
    t.add_argument("--eval-batches", type=int, help="held-out batches per eval (default 10)")
    t.add_argument("--sample-prompt", help="prompt of the sample printed at each eval")
    t.add_argument("--seed", type=int, help="seed for initialization, data split and batches")
    t.add_argument("--threads", type=int, help="worker threads (default: all cores)")
    t.add_argument("--backend", choices=gpt_rs.list_backends(), help="compute backend")
    t.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    t.set_defaults(func=cmd_train)

    s = sub.add_parser(
        "serve",
        help="an OpenAI-compatible HTTP server with continuous batching",
        description="Serves /v1/chat/completions, /v1/completions, /v1/models, /health and "
        "/metrics. Needs the serve extra: pip install 'gpt_rs[serve]'. Ctrl-C or SIGTERM drain "
        "the running requests, then stop.",
    )
    s.add_argument(
        "--model", help="model folder, GGUF file or cached hub id (default: the shipped one)"
    )
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--max-batch", type=int, default=8, help="requests decoded together (default 8)")
    s.add_argument(
        "--max-queue", type=int, default=64, help="requests waiting at most (default 64)"
    )
    s.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on /v1 routes")
    s.add_argument("--threads", type=int, help="worker threads (default: all cores)")
    s.add_argument("--model-name", help="the model id clients send (default: the path's name)")
    s.add_argument(
        "--max-body-bytes", type=int, default=1 << 20, help="larger bodies get 413 (default 1 MiB)"
    )
    s.add_argument("--backend", choices=gpt_rs.list_backends(), help="compute backend")
    s.add_argument("--dtype", default="auto", help="weights in memory (see generate --dtype)")
    s.set_defaults(func=cmd_serve)

    q = sub.add_parser(
        "quantize", help="write a Hugging Face folder as a quantized GGUF file (llama.cpp's format)"
    )
    q.add_argument(
        "input", help="Hugging Face model folder (llama, mistral, qwen2, qwen3, gemma3, gpt2)"
    )
    q.add_argument("output", help="the .gguf file to write")
    q.add_argument(
        "--type",
        default="q8_0",
        help="block format of the matrices: q8_0 (default), q6_k, q5_k, q5_1, q5_0, q4_k, "
        "q4_1, q4_0, or llama.cpp's mixes q4_k_m and q5_k_m",
    )
    q.set_defaults(func=cmd_quantize)
    return p


def cmd_serve(args) -> int:
    try:
        import sse_starlette  # noqa: F401
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401

        from . import server
    except ImportError as e:
        raise SystemExit(
            f"gpt-rs: serve needs the serve extra ({e.name} is missing): "
            "pip install 'gpt_rs[serve]'"
        ) from None
    if args.backend:
        gpt_rs.set_backend(args.backend)
    path = args.model or _default_model()
    if path is None:
        raise SystemExit(f"gpt-rs: {NO_DEFAULT_MODEL}")
    server.serve(
        path,
        host=args.host,
        port=args.port,
        max_batch=args.max_batch,
        max_queue=args.max_queue,
        api_key=args.api_key,
        threads=args.threads,
        model_name=args.model_name,
        max_body_bytes=args.max_body_bytes,
        dtype=args.dtype,
    )
    return 0


def cmd_quantize(args) -> int:
    gpt_rs.quant.quantize_model(args.input, args.output, args.type.lower(), progress=True)
    size = os.path.getsize(args.output)
    print(f"wrote {args.output} ({size / 1e6:.1f} MB, {args.type.lower()})", file=sys.stderr)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except BrokenPipeError:
        # The reader went away (`gpt-rs generate ... | head`): stop quietly, as Unix tools do
        # on SIGPIPE. Point stdout at /dev/null so the interpreter's final flush is silent.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except MemoryError as e:
        print(f"gpt-rs: error: out of memory: {e}", file=sys.stderr)
        return 2
    except (ValueError, OSError, TypeError) as e:
        print(f"gpt-rs: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ngpt-rs: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
