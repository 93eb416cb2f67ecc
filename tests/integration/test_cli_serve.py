"""`llmserve serve` as `vllm serve`, end to end on the simulator: MODEL positional,
engine flags as themselves, --served-model-name; --model-id with --worker-urls."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import openai
import pytest
from openai import OpenAI

from benchmarks.cluster_procs import stop, wait_http_ok
from engines.process import free_port
from tests.faults.harness import poll
from tests.fixtures_engines import cached_tiny_model

CHAT = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def model_dir() -> str:
    return str(cached_tiny_model())


@contextmanager
def process(argv: list[str], log: Path, health_url: str | None) -> Iterator[
        subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, *argv], stdout=out, stderr=subprocess.STDOUT)
    try:
        if health_url:
            wait_http_ok(health_url, 120, proc)
        yield proc
    finally:
        stop(proc)


def sim_worker(model_dir: str, log: Path, name: str | None = None,
               ) -> tuple[list[str], str]:
    port = free_port()
    argv = ["-m", "engines.sim", "--model", model_dir, "--port", str(port)]
    if name:
        argv += ["--served-model-name", name]
    return argv, f"http://127.0.0.1:{port}"


def gateway(*args: str) -> tuple[list[str], str]:
    port = free_port()
    return ["-m", "llmserve.cli", "serve", "--port", str(port), *args], \
        f"http://127.0.0.1:{port}"


def test_model_positional_engine_flags_and_served_model_name(
        model_dir: str, tmp_path: Path) -> None:
    argv, url = gateway(model_dir, "--engine", "sim", "--served-model-name", "tiny",
                        "--max-model-len", "64", "--no-enable-prefix-caching")
    with process(argv, tmp_path / "gw.log", f"{url}/health"):
        client = OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
        assert [m.id for m in client.models.list()] == ["tiny"]
        answer = client.chat.completions.create(model="tiny", messages=CHAT,  # type: ignore[arg-type]
                                                max_tokens=4)
        assert answer.choices[0].message.content
        long = [{"role": "user", "content": "word " * 200}]
        with pytest.raises(openai.BadRequestError, match="maximum context length is 64"):
            client.chat.completions.create(model="tiny", messages=long,  # type: ignore[arg-type]
                                           max_tokens=4)


def test_model_id_names_the_workers_model(model_dir: str, tmp_path: Path) -> None:
    worker, worker_url = sim_worker(model_dir, tmp_path / "w.log")  # serves `model_dir`
    late, late_url = sim_worker(model_dir, tmp_path / "late.log")
    argv, url = gateway("--worker-urls", worker_url, late_url, "--model-id", "tiny",
                        "--engine", "sim")
    with process(worker, tmp_path / "w.log", f"{worker_url}/health"), \
            process(argv, tmp_path / "gw.log", f"{url}/-/healthz"):
        wait_http_ok(f"{url}/v1/models", 60)
        client = OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
        assert [m.id for m in client.models.list()] == ["tiny"]
        answer = client.chat.completions.create(model="tiny", messages=CHAT,  # type: ignore[arg-type]
                                                max_tokens=4)
        assert answer.choices[0].message.content
        with process(late, tmp_path / "late.log", f"{late_url}/health"):
            poll(lambda: "workers_not_ready" not in httpx.get(f"{url}/health").json(), 30,
                 "the late worker taken in (under `tiny`)")
            assert [m.id for m in client.models.list()] == ["tiny"]
            with pytest.raises(openai.NotFoundError):  # the workers' own name is not served
                client.chat.completions.create(model=model_dir, messages=CHAT,  # type: ignore[arg-type]
                                               max_tokens=4)
            for _ in range(4):
                client.chat.completions.create(model="tiny", messages=CHAT,  # type: ignore[arg-type]
                                               max_tokens=2)


def test_model_id_over_workers_serving_two_models_is_refused(
        model_dir: str, tmp_path: Path) -> None:
    first, first_url = sim_worker(model_dir, tmp_path / "a.log", name="a")
    second, second_url = sim_worker(model_dir, tmp_path / "b.log", name="b")
    argv, _ = gateway("--worker-urls", first_url, second_url, "--model-id", "tiny",
                      "--engine", "sim")
    with process(first, tmp_path / "a.log", f"{first_url}/health"), \
            process(second, tmp_path / "b.log", f"{second_url}/health"):
        result = subprocess.run([sys.executable, *argv], capture_output=True, text=True,
                                timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "'tiny' is ambiguous: the workers serve ['a', 'b']" in result.stderr
