from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from llmserve.llm.tiny_model import (
    STAMP_FILE,
    build_tiny_model,
    cached_tiny_model,
    lora_dirs,
    make_tiny_model_cli,
)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", num_loras=1)


def test_model_fits_vllm_cpu(model_dir: Path) -> None:
    config = json.loads((model_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["hidden_size"] // config["num_attention_heads"] == config["head_dim"] == 64
    assert config["max_position_embeddings"] >= 2048
    assert config["vocab_size"] == 2048


def test_tokenizer_round_trips_and_matches_the_model(model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    config = json.loads((model_dir / "config.json").read_text())
    assert len(tokenizer) == config["vocab_size"]
    assert tokenizer.eos_token_id == config["eos_token_id"]
    assert tokenizer.pad_token_id == config["pad_token_id"]
    text = "Hello, world! def f(x): return x * 2  # ünïcödé ✓ 日本"
    assert tokenizer.decode(tokenizer(text).input_ids) == text
    assert len(tokenizer("The model serves the request today").input_ids) < 12  # real merges


def test_chat_template(model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Bye"},
    ]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    plain = tokenizer.apply_chat_template(messages[:2], tokenize=False)
    assert not plain.endswith("<|im_start|>assistant\n")
    ids = tokenizer.encode("<|im_start|>user<|im_end|>", add_special_tokens=False)
    assert ids[0] == tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert ids[-1] == tokenizer.eos_token_id


def test_lora_changes_the_model_output(model_dir: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    [lora_dir] = lora_dirs(model_dir)
    assert (lora_dir / "adapter_config.json").exists()
    input_ids = torch.tensor([[5, 100, 200, 300, 400]])
    base = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    with torch.no_grad():
        base_logits = base(input_ids).logits
        adapted = PeftModel.from_pretrained(base, str(lora_dir))
        lora_logits = adapted(input_ids).logits
    assert not torch.allclose(base_logits, lora_logits, atol=1e-3)
    assert (base_logits.argmax(-1) != lora_logits.argmax(-1)).any()


def test_deterministic_given_the_seed(model_dir: Path, tmp_path: Path) -> None:
    same = build_tiny_model(tmp_path / "same", num_loras=0)
    other = build_tiny_model(tmp_path / "other", seed=1, num_loras=0)
    weights = "model.safetensors"
    assert (same / weights).read_bytes() == (model_dir / weights).read_bytes()
    assert (same / "tokenizer.json").read_bytes() == (model_dir / "tokenizer.json").read_bytes()
    assert (other / weights).read_bytes() != (model_dir / weights).read_bytes()


def test_idempotent_and_rebuilds_on_new_params(model_dir: Path) -> None:
    weights = model_dir / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    started = time.monotonic()
    assert build_tiny_model(model_dir, num_loras=1) == model_dir
    assert time.monotonic() - started < 1.0
    assert weights.stat().st_mtime_ns == mtime
    stamp = json.loads((model_dir / STAMP_FILE).read_text())
    assert stamp["num_loras"] == 1 and stamp["seed"] == 0


def test_refuses_to_replace_a_foreign_directory(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="refusing"):
        build_tiny_model(tmp_path, num_loras=0)
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_rejects_head_dim_other_than_64(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="head dim"):
        build_tiny_model(tmp_path / "m", hidden_size=128, num_heads=4)


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_dir = tmp_path / "cli-model"
    assert make_tiny_model_cli([str(out_dir), "--lora", "2", "--seed", "3"]) == 0
    output = capsys.readouterr().out
    assert "[make-tiny-model] training a byte-level BPE tokenizer" in output
    assert f"LoRA adapter: {out_dir / 'loras' / 'lora-1'}" in output
    assert json.loads((out_dir / STAMP_FILE).read_text())["seed"] == 3
    assert make_tiny_model_cli([str(out_dir), "--lora", "2", "--seed", "3"]) == 0
    assert "already built" in capsys.readouterr().out
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "x").write_text("x")
    assert make_tiny_model_cli([str(tmp_path / "foreign")]) == 2


def test_cached_tiny_model_lives_under_the_cache_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMSERVE_CACHE_DIR", str(tmp_path))
    first = cached_tiny_model(seed=5)
    assert first.parent == tmp_path and "s5-l0" in first.name
    assert cached_tiny_model(seed=5) == first
    assert cached_tiny_model(seed=5, num_loras=1) != first
