"""The torch-free safetensors check agrees with the safetensors library on good files and
catches truncated, padded and garbled ones; the JSON config check names what is wrong."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest

from llmserve.llm.tiny_model import cached_tiny_model
from llmserve.lora.adapter_files import inspect_adapter
from llmserve.lora.errors import InvalidAdapter
from llmserve.lora.safetensors_header import CorruptSafetensors, tensor_names

WEIGHTS = "adapter_model.safetensors"


@pytest.fixture
def adapter(tmp_path: Path) -> Path:
    return Path(shutil.copytree(cached_tiny_model(num_loras=1) / "loras" / "lora-0",
                                tmp_path / "a"))


def test_names_equal_the_safetensors_librarys(adapter: Path) -> None:
    safetensors = pytest.importorskip("safetensors")
    with safetensors.safe_open(str(adapter / WEIGHTS), framework="pt") as opened:
        expected = sorted(opened.keys())
    assert sorted(tensor_names(adapter / WEIGHTS)) == expected and expected


@pytest.mark.parametrize("change", [
    lambda raw: raw[:-1],  # truncated by a byte
    lambda raw: raw + b"\0",  # a byte too many
    lambda raw: raw[:6],  # not even the header length
    lambda raw: struct.pack("<Q", 10**9) + raw[8:],  # a header longer than the file
    lambda raw: raw[:8] + b"[" + raw[9:],  # the header is no JSON object
])
def test_broken_files_are_refused(adapter: Path, change: object) -> None:
    weights = adapter / WEIGHTS
    weights.write_bytes(change(weights.read_bytes()))  # type: ignore[operator]
    with pytest.raises(CorruptSafetensors):
        tensor_names(weights)
    with pytest.raises(InvalidAdapter, match=r"has a corrupt adapter_model\.safetensors"):
        inspect_adapter("a", adapter)


def test_a_shape_that_does_not_match_its_bytes_is_refused(tmp_path: Path) -> None:
    header = json.dumps({"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 20]}})
    path = tmp_path / "x.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header.encode() + b"\0" * 20)
    with pytest.raises(CorruptSafetensors, match="20 bytes for F32"):
        tensor_names(path)


@pytest.mark.parametrize(("fields", "reason"), [
    ({"r": 0}, "must be positive integers"),
    ({"r": "8"}, "must be positive integers"),
    ({"lora_alpha": None}, "lora_alpha must be a number"),
    ({"target_modules": 3}, "target_modules must be"),
    ({"peft_type": "IA3"}, "is not a LoRA adapter"),
])
def test_invalid_configs_name_the_reason(adapter: Path, fields: dict[str, object],
                                         reason: str) -> None:
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, **fields}))
    with pytest.raises(InvalidAdapter, match=reason):
        inspect_adapter("a", adapter)


def test_a_config_without_a_rank_is_refused(adapter: Path) -> None:
    config = json.loads((adapter / "adapter_config.json").read_text())
    del config["r"]
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(InvalidAdapter, match=r"invalid adapter_config\.json: missing r"):
        inspect_adapter("a", adapter)
