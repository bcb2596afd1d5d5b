"""Allocation-sized arguments across every public op, layer and generation entry point under an
address-space limit (`ulimit -v`): zero signals, and every refusal a Python exception.
The calls are in tests/alloc_fuzz.py; this runs it in its own interpreter."""

from __future__ import annotations

import json
import resource
import signal
import subprocess
import sys
from pathlib import Path

import gpt2_fixture as fx

DRIVER = Path(__file__).resolve().parent / "alloc_fuzz.py"
LIMIT = 4 << 30


def test_allocation_sized_arguments_under_an_address_space_limit(tmp_path):
    fx.make_gpt2_folder(tmp_path / "m", fx.train_tokenizer(), n_positions=256)

    def limit_memory():
        resource.setrlimit(resource.RLIMIT_AS, (LIMIT, LIMIT))

    r = subprocess.run(
        [sys.executable, str(DRIVER), str(tmp_path / "m")],
        capture_output=True,
        text=True,
        timeout=600,
        preexec_fn=limit_memory,
    )
    if r.returncode < 0:
        raise AssertionError(
            f"the fuzz driver was killed by {signal.Signals(-r.returncode).name}:\n"
            f"{r.stderr[-3000:]}"
        )
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    print(f"\nallocation fuzz: {summary['calls']} calls, outcomes {summary['outcomes']}")
    assert not summary["unexpected"], "\n".join(summary["unexpected"])
    assert summary["calls"] > 2500
    # The refusals are MemoryErrors, not only argument errors: the sizes reach the allocator.
    assert summary["outcomes"].get("MemoryError", 0) > 500, summary
