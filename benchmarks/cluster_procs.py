"""Subprocesses for cluster benchmarks: simulated engine replicas and the gateway.

The simulator runs on uvloop, which costs less CPU per request on this 2-core machine.
(It once also worked around missing ``TCP_NODELAY`` on the simulator's pre-bound
sockets; ``engines/sim/cluster.py`` now creates them with ``IPPROTO_TCP``.)
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SIM_ON_UVLOOP = ("import sys, uvloop; uvloop.install(); "
                 "from engines.sim.__main__ import main; main(sys.argv[1:])")


def wait_http_ok(url: str, timeout_s: float, proc: subprocess.Popen[Any] | None = None,
                 poll_timeout_s: float = 2.0, poll_s: float = 0.2) -> None:
    """Until ``url`` answers 200 (a server can answer 404 or 503 before its app is up);
    fails early if ``proc`` (the server, when it is a subprocess) exits first."""
    deadline = time.monotonic() + timeout_s
    seen = "nothing"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=poll_timeout_s) as response:
                if response.status == 200:
                    return
                seen = f"status {response.status}"
        except (urllib.error.URLError, OSError) as exc:
            seen = repr(exc)
        time.sleep(poll_s)
    raise TimeoutError(f"{url} did not answer 200 within {timeout_s} s; last: {seen}")


def stop(proc: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _spawn(args: Sequence[str], log_path: Path) -> subprocess.Popen[bytes]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = log_path.open("wb")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=log,
                            stderr=subprocess.STDOUT, env=env)


@contextlib.contextmanager
def sim_cluster(model_dir: str | None, replicas: int, port: int, profile: str,
                time_scale: float, log_path: Path,
                extra: Sequence[str] = ()) -> Iterator[list[str]]:
    """``replicas`` simulated engines on ports ``port..``; yields their base URLs."""
    args = ["-c", SIM_ON_UVLOOP, "--port", str(port), "--replicas", str(replicas),
            "--profile", profile, "--time-scale", str(time_scale), *extra]
    if model_dir:
        args += ["--model", model_dir]
    proc = _spawn(args, log_path)
    urls = [f"http://127.0.0.1:{port + i}" for i in range(replicas)]
    try:
        for url in urls:
            wait_http_ok(f"{url}/health", 60, proc)
        yield urls
    finally:
        stop(proc)


@contextlib.contextmanager
def gateway(worker_urls: Sequence[str], policy: str, port: int,
            log_path: Path) -> Iterator[str]:
    """The llmserve OpenAI gateway fronting running engines; yields its base URL."""
    args = ["-m", "llmserve.cli", "--log-level", "WARNING", "serve", "--port", str(port),
            "--routing", policy, "--worker-urls", *worker_urls]
    with serving(args, log_path, f"http://127.0.0.1:{port}") as url:
        yield url


@contextlib.contextmanager
def serving(args: Sequence[str], log_path: Path, url: str,
            ready_timeout_s: float = 60.0) -> Iterator[str]:
    """Run ``python ARGS`` until the block ends; yields ``url`` once its /v1/models answers."""
    proc = _spawn(args, log_path)
    try:
        wait_http_ok(f"{url}/v1/models", ready_timeout_s, proc)
        yield url
    finally:
        stop(proc)
