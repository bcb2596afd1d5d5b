"""Records transformers' outputs for the tiny family models of `tests/families.py`.

Run once in the peers venv (torch + transformers; never needed by the normal test run):

    /path/to/peers/bin/python scripts/record_families.py [case ...]

For each case it writes the model folder with tests/families.py, loads it with transformers'
`AutoModelForCausalLM.from_pretrained` (refusing any missing, unexpected or mis-shaped key, so
the NumPy-built layout is exactly what transformers saves), and stores in
`tests/fixtures/families/<case>.npz`: the logits of `prompt_ids(case)`, the greedy ids of
`GREEDY_NEW` tokens after its first `GREEDY_PROMPT` ids, and the smallest top-1/top-2 logit gap
along the greedy path (the margin a correct implementation has against near-ties).
"""

import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import transformers

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
import families as fam  # noqa: E402

OUT = ROOT / "tests" / "fixtures" / "families"


def record(name: str, tmp: Path) -> None:
    folder = tmp / name
    fam.make_folder(name, folder)
    model, info = transformers.AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.float32, output_loading_info=True, attn_implementation="eager"
    )
    bad = {k: v for k, v in info.items() if v and k != "error_msgs"} or info.get("error_msgs")
    assert not bad, f"{name}: transformers did not load the layout cleanly: {info}"
    model.eval()
    ids = fam.prompt_ids(name)
    # No stop tokens: min_new_tokens would instead mask the eos ids' logits, a path the model
    # itself would not take.
    model.generation_config.eos_token_id = None
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float().numpy()
        out = model.generate(
            torch.tensor([ids[: fam.GREEDY_PROMPT]]),
            max_new_tokens=fam.GREEDY_NEW,
            do_sample=False,
            pad_token_id=0,
            output_scores=True,
            return_dict_in_generate=True,
        )
    greedy = out.sequences[0].tolist()
    margin = min(float(np.diff(np.sort(s[0].float().numpy())[-2:])[0]) for s in out.scores)
    np.savez_compressed(
        OUT / f"{name}.npz",
        logits=logits.astype(np.float32),
        greedy=np.array(greedy, np.int64),
        margin=np.float64(margin),
        transformers=np.array(transformers.__version__),
    )
    print(f"{name}: logit scale {np.abs(logits).max():.2f}, greedy margin {margin:.4f}")
    assert margin > 1e-3, f"{name}: greedy path has a near-tie ({margin}); change the seed"


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        # Cases named on the command line, or all.
        for name in sys.argv[1:] or fam.CASES:
            record(name, Path(tmp))


if __name__ == "__main__":
    main()
