"""What an adapter's files say: its rank and base model, and whether they are usable.

``adapter_config.json`` is read as JSON and checked for what vLLM's adapter loader needs
(a LoRA ``peft_type``, a positive rank ``r``, ``lora_alpha``, ``target_modules``); the
weights (``adapter_model.safetensors``) are checked from their header against the file's
size (:mod:`llmserve.lora.safetensors_header`), so a truncated or corrupt file is caught
here, with a clear reason, before the engine sees it. Neither imports torch or peft: the
gateway stays light.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmserve.lora.errors import InvalidAdapter
from llmserve.lora.folder import CONFIG_FILE
from llmserve.lora.safetensors_header import CorruptSafetensors, tensor_names

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
    try:
        config = json.loads((path / CONFIG_FILE).read_bytes())
    except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError too
        raise InvalidAdapter(f"adapter `{adapter_id}` has an unreadable {CONFIG_FILE}: "
                             f"{exc}", param="model") from None
    problem = _config_problem(config)
    if problem:
        raise InvalidAdapter(f"adapter `{adapter_id}` has an invalid {CONFIG_FILE}: "
                             f"{problem}", param="model")
    if str(config.get("peft_type", "LORA")).upper() != "LORA":
        raise InvalidAdapter(f"adapter `{adapter_id}` is not a LoRA adapter (peft_type "
                             f"{config['peft_type']})", param="model")
    base = config.get("base_model_name_or_path")
    return AdapterFacts(rank_of(config), str(base) if base else None)


def _config_problem(config: Any) -> str:
    """What makes ``config`` unusable as a LoRA adapter's config ("" if nothing)."""
    if not isinstance(config, dict):
        return "not a JSON object"
    missing = sorted({"r", "lora_alpha", "target_modules"} - set(config))
    if missing:
        return f"missing {', '.join(missing)}"
    ranks = [config["r"], *(config.get("rank_pattern") or {}).values()]
    if not all(isinstance(r, int) and not isinstance(r, bool) and r > 0 for r in ranks):
        return f"the rank r (and rank_pattern) must be positive integers, got {ranks}"
    if isinstance(config["lora_alpha"], bool) or not isinstance(config["lora_alpha"],
                                                                int | float):
        return f"lora_alpha must be a number, got {config['lora_alpha']!r}"
    targets = config["target_modules"]
    if not (isinstance(targets, str) or (isinstance(targets, list)
                                         and all(isinstance(t, str) for t in targets))):
        return f"target_modules must be a string or a list of strings, got {targets!r}"
    return ""


def _check_weights(adapter_id: str, path: Path) -> None:
    weights = path / WEIGHTS_SAFETENSORS
    if not weights.is_file():
        if (path / WEIGHTS_BIN).is_file():
            return  # a pickled checkpoint: the engine reads it; nothing safe to check here
        raise InvalidAdapter(f"adapter `{adapter_id}` is missing {WEIGHTS_SAFETENSORS}",
                             param="model")
    try:
        names = tensor_names(weights)
    except (OSError, CorruptSafetensors) as exc:
        raise InvalidAdapter(f"adapter `{adapter_id}` has a corrupt {WEIGHTS_SAFETENSORS}: "
                             f"{exc}", param="model") from None
    if not names:
        raise InvalidAdapter(f"adapter `{adapter_id}` has no tensors in "
                             f"{WEIGHTS_SAFETENSORS}", param="model")
