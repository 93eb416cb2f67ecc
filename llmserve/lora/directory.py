"""Every model's adapters, as the ingress sees them.

Two kinds: adapters the gateway manages (a model's ``lora_config``: it loads them into
replicas on demand) and adapters ``--worker-urls`` engines already serve (listed by their
``/v1/models`` with a ``parent``: requests for one go only to the workers listing it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from prometheus_client import CollectorRegistry

from engines.protocol import Engine
from llmserve.lora.catalog import AdapterEntry
from llmserve.lora.metrics import LoraMetrics, ResidentCounts
from llmserve.lora.model_adapters import ModelAdapters
from llmserve.lora.residency import ReplicaAdapters
from llmserve.lora.settings import LoraSettings


@dataclass(frozen=True)
class WorkerAdapter:
    """An adapter that running engines (``--worker-urls``) list under a base model."""

    adapter_id: str
    base_model: str
    urls: tuple[str, ...]
    root: str = ""


@dataclass(frozen=True)
class AdapterTarget:
    """What a request for an adapter runs on."""

    adapter_id: str
    base_model: str
    entry: AdapterEntry | None = None  # a managed adapter (loaded on demand)
    urls: tuple[str, ...] | None = None  # a worker adapter: only these engines have it


class AdapterDirectory:
    def __init__(self, managed: Mapping[str, tuple[LoraSettings, Engine]],
                 workers: Sequence[WorkerAdapter], client: httpx.AsyncClient,
                 registry: CollectorRegistry, resident: ResidentCounts = tuple) -> None:
        """``resident``: (base model, replica, adapters resident) of the live replicas."""
        self.metrics = LoraMetrics(registry, resident)
        self.models = {base: ModelAdapters(settings, engine, client, self.metrics)
                       for base, (settings, engine) in managed.items()}
        self.workers = {w.adapter_id: w for w in workers}
        self.client = client
        self._starting: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        await asyncio.gather(*(m.start() for m in self.models.values()))

    def add_model(self, settings: LoraSettings, engine: Engine) -> None:
        """A model that came up after the gateway (a late worker) with ``lora_config``:
        its adapters are listed from now on (after a first look at the folder)."""
        if settings.base_model in self.models:
            return
        adapters = ModelAdapters(settings, engine, self.client, self.metrics)
        self.models[settings.base_model] = adapters
        task = asyncio.get_running_loop().create_task(adapters.start())
        self._starting.add(task)
        task.add_done_callback(self._starting.discard)

    async def close(self) -> None:
        for task in list(self._starting):
            task.cancel()
        await asyncio.gather(*self._starting, return_exceptions=True)
        await asyncio.gather(*(m.close() for m in self.models.values()))

    def resolve(self, model: str) -> AdapterTarget | None:
        """The adapter a request's ``model`` names (None: no such adapter; 400: a name
        with path separators or ``..``)."""
        worker = self.workers.get(model)
        if worker is not None:
            return AdapterTarget(model, worker.base_model, urls=worker.urls)
        for adapters in self.models.values():
            entry = adapters.resolve(model)
            if entry is not None:
                return AdapterTarget(model, entry.base_model, entry=entry)
        return None

    def add_worker_adapter(self, adapter_id: str, base_model: str, url: str,
                           root: str = "") -> None:
        """A worker that came up later lists ``adapter_id``: route it there too."""
        known = self.workers.get(adapter_id)
        if known is None:
            self.workers[adapter_id] = WorkerAdapter(adapter_id, base_model, (url,), root)
        elif known.base_model == base_model and url not in known.urls:
            self.workers[adapter_id] = WorkerAdapter(adapter_id, base_model,
                                                     (*known.urls, url), known.root or root)

    def names(self) -> list[str]:
        return sorted([*self.workers, *(e.adapter_id for m in self.models.values()
                                        for e in m.catalog.entries())])

    def cards(self, created: int) -> list[dict[str, Any]]:
        cards = [_card(w.adapter_id, w.base_model, w.root or w.adapter_id, created)
                 for w in self.workers.values()]
        cards += [_card(e.adapter_id, e.base_model, e.location, created)
                  for m in self.models.values() for e in m.catalog.entries()]
        return sorted(cards, key=lambda card: str(card["id"]))

    async def acquire(self, target: AdapterTarget, replica: ReplicaAdapters, url: str, *,
                      count: bool = True) -> bool:
        """Before sending: make a managed adapter resident on the replica (True: a hit);
        ``count``: count the request per adapter (False: the caller counts it)."""
        if target.entry is None:
            return True
        return await self.models[target.base_model].acquire(replica, url, target.entry,
                                                            count=count)

    def count_request(self, target: AdapterTarget, *, hit: bool) -> None:
        if target.entry is not None:
            self.models[target.base_model].count_request(target.adapter_id, hit=hit)

    def release(self, target: AdapterTarget, replica: ReplicaAdapters) -> None:
        if target.entry is not None:
            replica.release(target.adapter_id)


def _card(adapter_id: str, base: str, root: str, created: int) -> dict[str, Any]:
    return {"id": adapter_id, "object": "model", "created": created, "owned_by": "llmserve",
            "root": root, "parent": base}
