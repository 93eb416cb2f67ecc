"""`build_openai_app` and `build_llm_deployment`: from LLMConfigs to a serve application."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx

from llmserve.llm.config import LLMConfig, LoraConfig
from llmserve.llm.server import DEFAULT_GRACEFUL_SHUTDOWN_S, LLMServer
from llmserve.llm.serving_args import LLMServingArgs
from llmserve.lora.directory import WorkerAdapter
from llmserve.lora.settings import LoraSettings, lora_settings
from llmserve.openai.engine_auth import bearer_headers
from llmserve.openai.ingress import IngressSettings, ModelSource, ingress_deployment
from llmserve.openai.key_policy import policies_from_file
from llmserve.openai.kv_events import EventSource
from llmserve.openai.tls import client_ssl_context
from llmserve.openai.workers import (
    DEFAULT_STARTUP_TIMEOUT_S,
    PendingWorkers,
    base_url,
    served_models,
    worker_adapters,
)
from llmserve.serve import Application, deployment
from llmserve.serve.admin import ADMIN_KEY_ENV
from llmserve.serve.exceptions import ConfigError
from llmserve.serve.ray.placement import IN_PROXY_KEY, placement_group_config_to_options

KNOWN_ARGS = {"llm_configs", "ingress_deployment_config", "api_keys", "api_keys_file",
              "max_request_body_bytes", "body_read_timeout_s", "max_request_header_bytes",
              "request_timeout_s", "stats_refresh_s", "worker_urls", "routing_config",
              "worker_engine", "max_ongoing_requests_per_model", "worker_startup_timeout_s",
              "worker_lora_config", "worker_model_id", "worker_kv_events", "worker_api_key"}
API_KEYS_ENV = "LLMSERVE_API_KEYS"
WORKER_API_KEY_ENV = "LLMSERVE_WORKER_API_KEY"


def build_llm_deployment(llm_config: LLMConfig | Mapping[str, Any] | str | Path,
                         *, name_prefix: str = "LLMServer:") -> Application:
    """One `LLMServer` deployment for one model (its replicas each run an engine)."""
    config = LLMConfig.coerce(dict(llm_config) if isinstance(llm_config, Mapping)
                              else llm_config).with_lora_enabled()
    options = {"health_check_period_s": 5.0,
               "graceful_shutdown_timeout_s": DEFAULT_GRACEFUL_SHUTDOWN_S,
               **config.deployment_config}
    if config.placement_group_config or config.accelerator_type:
        actor_options = dict(options.get("ray_actor_options") or {})
        if config.placement_group_config:
            actor_options.update(placement_group_config_to_options(
                config.placement_group_config))
        if config.accelerator_type:
            actor_options.setdefault("accelerator_type", config.accelerator_type)
        options["ray_actor_options"] = actor_options
    server = deployment(LLMServer, name=f"{name_prefix}{config.model_id}", **options)
    return server.bind(config)


def build_openai_app(args: Mapping[str, Any] | LLMServingArgs | None = None, /,
                     **kwargs: Any) -> Application:
    """An OpenAI-compatible app serving every model in ``llm_configs``.

    ``args`` follows Ray Serve LLM's builder: ``{"llm_configs": [LLMConfig | dict | path]}``
    plus ingress options (``api_keys``, ``max_request_body_bytes``, ``request_timeout_s``,
    ``max_ongoing_requests_per_model``: beyond it a model answers 429 with Retry-After,
    ``ingress_deployment_config``) and ``worker_urls`` to front engine servers that are
    already running instead of launching any (``worker_model_id``: the name clients
    use for the one model those workers serve, whatever name they serve it under;
    ``worker_kv_events``: for each of them in the same order, where it publishes
    KV-cache events, ``"tcp://HOST:PORT"`` or ``"tcp://HOST:PORT,tcp://HOST:REPLAY_PORT"``
    with its replay socket, ``""`` for none; ``worker_api_key``, default the
    ``LLMSERVE_WORKER_API_KEY`` environment variable: the key the workers demand, sent to
    them as ``Authorization: Bearer``).
    """
    if isinstance(args, LLMServingArgs):
        args = args.to_args()
    merged = {**(args or {}), **kwargs}
    unknown = sorted(set(merged) - KNOWN_ARGS)
    if unknown:
        raise ConfigError(f"unknown build_openai_app arguments: {unknown}; "
                          f"known: {sorted(KNOWN_ARGS)}")
    configs = [LLMConfig.coerce(c).with_lora_enabled() for c in merged.get("llm_configs") or []]
    urls = list(merged.get("worker_urls") or [])
    if not configs and not urls:
        raise ConfigError("build_openai_app needs at least one of llm_configs or worker_urls")
    _check_unique([c.model_id for c in configs])
    sources: list[ModelSource] = []
    for config in configs:
        server = build_llm_deployment(config)
        handle = server  # replaced by a DeploymentHandle when the graph is deployed
        sources.append(ModelSource(config.model_id, config.llm_engine, config.routing_config,
                                   handle, source=config.model_loading_config.source,
                                   log_engine_metrics=config.log_engine_metrics,
                                   lora=model_lora_settings(config)))
    found, pending = discover_workers(
        urls, merged.get("worker_engine", "vllm"),
        merged.get("routing_config") or {"policy": "prefix_aware"},
        _positive_float(merged, "worker_startup_timeout_s", DEFAULT_STARTUP_TIMEOUT_S),
        _worker_lora(merged.get("worker_lora_config")),
        model_id=str(merged.get("worker_model_id") or ""), api_key=worker_api_key(merged))
    events = worker_kv_events(urls, merged.get("worker_kv_events"))
    sources += with_worker_kv_events(found, events)
    pending = replace(pending, kv_events={u: events[u] for u in pending.urls if u in events})
    _check_unique([s.model_id for s in sources]
                  + [name for s in sources if s.lora for name in s.lora.static])
    settings = _settings(merged)
    return ingress_deployment.options(**_ingress_options(merged)).bind(sources, settings,
                                                                       pending)


def _ingress_options(args: Mapping[str, Any]) -> dict[str, Any]:
    """The ingress deployment's options. On Ray it runs in the HTTP proxy's process
    (``in_proxy``) unless told otherwise: it talks HTTP to the engines itself, so token
    streams then cross no Ray call."""
    options = dict(args.get("ingress_deployment_config") or {})
    options["ray_actor_options"] = {IN_PROXY_KEY: True,
                                    **(options.get("ray_actor_options") or {})}
    return options


def _settings(args: Mapping[str, Any]) -> IngressSettings:
    values = {k: args[k] for k in ("api_keys", "max_request_body_bytes", "request_timeout_s",
                                   "stats_refresh_s", "max_ongoing_requests_per_model",
                                   "body_read_timeout_s", "max_request_header_bytes")
              if k in args}
    if "api_keys_file" in args:
        if "api_keys" in args:
            raise ConfigError("build_openai_app: give api_keys or api_keys_file, not both")
        values["api_key_policies"] = policies_from_file(args["api_keys_file"])
    if "api_keys" not in values and "api_key_policies" not in values \
            and os.environ.get(API_KEYS_ENV):
        values["api_keys"] = [k for k in os.environ[API_KEYS_ENV].split(",") if k]
    if os.environ.get(ADMIN_KEY_ENV):
        values["admin_key"] = os.environ[ADMIN_KEY_ENV]
    try:
        return IngressSettings.from_mapping(values)
    except ValueError as exc:
        raise ConfigError(f"build_openai_app: {exc}") from None


def worker_api_key(args: Mapping[str, Any]) -> str | None:
    """The key the workers given by URL demand (``worker_api_key``, else the env)."""
    value = args.get("worker_api_key", os.environ.get(WORKER_API_KEY_ENV) or None)
    if value is not None and (not isinstance(value, str) or not value):
        raise ConfigError("build_openai_app: worker_api_key must be a non-empty string")
    return value


def _worker_lora(value: Any) -> LoraConfig | None:
    if value is None:
        return None
    try:
        return value if isinstance(value, LoraConfig) else LoraConfig.model_validate(value)
    except ValueError as exc:
        raise ConfigError(f"worker_lora_config: {exc}") from None


def discover_workers(urls: Sequence[str], engine: str, routing_config: Mapping[str, Any],
                     startup_timeout_s: float = DEFAULT_STARTUP_TIMEOUT_S,
                     lora: LoraConfig | None = None, model_id: str = "",
                     api_key: str | None = None) -> tuple[list[ModelSource], PendingWorkers]:
    """Ask each engine which model it serves and group URLs by model id; the engines
    that do not answer yet are returned as pending (the ingress takes them in later).
    The LoRA adapters a worker lists are served from the workers listing them; with
    ``lora``, the gateway also loads that config's adapters into the workers on demand
    (their engines must have runtime LoRA loading on).
    ``model_id``: clients name the workers' one model so (see ``worker_model_id``);
    ``api_key``: the key the workers demand."""
    by_model: dict[str, list[str]] = {}
    adapters: dict[str, tuple[str, str, list[str]]] = {}  # id -> (parent, root, urls)
    pending: list[str] = []
    for url in urls:
        base = base_url(url)
        try:
            response = httpx.get(f"{base}/v1/models", timeout=5, trust_env=False,
                                 verify=client_ssl_context(), headers=bearer_headers(api_key))
            response.raise_for_status()
            models = served_models(response.json())
            listed = worker_adapters(response.json())
        except (httpx.HTTPError, ValueError, KeyError, TypeError, AttributeError):
            pending.append(base)
            continue
        for model in models:
            by_model.setdefault(model, []).append(base)
        for name, parent, root in listed:
            adapters.setdefault(name, (parent, root, []))[2].append(base)
    if model_id and len(by_model) > 1:
        raise ConfigError(f"worker_model_id {model_id!r} is ambiguous: the workers serve "
                          f"{sorted(by_model)}; give it only when they serve one model")
    found = [ModelSource(model_id or model, engine, dict(routing_config), urls=tuple(group),
                         source=model if model_id else "",
                         served_name=model if model_id else "",
                         lora=None if lora is None else lora_settings(model_id or model, model,
                                                                      lora, {}),
                         adapters=tuple(WorkerAdapter(name, model_id or model, tuple(where),
                                                      root)
                                        for name, (parent, root, where) in adapters.items()
                                        if parent == model),
                         api_key=api_key)
             for model, group in by_model.items()]
    return found, PendingWorkers(tuple(pending), engine, dict(routing_config),
                                 startup_timeout_s, model_id=model_id,
                                 lora=None if lora is None else lora_settings(
                                     model_id, model_id, lora, {}),
                                 api_key=api_key)


def worker_kv_events(urls: Sequence[str], value: Sequence[str] | None
                     ) -> dict[str, tuple[str, str | None]]:
    """Each worker's (by base URL) KV-event endpoints (``worker_kv_events``: one
    ``"ENDPOINT[,REPLAY_ENDPOINT]"`` or ``""`` per URL, in order)."""
    if not value:
        return {}
    if isinstance(value, str) or len(value) != len(urls):
        raise ConfigError(f"worker_kv_events needs one entry per worker URL ({len(urls)}), "
                          f"in the same order; got {value!r}")
    events: dict[str, tuple[str, str | None]] = {}
    for url, entry in zip(urls, value, strict=True):
        parts = [p.strip() for p in str(entry).split(",")] if entry else []
        if len(parts) > 2 or not all(p.startswith(("tcp://", "ipc://")) for p in parts):
            raise ConfigError(f"worker_kv_events entry {entry!r}: expected "
                              "tcp://HOST:PORT[,tcp://HOST:REPLAY_PORT] or ''")
        if parts:
            events[base_url(url)] = (parts[0], parts[1] if len(parts) == 2 else None)
    return events


def with_worker_kv_events(found: Sequence[ModelSource],
                          events: Mapping[str, tuple[str, str | None]]) -> list[ModelSource]:
    """``found`` with each worker's KV-event endpoints (:func:`worker_kv_events`)."""
    if not events:
        return list(found)
    return [replace(source, kv_events=tuple(
        EventSource(u, *events[u]) if u in events else None for u in source.urls))
        for source in found]


def _positive_float(args: Mapping[str, Any], name: str, default: float) -> float:
    value = args.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigError(f"build_openai_app: {name} must be a positive number, got {value!r}")
    return float(value)


def model_lora_settings(config: LLMConfig) -> LoraSettings | None:
    if config.lora_config is None:
        return None
    return lora_settings(config.model_id, config.model_loading_config.source,
                         config.lora_config, config.engine_kwargs)


def _check_unique(model_ids: list[str]) -> None:
    duplicates = sorted({m for m in model_ids if model_ids.count(m) > 1})
    if duplicates:
        raise ConfigError(f"model ids must be unique; repeated: {duplicates}")


__all__ = ["build_llm_deployment", "build_openai_app"]
