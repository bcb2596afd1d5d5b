"""Renders tests/fixtures/chat_templates/*.jinja with transformers' apply_chat_template into
tests/fixtures/chat_templates/rendered.json. Run once in the peers venv (transformers)."""

import json
import sys
from pathlib import Path

import tokenizers
import transformers

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
import chat_cases as cc  # noqa: E402

DIR = ROOT / "tests" / "fixtures" / "chat_templates"


def main() -> None:
    out = {"transformers": transformers.__version__, "templates": {}}
    for stem, (bos, eos) in cc.TEMPLATES.items():
        src = (DIR / f"{stem}.jinja").read_text()
        backend = tokenizers.Tokenizer(tokenizers.models.WordLevel({"<unk>": 0}, unk_token="<unk>"))
        tok = transformers.PreTrainedTokenizerFast(
            tokenizer_object=backend, bos_token=bos, eos_token=eos, chat_template=src
        )
        cases = []
        for conv in cc.CONVERSATIONS:
            for gen in (False, True):
                try:
                    text = tok.apply_chat_template(
                        conv, add_generation_prompt=gen, tokenize=False, **cc.EXTRA
                    )
                    cases.append({"messages": conv, "add_generation_prompt": gen, "text": text})
                except Exception as e:  # the template's own raise_exception
                    cases.append({"messages": conv, "add_generation_prompt": gen, "error": str(e)})
        out["templates"][stem] = cases
        print(
            stem,
            sum("text" in c for c in cases),
            "rendered,",
            sum("error" in c for c in cases),
            "errors",
        )
    (DIR / "rendered.json").write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
