"""Routers under test as subprocesses: the llmserve gateway and the Rust vllm-router."""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks.cluster_procs import serving

VLLM_ROUTER = Path(sys.executable).parent / "vllm-router"


def vllm_router_binary() -> str | None:
    if VLLM_ROUTER.exists():
        return str(VLLM_ROUTER)
    return shutil.which("vllm-router")


@contextlib.contextmanager
def llmserve_gateway(worker_urls: Sequence[str], routing_config: Mapping[str, Any], port: int,
                     log_path: Path, kv_events: Sequence[str] = (),
                     ready_timeout_s: float = 60.0) -> Iterator[str]:
    """``kv_events``: each worker's KV-event endpoints (``--worker-kv-events``), or none."""
    args = ["-m", "llmserve.cli", "--log-level", "WARNING", "serve", "--port", str(port),
            "--routing-config", json.dumps(dict(routing_config)), "--worker-urls", *worker_urls]
    if kv_events:
        args += ["--worker-kv-events", *kv_events]
    with serving(args, log_path, f"http://127.0.0.1:{port}", ready_timeout_s) as url:
        yield url


@contextlib.contextmanager
def vllm_router(worker_urls: Sequence[str], policy: str, port: int,
                log_path: Path, prometheus_port: int | None = None) -> Iterator[str]:
    """``vllm-router --policy POLICY`` with its default thresholds (its metrics on
    ``prometheus_port``, by default vllm-router's 29000: give several instances their own)."""
    binary = vllm_router_binary()
    if binary is None:
        raise RuntimeError("vllm-router is not installed (pip install vllm-router)")
    args = ["-c", "import sys; from vllm_router.launch_router import main; "
            "sys.argv[0] = 'vllm-router'; sys.exit(main())",
            "--host", "127.0.0.1", "--port", str(port), "--policy", policy,
            "--log-level", "warning", "--worker-urls", *worker_urls]
    if prometheus_port is not None:
        args += ["--prometheus-port", str(prometheus_port)]
    with serving(args, log_path, f"http://127.0.0.1:{port}") as url:
        yield url
