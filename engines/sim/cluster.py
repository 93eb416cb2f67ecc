"""Many simulated replicas in one process: one asyncio loop, one uvicorn server per replica."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import TracebackType

import uvicorn

from engines.sim.clock import Clock, ScaledClock
from engines.sim.engine import EngineConfig
from engines.sim.event_publisher import KVEventsConfig, ZmqEventPublisher
from engines.sim.kv_transfer import KVTransferConfig
from engines.sim.profiles import DEFAULT_PROFILE, get_profile
from engines.sim.replica import ReplicaConfig, SimReplica
from engines.sim.server import build_app
from engines.sim.tokenizer import Tokenizer, load_tokenizer

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClusterConfig:
    model_dir: str | None = None
    num_replicas: int = 1
    host: str = "127.0.0.1"
    port: int = 0  # first port; 0 picks a free port per replica
    profile: str = DEFAULT_PROFILE
    kv_blocks: int | None = None  # default: the profile's
    block_size: int = 16
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    max_model_len: int = 8192
    max_loras: int = 4
    lora_modules: tuple[tuple[str, str], ...] = ()  # (name, path) registered at start
    time_scale: float = 1.0
    served_model_name: str | None = None
    enable_prefix_caching: bool = True
    log_level: str = "warning"
    kv_events_config: str | None = None  # vLLM's JSON; replica k publishes on ports + k
    kv_transfer_config: str | None = None  # vLLM's JSON (engines/sim/kv_transfer.py)

    @property
    def kv_transfer(self) -> KVTransferConfig | None:
        return KVTransferConfig.from_json(self.kv_transfer_config)
    api_key: str | None = field(default=None, repr=False)  # demanded as vLLM's VLLM_API_KEY

    @property
    def kv_events(self) -> KVEventsConfig | None:
        if self.kv_events_config is None:
            return None
        config = KVEventsConfig.from_json(self.kv_events_config)
        return config if config.enabled else None

    @property
    def model_name(self) -> str:
        return self.served_model_name or self.model_dir or "sim-model"

    def engine_config(self) -> EngineConfig:
        profile = get_profile(self.profile)
        return EngineConfig(
            profile=profile,
            num_blocks=self.kv_blocks or profile.kv_blocks,
            block_size=self.block_size,
            max_num_seqs=self.max_num_seqs or profile.max_num_seqs,
            max_num_batched_tokens=self.max_num_batched_tokens or profile.max_num_batched_tokens,
            max_model_len=self.max_model_len,
            max_loras=self.max_loras,
            enable_prefix_caching=self.enable_prefix_caching,
        )


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signals to the cluster (several share one loop)."""

    def install_signal_handlers(self) -> None:
        return None

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY on accepted connections only when
    # the listening socket says so; without it Nagle + delayed ACK stall small SSE writes.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


class SimCluster:
    """Start with ``await cluster.start()`` (or ``async with``); ``urls`` lists the replicas."""

    def __init__(
        self,
        config: ClusterConfig,
        tokenizer: Tokenizer | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.config = config
        self.tokenizer = tokenizer or load_tokenizer(config.model_dir)
        self.clock = clock or ScaledClock(config.time_scale)
        self.replicas: list[SimReplica] = []
        self._servers: list[_Server] = []
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def urls(self) -> list[str]:
        host = self.config.host
        shown = f"[{host}]" if ":" in host else host
        return [f"http://{shown}:{replica.port}" for replica in self.replicas]

    async def start(self) -> None:
        _ = self.tokenizer.word_token_ids  # build the output vocabulary once, up front
        engine = self.config.engine_config()
        events = self.config.kv_events
        kv_transfer = self.config.kv_transfer
        if kv_transfer is not None:
            kv_transfer.warn_deprecated()
        for index in range(self.config.num_replicas):
            port = self.config.port + index if self.config.port else 0
            sock = _bind(self.config.host, port)
            publisher = None
            if events is not None:
                publisher = ZmqEventPublisher(events.for_replica(index))
                publisher.start()
            replica = SimReplica(
                ReplicaConfig(
                    served_model_name=self.config.model_name,
                    engine=engine,
                    model_path=self.config.model_dir or "",
                    host=self.config.host,
                    port=sock.getsockname()[1],
                    kv_transfer=kv_transfer,
                ),
                self.tokenizer,
                self.clock,
                publisher,
            )
            server = _Server(
                uvicorn.Config(
                    build_app(replica, self.config.api_key),
                    log_level=self.config.log_level,
                    access_log=False,
                    lifespan="on",
                    timeout_graceful_shutdown=1,
                )
            )
            for name, path in self.config.lora_modules:
                replica.load_lora(name, path)
            self.replicas.append(replica)
            self._servers.append(server)
            self._tasks.append(asyncio.create_task(server.serve(sockets=[sock])))
        await self._wait_started()

    async def _wait_started(self) -> None:
        while not all(server.started for server in self._servers):
            failed = [task for task in self._tasks if task.done()]
            if failed:
                await self.stop()
                raise RuntimeError("a simulated replica failed to start") from failed[0].exception()
            await asyncio.sleep(0.01)

    async def wait(self) -> None:
        """Until every server has exited (e.g. after :meth:`request_stop`)."""
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def request_stop(self) -> None:
        for server in self._servers:
            server.should_exit = True

    async def stop(self) -> None:
        self.request_stop()
        await self.wait()
        for replica in self.replicas:
            await replica.engine.stop()
            if replica.publisher is not None:
                await replica.publisher.close()

    async def __aenter__(self) -> SimCluster:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


async def start_cluster(config: ClusterConfig | None = None, **overrides: object) -> SimCluster:
    """Start a cluster from a config and/or keyword overrides (``num_replicas=4``...)."""
    from dataclasses import replace

    base = config or ClusterConfig()
    cluster = SimCluster(replace(base, **overrides))  # type: ignore[arg-type]
    await cluster.start()
    return cluster
