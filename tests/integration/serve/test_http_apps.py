"""Composed apps over real HTTP (uvicorn) with httpx."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import StreamingResponse

from llmserve import serve

pytestmark = pytest.mark.usefixtures("serve_instance")


@serve.deployment
class Adder:
    def __init__(self, increment: int) -> None:
        self.increment = increment

    def __call__(self, x: int) -> int:  # sync: runs in the thread pool
        return x + self.increment


api = FastAPI()


@serve.deployment(num_replicas=2)
@serve.ingress(api)
class Gateway:
    def __init__(self, adder: serve.DeploymentHandle) -> None:
        self.adder = adder

    @api.get("/add")
    async def add(self, x: int) -> dict[str, int]:
        return {"result": await self.adder.remote(x)}

    @api.get("/stream")
    def stream(self, n: int) -> StreamingResponse:
        return StreamingResponse((f"{i}\n" for i in range(n)), media_type="text/plain")

    @api.post("/echo")
    async def echo(self, body: dict[str, object]) -> dict[str, object]:
        return body


def test_composed_app_over_http_and_handles() -> None:
    handle = serve.run(Gateway.bind(Adder.bind(10)), port=0)
    url = serve.http_url()
    assert httpx.get(f"{url}/add", params={"x": 5}).json() == {"result": 15}
    assert httpx.post(f"{url}/echo", json={"a": [1, 2]}).json() == {"a": [1, 2]}
    assert httpx.get(f"{url}/stream", params={"n": 3}).text == "0\n1\n2\n"
    assert handle.add.remote(1).result(timeout_s=5) == {"result": 11}
    assert httpx.get(f"{url}/add", params={"x": "nan"}).status_code == 422
    assert httpx.get(f"{url}/-/healthz").text == "success"
    st = serve.status().applications["default"]
    assert st.deployments["Gateway"].running_replicas == 2
    assert st.deployments["Adder"].running_replicas == 1


def test_route_prefix_and_unknown_path() -> None:
    serve.run(Gateway.bind(Adder.bind(1)), name="calc", route_prefix="/calc", port=0)
    url = serve.http_url()
    assert httpx.get(f"{url}/calc/add", params={"x": 1}).json() == {"result": 2}
    missing = httpx.get(f"{url}/other")
    assert missing.status_code == 404
    assert "no application serves" in missing.json()["error"]["message"]
    assert httpx.get(f"{url}/-/routes").json() == {"/calc": "calc"}


@serve.deployment
class Plain:
    async def __call__(self, request: object) -> dict[str, str]:
        return {"path": request.url.path}  # type: ignore[attr-defined]


def test_plain_call_ingress_returns_json() -> None:
    serve.run(Plain.bind(), port=0)
    assert httpx.get(f"{serve.http_url()}/x/y").json() == {"path": "/x/y"}


def test_idle_keep_alive_connection_outlives_clients_expiry() -> None:
    """A client that reuses a connection after 6 s idle (past uvicorn's 5 s default, and
    httpx's own 5 s expiry) still finds it open: no "Can not write request body"."""
    serve.run(Plain.bind(), port=0)
    limits = httpx.Limits(keepalive_expiry=30)
    with httpx.Client(limits=limits) as client:
        ports = []
        for pause_s in (6, 0):
            with client.stream("GET", f"{serve.http_url()}/a") as response:
                response.read()
                stream = response.extensions["network_stream"]
                ports.append(stream.get_extra_info("client_addr")[1])
            time.sleep(pause_s)
    assert ports[0] == ports[1]  # the same connection served both


@serve.deployment(max_ongoing_requests=1, max_queued_requests=1)
class Slow:
    async def __call__(self, request: object) -> str:
        await asyncio.sleep(0.5)
        return "done"


def test_back_pressure_is_503_with_retry_after() -> None:
    serve.run(Slow.bind(), port=0)
    url = serve.http_url()
    with ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(lambda _: httpx.get(url, timeout=10), range(4)))
    codes = sorted(r.status_code for r in responses)
    assert codes == [200, 200, 503, 503]
    rejected = next(r for r in responses if r.status_code == 503)
    assert rejected.headers["retry-after"] == "1"
    assert rejected.json()["error"]["code"] == "overloaded"


@serve.deployment
class Streamer:
    async def numbers(self, n: int):  # type: ignore[no-untyped-def]
        for i in range(n):
            yield i

    def letters(self, n: int):  # type: ignore[no-untyped-def]
        yield from "abcdefgh"[:n]


def test_streaming_handle_sync_and_async() -> None:
    handle = serve.run(Streamer.bind(), route_prefix=None)
    stream = handle.options(stream=True)
    assert list(stream.numbers.remote(4)) == [0, 1, 2, 3]
    assert list(stream.letters.remote(3)) == ["a", "b", "c"]

    async def consume() -> list[int]:
        return [x async for x in stream.numbers.remote(3)]

    assert asyncio.run(consume()) == [0, 1, 2]


def test_handle_awaited_from_a_running_event_loop() -> None:
    handle = serve.run(Adder.bind(2), route_prefix=None)

    async def main() -> list[int]:
        return list(await asyncio.gather(*(handle.remote(i) for i in range(5))))

    assert asyncio.run(main()) == [2, 3, 4, 5, 6]


@serve.deployment
class Sleeper:
    def __init__(self) -> None:
        self.cancelled = 0

    async def sleep(self, seconds: float) -> str:
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return "slept"

    def num_cancelled(self) -> int:
        return self.cancelled


def test_cancelling_the_caller_cancels_the_replica_task() -> None:
    handle = serve.run(Sleeper.bind(), route_prefix=None)

    async def main() -> None:
        task = asyncio.ensure_future(handle.sleep.remote(30))
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    deadline = time.monotonic() + 5
    while handle.num_cancelled.remote().result() != 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert handle.num_cancelled.remote().result() == 1
    response = handle.sleep.remote(30)
    response.cancel()
    with pytest.raises(Exception):  # noqa: B017 - cancelled future
        response.result(timeout_s=5)


@serve.deployment(user_config={"greeting": "hi"})
class Greeter:
    def __init__(self) -> None:
        self.greeting = ""
        self.instance_id = id(self)

    def reconfigure(self, config: dict[str, str]) -> None:
        self.greeting = config["greeting"]

    def __call__(self, name: str) -> tuple[str, int]:
        return (f"{self.greeting} {name}", self.instance_id)


def test_user_config_applied_at_start_and_on_change_without_restart() -> None:
    handle = serve.run(Greeter.bind(), route_prefix=None)
    text, first_id = handle.remote("bob").result()
    assert text == "hi bob"
    serve.run(Greeter.options(user_config={"greeting": "hello"}).bind(), route_prefix=None)
    deadline = time.monotonic() + 5
    while handle.remote("bob").result()[0] != "hello bob" and time.monotonic() < deadline:
        time.sleep(0.02)
    text, second_id = handle.remote("bob").result()
    assert text == "hello bob" and second_id == first_id


def test_failing_constructor_fails_serve_run_with_its_error() -> None:
    @serve.deployment
    class Broken:
        def __init__(self) -> None:
            raise RuntimeError("cannot load weights")

    with pytest.raises(RuntimeError, match="cannot load weights"):
        serve.run(Broken.bind(), route_prefix=None)


def test_serve_run_from_inside_a_thread_pool_worker_and_status() -> None:
    results: list[int] = []

    def worker() -> None:
        handle = serve.run(Adder.bind(1), route_prefix=None)
        results.append(handle.remote(41).result())

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join(30)
    assert results == [42]
    assert serve.status().applications["default"].status == "RUNNING"
