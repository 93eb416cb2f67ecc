"""Send one streaming OpenAI request with aiohttp and time every content chunk."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from llmserve.bench.loadgen.records import RequestRecord
from llmserve.bench.loadgen.sse import DONE, SseDecoder

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
Message = Mapping[str, str]


@dataclass(frozen=True)
class RequestSpec:
    """Everything needed to send one request."""

    url: str
    endpoint: str
    model: str
    messages: Sequence[Message]
    max_tokens: int
    session_id: str
    turn: int = 0
    send_session: bool = False  # x-session-id header + "user" field (multi-turn)
    ignore_eos: bool = False
    extra_body: Mapping[str, Any] | None = None
    api_key: str | None = None

    def payload(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": self.max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if self.endpoint == CHAT:
            body["messages"] = [dict(m) for m in self.messages]
        else:
            body["prompt"] = "\n".join(m["content"] for m in self.messages)
        if self.ignore_eos:
            body["ignore_eos"] = True
        if self.send_session:
            body["user"] = self.session_id
        body.update(self.extra_body or {})
        return body

    def headers(self) -> dict[str, str]:
        headers = {"content-type": "application/json"}
        if self.api_key:
            headers["authorization"] = f"Bearer {self.api_key}"
        if self.send_session:
            headers["x-session-id"] = self.session_id
        return headers


def chunk_text(chunk: Mapping[str, Any]) -> str:
    """The generated text a chat or completions chunk carries (first choice)."""
    choices = chunk.get("choices") or ()
    if not choices:
        return ""
    choice = choices[0]
    delta = choice.get("delta")
    if isinstance(delta, Mapping):
        return str(delta.get("content") or delta.get("reasoning_content") or "")
    return str(choice.get("text") or "")


class StreamTimer:
    """Turns the events of one stream into a :class:`RequestRecord`'s timings."""

    def __init__(self, record: RequestRecord, sent_at: float) -> None:
        self.record = record
        self.sent_at = sent_at
        self.last_at = 0.0
        self.chunks = 0
        self.parts: list[str] = []

    def on_event(self, data: str, now: float) -> None:
        if data == DONE:
            return
        chunk = json.loads(data)
        if "error" in chunk:
            self.record.error = str(chunk["error"])
        usage = chunk.get("usage")
        if usage:
            self.record.output_tokens = int(usage.get("completion_tokens") or 0)
            self.record.prompt_tokens = int(usage.get("prompt_tokens") or 0)
            self.record.usage_reported = True
        text = chunk_text(chunk)
        if not text:
            return
        if self.chunks == 0:
            self.record.ttft_s = now - self.sent_at
        else:
            self.record.itl_s.append(now - self.last_at)
        self.last_at = now
        self.chunks += 1
        self.parts.append(text)

    def finish(self, now: float) -> None:
        self.record.latency_s = now - self.sent_at
        self.record.generated_text = "".join(self.parts)
        if not self.record.usage_reported:
            self.record.output_tokens = self.chunks


async def send(session: aiohttp.ClientSession, spec: RequestSpec, run_start: float,
               clock: Any = time.perf_counter) -> RequestRecord:
    record = RequestRecord(spec.session_id, spec.turn, spec.model)
    sent_at = clock()
    record.start_s = sent_at - run_start
    timer = StreamTimer(record, sent_at)
    try:
        async with session.post(spec.url + spec.endpoint, json=spec.payload(),
                                headers=spec.headers()) as response:
            record.status = response.status
            if response.status != 200:
                body = await response.text()
                record.error = body[:500] or response.reason or "error"
                record.latency_s = clock() - sent_at
                return record
            decoder = SseDecoder()
            async for raw in response.content.iter_any():
                now = clock()
                for data in decoder.feed(raw):
                    timer.on_event(data, now)
            for data in decoder.close():
                timer.on_event(data, clock())
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        record.error = f"{type(exc).__name__}: {exc}"
    timer.finish(clock())
    if record.success and timer.chunks == 0:
        record.error = "no content in the stream"
    return record
