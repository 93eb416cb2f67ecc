"""One base model's adapters at the gateway: look-up, fetch, check and per-replica loading.

:meth:`ModelAdapters.acquire` runs before a request is sent to a replica: it makes the
adapter's files local (a download from S3 happens once, whichever replicas want it;
``max_download_tries`` attempts of ``download_timeout_s`` each, then 503), checks them
once (rank, base model, readable config and weights: 400 naming the reason) and loads
the adapter into the replica's engine if it is not resident there (see
:mod:`llmserve.lora.residency`). :meth:`release` runs when the request ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path

import httpx

from engines.protocol import Engine, LoraAdapterError
from llmserve.lora.adapter_files import AdapterFacts, check_fits, inspect_adapter
from llmserve.lora.catalog import AdapterCatalog, AdapterEntry
from llmserve.lora.errors import AdapterUnavailable, InvalidAdapter
from llmserve.lora.folder import AdapterFolderError, open_folder
from llmserve.lora.metrics import LoraMetrics
from llmserve.lora.names import check_adapter_name
from llmserve.lora.residency import ReplicaAdapters
from llmserve.lora.settings import LoraSettings

log = logging.getLogger("llmserve.lora")
UNREACHABLE = (None, 502, 503, 504)  # engine load answers that mean "retry later"


class ModelAdapters:
    def __init__(self, settings: LoraSettings, engine: Engine, client: httpx.AsyncClient,
                 metrics: LoraMetrics, slot_wait_s: float = 60.0) -> None:
        self.settings = settings
        self.engine = engine
        self.client = client
        self.metrics = metrics
        self.slot_wait_s = slot_wait_s
        folder = (open_folder(settings.dynamic_path, settings.cache_dir)
                  if settings.dynamic_path else None)
        self.catalog = AdapterCatalog(settings.base_model, folder, settings.static,
                                      settings.refresh_s)
        self._fetching: dict[str, asyncio.Task[Path]] = {}
        self._checked: dict[str, tuple[tuple[float, ...], AdapterFacts]] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        try:
            await self.catalog.refresh()
        except AdapterFolderError as exc:
            log.warning("adapters of %r: %s", self.settings.base_model, exc)
        self._task = asyncio.get_running_loop().create_task(self.catalog.run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def resolve(self, adapter_id: str) -> AdapterEntry | None:
        """The adapter ``adapter_id`` names, or None; 400 for names that could escape."""
        entry = self.catalog.get(adapter_id)
        if entry is None:
            prefix = f"{self.settings.base_model}:"
            if adapter_id.startswith(prefix):
                check_adapter_name(adapter_id.removeprefix(prefix))
        return entry

    # ---- per request -----------------------------------------------------------------
    async def acquire(self, replica: ReplicaAdapters, url: str, entry: AdapterEntry, *,
                      count: bool = True) -> bool:
        """Make ``entry`` resident on the replica for one request; True if it was a hit.
        ``count``: count the request in ``llmserve_lora_requests`` (a prefill/decode
        request holds its adapter on two replicas and is counted once, by its caller)."""
        adapter_id = entry.adapter_id
        if adapter_id in replica.resident:
            missed = await replica.acquire(adapter_id, self.settings.max_per_replica,
                                           _never, self._unloader(url), wait_s=0.0)
        else:
            started = time.monotonic()
            try:
                path = await self._ready_files(entry)
                missed = await replica.acquire(
                    adapter_id, self.settings.max_per_replica,
                    lambda: self._load(url, adapter_id, path), self._unloader(url),
                    wait_s=self.slot_wait_s,
                    on_evict=lambda name: self.metrics.evictions.labels(name).inc())
            except (InvalidAdapter, AdapterUnavailable):
                self.metrics.load_failures.labels(adapter_id).inc()
                raise
            if missed:
                self.metrics.load_seconds.labels(adapter_id).observe(
                    time.monotonic() - started)
        if count:
            self.count_request(adapter_id, hit=not missed)
        return not missed

    def count_request(self, adapter_id: str, *, hit: bool) -> None:
        self.metrics.requests.labels(adapter_id, "true" if hit else "false").inc()

    async def _load(self, url: str, adapter_id: str, path: Path) -> None:
        try:
            await self.engine.load_lora(self.client, url, adapter_id, str(path))
        except LoraAdapterError as exc:
            if exc.status_code in UNREACHABLE:
                raise AdapterUnavailable(f"could not load adapter `{adapter_id}` into the "
                                         f"engine: {exc}", retry_after_s=1.0) from None
            raise InvalidAdapter(f"the engine refused adapter `{adapter_id}`: {exc}",
                                 param="model") from None
        self.metrics.loads.labels(adapter_id).inc()

    def _unloader(self, url: str) -> Unloader:
        return Unloader(self.engine, self.client, url)

    # ---- files -----------------------------------------------------------------------
    async def _ready_files(self, entry: AdapterEntry) -> Path:
        """The adapter's local folder, fetched and checked; one task per adapter at a time
        (concurrent first requests share it, and its error)."""
        task = self._fetching.get(entry.adapter_id)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._fetch_and_check(entry))
            self._fetching[entry.adapter_id] = task
            task.add_done_callback(lambda _: self._fetching.pop(entry.adapter_id, None))
        return await asyncio.shield(task)

    async def _fetch_and_check(self, entry: AdapterEntry) -> Path:
        path = await self._fetch(entry)
        await self._check(entry, path)
        return path

    async def _fetch(self, entry: AdapterEntry) -> Path:
        if entry.static or not self.catalog.is_remote:  # a local folder: read in place
            try:
                return self.catalog.local_copy(entry)[0]
            except AdapterFolderError as exc:
                raise InvalidAdapter(str(exc), param="model") from None
        tries = self.settings.max_download_tries
        timeout_s = self.settings.download_timeout_s
        reason = ""
        for attempt in range(1, tries + 1):
            try:
                path, downloaded = await asyncio.wait_for(
                    asyncio.to_thread(self.catalog.local_copy, entry), timeout_s)
                if downloaded:
                    self.metrics.downloads.labels(entry.adapter_id).inc()
                return path
            except TimeoutError:
                reason = f"timed out after {timeout_s:g} s"
            except AdapterFolderError as exc:
                reason = str(exc)
            log.warning("fetching adapter %s, try %d/%d: %s", entry.adapter_id, attempt,
                        tries, reason)
        raise AdapterUnavailable(f"could not fetch adapter `{entry.adapter_id}` after "
                                 f"{tries} tries: {reason}", retry_after_s=5.0)

    async def _check(self, entry: AdapterEntry, path: Path) -> None:
        stamp = _stamp(path)
        known = self._checked.get(entry.adapter_id)
        if known is not None and known[0] == stamp:
            facts = known[1]
        else:
            facts = await asyncio.to_thread(inspect_adapter, entry.adapter_id, path)
            self._checked[entry.adapter_id] = (stamp, facts)
        check_fits(entry.adapter_id, facts, self.settings.max_rank or 1 << 30,
                   self.settings.base_names)


class Unloader:
    """Unloads an evicted adapter from one engine; an adapter it no longer has is fine."""

    def __init__(self, engine: Engine, client: httpx.AsyncClient, url: str) -> None:
        self.engine, self.client, self.url = engine, client, url

    async def __call__(self, adapter_id: str) -> None:
        try:
            await self.engine.unload_lora(self.client, self.url, adapter_id)
        except LoraAdapterError as exc:
            if exc.status_code != 404:
                log.warning("unloading adapter %s from %s: %s", adapter_id, self.url, exc)


async def _never() -> None:
    raise AssertionError("a resident adapter is not loaded again")


def _stamp(path: Path) -> tuple[float, ...]:
    """When the adapter's files last changed (to check them again after a change)."""
    stamps: list[float] = []
    for child in sorted(path.iterdir()) if path.is_dir() else []:
        with contextlib.suppress(OSError):
            stamps.append(child.stat().st_mtime_ns)
    return tuple(stamps)
