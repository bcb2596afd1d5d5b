"""Conversations and per-template special tokens for the chat-template tests (shared by
scripts/record_chat_templates.py and tests/test_chat.py), and a small tokenizer to chat with."""

import json
from pathlib import Path

import tokenizers

TEMPLATES = {
    # file stem -> (bos_token, eos_token)
    "meta-llama-Llama-3.1-8B-Instruct": ("<|begin_of_text|>", "<|eot_id|>"),
    "meta-llama-Llama-3.2-3B-Instruct": ("<|begin_of_text|>", "<|eot_id|>"),
    "Qwen-Qwen2.5-7B-Instruct": (None, "<|im_end|>"),
    "Qwen-Qwen3-0.6B": (None, "<|im_end|>"),
    "mistralai-Mistral-Nemo-Instruct-2407": ("<s>", "</s>"),
    "HuggingFaceTB-SmolLM3-3B": (None, "<|im_end|>"),
    "google-gemma-2-2b-it": ("<bos>", "<eos>"),
    "google-gemma-3-1b-it": ("<bos>", "<eos>"),
}

CONVERSATIONS = [
    [{"role": "user", "content": "Hello!"}],
    [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3+3?"},
    ],
    [
        {"role": "user", "content": "  leading and trailing spaces  \n\nnew lines"},
        {"role": "assistant", "content": 'Ünïcödé 日本語 🙂 "quotes" and \\ backslash'},
        {"role": "user", "content": ""},
    ],
]

# Extra template variables passed to every rendering (fixed dates keep the output stable).
EXTRA = {"date_string": "26 Jul 2024"}


WORDS = ["Hello", "!", "What", "is", "2", "+", "?", "4", "And", "3", "the", "a", "of"]
SPECIALS = ["<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"]


def write_tokenizer(folder: Path, **config) -> None:
    """A small word-level tokenizer.json plus tokenizer_config.json with `config`."""
    folder.mkdir(parents=True, exist_ok=True)
    # 256 entries in all (the family models' vocabulary), so every generated id decodes.
    filler = [f"w{i}" for i in range(256 - 1 - len(WORDS) - len(SPECIALS))]
    vocab = {w: i for i, w in enumerate(["<unk>", *WORDS, *filler, *SPECIALS])}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.decoder = tokenizers.decoders.WordPiece(prefix="##")
    tok.add_special_tokens(SPECIALS)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(config))


def make_chat_model(folder: Path) -> Path:
    """A tiny random bf16 Qwen2 with Qwen2.5's chat template and a 512-token context: the model
    the serving tests and the serving benchmark's smoke run chat with."""
    import families as fam

    fam.make_folder("qwen2_bf16", folder)
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "max_position_embeddings": 512}))
    root = Path(__file__).resolve().parent
    template = (root / "fixtures/chat_templates/Qwen-Qwen2.5-7B-Instruct.jinja").read_text()
    write_tokenizer(folder, chat_template=template, eos_token="<|im_end|>")
    return folder
