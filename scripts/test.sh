#!/usr/bin/env bash
# Installs gpt_rs with its test dependencies into .venv and runs every test: the engine's Rust
# tests on every backend, the pytest suite, and the original README's test_install.py.
# Usage: ./scripts/test.sh [extra pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
echo "== installing gpt_rs (release build) with test dependencies"
.venv/bin/python -m pip install -q '.[test]'

echo "== cargo test (engine, every backend and SIMD level)"
cargo test -q -p gpt-rs

echo "== pytest"
.venv/bin/python -m pytest -q "$@"

echo "== test_install.py"
.venv/bin/python crates/gpt-rs-py/test_install.py
