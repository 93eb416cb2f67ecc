"""Engine servers given by URL (``--worker-urls``) that were not up when the gateway started.

Gateway and engines usually start together, and an engine takes minutes to load, so the
gateway does not wait: it polls each such worker's ``/v1/models`` and takes it into its
model's pool the moment it answers. A worker still silent after ``startup_timeout_s`` is
reported failed (on ``/health`` and in the log) and no longer polled, as the Rust routers
give up on a worker after ``--worker-startup-timeout-secs``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx

from llmserve.openai.background import keep_running

if TYPE_CHECKING:
    from llmserve.lora.settings import LoraSettings

log = logging.getLogger("llmserve.openai")

DEFAULT_STARTUP_TIMEOUT_S = 600.0
# (worker base url, [(adapter id, parent model, root)]) for the adapters a worker lists
AdaptersTaker = Callable[[str, list[tuple[str, str, str]]], None]
POLL_S = 0.5


@dataclass(frozen=True)
class PendingWorkers:
    """Workers to take in once they answer (plain data: it travels to the ingress)."""

    urls: tuple[str, ...] = ()
    engine: str = "vllm"
    routing_config: Mapping[str, Any] = field(default_factory=dict)
    startup_timeout_s: float = DEFAULT_STARTUP_TIMEOUT_S
    model_id: str = ""  # clients' name for the workers' one model ("": their own names)
    # adapters the gateway loads into them on demand (``worker_lora_config``), for a model
    # no worker served at start: its base_model and base_names are filled in at take-in
    lora: LoraSettings | None = None
    # where each pending worker (by base URL) publishes KV-cache events: (endpoint,
    # replay endpoint or None); its subscription starts when it comes up
    kv_events: Mapping[str, tuple[str, str | None]] = field(default_factory=dict)
    api_key: str | None = field(default=None, repr=False)  # the workers demand it


def base_url(url: str) -> str:
    return url.rstrip("/").removesuffix("/v1")


def served_models(data: Any) -> list[str]:
    """Base model ids of a ``/v1/models`` answer (LoRA adapters ride on their base)."""
    cards = data["data"]
    return [str(card["id"]) for card in cards if card.get("parent") is None]


def worker_adapters(data: Any) -> list[tuple[str, str, str]]:
    """(id, parent, root) of the LoRA adapters in a ``/v1/models`` answer."""
    return [(str(card["id"]), str(card["parent"]), str(card.get("root") or ""))
            for card in data["data"] if card.get("parent") is not None]


class WorkerWatch:
    """Polls the pending workers until each answers or its start-up time runs out."""

    def __init__(self, pending: PendingWorkers, client: httpx.AsyncClient,
                 take_in: Callable[[str, str], None],
                 take_in_adapters: AdaptersTaker | None = None) -> None:
        self.pending = pending
        self.client = client
        self.take_in = take_in  # (model_id, worker base url)
        self.take_in_adapters = take_in_adapters  # after take_in: the adapters it lists
        self.not_ready = [base_url(u) for u in pending.urls]
        self.failed: list[str] = []
        self._deadline_s = time.monotonic() + pending.startup_timeout_s
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.not_ready:
            self._task = asyncio.get_running_loop().create_task(self._run())

    def report(self) -> dict[str, list[str]]:
        report = {}
        if self.not_ready:
            report["workers_not_ready"] = list(self.not_ready)
        if self.failed:
            report["workers_failed"] = list(self.failed)
        return report

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        watching = asyncio.ensure_future(keep_running("watching workers", self._poll, POLL_S))
        try:
            while self.not_ready:
                await asyncio.sleep(POLL_S)
        finally:
            watching.cancel()

    async def _poll(self) -> None:
        await asyncio.gather(*(self._try(url) for url in list(self.not_ready)))
        if time.monotonic() >= self._deadline_s:
            self._give_up()

    async def _try(self, url: str) -> None:
        try:
            response = await self.client.get(f"{url}/v1/models", timeout=2.0)
            response.raise_for_status()
            models = served_models(response.json())
            adapters = worker_adapters(response.json())
        except (httpx.HTTPError, ValueError, KeyError, TypeError, AttributeError):
            return  # not up yet
        if url not in self.not_ready:
            return
        self.not_ready.remove(url)
        for model in models:
            self.take_in(model, url)
        if self.take_in_adapters is not None and adapters:
            self.take_in_adapters(url, adapters)
        log.info("worker %s is up, serving %s", url, ", ".join(models) or "nothing")

    def _give_up(self) -> None:
        for url in self.not_ready:
            log.error("worker %s did not come up within %g s; no longer waiting for it",
                      url, self.pending.startup_timeout_s)
        self.failed += self.not_ready
        self.not_ready = []
