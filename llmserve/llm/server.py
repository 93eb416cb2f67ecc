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
from dataclasses import dataclass
from typing import Any

from engines.process import EngineProcess, free_port, kill_group
from engines.protocol import EngineSpec
from engines.registry import make_engine
from llmserve.llm.config import LLMConfig
from llmserve.llm.kv_events_config import EventAddresses, with_kv_events
from llmserve.llm.server_calls import OpenAICalls
from llmserve.serve.context import NODE_IP_ENV

log = logging.getLogger("llmserve.llm")
MAX_RESTARTS_IN_A_ROW = 3


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


class LLMServer(OpenAICalls):
    async def __init__(self, llm_config: LLMConfig) -> None:  # type: ignore[misc]
        from llmserve import serve

        self.config = llm_config
        self.replica_id = serve.get_replica_context().replica_id
        self.engine = make_engine(llm_config.llm_engine)
        self.restarts = 0
        self._failed_restarts = 0
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
        engine_kwargs, self.kv_events = with_kv_events(cfg.llm_engine, cfg.engine_kwargs, host,
                                                       cfg.routing_config)
        return EngineSpec(
            model_source=cfg.model_loading_config.source,
            served_model_name=cfg.model_id,
            host=host,
            port=free_port(host),
            engine_kwargs=engine_kwargs,
            env=env,
            tokenizer_source=cfg.model_loading_config.tokenizer_source,
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
                    return
                await asyncio.sleep(min(30.0, 2.0**self._failed_restarts))
                continue
            self._failed_restarts = 0
            self.restarts += 1

    @property
    def engine_url(self) -> str:
        return self.spec.base_url

    @property
    def served_model_id(self) -> str:
        return self.config.model_id

    async def endpoint(self) -> EngineEndpointInfo:
        return EngineEndpointInfo(self.replica_id, self.config.model_id, self.spec.base_url,
                                  self.engine.name, self.process.is_alive, self.restarts,
                                  self.process.pid, self.kv_events)

    async def check_health(self) -> None:
        if self._supervisor.done():
            raise RuntimeError(
                f"engine for {self.config.model_id!r} is down and could not be restarted"
            )

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
        await self.process.stop()
