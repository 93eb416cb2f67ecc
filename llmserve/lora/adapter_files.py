"""What an adapter's files say: its rank and base model, and whether they are usable.

``adapter_config.json`` is read with ``peft``'s own config loader; the weights
(``adapter_model.safetensors``) are read in full with ``safetensors``, so a truncated or
corrupt file is caught here, with a clear reason, before the engine sees it.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmserve.lora.errors import InvalidAdapter
from llmserve.lora.folder import CONFIG_FILE

WEIGHTS_SAFETENSORS = "adapter_model.safetensors"
WEIGHTS_BIN = "adapter_model.bin"
# the ranks vLLM accepts as max_lora_rank (vllm.config.lora.MaxLoRARanks)
ENGINE_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


@dataclass(frozen=True)
class AdapterFacts:
    rank: int
    base_model: str | None


def rank_of(config: dict[str, Any]) -> int:
    """The largest rank in a LoRA ``adapter_config.json`` (``r`` and ``rank_pattern``)."""
    ranks = [int(config.get("r") or 0)]
    ranks += [int(v) for v in (config.get("rank_pattern") or {}).values()]
    return max(ranks)


def engine_rank(rank: int) -> int:
    """The smallest ``max_lora_rank`` vLLM accepts that holds ``rank``."""
    for allowed in ENGINE_RANKS:
        if rank <= allowed:
            return allowed
    raise ValueError(f"LoRA rank {rank} is above the largest rank vLLM supports "
                     f"({ENGINE_RANKS[-1]})")


def rank_from_json(raw: bytes) -> int:
    try:
        config = json.loads(raw)
        return rank_of(config) if isinstance(config, dict) else 0
    except (ValueError, TypeError):
        return 0  # a broken config is reported when the adapter is used


def warm_up() -> None:
    """Import the readers (peft imports torch: seconds) ahead of the first adapter."""
    import peft  # noqa: F401
    import safetensors  # noqa: F401


def inspect_adapter(adapter_id: str, path: Path) -> AdapterFacts:
    """Read and check the files of one adapter (blocking: run it in a thread)."""
    if not (path / CONFIG_FILE).is_file():
        raise InvalidAdapter(f"adapter `{adapter_id}` is missing {CONFIG_FILE}",
                             param="model")
    facts = _read_config(adapter_id, path)
    _check_weights(adapter_id, path)
    return facts


def check_fits(adapter_id: str, facts: AdapterFacts, max_rank: int,
               base_names: Collection[str]) -> None:
    """400 unless the adapter's rank and base model fit this model's engine."""
    if facts.rank > max_rank:
        raise InvalidAdapter(f"adapter `{adapter_id}` has rank {facts.rank}, above this "
                             f"model's max_lora_rank of {max_rank}", param="model")
    if facts.base_model and not _same_model(facts.base_model, base_names):
        raise InvalidAdapter(f"adapter `{adapter_id}` was trained for base model "
                             f"`{facts.base_model}`, not `{sorted(base_names)[0]}`",
                             param="model")


def _same_model(name: str, base_names: Collection[str]) -> bool:
    wanted = {n.rstrip("/") for n in base_names}
    wanted |= {Path(n).name for n in wanted}
    return name.rstrip("/") in wanted or Path(name.rstrip("/")).name in wanted


def _read_config(adapter_id: str, path: Path) -> AdapterFacts:
    from peft import PeftConfig

    try:
        config = PeftConfig.from_pretrained(str(path))
    except Exception as exc:  # peft raises ValueError, TypeError, JSONDecodeError, ...
        raise InvalidAdapter(f"adapter `{adapter_id}` has an unreadable {CONFIG_FILE}: "
                             f"{exc}", param="model") from None
    if str(getattr(config, "peft_type", "")).upper().removeprefix("PEFTTYPE.") != "LORA":
        raise InvalidAdapter(f"adapter `{adapter_id}` is not a LoRA adapter (peft_type "
                             f"{getattr(config, 'peft_type', None)})", param="model")
    rank = rank_of({"r": getattr(config, "r", 0),
                    "rank_pattern": getattr(config, "rank_pattern", None)})
    base = getattr(config, "base_model_name_or_path", None)
    return AdapterFacts(rank, str(base) if base else None)


def _check_weights(adapter_id: str, path: Path) -> None:
    weights = path / WEIGHTS_SAFETENSORS
    if not weights.is_file():
        if (path / WEIGHTS_BIN).is_file():
            return  # a pickled checkpoint: the engine reads it; nothing safe to check here
        raise InvalidAdapter(f"adapter `{adapter_id}` is missing {WEIGHTS_SAFETENSORS}",
                             param="model")
    from safetensors import safe_open

    try:
        with safe_open(str(weights), framework="pt") as tensors:
            names = list(tensors.keys())
            for name in names:
                tensors.get_tensor(name)
    except Exception as exc:  # safetensors raises SafetensorError and others
        raise InvalidAdapter(f"adapter `{adapter_id}` has a corrupt {WEIGHTS_SAFETENSORS}: "
                             f"{exc}", param="model") from None
    if not names:
        raise InvalidAdapter(f"adapter `{adapter_id}` has no tensors in "
                             f"{WEIGHTS_SAFETENSORS}", param="model")
