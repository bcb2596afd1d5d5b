"""Malformed checkpoints raise ValueError/OSError naming the file: never a crash or a hang.
(A first part of the hardening issue; the full matrix of bad inputs is still to come.)"""

import json
import os
import struct

import numpy as np
import pytest

import gpt_rs


def header_file(header: dict, data: bytes = b"") -> bytes:
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + data


CASES = {
    "empty": b"",
    "garbage": bytes(range(256)) * 3,
    "absurd header length": struct.pack("<Q", 2**62) + b"{}",
    "header longer than file": struct.pack("<Q", 1000) + b'{"a":1}',
    "header not json": struct.pack("<Q", 8) + b"{not js}",
    "offsets past the end": header_file(
        {"wte.weight": {"dtype": "F32", "shape": [10, 8], "data_offsets": [0, 320]}}, b"\0" * 16
    ),
    "overlapping tensors": header_file(
        {
            "a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
            "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]},
        },
        b"\0" * 24,
    ),
    "unknown dtype": header_file(
        {"a": {"dtype": "Q7", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4
    ),
}


@pytest.fixture
def folder(tmp_path):
    cfg = {
        "model_type": "gpt2",
        "vocab_size": 10,
        "n_positions": 8,
        "n_embd": 8,
        "n_layer": 1,
        "n_head": 2,
    }
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    return tmp_path


@pytest.mark.parametrize("name", CASES)
def test_malformed_safetensors(folder, name):
    (folder / "model.safetensors").write_bytes(CASES[name])
    with pytest.raises(ValueError, match="model.safetensors"):
        gpt_rs.load_model(folder)


def test_truncated_safetensors(folder):
    from safetensors.numpy import save_file

    save_file({"wte.weight": np.zeros((10, 8), np.float32)}, str(folder / "model.safetensors"))
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="model.safetensors"):
        gpt_rs.load_model(folder)


@pytest.mark.parametrize(
    "config,word",
    [
        ("[1, 2]", "JSON object"),
        ('{"n_embd": -3}', "n_embd"),
        ('{"n_layer": "twelve"}', "n_layer"),
        ('{"n_embd": 10, "n_head": 3}', "divisible"),
        ('{"model_type": "bert"}', "model_type 'bert' is not supported"),
        ('{"model_type": "llama"}', "missing 'hidden_size'"),
        ('{"activation_function": "relu"}', "activation_function"),
        ('{"layer_norm_epsilon": 0}', "layer_norm_epsilon"),
    ],
)
def test_bad_config(folder, config, word):
    (folder / "config.json").write_text(config)
    (folder / "model.safetensors").write_bytes(CASES["empty"])
    with pytest.raises(ValueError, match=word):
        gpt_rs.load_model(folder)


def test_corrupt_tokenizer_file(tmp_path):
    (tmp_path / "tokenizer.json").write_text('{"this is": "not a tokenizer"}')
    with pytest.raises(ValueError, match="tokenizer.json"):
        gpt_rs.Tokenizer.from_file(tmp_path / "tokenizer.json")
    with pytest.raises(FileNotFoundError):
        gpt_rs.Tokenizer.from_file(tmp_path / "missing.json")
    os.remove(tmp_path / "tokenizer.json")
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        gpt_rs.Tokenizer.from_file(tmp_path)
