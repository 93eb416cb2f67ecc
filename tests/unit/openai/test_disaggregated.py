"""The request rewriting of the prefill/decode flow (vLLM's kv_transfer_params protocol)."""

from __future__ import annotations

import pytest

from llmserve.openai.disaggregated import check_splittable, decode_payload, prefill_payload
from llmserve.openai.errors import InvalidRequest


def test_prefill_request_computes_the_prompt_and_one_token_only() -> None:
    original = {"model": "m", "messages": [], "max_completion_tokens": 50, "stream": True,
                "stream_options": {"include_usage": True}, "min_tokens": 4, "temperature": 0}
    body = prefill_payload(original)
    assert body["max_tokens"] == 1 and body["max_completion_tokens"] == 1
    assert body["stream"] is False
    assert body["kv_transfer_params"]["do_remote_decode"] is True
    assert body["kv_transfer_params"]["do_remote_prefill"] is False
    assert "stream_options" not in body and "min_tokens" not in body
    assert body["temperature"] == 0
    assert original["max_completion_tokens"] == 50  # the decode request keeps the original


def test_decode_request_is_the_original_plus_the_kv_location() -> None:
    original = {"model": "m", "prompt": "p", "max_tokens": 9, "stream": True}
    params = {"do_remote_prefill": True, "remote_block_ids": [[1, 2]], "remote_port": 5600}
    assert decode_payload(original, params) == {**original, "kv_transfer_params": params}
    assert decode_payload(original, None) == original


@pytest.mark.parametrize(("extra", "param"), [({"n": 2}, "n"), ({"best_of": 3}, "best_of"),
                                              ({"echo": True}, "echo"),
                                              ({"prompt_logprobs": 0}, "prompt_logprobs")])
def test_requests_one_prefill_cannot_serve_are_refused(extra: dict[str, object],
                                                       param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        check_splittable({"model": "m", **extra})
    assert info.value.param == param


def test_plain_requests_split() -> None:
    check_splittable({"model": "m", "n": 1, "echo": False, "logprobs": 2})
