"""Engines failing under the gateway (``--worker-urls`` over simulated engines, each its
own process): every client gets its answer or a clear error, and nothing is left behind."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.faults.conftest import gateway_log
from tests.faults.harness import MODEL, Gateway, SimEngine, assert_invariants, poll, start_engines

CHAT = [{"role": "user", "content": "hello"}]
LONG = {"model": MODEL, "messages": CHAT, "max_tokens": 400, "ignore_eos": True}


@pytest.fixture
def cluster(model_dir: str, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[tuple[Gateway, list[SimEngine]]]:
    engines = start_engines(model_dir, 2, time_scale=0.1)
    gateway = Gateway([e.url for e in engines], gateway_log(tmp_path_factory),
                      args=["--routing", "round_robin"])
    try:
        gateway.start()
        yield gateway, engines
    finally:
        gateway.stop()
        for engine in engines:
            engine.stop()


def stream_events(gateway: Gateway, body: dict[str, object], *, read_events: int | None = None,
                  pause_s: float = 0.0) -> list[dict[str, object] | str]:
    """The stream's events as the client reads them (all, or the first ``read_events``)."""
    events: list[dict[str, object] | str] = []
    with httpx.stream("POST", f"{gateway.url}/v1/chat/completions", timeout=60,
                      json={**body, "stream": True}) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            data = line.removeprefix("data: ")
            events.append(data if data == "[DONE]" else json.loads(data))
            if read_events is not None and len(events) >= read_events:
                break
            time.sleep(pause_s)
    return events


def busy_engine(engines: list[SimEngine]) -> SimEngine:
    poll(lambda: any(e.busy() > 0 for e in engines), 10, "an engine runs the request")
    return next(e for e in engines if e.busy() > 0)


def test_engine_killed_mid_stream_ends_the_stream_with_an_error_event(
        cluster: tuple[Gateway, list[SimEngine]]) -> None:
    gateway, engines = cluster
    fds = gateway.open_fds()
    with ThreadPoolExecutor(1) as pool:
        got = pool.submit(stream_events, gateway, LONG)
        victim = busy_engine(engines)
        time.sleep(0.3)  # a few tokens are out
        victim.kill()
        events = got.result(timeout=30)
    assert events[-1] == "[DONE]"
    error = events[-2]
    assert isinstance(error, dict) and error["error"]["code"] == "bad_gateway"  # type: ignore[index]
    assert all(isinstance(e, dict) and "choices" in e for e in events[:-2])
    assert_invariants(gateway, engines, fds)
    for _ in range(4):  # the survivor serves everything now
        answer = httpx.post(f"{gateway.url}/v1/chat/completions", timeout=30,
                            json={"model": MODEL, "messages": CHAT, "max_tokens": 2})
        assert answer.status_code == 200


def test_engine_killed_mid_prefill_is_a_clear_502_not_replayed(
        cluster: tuple[Gateway, list[SimEngine]]) -> None:
    gateway, engines = cluster
    fds = gateway.open_fds()
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(httpx.post, f"{gateway.url}/v1/chat/completions", timeout=30,
                             json=LONG)
        victim = busy_engine(engines)
        victim.kill()
        response = answer.result(timeout=30)
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "bad_gateway"
    survivor = next(e for e in engines if e is not victim)
    assert survivor.busy() == 0  # not replayed onto the other engine
    assert_invariants(gateway, engines, fds)


def test_replica_killed_under_load_only_its_requests_fail(
        cluster: tuple[Gateway, list[SimEngine]]) -> None:
    gateway, engines = cluster
    fds = gateway.open_fds()
    body = {**LONG, "max_tokens": 60}
    with ThreadPoolExecutor(8) as pool:
        streams = [pool.submit(stream_events, gateway, body) for _ in range(8)]
        poll(lambda: all(e.busy() >= 2 for e in engines), 10, "both engines loaded")
        engines[0].kill()
        results = [s.result(timeout=60) for s in streams]
    failed = [r for r in results if isinstance(r[-2], dict) and "error" in r[-2]]
    completed = [r for r in results if r not in failed]
    assert all(r[-1] == "[DONE]" for r in results)  # every stream ended, none hung
    assert 1 <= len(failed) <= 4 and len(completed) >= 4
    assert_invariants(gateway, engines, fds)


def test_streaming_client_leaving_aborts_the_engine_request(
        cluster: tuple[Gateway, list[SimEngine]]) -> None:
    gateway, engines = cluster
    fds = gateway.open_fds()
    events = stream_events(gateway, LONG, read_events=3)
    assert len(events) == 3
    poll(lambda: sum(e.busy() for e in engines) == 0, 3, "the engine request is aborted")
    assert_invariants(gateway, engines, fds)


def test_slow_reading_client_gets_the_whole_stream(
        cluster: tuple[Gateway, list[SimEngine]]) -> None:
    gateway, engines = cluster
    fds = gateway.open_fds()
    events = stream_events(gateway, {**LONG, "max_tokens": 40}, pause_s=0.05)
    assert events[-1] == "[DONE]"
    assert all(isinstance(e, dict) and "error" not in e for e in events[:-1])
    assert_invariants(gateway, engines, fds)
