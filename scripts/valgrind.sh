#!/usr/bin/env bash
# Runs the engine's Rust tests of the `cpu` and `c` backends (and the kernels they share) under
# valgrind memcheck. Valgrind does not emulate AVX-512 and hides it from CPUID, so the runtime
# dispatch exercises the AVX2 paths here (the scalar fallback is covered by GPT_RS_SIMD=scalar).
# Usage: ./scripts/valgrind.sh            (needs valgrind: apt-get install valgrind)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "valgrind is not installed" >&2; exit 1; }

bin=$(cargo test -q -p gpt-rs --test backends --no-run --message-format=json 2>/dev/null \
      | grep -o '"executable":"[^"]*backends[^"]*"' | head -1 | cut -d'"' -f4)
[ -n "$bin" ] || { echo "could not build the backends test binary" >&2; exit 1; }

for simd in avx2 scalar; do
  echo "== memcheck, GPT_RS_SIMD=$simd: cpu:: and c:: tests"
  GPT_RS_SIMD=$simd valgrind --tool=memcheck --error-exitcode=99 --leak-check=full \
    --errors-for-leak-kinds=definite "$bin" --test-threads=1 cpu:: c:: 2>&1 \
    | grep -E "test result|ERROR SUMMARY|definitely lost|possibly lost"
done
# The training kernels (shared-pointer writes in attention and AdamW), unit tests of the lib.
lib=$(cargo test -q -p gpt-rs --lib --no-run --message-format=json 2>/dev/null \
      | grep -o '"executable":"[^"]*gpt_rs-[^"]*"' | head -1 | cut -d'"' -f4)
[ -n "$lib" ] || { echo "could not build the engine's unit-test binary" >&2; exit 1; }
echo "== memcheck: train:: unit tests"
valgrind --tool=memcheck --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite \
  "$lib" --test-threads=1 train:: 2>&1 | grep -E "test result|ERROR SUMMARY|definitely lost"
echo "valgrind: no memory errors"
