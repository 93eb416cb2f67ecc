"""The adapters one base model offers: a folder's subfolders plus static ``NAME=PATH``s.

The folder is listed again every ``refresh_s`` (by :meth:`AdapterCatalog.run`), so
adapters added to or removed from it show up in ``/v1/models`` without a restart.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from llmserve.lora.folder import AdapterFolder, AdapterFolderError, LocalFolder
from llmserve.lora.names import check_adapter_name, public_id

log = logging.getLogger("llmserve.lora")


@dataclass(frozen=True)
class AdapterEntry:
    """One adapter: ``adapter_id`` is what clients send (and the engine's lora_name)."""

    adapter_id: str
    base_model: str
    name: str
    location: str
    static: bool = False


class AdapterCatalog:
    def __init__(self, base_model: str, folder: AdapterFolder | None,
                 static: Mapping[str, str], refresh_s: float) -> None:
        self.base_model = base_model
        self.folder = folder
        self.refresh_s = refresh_s
        self._static = {name: AdapterEntry(name, base_model, name, path, static=True)
                        for name, path in static.items()}
        self._found: dict[str, AdapterEntry] = {}

    def entries(self) -> list[AdapterEntry]:
        return [*self._static.values(), *self._found.values()]

    def get(self, adapter_id: str) -> AdapterEntry | None:
        return self._static.get(adapter_id) or self._found.get(adapter_id)

    async def refresh(self) -> None:
        if self.folder is None:
            return
        listing = await asyncio.to_thread(self.folder.list_adapters)
        found: dict[str, AdapterEntry] = {}
        for name, location in listing.items():
            try:
                check_adapter_name(name)
            except Exception:
                log.warning("skipping adapter folder %r: not a usable adapter name", name)
                continue
            entry = AdapterEntry(public_id(self.base_model, name), self.base_model, name,
                                 location)
            found[entry.adapter_id] = entry
        self._found = found

    async def run(self) -> None:
        """List the folder every ``refresh_s`` until cancelled."""
        while True:
            await asyncio.sleep(self.refresh_s)
            try:
                await self.refresh()
            except AdapterFolderError as exc:
                log.warning("adapters of %r: %s (keeping the last listing)",
                            self.base_model, exc)

    @property
    def is_remote(self) -> bool:
        """Adapters are downloaded (not read in place)."""
        return self.folder is not None and not isinstance(self.folder, LocalFolder)

    def local_copy(self, entry: AdapterEntry) -> tuple[Path, bool]:
        """A local folder with ``entry``'s files, and whether it was downloaded now
        (blocking: may download)."""
        if entry.static or self.folder is None:
            return Path(entry.location), False
        return self.folder.local_copy(entry.name)
