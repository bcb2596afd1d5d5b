"""Chat templates rendered byte-identically to transformers' apply_chat_template (recorded by
scripts/record_chat_templates.py), and the chat API on a family model."""

import json
from pathlib import Path

import chat_cases as cc
import families as fam
import pytest

import gpt_rs

DIR = Path(__file__).parent / "fixtures" / "chat_templates"
RENDERED = json.loads((DIR / "rendered.json").read_text())

SPECIALS = cc.SPECIALS
write_tokenizer = cc.write_tokenizer


@pytest.mark.parametrize("stem", list(cc.TEMPLATES))
def test_templates_render_like_transformers(tmp_path, stem):
    bos, eos = cc.TEMPLATES[stem]
    src = (DIR / f"{stem}.jinja").read_text()
    write_tokenizer(tmp_path, chat_template=src, bos_token=bos, eos_token=eos)
    tok = gpt_rs.Tokenizer.from_file(tmp_path)
    assert tok.has_chat_template
    for case in RENDERED["templates"][stem]:
        args = (case["messages"], case["add_generation_prompt"])
        if "error" in case:
            with pytest.raises(ValueError, match="chat template"):
                tok.apply_chat_template(*args, tokenize=False, **cc.EXTRA)
            continue
        got = tok.apply_chat_template(*args, tokenize=False, **cc.EXTRA)
        assert got == case["text"], f"{stem}: {got!r} != {case['text']!r}"


def test_template_sources_and_errors(tmp_path):
    src = "{% for m in messages %}[{{ m.role }}]{{ m.content | trim }}{% endfor %}"
    write_tokenizer(tmp_path / "a", chat_template=[{"name": "default", "template": src}])
    tok = gpt_rs.Tokenizer.from_file(tmp_path / "a")
    msgs = [{"role": "user", "content": " Hello ! "}]
    assert tok.apply_chat_template(msgs, tokenize=False) == "[user]Hello !"
    assert tok.apply_chat_template(msgs) == tok.encode("[user]Hello !")
    # chat_template.jinja (transformers 5's file) wins over the config's template.
    write_tokenizer(tmp_path / "b", chat_template="ignored")
    (tmp_path / "b" / "chat_template.jinja").write_text("{{ messages[0]['content'] }}|{{ x }}")
    tok = gpt_rs.Tokenizer.from_file(tmp_path / "b")
    assert tok.apply_chat_template(msgs, tokenize=False, x=3) == " Hello ! |3"
    write_tokenizer(tmp_path / "c")
    none = gpt_rs.Tokenizer.from_file(tmp_path / "c")
    assert not none.has_chat_template
    with pytest.raises(ValueError, match="no chat template"):
        none.apply_chat_template(msgs)
    write_tokenizer(tmp_path / "d", chat_template="{% if %}")
    with pytest.raises(ValueError, match="does not compile"):
        gpt_rs.Tokenizer.from_file(tmp_path / "d")
    with pytest.raises(TypeError, match="JSON-serializable"):
        tok.apply_chat_template([{"role": "user", "content": object()}])
    with pytest.raises(ValueError, match="messages must be a list"):
        tok.apply_chat_template({"role": "user"})


def test_add_bos_token_and_eos_from_config(tmp_path):
    write_tokenizer(
        tmp_path, add_bos_token=True, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>"
    )
    tok = gpt_rs.Tokenizer.from_file(tmp_path)
    bos = 256 - len(SPECIALS)  # the first special token
    assert tok.encode("Hello !")[0] == bos
    assert tok.eos_token_id == bos + 1


def test_model_chat_is_generate_over_the_rendered_prompt(tmp_path):
    fam.make_folder("llama_gqa", tmp_path)
    src = (DIR / "meta-llama-Llama-3.1-8B-Instruct.jinja").read_text()
    write_tokenizer(tmp_path, chat_template=src, bos_token="<|begin_of_text|>")
    model = gpt_rs.load_model(tmp_path)
    msgs = [{"role": "user", "content": "What is 2 + 2 ?"}]
    # model.chat renders without extra variables: the template then uses its own date default.
    ids_default = model.tokenizer.apply_chat_template(msgs, add_generation_prompt=True)
    assert ids_default[0] == model.tokenizer.encode("<|begin_of_text|>")[0]
    out = model.generate_tokens(ids_default, 12, temperature=0, stop_token_ids=[])
    want = model.tokenizer.decode(out[len(ids_default) :])
    assert model.chat(msgs, 12, temperature=0, stop_token_ids=[]) == want
    assert "".join(model.chat_stream(msgs, 12, temperature=0, stop_token_ids=[])) == want


def test_chat_without_template_raises(tmp_path):
    fam.make_folder("llama_gqa", tmp_path)
    write_tokenizer(tmp_path)
    model = gpt_rs.load_model(tmp_path)
    with pytest.raises(ValueError, match="no chat template"):
        model.chat([{"role": "user", "content": "Hello"}])


def test_cli_chat_keeps_history_and_resets(tmp_path):
    import subprocess
    import sys

    fam.make_folder("qwen3_headdim", tmp_path)
    src = (DIR / "Qwen-Qwen2.5-7B-Instruct.jinja").read_text()
    write_tokenizer(tmp_path, chat_template=src, eos_token="<|im_end|>")
    model = gpt_rs.load_model(tmp_path)
    kw = dict(temperature=0, top_k=None)
    turn1 = [{"role": "user", "content": "Hello !"}]
    r1 = model.chat(turn1, 6, **kw)
    turn2 = [*turn1, {"role": "assistant", "content": r1}, {"role": "user", "content": "And ?"}]
    r2 = model.chat(turn2, 6, **kw)
    r3 = model.chat([{"role": "user", "content": "And ?"}], 6, **kw)
    assert r2 != r3  # the history matters
    cmd = [sys.executable, "-m", "gpt_rs", "chat", "--model", str(tmp_path)]
    cmd += ["--max-new-tokens", "6", "--temperature", "0", "--top-k", "0"]
    out = subprocess.run(
        cmd, input="Hello !\nAnd ?\n/reset\nAnd ?\n", capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [r1, r2, r3]
    info = subprocess.run(
        [sys.executable, "-m", "gpt_rs", "info", "--model", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (
        "qwen3" in info.stdout and "key/value 2" in info.stdout and "chat template" in info.stdout
    )
