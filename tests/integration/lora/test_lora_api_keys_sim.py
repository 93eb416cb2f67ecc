"""API-key model allow-lists and LoRA adapters (simulated engine, real HTTP, the official
client): a key allowed a base model may use its adapters; a key allowed one adapter may
use only that adapter; anything else is 403 ``model_not_allowed``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from openai import OpenAI

from llmserve import serve
from llmserve.llm import LLMConfig, build_openai_app
from llmserve.llm.tiny_model import cached_tiny_model

KEYS = """
keys:
  - key: sk-base
    name: base-user
    models: [tiny]
  - key: sk-one-adapter
    name: adapter-user
    models: ["tiny:lora-1"]
  - key: sk-other
    name: other-user
    models: [elsewhere]
"""


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    model_dir = cached_tiny_model(num_loras=3)
    keys = tmp_path_factory.mktemp("keys") / "keys.yaml"
    keys.write_text(KEYS)
    config = LLMConfig(
        model_loading_config={"model_id": "tiny", "model_source": str(model_dir)},
        llm_engine="sim",
        lora_config={"dynamic_lora_loading_path": str(model_dir / "loras"),
                     "lora_modules": {"static-one": str(Path(model_dir) / "loras" / "lora-2")}})
    serve.shutdown()
    serve.run(build_openai_app({"llm_configs": [config], "api_keys_file": str(keys)}), port=0)
    yield serve.http_url() or ""
    serve.shutdown()


def ask(url: str, key: str, model: str, stream: bool = False) -> str:
    client = OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)
    if stream:
        return "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=2,
            stream=True) if c.choices)
    return client.completions.create(model=model, prompt="hi", max_tokens=2).model


def refused(url: str, key: str, model: str, name: str) -> None:
    for stream in (False, True):
        with pytest.raises(openai.PermissionDeniedError) as error:
            ask(url, key, model, stream)
        assert error.value.status_code == 403
        assert error.value.code == "model_not_allowed"
        assert f"API key {name!r} may not use `{model}`" in error.value.message


def test_a_base_model_allows_its_adapters(url: str) -> None:
    for model in ("tiny", "tiny:lora-0", "tiny:lora-1", "static-one"):
        assert ask(url, "sk-base", model) == model
        assert ask(url, "sk-base", model, stream=True) is not None


def test_an_adapter_allows_only_itself(url: str) -> None:
    assert ask(url, "sk-one-adapter", "tiny:lora-1") == "tiny:lora-1"
    assert ask(url, "sk-one-adapter", "tiny:lora-1", stream=True) is not None
    for model in ("tiny", "tiny:lora-0", "static-one"):
        refused(url, "sk-one-adapter", model, "adapter-user")


def test_a_key_for_another_model_gets_none_of_them(url: str) -> None:
    for model in ("tiny", "tiny:lora-1", "static-one"):
        refused(url, "sk-other", model, "other-user")
