"""The shared engine client sends each engine its own key, and no other engine's."""

from __future__ import annotations

import httpx
import pytest

from llmserve.llm.engine_secret import choose_engine_key, without_key
from llmserve.openai.engine_auth import EngineKeys, bearer_headers


def seen_authorization(keys: EngineKeys, url: str,
                       headers: dict[str, str] | None = None) -> str | None:
    seen: list[str | None] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization"))
        return httpx.Response(200)

    with httpx.Client(transport=httpx.MockTransport(answer), auth=keys) as client:
        client.get(url, headers=headers)
    return seen[0]


def test_each_engine_gets_its_own_key() -> None:
    keys = EngineKeys()
    keys.replace_all([("http://10.0.0.1:8000", "k1"), ("http://10.0.0.1:8001", "k2"),
                      ("http://10.0.0.2:8000", None)])
    assert seen_authorization(keys, "http://10.0.0.1:8000/v1/models") == "Bearer k1"
    assert seen_authorization(keys, "http://10.0.0.1:8001/tokenize") == "Bearer k2"
    assert seen_authorization(keys, "http://10.0.0.2:8000/v1/models") is None
    assert seen_authorization(keys, "http://10.0.0.9:8000/v1/models") is None
    # a caller's own header is left alone
    assert seen_authorization(keys, "http://10.0.0.1:8000/v1/models",
                              {"authorization": "Bearer other"}) == "Bearer other"
    keys.replace_all([("http://10.0.0.1:8001", "k3")])
    assert seen_authorization(keys, "http://10.0.0.1:8000/v1/models") is None
    assert seen_authorization(keys, "http://10.0.0.1:8001/v1/models") == "Bearer k3"
    assert "k3" not in repr(keys)


def test_default_ports_and_ipv6_match() -> None:
    keys = EngineKeys()
    keys.set("https://engine.example", "k")
    keys.set("http://[::1]:9000", "k6")
    assert seen_authorization(keys, "https://engine.example:443/v1/models") == "Bearer k"
    assert seen_authorization(keys, "http://engine.example/v1/models") is None
    assert seen_authorization(keys, "http://[::1]:9000/v1/models") == "Bearer k6"


def test_choose_engine_key() -> None:
    first, second = choose_engine_key({}, {}), choose_engine_key({}, {})
    assert first != second and len(first) >= 32
    assert choose_engine_key({"VLLM_API_KEY": "env"}, {}) == "env"
    assert choose_engine_key({"VLLM_API_KEY": "env"}, {"api_key": "kw"}) == "kw"
    with pytest.raises(ValueError, match="api_key"):
        choose_engine_key({}, {"api_key": 5})
    assert without_key({"api_key": "kw", "api-key": "x", "max_model_len": 8}) == {
        "max_model_len": 8}
    assert bearer_headers(None) == {}
    assert bearer_headers("k") == {"authorization": "Bearer k"}
