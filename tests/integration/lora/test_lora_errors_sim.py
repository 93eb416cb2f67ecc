"""Bad adapters and bad names through the gateway (simulated engine, real HTTP, the
official client): each answer's status and message, and the engine never sees them."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from llmserve import serve
from llmserve.llm import LLMConfig, build_openai_app
from llmserve.llm.tiny_model import cached_tiny_model


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    model_dir = cached_tiny_model(num_loras=3)
    folder = tmp_path_factory.mktemp("adapters")
    shutil.copytree(model_dir / "loras" / "lora-0", folder / "good")
    config = LLMConfig(model_loading_config={"model_id": "tiny", "model_source": str(model_dir)},
                       llm_engine="sim",
                       lora_config={"dynamic_lora_loading_path": str(folder),
                                    "lora_modules": {"static-one": str(model_dir / "loras"
                                                                       / "lora-1")}})
    serve.shutdown()
    serve.run(build_openai_app({"llm_configs": [config]}), port=0)
    engine = serve.get_deployment_handle("LLMServer:tiny").endpoint.remote().result()
    yield {"url": serve.http_url(), "folder": folder, "source": model_dir / "loras" / "lora-0",
           "engine_url": engine.url, "engine_key": engine.api_key}
    serve.shutdown()


@pytest.fixture(scope="module")
def client(gateway: dict[str, Any]) -> OpenAI:
    return OpenAI(base_url=gateway["url"] + "/v1", api_key="unused", max_retries=0)


def ask(client: OpenAI, model: str) -> str:
    return client.completions.create(model=model, prompt="hi", max_tokens=2).choices[0].text


def engine_adapters(gateway: dict[str, Any]) -> list[str]:
    data = httpx.get(gateway["engine_url"] + "/v1/models", headers={
        "authorization": f"Bearer {gateway['engine_key']}"}).json()["data"]
    return sorted(card["id"] for card in data if card.get("parent"))


def add_adapter(gateway: dict[str, Any], client: OpenAI, name: str,
                change: Callable[[Path], None]) -> str:
    path = Path(shutil.copytree(gateway["source"], gateway["folder"] / name))
    change(path)
    deadline = time.monotonic() + 20
    while f"tiny:{name}" not in {m.id for m in client.models.list()}:
        assert time.monotonic() < deadline, "the new adapter folder was not listed"
        time.sleep(0.3)
    return f"tiny:{name}"


def edit_config(**fields: Any) -> Callable[[Path], None]:
    def change(path: Path) -> None:
        config = json.loads((path / "adapter_config.json").read_text())
        (path / "adapter_config.json").write_text(json.dumps({**config, **fields}))
    return change


def test_good_and_static_adapters_are_served(client: OpenAI) -> None:
    assert ask(client, "tiny:good")
    assert ask(client, "static-one")
    cards = {m.id: m.model_dump() for m in client.models.list()}
    assert cards["static-one"]["parent"] == "tiny"


def test_unknown_adapter_is_404_model_not_found(client: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as error:
        ask(client, "tiny:nope")
    assert error.value.status_code == 404
    assert error.value.code == "model_not_found"
    assert "tiny:nope" in error.value.message


@pytest.mark.parametrize("name", ["tiny:../good", "tiny:good/..", "tiny:a\\b", "tiny:.."])
def test_names_with_path_parts_are_400(client: OpenAI, name: str) -> None:
    with pytest.raises(openai.BadRequestError) as error:
        ask(client, name)
    assert error.value.code == "invalid_adapter_name"
    assert "no path separators" in error.value.message


def test_rank_above_max_lora_rank_is_400(client: OpenAI, gateway: dict[str, Any]) -> None:
    model = add_adapter(gateway, client, "big", edit_config(r=64))
    with pytest.raises(openai.BadRequestError) as error:
        ask(client, model)
    assert error.value.code == "invalid_adapter"
    assert "has rank 64, above this model's max_lora_rank of 8" in error.value.message
    assert model not in engine_adapters(gateway)


def test_other_base_model_is_400(client: OpenAI, gateway: dict[str, Any]) -> None:
    model = add_adapter(gateway, client, "other",
                        edit_config(base_model_name_or_path="Qwen/Qwen2.5-7B"))
    with pytest.raises(openai.BadRequestError) as error:
        ask(client, model)
    assert "trained for base model `Qwen/Qwen2.5-7B`" in error.value.message
    assert model not in engine_adapters(gateway)


def test_missing_weights_is_400(client: OpenAI, gateway: dict[str, Any]) -> None:
    model = add_adapter(gateway, client, "noweights",
                        lambda p: (p / "adapter_model.safetensors").unlink())
    with pytest.raises(openai.BadRequestError) as error:
        ask(client, model)
    assert "missing adapter_model.safetensors" in error.value.message


def test_corrupt_weights_are_400(client: OpenAI, gateway: dict[str, Any]) -> None:
    def truncate(path: Path) -> None:
        weights = path / "adapter_model.safetensors"
        weights.write_bytes(weights.read_bytes()[:4000])

    model = add_adapter(gateway, client, "corrupt", truncate)
    with pytest.raises(openai.BadRequestError) as error:
        ask(client, model)
    assert "corrupt adapter_model.safetensors" in error.value.message
    assert model not in engine_adapters(gateway)


def test_corrupt_config_is_400(client: OpenAI, gateway: dict[str, Any]) -> None:
    def garble(path: Path) -> None:
        (path / "adapter_config.json").write_text('{"r": 8, "peft_type": ')

    model = add_adapter(gateway, client, "garbled", garble)
    with pytest.raises(openai.BadRequestError) as error:
        ask(client, model)
    assert "unreadable adapter_config.json" in error.value.message


def test_failures_are_counted(gateway: dict[str, Any]) -> None:
    text = httpx.get(gateway["url"] + "/metrics").text
    assert 'llmserve_lora_adapter_load_failures_total{model_name="tiny:big"} 1.0' in text
    assert 'llmserve_lora_adapter_loads_total{model_name="tiny:good"} 1.0' in text
