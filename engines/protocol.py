"""What the gateway needs to know about an engine: how to launch it, when it is ready,
how to read its stats and how to load or unload a LoRA adapter.

An engine is an OpenAI-compatible HTTP server in its own process (vLLM's, SGLang's,
or the simulator's). :class:`EngineSpec` says what to run, :class:`Engine` turns it
into a command line and environment, and :class:`EngineStats` is what its
``/metrics`` says about load. Nothing here imports an engine's own packages.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import httpx


class EngineError(Exception):
    """Base class of the engine layer's errors."""


class EngineStartError(EngineError):
    """The engine process exited or did not become healthy in time. The message is one line
    (the log's last line and its path); ``log_tail`` holds the last lines of the log."""

    def __init__(self, message: str, *, log_path: str = "", log_tail: str = "") -> None:
        super().__init__(message)
        self.log_path = log_path
        self.log_tail = log_tail


class LoraAdapterError(EngineError):
    """The engine refused to load or unload a LoRA adapter."""

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


@dataclass(frozen=True)
class EngineSpec:
    """One engine server to launch.

    ``engine_kwargs`` become command-line flags unchanged (see :func:`render_flags`);
    ``lora_modules`` maps adapter name to path and is loaded at start-up;
    ``python_executable`` lets an engine run from its own virtual environment;
    ``env`` is added to (and overrides) the gateway's own environment;
    ``api_key``, when set, is the secret the server demands on its API (each engine passes
    it its own way, never on the command line); it is left out of ``repr``.
    """

    model_source: str
    served_model_name: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    engine_kwargs: Mapping[str, Any] = field(default_factory=dict)
    python_executable: str = field(default_factory=lambda: sys.executable)
    env: Mapping[str, str] = field(default_factory=dict)
    tokenizer_source: str | None = None
    lora_modules: Mapping[str, str] = field(default_factory=dict)
    api_key: str | None = field(default=None, repr=False)

    @property
    def model_name(self) -> str:
        """The name clients use in ``model``."""
        return self.served_model_name or self.model_source

    @property
    def base_url(self) -> str:
        """``http://host:port`` of the server, without ``/v1``."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"http://{host}:{self.port}"


@dataclass(frozen=True)
class EngineStats:
    """A snapshot of an engine's load, read from its ``/metrics``.

    ``prefix_cache_queries``/``prefix_cache_hits`` are cumulative token counters;
    engines that only export a ratio set ``reported_hit_rate`` instead.
    ``running_lora_adapters``/``waiting_lora_adapters`` name the adapters the
    engine's requests use right now, when it exports that.
    """

    num_running: int = 0
    num_waiting: int = 0
    kv_cache_usage: float = 0.0
    prefix_cache_queries: int = 0
    prefix_cache_hits: int = 0
    reported_hit_rate: float | None = None
    running_lora_adapters: tuple[str, ...] = ()
    waiting_lora_adapters: tuple[str, ...] = ()

    @property
    def prefix_cache_hit_rate(self) -> float:
        if self.reported_hit_rate is not None:
            return self.reported_hit_rate
        if self.prefix_cache_queries <= 0:
            return 0.0
        return self.prefix_cache_hits / self.prefix_cache_queries

    def as_mapping(self) -> dict[str, float]:
        """The numeric fields, e.g. for ``routing.policy.Candidate.stats``."""
        return {
            "num_running": float(self.num_running),
            "num_waiting": float(self.num_waiting),
            "kv_cache_usage": self.kv_cache_usage,
            "prefix_cache_queries": float(self.prefix_cache_queries),
            "prefix_cache_hits": float(self.prefix_cache_hits),
            "prefix_cache_hit_rate": self.prefix_cache_hit_rate,
        }


@runtime_checkable
class Engine(Protocol):
    """How one kind of engine server is launched, watched and driven."""

    name: str
    health_path: str
    metrics_path: str

    def command(self, spec: EngineSpec) -> list[str]:
        """The argv that starts the server described by ``spec``."""
        ...

    def env(self, spec: EngineSpec) -> dict[str, str]:
        """The full environment of the server process."""
        ...

    def parse_stats(self, metrics_text: str) -> EngineStats:
        """Read a Prometheus text exposition of the server's ``/metrics``."""
        ...

    async def load_lora(
        self, client: httpx.AsyncClient, base_url: str, name: str, path: str
    ) -> None:
        """Load adapter ``path`` under ``name``; raise :class:`LoraAdapterError` if refused."""
        ...

    async def unload_lora(self, client: httpx.AsyncClient, base_url: str, name: str) -> None:
        """Unload adapter ``name``; raise :class:`LoraAdapterError` if refused."""
        ...


def render_flags(
    kwargs: Mapping[str, Any],
    *,
    negate_false: bool = True,
    store_true_only: Collection[str] = (),
    repeated: Collection[str] = (),
) -> list[str]:
    """Turn ``engine_kwargs`` into command-line flags, the way ``vllm serve`` reads them.

    ``max_model_len=1024`` -> ``--max-model-len 1024`` (``_`` and ``-`` both accepted);
    ``True`` -> bare flag; ``False`` -> ``--no-<flag>`` (argparse's
    ``BooleanOptionalAction``) unless ``negate_false`` is off or the flag is in
    ``store_true_only``, then omitted; ``None`` -> omitted; a list or tuple ->
    ``--flag a b`` or, for names in ``repeated``, ``--flag a --flag b``; a dict ->
    ``--flag '<json>'``.
    """
    argv: list[str] = []
    for key, value in kwargs.items():
        name = key.replace("_", "-").lstrip("-")
        flag = f"--{name}"
        if value is None:
            continue
        if value is True:
            argv.append(flag)
        elif value is False:
            if negate_false and name not in store_true_only:
                argv.append(f"--no-{name}")
        elif isinstance(value, Mapping):
            argv += [flag, json.dumps(dict(value), separators=(",", ":"))]
        elif isinstance(value, list | tuple | set | frozenset):
            items = [_flag_value(item) for item in value]
            if name in repeated:
                for item in items:
                    argv += [flag, item]
            elif items:
                argv += [flag, *items]
        else:
            argv += [flag, _flag_value(value)]
    return argv


def _flag_value(value: Any) -> str:
    if isinstance(value, Mapping):
        return json.dumps(dict(value), separators=(",", ":"))
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def flag_names(kwargs: Mapping[str, Any]) -> set[str]:
    """The dashed flag names set in ``kwargs`` (``enable_lora`` -> ``enable-lora``)."""
    return {key.replace("_", "-").lstrip("-") for key in kwargs}


async def post_adapter_request(
    client: httpx.AsyncClient, url: str, payload: Mapping[str, Any], *, timeout_s: float = 120.0
) -> None:
    """POST a LoRA load/unload request; raise :class:`LoraAdapterError` unless it is 2xx."""
    try:
        response = await client.post(url, json=dict(payload), timeout=timeout_s)
    except httpx.HTTPError as error:
        raise LoraAdapterError(f"{url}: {error!r}") from error
    if response.is_success:
        return
    raise LoraAdapterError(
        f"{url} answered {response.status_code}: {response.text[:500]}",
        status_code=response.status_code,
    )
