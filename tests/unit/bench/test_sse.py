from __future__ import annotations

import json

import pytest

from llmserve.bench.loadgen.sse import SseDecoder

STREAM = (b'data: {"a": 1}\n\n'
          b': keep-alive comment\n\n'
          b'event: message\r\ndata: {"b": 2}\r\n\r\n'
          b'data: line one\ndata: line two\n\n'
          b'data:[DONE]\n\n')
EXPECTED = ['{"a": 1}', '{"b": 2}', "line one\nline two", "[DONE]"]


def test_whole_stream() -> None:
    assert SseDecoder().feed(STREAM) == EXPECTED


@pytest.mark.parametrize("size", [1, 2, 3, 7, 16])
def test_split_anywhere(size: int) -> None:
    decoder = SseDecoder()
    events: list[str] = []
    for at in range(0, len(STREAM), size):
        events += decoder.feed(STREAM[at: at + size])
    assert events == EXPECTED


def test_unterminated_last_event_comes_out_on_close() -> None:
    decoder = SseDecoder()
    assert decoder.feed(b'data: {"x": 1}') == []
    assert decoder.close() == ['{"x": 1}']


def test_utf8_split_inside_a_character() -> None:
    payload = json.dumps({"t": "héllo"}, ensure_ascii=False).encode()
    raw = b"data: " + payload + b"\n\n"
    cut = raw.index("é".encode()) + 1
    decoder = SseDecoder()
    events = decoder.feed(raw[:cut]) + decoder.feed(raw[cut:])
    assert json.loads(events[0]) == {"t": "héllo"}
