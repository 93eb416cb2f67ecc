"""Soak: N minutes of mixed streaming load through the gateway while engines fail on a
schedule; every request is counted as completed, clear error, client-left or lost.

    python -m benchmarks.soak --minutes 10 --port-base 25000

Stack: ``--engines`` simulated engines (each its own process, ports ``port-base+1..``)
behind ``llmserve serve --worker-urls`` (port ``port-base``). Load: ``--concurrency``
clients, each sending one request after another: streamed chats (most), non-streamed
completions, clients that leave mid-stream, and malformed requests (bad JSON, nesting,
non-ASCII keys and headers, request-supplied chat templates, unknown models). Faults,
round-robin over the engines every ``--fault-every-s``: an engine killed (SIGKILL) and
restarted 3 s later, a replica killed and kept down 15 s, an engine stalled (SIGSTOP)
for 8 s.

Outcomes: *completed* (200 and the stream's ``[DONE]``), *clear error* (an OpenAI-format
error body or an error event closing the stream), *left* (the client hung up on
purpose), *lost* (anything else: a reset, a truncated stream, a non-JSON error, or no
answer within ``--request-timeout-s``, counted *hung* too). Targets: 0 lost, 0 hung, 0
engine requests running at the end, and clear errors only among requests in flight on
an engine when it failed. Prints a JSON summary; exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from benchmarks.cluster_procs import ROOT, stop, wait_http_ok

MODEL = "sim"
CHAT = [{"role": "user", "content": "Tell me about the sea and the ships on it."}]
MALFORMED: list[tuple[bytes, list[tuple[bytes, bytes]]]] = [
    (b"{not json", []),
    (b"[" * 20000 + b"]" * 20000, []),
    (json.dumps({"model": MODEL, "messages": CHAT,
                 "chat_template_kwargs": {"chat_template": "{{ 1 }}"}}).encode(), []),
    (json.dumps({"model": "nope", "messages": CHAT}).encode(), []),
    (json.dumps({"model": MODEL, "messages": CHAT, "max_tokens": 2}).encode(),
     [(b"x-request-id", b"caf\xc3\xa9\xff")]),
    (json.dumps({"model": MODEL, "messages": CHAT, "max_tokens": 2}).encode(),
     [(b"authorization", b"Bearer \xe5\xaf\x86")]),  # replaces the client's key
]
API_KEY = "soak-key"


@dataclass
class Tally:
    counts: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)
    fault_windows: list[tuple[float, float]] = field(default_factory=list)
    errors: list[tuple[float, float, str]] = field(default_factory=list)  # not malformed

    def add(self, kind: str, outcome: str, started_s: float, detail: str = "") -> None:
        self.counts[f"{kind}:{outcome}"] += 1
        self.counts[outcome] += 1
        if outcome == "clear_error" and kind != "malformed":
            self.errors.append((started_s, time.monotonic(), detail))
        if outcome in ("lost", "hung"):
            self.examples.setdefault(f"{kind}:{outcome}", detail[:300])

    def errors_outside_faults(self) -> list[str]:
        """Errors of requests not in flight while an engine was failing or coming back."""
        return [detail for begin, end, detail in self.errors
                if not any(begin <= f_end and end >= f_begin
                           for f_begin, f_end in self.fault_windows)]


class Engine:
    def __init__(self, model_dir: str, port: int, time_scale: float, log_dir: Path) -> None:
        self.args = [sys.executable, "-m", "engines.sim", "--model", model_dir, "--port",
                     str(port), "--served-model-name", MODEL, "--time-scale", str(time_scale)]
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_dir / f"engine-{port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(self.args, cwd=ROOT, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    def signal(self, signum: signal.Signals) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signum)
            if signum == signal.SIGKILL:
                self.proc.wait()

    def busy(self) -> float:
        text = httpx.get(f"{self.url}/metrics", timeout=5).text
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith(("vllm:num_requests_running",
                                       "vllm:num_requests_waiting")))


async def one_request(client: httpx.AsyncClient, url: str, rng: random.Random, tally: Tally,
                      timeout_s: float) -> None:
    kind = rng.choices(["stream", "whole", "leaves", "malformed"], [6, 2, 1, 1])[0]
    started = time.monotonic()
    try:
        outcome, detail = await asyncio.wait_for(_send(client, url, kind, rng), timeout_s)
    except TimeoutError:
        outcome, detail = "hung", "no answer in time"
    except (httpx.HTTPError, ValueError, KeyError) as exc:
        outcome, detail = "lost", repr(exc)
    if outcome == "hung":
        tally.add(kind, "lost", started, detail)
    tally.add(kind, outcome, started, detail)


async def _send(client: httpx.AsyncClient, url: str, kind: str,
                rng: random.Random) -> tuple[str, str]:
    if kind == "malformed":
        body, headers = rng.choice(MALFORMED)
        response = await client.post(f"{url}/v1/chat/completions", content=body,
                                     headers=[(b"content-type", b"application/json"),
                                              *headers])
        return _whole_outcome(response, expect_error=True)
    if kind == "whole":
        response = await client.post(f"{url}/v1/completions", json={
            "model": MODEL, "prompt": "Once upon a time", "max_tokens": rng.randint(4, 40)})
        return _whole_outcome(response, expect_error=False)
    body = {"model": MODEL, "messages": CHAT, "max_tokens": rng.randint(8, 80),
            "stream": True}
    leave_after = rng.randint(1, 4) if kind == "leaves" else None
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            await response.aread()
            return _whole_outcome(response, expect_error=False)
        events: list[str] = []
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                events.append(line[6:])
                if leave_after is not None and len(events) >= leave_after:
                    return "left", ""
    if not events or events[-1] != "[DONE]":
        return "lost", f"stream ended without [DONE]: {events[-2:]}"
    if len(events) >= 2 and '"error"' in events[-2]:
        message = json.loads(events[-2])["error"]["message"]  # a well-formed error event
        return "clear_error", str(message)
    return "completed", ""


def _whole_outcome(response: httpx.Response, expect_error: bool) -> tuple[str, str]:
    if response.status_code == 200 and not expect_error:
        return "completed", ""
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return "lost", f"{response.status_code}: {response.text[:200]}"
    if expect_error and response.status_code >= 500:
        return "lost", f"malformed request got {response.status_code}: {message}"
    return "clear_error", f"{response.status_code}: {message}"


async def load(url: str, concurrency: int, until_s: float, tally: Tally, seed: int,
               timeout_s: float) -> None:
    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=timeout_s + 5, limits=limits,
                                 headers={"authorization": f"Bearer {API_KEY}"}) as client:
        async def worker(index: int) -> None:
            rng = random.Random(seed * 1000 + index)
            while time.monotonic() < until_s:
                await one_request(client, url, rng, tally, timeout_s)
        await asyncio.gather(*(worker(i) for i in range(concurrency)))


async def faults(engines: Sequence[Engine], every_s: float, until_s: float,
                 tally: Tally) -> None:
    plan = [("engine_kill", 3.0), ("replica_kill", 15.0), ("stall", 8.0)]
    step = 0
    while True:
        await asyncio.sleep(every_s)
        if time.monotonic() + 20 > until_s:  # leave time to recover before the end
            return
        kind, down_s = plan[step % len(plan)]
        engine = engines[step % len(engines)]
        step += 1
        window = len(tally.fault_windows)
        tally.fault_windows.append((time.monotonic(), float("inf")))
        tally.counts[f"fault:{kind}"] += 1
        if kind == "stall":
            engine.signal(signal.SIGSTOP)
            await asyncio.sleep(down_s)
            engine.signal(signal.SIGCONT)
        else:
            engine.signal(signal.SIGKILL)
            await asyncio.sleep(down_s)
            engine.start()
            await asyncio.to_thread(wait_http_ok, f"{engine.url}/health", 60, engine.proc)
        began, _ = tally.fault_windows[window]
        tally.fault_windows[window] = (began, time.monotonic() + 6.0)  # + re-admission


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--port-base", type=int, default=25000)
    parser.add_argument("--engines", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--fault-every-s", type=float, default=20.0)
    parser.add_argument("--request-timeout-s", type=float, default=60.0)
    parser.add_argument("--time-scale", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="soak-results", help="logs and summary go here")
    args = parser.parse_args(argv)
    from llmserve.llm.tiny_model import cached_tiny_model

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model_dir = str(cached_tiny_model())
    engines = [Engine(model_dir, args.port_base + 1 + i, args.time_scale, out)
               for i in range(args.engines)]
    for engine in engines:
        engine.start()
    gateway_log = out / "gateway.log"
    url = f"http://127.0.0.1:{args.port_base}"
    with gateway_log.open("wb") as log:
        gateway = subprocess.Popen(
            [sys.executable, "-m", "llmserve.cli", "serve", "--port", str(args.port_base),
             "--model", model_dir, "--worker-urls", *[e.url for e in engines]],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "LLMSERVE_API_KEYS": API_KEY})
    tally = Tally()
    try:
        wait_http_ok(f"{url}/health", 120, gateway)
        started = time.monotonic()
        until = started + args.minutes * 60

        async def run() -> None:
            await asyncio.gather(
                load(url, args.concurrency, until, tally, args.seed, args.request_timeout_s),
                faults(engines, args.fault_every_s, until, tally))

        asyncio.run(run())
        summary = _summary(args, tally, engines, url, gateway_log, time.monotonic() - started)
    finally:
        stop(gateway)  # type: ignore[arg-type]
        for engine in engines:
            engine.signal(signal.SIGCONT)
            if engine.proc is not None:
                stop(engine.proc)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    return 0 if summary["targets_met"] else 1


def _summary(args: argparse.Namespace, tally: Tally, engines: Sequence[Engine], url: str,
             gateway_log: Path, elapsed_s: float) -> dict[str, Any]:
    def settled() -> tuple[float, float]:
        metrics = httpx.get(f"{url}/metrics", timeout=5).text
        in_flight = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                        if line.startswith("llmserve_requests_in_flight{"))
        return in_flight, sum(e.busy() for e in engines)

    deadline = time.monotonic() + 15
    in_flight, left_running = settled()
    while (in_flight or left_running) and time.monotonic() < deadline:
        time.sleep(0.5)
        in_flight, left_running = settled()
    tracebacks = gateway_log.read_text(errors="replace").count("Traceback")
    counts = tally.counts
    total = sum(counts[o] for o in ("completed", "clear_error", "left", "lost"))
    outside = tally.errors_outside_faults()
    targets = {"lost": counts["lost"] == 0, "hung": counts["hung"] == 0,
               "engine_requests_left_running": left_running == 0,
               "gateway_in_flight": in_flight == 0, "tracebacks": tracebacks == 0,
               "errors_only_near_faults": not outside}
    return {
        "minutes": round(elapsed_s / 60, 2), "engines": args.engines,
        "concurrency": args.concurrency, "requests": total,
        "requests_per_s": round(total / elapsed_s, 1),
        "outcomes": {k: v for k, v in sorted(counts.items()) if not k.startswith("fault:")},
        "faults": {k.removeprefix("fault:"): v for k, v in counts.items()
                   if k.startswith("fault:")},
        "errors_outside_fault_windows": len(outside),
        "error_examples": sorted({d[:120] for _, _, d in tally.errors})[:8],
        "engine_requests_left_running": left_running, "gateway_in_flight": in_flight,
        "gateway_tracebacks": tracebacks, "examples": tally.examples,
        "targets": targets, "targets_met": all(targets.values()),
    }


if __name__ == "__main__":
    sys.exit(main())
