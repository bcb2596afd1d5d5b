"""Training GPT-2-architecture models on the CPU, without PyTorch.

The engine (``gpt_rs.TrainableModel``) runs the forward pass, the fused cross-entropy and the
backward pass of a batch, and AdamW, in Rust on the same kernels and threads as inference.
This module adds what surrounds a step: a byte-level BPE tokenizer trained on the corpus,
token files memory-mapped from disk, seeded random windows, the learning-rate schedule,
gradient accumulation, evaluation, checkpoints and resuming.

Example::

    from gpt_rs import train

    data = train.prepare_data("corpus/", "run/data", vocab_size=4096)
    model = train.new_model(vocab_size=data.tokenizer.vocab_size, n_layer=4, n_head=4,
                            n_embd=128, n_positions=128, seed=0)
    trainer = train.Trainer(model, data, train.TrainConfig(steps=500, batch_size=8))
    trainer.fit()
    trainer.save("run")                  # a Hugging Face GPT-2 folder
    print(gpt_rs.load_model("run").generate("def ", max_new_tokens=40))

Checkpoints are Hugging Face GPT-2 folders (``config.json``, ``model.safetensors``,
``tokenizer.json``, ``vocab.json``, ``merges.txt``) that ``gpt_rs.load_model`` and
``transformers.GPT2LMHeadModel.from_pretrained`` both load, plus ``optimizer.safetensors`` and
``trainer_state.json`` for resuming.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import numpy as np

from . import _native
from ._native import Tokenizer, TrainableModel
from .errors import DTypeError, FileReadError, InvalidValueError, MissingFileError

__all__ = [
    "DataSplit",
    "PreparedData",
    "StepResult",
    "TokenData",
    "TrainConfig",
    "Trainer",
    "TrainableModel",
    "find_text_files",
    "load_model",
    "lr_at",
    "new_model",
    "prepare_data",
]

PathLike = Union[str, "os.PathLike[str]"]
EOS = "<|endoftext|>"


# ----------------------------------------------------------------------------------------------
# Models


def new_model(
    *,
    vocab_size: int,
    n_layer: int = 4,
    n_head: int = 4,
    n_embd: int = 256,
    n_positions: int = 256,
    n_inner: Optional[int] = None,
    seed: int = 0,
    eos_token_id: Optional[int] = None,
) -> TrainableModel:
    """A new GPT-2-architecture model with GPT-2's seeded initialization."""
    config = {
        "vocab_size": vocab_size,
        "n_layer": n_layer,
        "n_head": n_head,
        "n_embd": n_embd,
        "n_positions": n_positions,
        "n_inner": n_inner,
        "bos_token_id": eos_token_id,
        "eos_token_id": eos_token_id,
    }
    return TrainableModel(config, seed=seed)


def load_model(path: PathLike) -> TrainableModel:
    """Loads a checkpoint folder (``config.json`` + ``model.safetensors``) for training."""
    return TrainableModel.load(os.fspath(path))


# ----------------------------------------------------------------------------------------------
# Data


def find_text_files(
    path: PathLike, pattern: str = "*", exclude_dirs: Sequence[str] = ()
) -> list[Path]:
    """The corpus files: ``path`` itself, or the files under the folder ``path`` whose names
    match ``pattern``, sorted. Hidden folders, ``__pycache__`` and folders named in
    ``exclude_dirs`` are skipped."""
    p = Path(path)
    if not p.exists():
        raise MissingFileError(f"training data not found: {p}")
    if p.is_file():
        return [p]
    files = []
    for root, dirs, names in os.walk(p):
        skip = {"__pycache__", *exclude_dirs}
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in skip)
        files += [Path(root) / n for n in sorted(names) if Path(n).match(pattern)]
    if not files:
        raise InvalidValueError(f"no files matching {pattern!r} under {p}")
    return files


def _read_documents(files: Sequence[Path]) -> tuple[list[str], int]:
    """UTF-8 text of each file; binary or non-UTF-8 files are skipped (and counted)."""
    docs, skipped = [], 0
    for f in files:
        try:
            raw = f.read_bytes()
        except OSError as e:
            raise FileReadError(f"cannot read training file {f}: {e.strerror or e}") from e
        if b"\0" in raw:
            skipped += 1
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            skipped += 1
            continue
        if text.strip():
            docs.append(text)
    return docs, skipped


