"""One request's measurements, in real seconds from the run's start."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RequestRecord:
    session_id: str
    turn: int = 0
    model: str = ""
    start_s: float = 0.0  # when the request was sent
    ttft_s: float = 0.0  # first content token after start_s
    latency_s: float = 0.0  # end to end
    itl_s: list[float] = field(default_factory=list)  # gaps between content chunks
    output_tokens: int = 0
    prompt_tokens: int = 0
    status: int = 0  # HTTP status; 0 = no response (connection error, timeout)
    error: str = ""
    usage_reported: bool = False
    generated_text: str = ""

    @property
    def success(self) -> bool:
        return self.status == 200 and not self.error

    @property
    def tpot_s(self) -> float:
        """Time per output token after the first (0 for one-token replies, as vLLM)."""
        if self.output_tokens <= 1:
            return 0.0
        return (self.latency_s - self.ttft_s) / (self.output_tokens - 1)

    def token_times_s(self) -> list[float]:
        """When each content chunk arrived (start-relative): first token, then each ITL."""
        times = [self.start_s + self.ttft_s]
        for gap in self.itl_s:
            times.append(times[-1] + gap)
        return times if self.ttft_s > 0 else []
