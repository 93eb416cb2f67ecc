"""From a model's ``lora_config`` to what its engine and the gateway need.

``lora_config`` turns on the engine's LoRA support: ``enable_lora``, ``max_loras`` =
``max_num_adapters_per_replica`` and ``max_lora_rank`` = the largest rank among the
adapters found at start-up (rounded up to a rank vLLM accepts), each unless
``engine_kwargs`` sets it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from llmserve.lora.adapter_files import engine_rank, rank_from_json
from llmserve.lora.folder import AdapterFolderError, open_folder

log = logging.getLogger("llmserve.lora")

REFRESH_S = 5.0  # how often an adapter folder is listed again
DEFAULT_RANK = 16  # vLLM's default max_lora_rank, used when no adapter is found at start


class LoraConfigLike(Protocol):
    dynamic_lora_loading_path: str | None
    max_num_adapters_per_replica: int
    download_timeout_s: float
    max_download_tries: int
    lora_modules: dict[str, str]


@dataclass(frozen=True)
class LoraSettings:
    """What the gateway needs to serve one base model's adapters."""

    base_model: str
    base_names: tuple[str, ...]
    dynamic_path: str | None = None
    static: Mapping[str, str] = field(default_factory=dict)
    max_per_replica: int = 16
    download_timeout_s: float = 30.0
    max_download_tries: int = 3
    max_rank: int | None = None
    refresh_s: float = REFRESH_S
    cache_dir: Path | None = None


def lora_settings(model_id: str, source: str, lora: LoraConfigLike,
                  engine_kwargs: Mapping[str, Any]) -> LoraSettings:
    kwargs = _dashless(engine_kwargs)
    rank = kwargs.get("max_lora_rank")
    max_loras = kwargs.get("max_loras")
    return LoraSettings(
        base_model=model_id, base_names=(model_id, source),
        dynamic_path=lora.dynamic_lora_loading_path, static=dict(lora.lora_modules),
        max_per_replica=int(max_loras) if max_loras else lora.max_num_adapters_per_replica,
        download_timeout_s=lora.download_timeout_s,
        max_download_tries=lora.max_download_tries,
        max_rank=int(rank) if rank is not None else None)


def lora_engine_kwargs(lora: LoraConfigLike, engine_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """``engine_kwargs`` with LoRA turned on (what is already set there wins)."""
    kwargs = dict(engine_kwargs)
    given = set(_dashless(kwargs))
    if "enable_lora" not in given:
        kwargs["enable_lora"] = True
    if "max_loras" not in given:
        kwargs["max_loras"] = lora.max_num_adapters_per_replica
    if "max_lora_rank" not in given:
        kwargs["max_lora_rank"] = engine_rank(max_adapter_rank(lora) or DEFAULT_RANK)
    return kwargs


def max_adapter_rank(lora: LoraConfigLike) -> int:
    """The largest rank among the adapters present now (0 if none can be read)."""
    configs: list[bytes] = []
    for path in lora.lora_modules.values():
        try:
            configs.append((Path(path) / "adapter_config.json").read_bytes())
        except OSError:
            continue
    if lora.dynamic_lora_loading_path:
        try:
            folder = open_folder(lora.dynamic_lora_loading_path)
            for name in folder.list_adapters():
                configs.append(folder.read_config(name))
        except AdapterFolderError as exc:
            log.warning("cannot read the adapters' ranks: %s", exc)
    return max((rank_from_json(raw) for raw in configs), default=0)


def _dashless(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    return {key.replace("-", "_"): value for key, value in kwargs.items()}
