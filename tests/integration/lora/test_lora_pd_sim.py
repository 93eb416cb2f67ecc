"""LoRA adapters through prefill/decode disaggregation (`build_pd_openai_app`, simulated
engines, real HTTP, the official client).

A request for ``BASE:ADAPTER`` loads the adapter into the chosen prefill replica and the
chosen decode replica (one load each, LRU per replica), names the adapter as ``model`` to
both, answers as aggregated serving does for the same adapter (the simulator's output
depends on the adapter's name, as a real adapter changes the model's), and bad adapters
get the aggregated path's errors with the engines untouched.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from llmserve import serve
from llmserve.llm import build_openai_app, build_pd_openai_app
from llmserve.llm.tiny_model import cached_tiny_model

PROMPT = "the quick brown fox jumps over the lazy dog " * 6
CHAT = [{"role": "user", "content": "say something about adapters " * 4}]
ASKED = (("tiny:lora-0", "completions"), ("tiny:lora-1", "chat"), ("tiny", "completions"))


def config(folder: Path, model_dir: Path, **changes: Any) -> dict[str, Any]:
    return {"model_loading_config": {"model_id": "tiny", "model_source": str(model_dir)},
            "llm_engine": "sim",
            "lora_config": {"dynamic_lora_loading_path": str(folder),
                            "max_num_adapters_per_replica": 1},
            **changes}


def answer(client: OpenAI, model: str, kind: str, *, stream: bool = False) -> str:
    if kind == "chat":
        if stream:
            chunks = client.chat.completions.create(
                model=model, messages=CHAT, max_tokens=8, seed=7, stream=True)  # type: ignore[arg-type]
            return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        chat = client.chat.completions.create(model=model, messages=CHAT,  # type: ignore[arg-type]
                                              max_tokens=8, seed=7)
        assert chat.model == model
        return chat.choices[0].message.content or ""
    if stream:
        pieces = client.completions.create(model=model, prompt=PROMPT, max_tokens=8, seed=7,
                                           stream=True)
        return "".join(p.choices[0].text for p in pieces if p.choices)
    completion = client.completions.create(model=model, prompt=PROMPT, max_tokens=8, seed=7)
    assert completion.model == model
    return completion.choices[0].text


@pytest.fixture(scope="module")
def adapters(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    model_dir = cached_tiny_model(num_loras=3)
    folder = tmp_path_factory.mktemp("adapters")
    for name in ("lora-0", "lora-1", "lora-2"):
        shutil.copytree(model_dir / "loras" / name, folder / name)
    return model_dir, folder


@pytest.fixture(scope="module")
def aggregated(adapters: tuple[Path, Path]) -> dict[tuple[str, str], str]:
    """What aggregated serving answers (one engine doing both steps), per (model, kind)."""
    model_dir, folder = adapters
    serve.shutdown()
    serve.run(build_openai_app({"llm_configs": [config(folder, model_dir)]}), port=0)
    try:
        client = OpenAI(base_url=f"{serve.http_url()}/v1", api_key="x", max_retries=0)
        return {(model, kind): answer(client, model, kind) for model, kind in ASKED}
    finally:
        serve.shutdown()


@pytest.fixture(scope="module")
def gateway(adapters: tuple[Path, Path],
            aggregated: dict[tuple[str, str], str]) -> Iterator[str]:
    model_dir, folder = adapters
    serve.shutdown()
    serve.run(build_pd_openai_app({"prefill_config": config(folder, model_dir),
                                   "decode_config": config(folder, model_dir)}), port=0)
    yield serve.http_url() or ""
    serve.shutdown()


@pytest.fixture(scope="module")
def client(gateway: str) -> OpenAI:
    return OpenAI(base_url=f"{gateway}/v1", api_key="x", max_retries=0)


def engine_url(role: str) -> str:
    handle = serve.get_deployment_handle(f"LLMServer:{role}:tiny")
    return str(handle.endpoint.remote().result().url)


def engine_auth(role: str) -> dict[str, str]:
    """The header with the secret the engine demands (llmserve gave it one)."""
    handle = serve.get_deployment_handle(f"LLMServer:{role}:tiny")
    return {"authorization": f"Bearer {handle.endpoint.remote().result().api_key}"}


def loaded(role: str) -> set[str]:
    cards = httpx.get(f"{engine_url(role)}/v1/models", timeout=10,
                      headers=engine_auth(role)).json()["data"]
    return {card["id"] for card in cards if card.get("parent")}


def metric(gateway: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in httpx.get(f"{gateway}/metrics", timeout=10).text.splitlines():
        match = re.match(r"^([^{\s]+)(?:\{([^}]*)\})?\s+(\S+)$", line)
        if match and match.group(1) == name:
            have = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
            if all(have.get(k) == v for k, v in labels.items()):
                total += float(match.group(3))
    return total


def test_concurrent_first_requests_load_once_on_each_replica(client: OpenAI,
                                                             gateway: str) -> None:
    with ThreadPoolExecutor(8) as pool:
        texts = list(pool.map(lambda _: answer(client, "tiny:lora-2", "completions"),
                              range(8)))
    assert len(set(texts)) == 1 and texts[0]
    assert loaded("prefill") == {"tiny:lora-2"} and loaded("decode") == {"tiny:lora-2"}
    # one load on the prefill replica and one on the decode replica, for eight requests
    assert metric(gateway, "llmserve_lora_adapter_loads_total",
                  model_name="tiny:lora-2") == 2
    assert metric(gateway, "llmserve_lora_requests_total", model_name="tiny:lora-2") == 8


def test_adapters_answer_as_aggregated_serving(client: OpenAI, gateway: str,
                                               aggregated: dict[tuple[str, str], str]) -> None:
    # one slot per replica: each switch evicts the other adapter on both replicas
    for model, kind in (*ASKED, *ASKED):
        assert answer(client, model, kind) == aggregated[(model, kind)], (model, kind)
        assert answer(client, model, kind, stream=True) == aggregated[(model, kind)]
    assert aggregated[("tiny:lora-0", "completions")] != aggregated[("tiny", "completions")]
    for role in ("prefill", "decode"):
        assert loaded(role) == {"tiny:lora-1"}  # the last adapter asked for
    assert metric(gateway, "llmserve_lora_adapter_evictions_total",
                  model_name="tiny:lora-0") >= 2
    assert metric(gateway, "llmserve_lora_adapter_loads_total",
                  model_name="tiny:lora-1") == 4  # twice on each replica


def test_unknown_adapter_is_404(client: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as error:
        answer(client, "tiny:nope", "completions")
    assert error.value.code == "model_not_found"
    assert "tiny:nope" in error.value.message


def test_bad_name_is_400(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as error:
        answer(client, "tiny:../lora-0", "chat")
    assert error.value.code == "invalid_adapter_name"


def test_bad_adapter_is_400_and_no_engine_sees_it(client: OpenAI,
                                                  adapters: tuple[Path, Path]) -> None:
    _, folder = adapters
    big = Path(shutil.copytree(folder / "lora-0", folder / "big"))
    settings = json.loads((big / "adapter_config.json").read_text())
    (big / "adapter_config.json").write_text(json.dumps({**settings, "r": 64}))
    deadline = time.monotonic() + 20
    while "tiny:big" not in {m.id for m in client.models.list()}:
        assert time.monotonic() < deadline, "the new adapter folder was not listed"
        time.sleep(0.3)
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as error:
            answer(client, "tiny:big", "completions", stream=stream)
        assert error.value.code == "invalid_adapter"
        assert "has rank 64, above this model's max_lora_rank" in error.value.message
    assert "tiny:big" not in loaded("prefill") | loaded("decode")
    # the failed request held no slot: the next adapter loads at once on both replicas
    assert answer(client, "tiny:lora-0", "completions")


def test_an_engine_that_lost_the_adapter_gets_it_loaded_again(
        client: OpenAI, gateway: str, aggregated: dict[tuple[str, str], str]) -> None:
    assert answer(client, "tiny:lora-1", "chat") == aggregated[("tiny:lora-1", "chat")]
    loads = metric(gateway, "llmserve_lora_adapter_loads_total", model_name="tiny:lora-1")
    for role in ("prefill", "decode"):  # behind the gateway's back, as an engine restart
        gone = httpx.post(f"{engine_url(role)}/v1/unload_lora_adapter", timeout=10,
                          json={"lora_name": "tiny:lora-1"}, headers=engine_auth(role))
        assert gone.status_code == 200, gone.text
    # each engine answers 404 once; the gateway loads the adapter there again and retries
    assert answer(client, "tiny:lora-1", "chat", stream=True) == \
        aggregated[("tiny:lora-1", "chat")]
    assert loaded("prefill") == {"tiny:lora-1"} and loaded("decode") == {"tiny:lora-1"}
    assert metric(gateway, "llmserve_lora_adapter_loads_total",
                  model_name="tiny:lora-1") == loads + 2
