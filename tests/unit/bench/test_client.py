from __future__ import annotations

import json

from llmserve.bench.loadgen.client import CHAT, COMPLETIONS, RequestSpec, StreamTimer, chunk_text
from llmserve.bench.loadgen.records import RequestRecord


def chat_chunk(content: str | None) -> str:
    delta = {} if content is None else {"content": content}
    return json.dumps({"choices": [{"index": 0, "delta": delta}]})


def test_chunk_text_chat_and_completions() -> None:
    assert chunk_text({"choices": [{"delta": {"content": "hi"}}]}) == "hi"
    assert chunk_text({"choices": [{"delta": {"role": "assistant", "content": ""}}]}) == ""
    assert chunk_text({"choices": [{"text": " there"}]}) == " there"
    assert chunk_text({"choices": [], "usage": {"completion_tokens": 3}}) == ""


def test_timer_uses_streamed_usage_for_token_counts() -> None:
    record = RequestRecord("s")
    timer = StreamTimer(record, sent_at=10.0)
    timer.on_event(chat_chunk(""), 10.05)  # role-only first chunk: not a token
    timer.on_event(chat_chunk("a"), 10.1)
    timer.on_event(chat_chunk("bc"), 10.3)
    timer.on_event(chat_chunk("d"), 10.35)
    timer.on_event(json.dumps({"choices": [], "usage": {"prompt_tokens": 7,
                                                        "completion_tokens": 4}}), 10.36)
    timer.on_event("[DONE]", 10.36)
    timer.finish(10.4)
    assert abs(record.ttft_s - 0.1) < 1e-9
    assert [round(x, 6) for x in record.itl_s] == [0.2, 0.05]
    assert record.output_tokens == 4
    assert record.prompt_tokens == 7
    assert record.generated_text == "abcd"
    assert abs(record.latency_s - 0.4) < 1e-9


def test_timer_counts_chunks_without_usage() -> None:
    record = RequestRecord("s")
    timer = StreamTimer(record, sent_at=0.0)
    for at, text in [(0.1, "x"), (0.2, "y"), (0.3, "z")]:
        timer.on_event(json.dumps({"choices": [{"text": text}]}), at)
    timer.finish(0.3)
    assert record.output_tokens == 3
    assert not record.usage_reported


def test_timer_records_in_stream_errors() -> None:
    record = RequestRecord("s", status=200)
    timer = StreamTimer(record, sent_at=0.0)
    timer.on_event(json.dumps({"error": {"message": "overloaded"}}), 0.1)
    timer.finish(0.1)
    assert not record.success


def test_chat_payload_with_session() -> None:
    spec = RequestSpec("http://h", CHAT, "m", [{"role": "user", "content": "q"}], 16,
                       session_id="session-3", send_session=True, ignore_eos=True,
                       api_key="k")
    body = spec.payload()
    assert body["messages"] == [{"role": "user", "content": "q"}]
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["user"] == "session-3"
    assert body["ignore_eos"] is True
    assert body["max_tokens"] == 16
    headers = spec.headers()
    assert headers["x-session-id"] == "session-3"
    assert headers["authorization"] == "Bearer k"


def test_completions_payload_without_session() -> None:
    spec = RequestSpec("http://h", COMPLETIONS, "m",
                       [{"role": "system", "content": "sys"}, {"role": "user", "content": "q"}],
                       8, session_id="x")
    body = spec.payload()
    assert body["prompt"] == "sys\nq"
    assert "user" not in body and "messages" not in body and "ignore_eos" not in body
    assert "x-session-id" not in spec.headers()
