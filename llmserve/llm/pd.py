"""`build_pd_openai_app`: one model served by a prefill pool and a decode pool.

As ``ray.serve.llm.build_pd_openai_app``: ``{"prefill_config": ..., "decode_config": ...}``,
each an `LLMConfig`, a mapping or a YAML path. Both pools serve the same model id (and the
same LoRA setup); each scales by its own ``deployment_config`` and routes by its own
``routing_config`` (prefill: prefix-aware by default, where the prefix cache lives; decode:
by load). Engines (vLLM and the simulator) get vLLM's NIXL connector, ``kv_producer`` on
prefill and ``kv_consumer`` on decode, unless ``engine_kwargs`` names one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from engines.vllm.kv_transfer import KV_TRANSFER_KEYS, default_kv_transfer_config
from llmserve.llm.builders import (
    KNOWN_ARGS,
    _ingress_options,
    _settings,
    build_llm_deployment,
    discover_workers,
    model_lora_settings,
    worker_api_key,
)
from llmserve.llm.config import LLMConfig
from llmserve.lora.directory import WorkerAdapter
from llmserve.openai.ingress import ModelSource, ingress_deployment
from llmserve.serve import Application
from llmserve.serve.exceptions import ConfigError

WORKER_ARGS = {"prefill_worker_urls", "decode_worker_urls", "worker_engine",
               "prefill_routing_config", "decode_routing_config"}
PD_ARGS = {"prefill_config", "decode_config"} | WORKER_ARGS | (
    KNOWN_ARGS - {"llm_configs", "worker_urls", "worker_engine", "routing_config"})
PD_ENGINES = ("vllm", "sim")
DECODE_DEFAULT_ROUTING: dict[str, Any] = {"policy": "least_loaded"}
MUST_MATCH = ("model_id", "llm_engine", "lora_config")

ConfigInput = LLMConfig | Mapping[str, Any] | str | Path


def build_pd_openai_app(args: Mapping[str, Any] | None = None, /,
                        **kwargs: Any) -> Application:
    """An OpenAI-compatible app whose model is prefilled by one pool and decoded by another.

    ``args``: ``prefill_config`` and ``decode_config`` (each an LLMConfig, a dict or a YAML
    path) plus the ingress options of `build_openai_app` (``api_keys``,
    ``max_request_body_bytes``, ``request_timeout_s``, ``max_ongoing_requests_per_model``,
    ``ingress_deployment_config``, ``stats_refresh_s``). Instead of the two configs,
    ``prefill_worker_urls`` and ``decode_worker_urls`` front engines that already run
    (with ``worker_engine``, ``prefill_routing_config``, ``decode_routing_config``).
    """
    merged = {**(args or {}), **kwargs}
    unknown = sorted(set(merged) - PD_ARGS)
    if unknown:
        raise ConfigError(f"unknown build_pd_openai_app arguments: {unknown}; "
                          f"known: {sorted(PD_ARGS)}")
    if any(merged.get(k) for k in ("prefill_worker_urls", "decode_worker_urls")):
        return ingress_deployment.options(**_ingress_options(merged)).bind(
            [worker_source(merged)], _settings(merged))
    for key in ("prefill_config", "decode_config"):
        if merged.get(key) is None:
            raise ConfigError(f"build_pd_openai_app needs {key}")
    prefill = pool_config(merged["prefill_config"], role="prefill")
    decode = pool_config(merged["decode_config"], role="decode")
    check_same_model(prefill, decode)
    prefill_app = build_llm_deployment(prefill, name_prefix="LLMServer:prefill:")
    decode_app = build_llm_deployment(decode, name_prefix="LLMServer:decode:")
    source = prefill.model_loading_config.source
    prefill_source = ModelSource(prefill.model_id, prefill.llm_engine, prefill.routing_config,
                                 prefill_app, source=source)
    model = ModelSource(decode.model_id, decode.llm_engine, decode.routing_config, decode_app,
                        source=decode.model_loading_config.source, prefill=prefill_source,
                        lora=model_lora_settings(decode.with_lora_enabled()))
    return ingress_deployment.options(**_ingress_options(merged)).bind(
        [model], _settings(merged))


def worker_source(args: Mapping[str, Any]) -> ModelSource:
    """The model behind running prefill and decode engines (their ``/v1/models``)."""
    if args.get("prefill_config") is not None or args.get("decode_config") is not None:
        raise ConfigError("give prefill_config/decode_config or prefill_worker_urls/"
                          "decode_worker_urls, not both")
    engine = str(args.get("worker_engine", "vllm"))
    sources: dict[str, ModelSource] = {}
    for role, default in (("prefill", {"policy": "prefix_aware"}),
                          ("decode", DECODE_DEFAULT_ROUTING)):
        urls = list(args.get(f"{role}_worker_urls") or [])
        if not urls:
            raise ConfigError(f"build_pd_openai_app needs {role}_worker_urls too")
        found, pending = discover_workers(urls, engine,
                                          args.get(f"{role}_routing_config") or default,
                                          api_key=worker_api_key(args))
        if pending.urls:
            raise ConfigError(f"{role}_worker_urls do not answer /v1/models: "
                              f"{list(pending.urls)}")
        if len(found) != 1:
            raise ConfigError(f"{role}_worker_urls must serve exactly one model; they serve "
                              f"{sorted(s.model_id for s in found)}")
        sources[role] = found[0]
    prefill, decode = sources["prefill"], sources["decode"]
    if prefill.model_id != decode.model_id:
        raise ConfigError(f"prefill and decode workers must serve the same model_id: "
                          f"{prefill.model_id!r} != {decode.model_id!r}")
    return dataclasses.replace(decode, prefill=prefill, adapters=both_roles(prefill, decode))


def both_roles(prefill: ModelSource, decode: ModelSource) -> tuple[WorkerAdapter, ...]:
    """The adapters both the prefill and the decode workers list (a request for one runs
    on one of each), each with the URLs of every worker listing it."""
    on_prefill = {a.adapter_id: a for a in prefill.adapters}
    return tuple(dataclasses.replace(a, urls=(*on_prefill[a.adapter_id].urls, *a.urls))
                 for a in decode.adapters if a.adapter_id in on_prefill)


def pool_config(value: ConfigInput, *, role: str) -> LLMConfig:
    """The pool's LLMConfig with the P/D defaults filled in (connector, decode routing)."""
    raw = _raw(value, role)
    try:
        config = LLMConfig.coerce(raw if isinstance(raw, LLMConfig) else dict(raw))
    except ValueError as exc:
        raise ConfigError(f"{role}_config: {exc}") from None
    if config.llm_engine not in PD_ENGINES:
        raise ConfigError(f"{role}_config.llm_engine: {config.llm_engine!r} cannot hand KV "
                          f"from prefill to decode here; use one of {list(PD_ENGINES)}")
    updates: dict[str, Any] = {}
    if not any(k in config.engine_kwargs for k in KV_TRANSFER_KEYS):
        # the simulator takes vLLM's flag too, and like vLLM ignores kv_transfer_params
        # without a connector
        updates["engine_kwargs"] = {**config.engine_kwargs,
                                    "kv_transfer_config": default_kv_transfer_config(role)}
    if role == "decode" and isinstance(raw, Mapping) and "routing_config" not in raw:
        updates["routing_config"] = dict(DECODE_DEFAULT_ROUTING)
    if not updates:
        return config
    return LLMConfig.model_validate({**config.model_dump(), **updates})


def _raw(value: ConfigInput, role: str) -> LLMConfig | Mapping[str, Any]:
    """A mapping for dicts and YAML files (so absent keys stay visible); LLMConfigs as is."""
    if isinstance(value, str | Path):
        import yaml

        try:
            loaded = yaml.safe_load(Path(value).read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{role}_config: cannot read {value}: {exc}") from exc
        if not isinstance(loaded, Mapping):
            raise ConfigError(f"{role}_config: {value} does not hold a mapping")
        return loaded
    if isinstance(value, LLMConfig | Mapping):
        return value
    raise ConfigError(f"{role}_config must be an LLMConfig, a mapping or a YAML path, "
                      f"got {type(value).__name__}")


def check_same_model(prefill: LLMConfig, decode: LLMConfig) -> None:
    for name in MUST_MATCH:
        left, right = getattr(prefill, name), getattr(decode, name)
        if left != right:
            raise ConfigError(f"prefill_config and decode_config must have the same {name}: "
                              f"{left!r} != {right!r}")


__all__ = ["build_pd_openai_app", "check_same_model", "pool_config"]