MAX_VOCAB = _native._MAX_VOCAB_SIZE  # the largest vocabulary Tokenizer.train builds


def _write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Writes ``path`` through a temporary file beside it, renamed into place: a reader that
    mapped the old file keeps reading the old contents (the rename leaves its inode alone),
    and an interrupted write never leaves a truncated file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _read_json(path: Path, max_bytes: int = 16 << 20):
    """A small JSON file: regular files only, at most ``max_bytes`` (a FIFO cannot block and
    /dev/zero cannot fill memory); ValueError names the file when it is not valid JSON."""
    if not path.is_file():
        raise FileReadError(f"cannot read {path}: not a regular file")
    with open(path, "rb") as f:
        raw = f.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise InvalidValueError(f"{path} is larger than {max_bytes >> 20} MiB")
    try:
        return json.loads(raw)
    except ValueError as e:
        raise InvalidValueError(f"{path} is not valid JSON: {e}") from e


class TokenData:
    """A token file on disk (written by ``prepare_data``), memory-mapped, never read whole.

    If the file is overwritten in place after it was opened (``cp`` over it), reading raises
    OSError instead of returning other tokens or crashing on a shorter file; files replaced
    by rename (as ``prepare_data`` does) keep their old contents for this object."""

    def __init__(self, path: PathLike, dtype: str = "uint16") -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise MissingFileError(f"token file not found: {self.path}")
        # Our own descriptor of the mapped inode: fstat on it tells whether that file changed.
        fd = os.open(self.path, os.O_RDONLY)
        weakref.finalize(self, os.close, fd)
        self._fd = fd
        st = os.fstat(fd)
        self._stamp = (st.st_size, st.st_mtime_ns)
        self.tokens = (
            np.memmap(self.path, dtype=np.dtype(dtype), mode="r")
            if st.st_size
            else np.zeros(0, dtype=dtype)
        )

    def _check_unchanged(self) -> None:
        st = os.fstat(self._fd)
        if (st.st_size, st.st_mtime_ns) != self._stamp:
            raise FileReadError(
                f"{self.path} was modified after it was opened ({self._stamp[0]} -> "
                f"{st.st_size} bytes); open it again (or prepare the data again)"
            )

    def __len__(self) -> int:
        return len(self.tokens)

    def check_context(self, context: int) -> None:
        if len(self) < context + 1:
            raise InvalidValueError(
                f"{self.path} holds {len(self)} tokens, fewer than context + 1 = {context + 1}: "
                "use a shorter --context or more data"
            )

    def sample(
        self, rng: np.random.Generator, batch_size: int, context: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """``batch_size`` random contiguous windows: inputs and next-token targets,
        int64 arrays of shape ``(batch_size, context)``."""
        self.check_context(context)
        starts = rng.integers(0, len(self) - context, size=batch_size)
        self._check_unchanged()
        w = np.stack([np.asarray(self.tokens[s : s + context + 1]) for s in starts])
        w = w.astype(np.int64)
        return w[:, :-1], w[:, 1:]

    def eval_batches(
        self, batch_size: int, context: int, max_batches: int
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Fixed windows spread evenly over the file (the same every call), in full batches
        when there is room for one (so evaluation reuses the training step's buffers)."""
        self.check_context(context)
        n = max(1, min(max_batches * batch_size, (len(self) - 1) // context))
        if n >= batch_size:
            n -= n % batch_size
        starts = np.linspace(0, len(self) - context - 1, n).astype(np.int64)
        for i in range(0, n, batch_size):
            self._check_unchanged()
            w = np.stack(
                [np.asarray(self.tokens[s : s + context + 1]) for s in starts[i : i + batch_size]]
            )
            w = w.astype(np.int64)
            yield w[:, :-1], w[:, 1:]


@dataclass
class DataSplit:
    train: TokenData
    val: Optional[TokenData]


@dataclass
class PreparedData(DataSplit):
    """A tokenized corpus: train/validation token files and the tokenizer trained on it."""

    tokenizer: Tokenizer = field(default=None)  # type: ignore[assignment]
    folder: Path = field(default=Path("."))
    info: dict = field(default_factory=dict)


def prepare_data(
    source: PathLike,
    out_dir: PathLike,
    *,
    vocab_size: int = 4096,
    val_fraction: float = 0.05,
    pattern: str = "*",
    exclude_dirs: Sequence[str] = (),
    seed: int = 0,
    log: Optional[Callable[[str], None]] = None,
) -> PreparedData:
    """Trains a byte-level BPE tokenizer on a corpus and writes its token files.

    Args:
        source: a text file, or a folder of them (see ``find_text_files``).
        out_dir: where ``train.bin``, ``val.bin``, ``data.json`` and the tokenizer files go.
            If it already holds data prepared from the same source and settings, that is reused.
        vocab_size: tokenizer size, from 257 to 2**21.
        val_fraction: share of documents held out for evaluation (of tokens, for one file).
        pattern: file-name pattern for folders, e.g. ``"*.py"``.
        exclude_dirs: folder names to skip, e.g. ``["test", "site-packages"]``.
        seed: which documents are held out.
        log: called with progress messages (default: print to stderr).

    Raises:
        FileNotFoundError: the source does not exist.
        ValueError: no usable text (empty corpus), or a bad setting.
        OSError: a file cannot be read.
    """
    say = log or (lambda m: print(m, file=sys.stderr, flush=True))
    if not 0.0 <= val_fraction < 1.0:
        raise InvalidValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
        raise DTypeError(f"vocab_size must be an int, got {type(vocab_size).__name__}")
    if not 257 <= vocab_size <= MAX_VOCAB:  # checked before the corpus is read
        raise InvalidValueError(
            f"vocab_size must be an integer from 257 to {MAX_VOCAB}, got {vocab_size}"
        )
    out = Path(out_dir)
    src = Path(source).resolve()
    settings = {
        "source": str(src),
        "pattern": pattern,
        "exclude_dirs": sorted(exclude_dirs),
        "vocab_size": vocab_size,
        "val_fraction": val_fraction,
        "seed": seed,
    }
    meta_path = out / "data.json"
    if meta_path.is_file():
        info = _read_json(meta_path)
        if info.get("settings") == settings:
            say(f"using the data prepared in {out}")
            return _open_prepared(out, info)

    files = find_text_files(src, pattern, exclude_dirs)
    t0 = time.perf_counter()
    docs, skipped = _read_documents(files)
    if not docs:
        raise InvalidValueError(
            f"the training corpus is empty: no non-empty UTF-8 text in {len(files)} file(s) "
            f"under {src}"
        )
    n_chars = sum(len(d) for d in docs)
    say(
        f"corpus: {len(docs)} documents, {n_chars / 1e6:.1f}M characters"
        + (f" ({skipped} binary or non-UTF-8 files skipped)" if skipped else "")
    )
    order = np.random.default_rng(seed).permutation(len(docs))
    n_val = int(round(len(docs) * val_fraction)) if len(docs) > 1 else 0
    if val_fraction > 0 and len(docs) > 1:
        n_val = max(1, n_val)
    val_docs = [docs[i] for i in sorted(order[:n_val])]
    train_docs = [docs[i] for i in sorted(order[n_val:])]

    say(f"training a {vocab_size}-token byte-level BPE tokenizer ...")
    tok = Tokenizer.train(train_docs, vocab_size)
    say(f"tokenizing ({tok.vocab_size} tokens) ...")
    train_ids = _encode(tok, train_docs)
    val_ids = _encode(tok, val_docs) if val_docs else np.zeros(0, dtype=np.uint32)
    if not val_docs and val_fraction > 0:  # one document: hold out its tail
        cut = int(len(train_ids) * (1 - val_fraction))
        train_ids, val_ids = train_ids[:cut], train_ids[cut:]

    out.mkdir(parents=True, exist_ok=True)
    dtype = "uint16" if tok.vocab_size <= 1 << 16 else "uint32"
    # Beside the old files, then renamed into place: a PreparedData opened earlier for this
    # folder keeps reading its own (old) tokens.
    _write_atomically(out / "train.bin", train_ids.astype(dtype).tofile)
    _write_atomically(out / "val.bin", val_ids.astype(dtype).tofile)
    tok.save(os.fspath(out))
    info = {
        "settings": settings,
        "dtype": dtype,
        "files": len(files),
        "documents": {"train": len(train_docs), "val": len(val_docs)},
        "tokens": {"train": int(len(train_ids)), "val": int(len(val_ids))},
        "vocab_size": tok.vocab_size,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    _write_atomically(meta_path, lambda p: p.write_text(json.dumps(info, indent=2) + "\n"))
    say(
        f"tokens: {len(train_ids):,} train, {len(val_ids):,} validation "
        f"({info['seconds']} s) -> {out}"
    )
    return _open_prepared(out, info)


def _encode(tok: Tokenizer, docs: list[str]) -> np.ndarray:
    # In slices, so memory stays bounded by one slice's Python strings and ids.
    parts, batch, size = [], [], 0
    for d in docs:
        batch.append(d)
        size += len(d)
        if size > 8_000_000:
            parts.append(tok.encode_documents(batch))
            batch, size = [], 0
    if batch:
        parts.append(tok.encode_documents(batch))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint32)


def _open_prepared(out: Path, info: dict) -> PreparedData:
    val = TokenData(out / "val.bin", info["dtype"])
    return PreparedData(
        train=TokenData(out / "train.bin", info["dtype"]),
        val=val if len(val) else None,
        tokenizer=Tokenizer.from_file(os.fspath(out / "tokenizer.json")),
        folder=out,
        info=info,
    )


# ----------------------------------------------------------------------------------------------
# Training


@dataclass
class TrainConfig:
    """Optimization settings. ``min_lr`` defaults to ``lr / 10``, ``warmup`` to
    ``min(100, steps // 10)`` steps; ``context`` to the model's ``n_positions``."""

    steps: int = 1000
    batch_size: int = 8
    grad_accum: int = 1
    context: Optional[int] = None
    lr: float = 1e-3
    min_lr: Optional[float] = None
    warmup: Optional[int] = None
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: Optional[float] = 1.0
    eval_interval: int = 200
    eval_batches: int = 10
    seed: int = 0

    def validate(self) -> None:
        """Raises ValueError naming the first setting that cannot work (checked before any
        step runs, so a bad setting never fails mid-run)."""

        def integer(name: str, v, lo: int, allow_none: bool = False) -> None:
            if v is None and allow_none:
                return
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise InvalidValueError(f"{name} must be an integer >= {lo}, got {v!r}")

        def number(name: str, v, lo: float, *, strict: bool, hi: Optional[float] = None) -> None:
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            ok = ok and (v > lo if strict else v >= lo) and (hi is None or v < hi)
            if not ok:
                bound = f"> {lo}" if strict else f">= {lo}"
                bound += f" and < {hi}" if hi is not None else ""
                raise InvalidValueError(f"{name} must be a finite number {bound}, got {v!r}")

        for name in ("steps", "batch_size", "grad_accum", "eval_interval", "eval_batches"):
            integer(name, getattr(self, name), 1)
        integer("context", self.context, 1, allow_none=True)
        integer("warmup", self.warmup, 0, allow_none=True)
        integer("seed", self.seed, 0)
        number("lr", self.lr, 0.0, strict=False)
        if self.min_lr is not None:
            number("min_lr", self.min_lr, 0.0, strict=False)
        number("weight_decay", self.weight_decay, 0.0, strict=False)
        number("beta1", self.beta1, 0.0, strict=False, hi=1.0)
        number("beta2", self.beta2, 0.0, strict=False, hi=1.0)
        number("eps", self.eps, 0.0, strict=True)
        if self.grad_clip is not None:
            number("grad_clip", self.grad_clip, 0.0, strict=True)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warmup to ``lr`` over
    ``warmup`` steps, then a cosine decay to ``min_lr`` at the last step."""
    warmup = cfg.warmup if cfg.warmup is not None else min(100, cfg.steps // 10)
    min_lr = cfg.min_lr if cfg.min_lr is not None else cfg.lr / 10
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, cfg.steps - 1 - warmup))
    return min_lr + 0.5 * (cfg.lr - min_lr) * (1.0 + math.cos(math.pi * progress))


@dataclass
class StepResult:
    step: int
    loss: float
    lr: float
    grad_norm: float
    tokens: int
    seconds: float


class Trainer:
    """The training loop: seeded batches, accumulation, clipping, AdamW, schedule, eval.

    The batch of step ``s`` depends only on ``(seed, s)``, so a run resumed from a checkpoint
    continues exactly as the uninterrupted run would.
    """

    def __init__(
        self,
        model: TrainableModel,
        data: DataSplit,
        config: Optional[TrainConfig] = None,
        *,
        tokenizer: Optional[Tokenizer] = None,
        step: int = 0,
    ) -> None:
        self.model = model
        self.data = data
        self.config = config or TrainConfig()
        self.config.validate()
        self.tokenizer = tokenizer or getattr(data, "tokenizer", None)
        self.step = step
        n_pos = model.config["n_positions"]
        self.context = self.config.context or n_pos
        if self.context > n_pos:
            raise InvalidValueError(
                f"context {self.context} exceeds the model's n_positions ({n_pos})"
            )
        data.train.check_context(self.context)
        if self.tokenizer is not None and self.tokenizer.vocab_size > model.config["vocab_size"]:
            raise InvalidValueError(
                f"the tokenizer has {self.tokenizer.vocab_size} tokens but the model only "
                f"{model.config['vocab_size']}"
            )
        self.history: list[dict] = []

    def batch(self, step: int, micro: int = 0) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.config.seed, step, micro])
        return self.data.train.sample(rng, self.config.batch_size, self.context)

    def train_step(self) -> StepResult:
        """One optimizer step (``grad_accum`` forward/backward passes). Returns its stats."""
        cfg, m = self.config, self.model
        t0 = time.perf_counter()
        m.zero_grad()
        loss = 0.0
        for micro in range(cfg.grad_accum):
            x, y = self.batch(self.step, micro)
            loss += m.forward_backward(x, y, 1.0 / cfg.grad_accum) / cfg.grad_accum
        norm = m.clip_grad_norm(cfg.grad_clip) if cfg.grad_clip else m.grad_norm()
        lr = lr_at(self.step, cfg)
        m.adamw_step(lr, cfg.beta1, cfg.beta2, cfg.eps, cfg.weight_decay)
        self.step += 1
        tokens = cfg.grad_accum * cfg.batch_size * self.context
        return StepResult(self.step, loss, lr, norm, tokens, time.perf_counter() - t0)

    def evaluate(self) -> Optional[float]:
        """Mean loss over fixed held-out windows (None without a validation split)."""
        val = self.data.val
        if val is None or len(val) < self.context + 1:
            return None
        losses = [
            self.model.loss(x, y)
            for x, y in val.eval_batches(
                self.config.batch_size, self.context, self.config.eval_batches
            )
        ]
        return float(np.mean(losses))

    def save(self, out_dir: PathLike) -> Path:
        """Writes a checkpoint: the Hugging Face GPT-2 folder plus optimizer and loop state."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.model.save(os.fspath(out))
        if self.tokenizer is not None:
            self.tokenizer.save(os.fspath(out))
        self.model.save_optimizer(os.fspath(out / "optimizer.safetensors"))
        state = {
            "step": self.step,
            "config": dataclasses.asdict(self.config),
            "history": self.history[-1000:],
        }
        text = json.dumps(state, indent=2) + "\n"
        _write_atomically(out / "trainer_state.json", lambda p: p.write_text(text))
        return out

    @classmethod
    def resume(
        cls,
        checkpoint: PathLike,
        data: DataSplit,
        config: Optional[TrainConfig] = None,
    ) -> Trainer:
        """Continues from a checkpoint written by ``save``: weights, AdamW moments, step and
        (unless ``config`` is given) settings."""
        ck = Path(checkpoint)
        state_path = ck / "trainer_state.json"
        if not state_path.is_file():
            raise MissingFileError(f"no trainer_state.json in {ck}: not a training checkpoint")
        state = _read_json(state_path)
        bad = f"{state_path} is not a trainer state written by Trainer.save"
        if not isinstance(state, dict) or not isinstance(state.get("config"), dict):
            raise InvalidValueError(f"{bad}: it has no 'config' object")
        step = state.get("step")
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise InvalidValueError(f"{bad}: 'step' must be a non-negative integer, got {step!r}")
        history = state.get("history", [])
        if not isinstance(history, list):
            raise InvalidValueError(f"{bad}: 'history' must be a list")
        if config is None:
            known = {f.name for f in dataclasses.fields(TrainConfig)}
            unknown = sorted(set(state["config"]) - known)
            if unknown:
                raise InvalidValueError(f"{bad}: unknown settings {unknown} in 'config'")
            config = TrainConfig(**state["config"])
            config.validate()
        model = TrainableModel.load(os.fspath(ck))
        model.load_optimizer(os.fspath(ck / "optimizer.safetensors"))
        tok = getattr(data, "tokenizer", None)
        if tok is None and (ck / "tokenizer.json").is_file():
            tok = Tokenizer.from_file(os.fspath(ck / "tokenizer.json"))
        t = cls(model, data, config, tokenizer=tok, step=step)
        t.history = list(history)
        return t

    def fit(
        self,
        *,
        out_dir: Optional[PathLike] = None,
        progress: bool = True,
        sample_prompt: Optional[str] = None,
        log: Optional[Callable[[str], None]] = None,
    ) -> list[dict]:
        """Trains until ``config.steps``. Every ``eval_interval`` steps (and at the end):
        held-out loss, a checkpoint in ``out_dir`` (if given) and a generated sample.
        Ctrl-C saves a checkpoint (if ``out_dir``) and re-raises KeyboardInterrupt."""
        say = log or (lambda m: print(m, file=sys.stderr, flush=True))
        bar = _ProgressBar(self.config.steps, self.step) if progress else None
        try:
            while self.step < self.config.steps:
                r = self.train_step()
                self.history.append({"step": r.step, "loss": r.loss, "lr": r.lr})
                if bar:
                    bar.update(r)
                if r.step % self.config.eval_interval == 0 or r.step == self.config.steps:
                    if bar:
                        bar.clear()
                    self._checkpoint(r, out_dir, sample_prompt, say)
        except KeyboardInterrupt:
            if bar:
                bar.clear()
            if out_dir is not None:
                self.save(out_dir)
                say(f"interrupted at step {self.step}: checkpoint saved to {out_dir}")
            raise
        finally:
            if bar:
                bar.close()
        return self.history

    def _checkpoint(self, r: StepResult, out_dir, sample_prompt, say) -> None:
        val = self.evaluate()
        if val is not None:
            self.history[-1]["val_loss"] = val
        msg = f"step {r.step}/{self.config.steps}: train loss {r.loss:.4f}"
        if val is not None:
            msg += f", val loss {val:.4f}"
        say(msg)
        if out_dir is None:
            return
        self.save(out_dir)
        if self.tokenizer is not None:
            from .models import load_model as load_inference

            prompt = sample_prompt if sample_prompt is not None else "\n"
            model = load_inference(out_dir)
            room = model.config["n_positions"] - len(model.tokenizer.encode(prompt))
            text = model.generate(
                prompt, max_new_tokens=max(0, min(48, room)), temperature=0.8, top_k=40, seed=0
            )
            say("sample: " + repr(prompt + text)[:400])


class _ProgressBar:
    """One status line on stderr (redrawn in place on a terminal, a line every ~5 s when piped)."""

    def __init__(self, total: int, start: int) -> None:
        self.total, self.start = total, start
        self.t0 = time.perf_counter()
        self.tokens = 0
        self.last_print = 0.0
        self.tty = sys.stderr.isatty()
        self.loss: Optional[float] = None

    def update(self, r: StepResult) -> None:
        self.tokens += r.tokens
        self.loss = r.loss if self.loss is None else 0.9 * self.loss + 0.1 * r.loss
        elapsed = time.perf_counter() - self.t0
        done = r.step - self.start
        rate = self.tokens / elapsed if elapsed > 0 else 0.0
        eta = elapsed / max(done, 1) * (self.total - r.step)
        width = 24
        filled = int(width * r.step / self.total)
        line = (
            f"[{'#' * filled}{'.' * (width - filled)}] {r.step}/{self.total} "
            f"loss {self.loss:.4f} | lr {r.lr:.2e} | {rate:,.0f} tok/s | ETA {_fmt_time(eta)}"
        )
        if self.tty:
            sys.stderr.write("\r" + line + "\033[K")
            sys.stderr.flush()
        elif elapsed - self.last_print >= 5 or r.step == self.total:
            self.last_print = elapsed
            print(line, file=sys.stderr, flush=True)

    def clear(self) -> None:
        if self.tty:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()

    def close(self) -> None:
        self.clear()


def _fmt_time(s: float) -> str:
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"
