"""Server-sent events, as OpenAI-compatible servers stream them: ``data: <json>`` lines."""

from __future__ import annotations

DONE = "[DONE]"


class SseDecoder:
    """Feed raw byte chunks (split anywhere); get back each event's ``data`` payload.

    Multi-line data fields are joined with newlines as the SSE spec says; comments
    (``:``) and other fields (``event:``, ``id:``) are skipped.
    """

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[str]:
        self._buffer += chunk
        *lines, self._buffer = self._buffer.split(b"\n")
        events: list[str] = []
        for raw in lines:
            line = raw.rstrip(b"\r")
            if not line:
                if self._data:
                    events.append("\n".join(self._data))
                    self._data = []
            elif line.startswith(b"data:"):
                value = line[5:]
                self._data.append(value[1:].decode() if value[:1] == b" " else value.decode())
        return events

    def close(self) -> list[str]:
        """Whatever an unterminated last event held."""
        events = self.feed(b"\n\n") if self._buffer else []
        if self._data:
            events.append("\n".join(self._data))
            self._data = []
        return events
