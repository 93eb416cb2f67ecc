"""`llmserve bench` on a terminal shows its progress bar; piped, it prints none."""

from __future__ import annotations

import asyncio
import os
import pty
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from engines.sim import ClusterConfig, SimCluster

MODEL = "sim-tiny"


@pytest.fixture
async def cluster() -> AsyncIterator[SimCluster]:
    config = ClusterConfig(served_model_name=MODEL, num_replicas=1, profile="tiny-cpu")
    async with SimCluster(config) as started:
        yield started


def bench_argv(url: str, result_dir: Path) -> list[str]:
    return [sys.executable, "-m", "llmserve.cli", "bench", "--base-url", url, "--workload",
            "random", "--num-requests", "6", "--random-input-len", "16",
            "--random-output-len", "4", "--qps", "50", "--no-plots", "--result-dir",
            str(result_dir), "--max-client-cpu-util", "100"]


def run_on_a_terminal(argv: list[str]) -> tuple[int, str]:
    master, slave = pty.openpty()
    proc = subprocess.Popen(argv, stdout=slave, stderr=subprocess.STDOUT)
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # the terminal closed: the process exited
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    return proc.wait(timeout=120), b"".join(chunks).decode(errors="replace")


async def test_progress_bar_on_a_terminal(cluster: SimCluster, tmp_path: Path) -> None:
    code, out = await asyncio.to_thread(run_on_a_terminal,
                                        bench_argv(cluster.urls[0], tmp_path))
    assert code == 0, out
    assert "\r[" + "#" * 30 + "] 6/6 requests  0 errors" in out


async def test_no_progress_bar_when_piped(cluster: SimCluster, tmp_path: Path) -> None:
    result = await asyncio.to_thread(subprocess.run, bench_argv(cluster.urls[0], tmp_path),
                                     capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "requests  " not in result.stdout
    assert "\r" not in result.stdout
