"""GPU-resident LoRA adapter slots: ``max_loras`` of them, least recently used evicted."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class LoraSlots:
    """Adapters resident on the device, least recently used first."""

    max_loras: int
    resident: tuple[str, ...] = ()

    def can_use(self, names_in_batch: Iterable[str]) -> bool:
        return len(set(names_in_batch)) <= self.max_loras

    def use(self, names_in_batch: Iterable[str]) -> tuple[LoraSlots, int]:
        """Make ``names_in_batch`` resident; returns the new slots and how many were loaded.

        Loads evict the least recently used adapters not in the batch.
        """
        batch = list(dict.fromkeys(names_in_batch))
        if len(batch) > self.max_loras:
            raise ValueError(f"{len(batch)} adapters in one batch > max_loras={self.max_loras}")
        resident = [name for name in self.resident if name not in batch]
        num_loads = sum(1 for name in batch if name not in self.resident)
        resident = resident[max(0, len(resident) + len(batch) - self.max_loras) :]
        return LoraSlots(self.max_loras, (*resident, *batch)), num_loads

    def without(self, name: str) -> LoraSlots:
        return LoraSlots(self.max_loras, tuple(n for n in self.resident if n != name))
