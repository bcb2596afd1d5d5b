#!/usr/bin/env bash
# Builds the release wheel, checks its tag is cp39-abi3 (one wheel for every CPython >= 3.9),
# installs it into a fresh venv and imports it there. Needs maturin (the test extra has it).
set -euo pipefail
cd "$(dirname "$0")/.."

rm -rf dist
.venv/bin/maturin build --release --quiet -o dist
shopt -s nullglob
wheels=(dist/gpt_rs-*-cp39-abi3-*.whl)
if [ ${#wheels[@]} -ne 1 ]; then
    echo "expected one cp39-abi3 wheel in dist/, found: $(ls dist)" >&2
    exit 1
fi
venv=$(mktemp -d)/venv
python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q "${wheels[0]}"
# From another folder, so the import is the installed wheel's, not the source tree's.
(cd "$(dirname "$venv")" && "$venv/bin/python" - <<'PY'
import numpy as np
import gpt_rs

t = gpt_rs.Tensor.from_numpy(np.arange(6, dtype=np.float32).reshape(2, 3))
assert gpt_rs.functional.softmax_last_dim(t).shape == [2, 3]
assert "site-packages" in gpt_rs.__file__, gpt_rs.__file__
print("wheel ok:", gpt_rs.__version__, gpt_rs.list_backends(), gpt_rs.__file__)
PY
)
echo "== ${wheels[0]} installs and imports in a fresh venv"
