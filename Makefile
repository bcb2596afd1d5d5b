# Developer shortcuts. The README's two set-up commands do not need make.
.PHONY: build test lint fmt bench

build:
	maturin develop --release

test:
	cargo test -q -p gpt-rs
	python -m pytest -q

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	ruff check .
	ruff format --check .
	python -m mypy.stubtest gpt_rs._native

fmt:
	cargo fmt --all
	ruff format .
	ruff check --fix .

bench:
	python benchmarks/ops.py
