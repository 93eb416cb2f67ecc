"""Engine replicas as a Prometheus HTTP service-discovery target list.

``GET /metrics/engines`` answers the list Prometheus' ``http_sd_configs`` reads: one
target per engine replica of each model whose ``log_engine_metrics`` is on, labelled
with ``model_name`` and ``replica``. Prometheus then scrapes each engine's own
``/metrics`` (vLLM's, SGLang's or the simulator's) directly, so nobody needs to know the
engines' ports, and a replica that leaves drops out of the list (its series go stale).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from llmserve.openai.pool import ModelPool


def engine_targets(pools: Mapping[str, ModelPool],
                   models_logged: Mapping[str, bool]) -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = []
    for model, pool in sorted(pools.items()):
        if not models_logged.get(model, True):
            continue
        for endpoint in sorted(pool.endpoints.values(), key=lambda e: e.key):
            url = urlsplit(endpoint.url)
            groups.append({
                "targets": [url.netloc],
                "labels": {
                    "model_name": model,
                    "replica": endpoint.key,
                    "engine": pool.engine.name,
                    "__scheme__": url.scheme or "http",
                    "__metrics_path__": (url.path.rstrip("/") + pool.engine.metrics_path),
                },
            })
    return groups
