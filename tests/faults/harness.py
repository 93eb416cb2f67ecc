"""Real processes for fault tests: simulated engines and a gateway, each a subprocess.

The gateway runs as ``llmserve serve --worker-urls ...`` in its own process, so a test
can read its log (no tracebacks), count its open file descriptors and read its
``/metrics``; each engine is its own ``python -m engines.sim`` process, so one can be
killed, stopped (SIGSTOP: alive but hung) or restarted without touching the others.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from benchmarks.cluster_procs import wait_http_ok
from tests.e2e.conftest import free_port

MODEL = "sim"


def poll(check: Callable[[], bool], timeout_s: float, what: str, every_s: float = 0.05) -> None:
    """Until ``check()`` is true; fails naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(every_s)
    raise AssertionError(f"not within {timeout_s} s: {what}")


def metric_sum(text: str, name: str, labels: str = "") -> float:
    """The sum of every sample of ``name`` whose label set contains ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            head, _, value = line.rpartition(" ")
            if head.split("{")[0] == name and labels in head:
                total += float(value)
    return total


@dataclass
class SimEngine:
    model_dir: str
    time_scale: float = 1.0
    port: int = field(default_factory=free_port)
    extra: Sequence[str] = ()
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait: bool = True) -> SimEngine:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "engines.sim", "--model", self.model_dir, "--port",
             str(self.port), "--served-model-name", MODEL, "--time-scale",
             str(self.time_scale), *self.extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        if wait:
            wait_http_ok(f"{self.url}/health", 60, self.proc)
        return self

    def busy(self) -> float:
        """Requests the engine is running or holding in its queue."""
        text = httpx.get(f"{self.url}/metrics", timeout=5).text
        return (metric_sum(text, "vllm:num_requests_running")
                + metric_sum(text, "vllm:num_requests_waiting"))

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def pause(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.resume()
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass
class Gateway:
    worker_urls: Sequence[str]
    log_path: Path
    args: Sequence[str] = ()
    env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait_healthy: bool = True) -> Gateway:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llmserve.cli", "serve", "--port", str(self.port),
             "--worker-urls", *self.worker_urls, *self.args],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **self.env},
            start_new_session=True)
        log.close()
        wait_http_ok(f"{self.url}/-/healthz", 60, self.proc)
        if wait_healthy:
            wait_http_ok(f"{self.url}/health", 60, self.proc)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def open_fds(self) -> int:
        assert self.proc is not None
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def metrics(self, headers: dict[str, str] | None = None) -> str:
        return httpx.get(f"{self.url}/metrics", timeout=5, headers=headers).text

    def in_flight(self, headers: dict[str, str] | None = None) -> float:
        return metric_sum(self.metrics(headers), "llmserve_requests_in_flight")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


def assert_invariants(gateway: Gateway, engines: Sequence[SimEngine], fds_before: int,
                      admin_headers: dict[str, str] | None = None) -> None:
    """After a fault: nothing in flight, nothing left on any engine, no fd growth, no
    traceback, and /health OK."""
    live = [e for e in engines if e.proc is not None and e.proc.poll() is None]
    poll(lambda: gateway.in_flight(admin_headers) == 0, 10, "gateway in-flight back to 0")
    for engine in live:
        poll(lambda e=engine: e.busy() == 0, 10, f"no request left on {engine.url}")  # type: ignore[misc]
    poll(lambda: httpx.get(f"{gateway.url}/health", timeout=5).status_code == 200, 15,
         "/health OK")
    # pooled keep-alive connections to the engines may stay open: allow a few
    poll(lambda: gateway.open_fds() <= fds_before + 2 * len(engines) + 2, 10,
         "no growth of open file descriptors")
    assert "Traceback" not in gateway.log(), gateway.log()[-4000:]
    assert re.search(r"\b(ERROR|CRITICAL)\b.*Exception", gateway.log()) is None


def start_engines(model_dir: str, count: int, time_scale: float) -> list[SimEngine]:
    """``count`` simulated engines, started side by side, once all answer /health."""
    started = [SimEngine(model_dir, time_scale=time_scale).start(wait=False)
               for _ in range(count)]
    for engine in started:
        wait_http_ok(f"{engine.url}/health", 60, engine.proc)
    return started
