"""`LLMServer`: a deployment whose replicas each supervise one engine server process.

The replica launches the engine (vLLM, SGLang or the simulator) with the model and
``engine_kwargs``, waits for it to be healthy, reports its URL to the ingress, restarts
it when it dies and stops it when the replica stops. Requests do not pass through here:
the ingress talks HTTP straight to the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any

import httpx

from engines.process import EngineProcess, free_port, kill_group
from engines.protocol import EngineSpec
from engines.registry import make_engine
from llmserve.llm.config import LLMConfig
from llmserve.llm.engine_secret import choose_engine_key, without_key
from llmserve.llm.kv_events_config import EventAddresses, with_kv_events
from llmserve.llm.server_calls import OpenAICalls
from llmserve.serve.context import NODE_IP_ENV

log = logging.getLogger("llmserve.llm")
MAX_RESTARTS_IN_A_ROW = 3
# An engine alive but not answering its /health this many health checks in a row (each
# given ENGINE_PROBE_TIMEOUT_S) is hung: the replica reports itself unhealthy and is
# replaced with a new engine.
ENGINE_PROBE_FAILURES = 3
ENGINE_PROBE_TIMEOUT_S = 5.0
DEFAULT_GRACEFUL_SHUTDOWN_S = 60.0  # as build_llm_deployment sets it
ENGINE_STOP_MARGIN_S = 5.0  # of the graceful timeout, kept for stopping the engine
DRAIN_POLL_S = 0.2


@dataclass(frozen=True)
class EngineEndpointInfo:
    """What a replica tells the ingress about its engine (plain, picklable data)."""

    replica_id: str
    model_id: str
    url: str
    engine: str
    ready: bool
    restarts: int
    pid: int | None = None
    kv_events: EventAddresses | None = None  # where the engine publishes KV-cache events
    api_key: str | None = field(default=None, repr=False)  # the engine demands it


class LLMServer(OpenAICalls):
    async def __init__(self, llm_config: LLMConfig) -> None:  # type: ignore[misc]
        from llmserve import serve

        self.config = llm_config.with_lora_enabled()
        self.replica_id = serve.get_replica_context().replica_id
        self.engine = make_engine(llm_config.llm_engine)
        # the engine's secret, the same for every engine this replica starts
        self.api_key = choose_engine_key(self.config.runtime_env.env_vars,
                                         self.config.engine_kwargs)
        self.restarts = 0
        self._failed_restarts = 0
        self._unanswered_probes = 0
        self._stopping = True  # until the engine runs, there is nothing to stop
        self.process = await self._launch()
        self._stopping = False
        self._supervisor = asyncio.get_running_loop().create_task(self._supervise())

    def _spec(self) -> EngineSpec:
        cfg = self.config
        env = dict(cfg.runtime_env.env_vars)
        kwargs: dict[str, Any] = {"python_executable": cfg.runtime_env.python} \
            if cfg.runtime_env.python else {}
        host = os.environ.get(NODE_IP_ENV, "127.0.0.1")  # reachable from the ingress
        engine_kwargs, self.kv_events = with_kv_events(cfg.llm_engine,
                                                       without_key(cfg.engine_kwargs), host,
                                                       cfg.routing_config)
        return EngineSpec(
            model_source=cfg.model_loading_config.source,
            served_model_name=cfg.model_id,
            host=host,
            port=free_port(host),
            engine_kwargs=engine_kwargs,
            env=env,
            tokenizer_source=cfg.model_loading_config.tokenizer_source,
            api_key=self.api_key,
            **kwargs,
        )

    async def _launch(self) -> EngineProcess:
        spec = self._spec()
        started = time.monotonic()
        log.info("%s: starting %s engine for %r on %s", self.replica_id, self.engine.name,
                 self.config.model_id, spec.base_url)
        process = await EngineProcess.launch(self.engine, spec,
                                             ready_timeout_s=self.config.engine_ready_timeout_s)
        log.info("%s: engine ready in %.1f s", self.replica_id, time.monotonic() - started)
        self.spec = spec  # report the new address only once the engine answers there
        return process

    async def _supervise(self) -> None:
        while not self._stopping:
            try:
                if not await self._restart_when_it_exits():
                    return
            except Exception:  # a bug in one round must not leave the engine unwatched
                log.exception("%s: engine supervisor failed; watching again", self.replica_id)
                await asyncio.sleep(1.0)

    async def _restart_when_it_exits(self) -> bool:
        """Wait for the engine to exit and restart it; False: stop supervising."""
        while not self._stopping:
            code = await self.process.wait()
            if self._stopping:
                return
            log.error("%s: engine exited with code %s; restarting. Last log lines:\n%s",
                      self.replica_id, code, self.process.log_tail(20))
            try:
                self.process = await self._launch()
            except Exception as exc:
                self._failed_restarts += 1
                log.error("%s: engine restart failed (%d in a row): %s", self.replica_id,
                          self._failed_restarts, exc)
                if self._failed_restarts >= MAX_RESTARTS_IN_A_ROW:
                    return False
                await asyncio.sleep(min(30.0, 2.0**self._failed_restarts))
                continue
            self._failed_restarts = 0
            self._unanswered_probes = 0
            self.restarts += 1
        return False

    @property
    def engine_url(self) -> str:
        return self.spec.base_url

    @property
    def served_model_id(self) -> str:
        return self.config.model_id

    @property
    def engine_api_key(self) -> str | None:
        return self.api_key

    async def endpoint(self) -> EngineEndpointInfo:
        return EngineEndpointInfo(self.replica_id, self.config.model_id, self.spec.base_url,
                                  self.engine.name, self.process.is_alive, self.restarts,
                                  self.process.pid, self.kv_events, self.api_key)

    async def check_health(self) -> None:
        if self._supervisor.done():
            raise RuntimeError(
                f"engine for {self.config.model_id!r} is down and could not be restarted"
            )
        if not self.process.is_alive:
            return  # exited: the supervisor is restarting it
        if await _answers(self.spec.base_url + "/health", ENGINE_PROBE_TIMEOUT_S):
            self._unanswered_probes = 0
            return
        self._unanswered_probes += 1
        log.warning("%s: engine did not answer /health within %g s (%d in a row)",
                    self.replica_id, ENGINE_PROBE_TIMEOUT_S, self._unanswered_probes)
        if self._unanswered_probes >= ENGINE_PROBE_FAILURES:
            raise RuntimeError(
                f"engine for {self.config.model_id!r} is running but has not answered "
                f"/health {self._unanswered_probes} times in a row (hung)")

    def __del__(self) -> Awaitable[None] | None:
        """Called by the runtime when the replica stops (awaited); also safe at collection."""
        if self._stopping or not hasattr(self, "process"):
            return None
        self._stopping = True
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # collected outside the serving loop: stop synchronously
            if self.process.pid is not None:
                kill_group(self.process.pid, signal.SIGKILL)
            return None
        return self._stop()

    async def _stop(self) -> None:
        self._supervisor.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._supervisor
        await self._drain()
        await self.process.stop()

    async def _drain(self) -> None:
        """Let the engine finish what it runs (the ingress sends it nothing new once this
        replica stops), up to the deployment's graceful shutdown timeout less a margin
        for stopping the engine itself. Requests never pass through this replica, so the
        serving core sees none ongoing: the engine's own counts are the load."""
        timeout_s = float(self.config.deployment_config.get(
            "graceful_shutdown_timeout_s", DEFAULT_GRACEFUL_SHUTDOWN_S))
        deadline = time.monotonic() + max(0.0, timeout_s - ENGINE_STOP_MARGIN_S)
        busy = await self._engine_load()
        if busy:
            log.info("%s: draining %d engine requests before stopping", self.replica_id, busy)
        while busy and time.monotonic() < deadline:
            await asyncio.sleep(DRAIN_POLL_S)
            busy = await self._engine_load()
        if busy:
            log.warning("%s: stopping the engine with %d requests still running (graceful "
                        "shutdown timeout)", self.replica_id, busy)

    async def _engine_load(self) -> int:
        """Requests the engine runs or queues; 0 when it cannot tell (not answering)."""
        if not self.process.is_alive:
            return 0
        try:
            async with httpx.AsyncClient(trust_env=False, timeout=2.0) as client:
                response = await client.get(self.spec.base_url + self.engine.metrics_path)
            stats = self.engine.parse_stats(response.text)
        except (httpx.HTTPError, ValueError):
            return 0
        return int(stats.num_running + stats.num_waiting)


async def _answers(url: str, timeout_s: float) -> bool:
    try:
        async with httpx.AsyncClient(trust_env=False, timeout=timeout_s) as client:
            return (await client.get(url)).status_code == 200
    except httpx.HTTPError:
        return False
