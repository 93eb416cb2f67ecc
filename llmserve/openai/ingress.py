"""The OpenAI-compatible ingress deployment.

Authenticates, validates just enough (JSON, size, model), picks an engine for the
request and relays the raw body to that engine's own OpenAI endpoint, so every engine
feature (tools, response_format, logprobs, chat templates, ...) comes through unchanged.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from llmserve import serve
from llmserve.openai.errors import (
    BodyTooLarge,
    EngineUnavailable,
    InvalidRequest,
    ModelNotFound,
    NotFound,
    OpenAIError,
    TooManyRequests,
    Unauthorized,
    error_response,
)
from llmserve.openai.kv_events import HUB as KV_EVENTS_HUB
from llmserve.openai.kv_events import EventSource
from llmserve.openai.metrics import IngressMetrics
from llmserve.openai.pool import EngineDirectory, ModelPool, make_pool
from llmserve.openai.prompt import PromptRenderer
from llmserve.openai.relay import (
    EngineConnectError,
    Outcome,
    Relay,
    RelayedStream,
    read_whole,
)
from routing import RouteRequest

log = logging.getLogger("llmserve.openai")

FORWARDED = {
    "/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses",
    "/tokenize", "/detokenize",
}
MODEL_OPTIONAL = {"/tokenize", "/detokenize"}
CREATED_AT = int(time.time())


@dataclass(frozen=True)
class IngressSettings:
    api_keys: tuple[str, ...] = ()
    max_request_body_bytes: int = 32 * 1024 * 1024
    request_timeout_s: float | None = 600.0
    stats_refresh_s: float = 0.5
    max_ongoing_requests_per_model: int | None = None  # beyond it: 429 + Retry-After

    @classmethod
    def from_mapping(cls, value: Mapping[str, Any]) -> IngressSettings:
        keys = value.get("api_keys") or ()
        return cls(
            api_keys=tuple([keys] if isinstance(keys, str) else keys),
            max_request_body_bytes=int(value.get("max_request_body_bytes",
                                                 cls.max_request_body_bytes)),
            request_timeout_s=value.get("request_timeout_s", cls.request_timeout_s),
            stats_refresh_s=float(value.get("stats_refresh_s", cls.stats_refresh_s)),
            max_ongoing_requests_per_model=_positive_or_none(
                value.get("max_ongoing_requests_per_model")),
        )


def _positive_or_none(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"max_ongoing_requests_per_model must be a positive integer or "
                         f"null, got {value!r}")
    return value


@dataclass(frozen=True)
class ModelSource:
    """Where a model's engines come from: an LLMServer deployment or fixed URLs."""

    model_id: str
    engine: str
    routing_config: Mapping[str, Any]
    handle: Any = None
    urls: tuple[str, ...] = ()
    source: str = ""
    kv_events: tuple[EventSource | None, ...] = ()  # per URL: where it publishes KV events


class OpenAiIngress:
    async def __init__(self, models: Sequence[ModelSource],  # type: ignore[misc]
                       settings: IngressSettings | None = None) -> None:
        self.settings = settings or IngressSettings()
        self.sources = {m.model_id: m for m in models}
        self.pools: dict[str, ModelPool] = {
            m.model_id: make_pool(m.model_id, m.engine, dict(m.routing_config), m.handle,
                                  m.urls, m.kv_events) for m in models
        }
        self.directory = EngineDirectory(self.pools, self.settings.stats_refresh_s)
        await self.directory.refresh()
        self.directory.start()
        self.relay = Relay(read_timeout_s=self.settings.request_timeout_s)
        self.prompts: dict[str, PromptRenderer] = {
            m.model_id: PromptRenderer(m.model_id, _tokenizer_source(m), self.directory.client)
            for m in models if self.pools[m.model_id].policy.needs_prompt
        }
        # tokenizers load before the first request, not during it (transformers: seconds)
        await asyncio.gather(*(r.wait_loaded() for r in self.prompts.values()))
        self.metrics = IngressMetrics()
        self.metrics.registry.register(KV_EVENTS_HUB)  # llmserve_kv_events_*
        self._report_task = asyncio.get_running_loop().create_task(self._report_load())
        self._routes: dict[tuple[str, str], Callable[[Request, str], Any]] = {
            ("GET", "/v1/models"): self._list_models,
            ("GET", "/health"): self._health,
            ("GET", "/metrics"): self._metrics,
        }

    async def __call__(self, request: Request) -> Response:
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        path = request.url.path
        try:
            handler = self._routes.get((request.method, path))
            if handler is not None:
                if path.startswith("/v1/"):
                    self._authenticate(request)
                response: Response = await handler(request, request_id)
            elif path.startswith("/v1/models/") and request.method == "GET":
                self._authenticate(request)
                response = self._get_model(path.removeprefix("/v1/models/"))
            elif path in FORWARDED:
                if request.method != "POST":
                    raise NotFound(f"{request.method} {path} is not supported; use POST")
                self._authenticate(request)
                response = await self._forward(request, path, request_id)
            else:
                raise NotFound(f"no route for {request.method} {path}")
        except OpenAIError as exc:
            self.metrics.record_error("", path, exc.status_code)
            log.info("request %s: %d %s", request_id, exc.status_code, exc.message)
            return error_response(exc, request_id)
        response.headers["x-request-id"] = request_id
        return response

    # ---- checks ----------------------------------------------------------------------
    def _authenticate(self, request: Request) -> None:
        keys = self.settings.api_keys
        if not keys:
            return
        header = request.headers.get("authorization", "")
        token = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""
        if not token:
            raise Unauthorized("You didn't provide an API key. Provide it in the "
                               "Authorization header as 'Bearer YOUR_KEY'.")
        if not any(hmac.compare_digest(token, key) for key in keys):
            raise Unauthorized("Incorrect API key provided.")

    async def _read_body(self, request: Request) -> bytes:
        limit = self.settings.max_request_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise BodyTooLarge(f"request body of {declared} bytes exceeds the limit of "
                               f"{limit} bytes")
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(f"request body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    def _parse(self, body: bytes, path: str) -> tuple[dict[str, Any], str]:
        try:
            payload = json.loads(body)
        except ValueError as exc:
            raise InvalidRequest(f"request body is not valid JSON: {exc}") from None
        if not isinstance(payload, dict):
            raise InvalidRequest("request body must be a JSON object")
        model = payload.get("model")
        if model is None and path in MODEL_OPTIONAL and len(self.pools) == 1:
            model = next(iter(self.pools))
        if not isinstance(model, str) or not model:
            raise InvalidRequest("you must provide a model parameter", param="model")
        if model not in self.pools:
            raise ModelNotFound(
                f"The model `{model}` does not exist. Available models: "
                f"{', '.join(sorted(self.pools))}", param="model")
        return payload, model

    # ---- forwarding ------------------------------------------------------------------
    async def _forward(self, request: Request, path: str, request_id: str) -> Response:
        body = await self._read_body(request)
        payload, model = self._parse(body, path)
        pool = self.pools[model]
        limit = self.settings.max_ongoing_requests_per_model
        if limit is not None and pool.in_flight >= limit:
            raise TooManyRequests(f"`{model}` is serving its limit of {limit} requests; "
                                  f"retry shortly", retry_after_s=1.0)
        if "model" not in payload:
            payload["model"] = model
            body = json.dumps(payload).encode()
        if pool.membership_changed():  # a replica came or went since the last refresh
            await self.directory.refresh_pool(pool)
        route = await self._route_request(request_id, path, payload, request, pool)
        headers = {"content-type": "application/json", "x-request-id": request_id}
        outcome = Outcome()
        for _ in range(max(1, len(pool.endpoints))):
            endpoint = pool.choose(route)
            if endpoint is None:
                await self.directory.refresh_pool(pool)  # membership may be newer than ours
                endpoint = pool.choose(route)
            if endpoint is None:
                break
            outcome.on_first_chunk = functools.partial(pool.first_token, endpoint, route)
            try:
                upstream = await self.relay.open(endpoint.url + path, body, headers)
            except EngineConnectError as exc:
                log.warning("request %s: %s; trying another replica", request_id, exc)
                pool.mark_unreachable(endpoint)
                pool.finish(endpoint, route, failed=True)
                continue
            except OpenAIError:
                pool.finish(endpoint, route, failed=True)
                raise

            def done(result: Outcome, endpoint: Any = endpoint) -> None:
                pool.finish(endpoint, route, failed=result.error is not None)
                self.metrics.record(model, path, result, time.monotonic())

            if payload.get("stream") is True and upstream.status == 200:
                return RelayedStream(upstream, {"x-request-id": request_id}, outcome, done)
            try:
                content = await read_whole(upstream, outcome, request.receive)
            except OpenAIError as exc:
                outcome.error = exc.message
                done(outcome)
                raise
            done(outcome)
            if content is None:  # the client left; the engine request was aborted
                return Response(status_code=499)
            return Response(content, status_code=upstream.status,
                            media_type=upstream.headers.get("content-type",
                                                            "application/json"))
        raise EngineUnavailable(f"no engine replica of `{model}` is available right now",
                                retry_after_s=1.0)

    async def _route_request(self, request_id: str, path: str, payload: dict[str, Any],
                             request: Request, pool: ModelPool) -> RouteRequest:
        """What the routing policy sees; the prompt's tokens only if the policy uses them."""
        session_key = _session_key(request, payload)
        renderer = self.prompts.get(pool.model_id)
        if renderer is None or len(pool.endpoints) < 2:
            # A model with one engine has nothing to choose: skip rendering and tokenising
            # (a tenth of a millisecond or more per request). Its prefix index starts
            # learning once a second replica joins. (Not when one of several is briefly
            # not ready: what is routed meanwhile must still be learned.)
            return RouteRequest(request_id, pool.model_id, session_key)
        engine_url = next((e.url for e in pool.endpoints.values() if e.ready), None)
        return await renderer.route_request(request_id, path, payload, session_key,
                                            engine_url)

    # ---- local endpoints -------------------------------------------------------------
    async def _list_models(self, request: Request, request_id: str) -> Response:
        return JSONResponse({"object": "list",
                             "data": [self._model_card(m) for m in sorted(self.pools)]})

    def _get_model(self, model_id: str) -> Response:
        if model_id not in self.pools:
            raise ModelNotFound(f"The model `{model_id}` does not exist. Available models: "
                                f"{', '.join(sorted(self.pools))}")
        return JSONResponse(self._model_card(model_id))

    def _model_card(self, model_id: str) -> dict[str, Any]:
        source = self.sources[model_id]
        return {"id": model_id, "object": "model", "created": CREATED_AT,
                "owned_by": "llmserve", "root": source.source or model_id, "parent": None}

    async def _health(self, request: Request, request_id: str) -> Response:
        down = [m for m, pool in self.pools.items()
                if not any(e.ready for e in pool.endpoints.values())]
        if down:
            return JSONResponse({"status": "unavailable", "models_down": down},
                                status_code=503)
        return JSONResponse({"status": "ok"})

    async def _metrics(self, request: Request, request_id: str) -> Response:
        for model, pool in self.pools.items():
            self.metrics.in_flight.labels(model).set(pool.in_flight)
            for endpoint in pool.endpoints.values():
                stats = endpoint.stats
                self.metrics.engine_running.labels(model, endpoint.key).set(stats.num_running)
                self.metrics.engine_waiting.labels(model, endpoint.key).set(stats.num_waiting)
                self.metrics.engine_kv_usage.labels(model, endpoint.key).set(
                    stats.kv_cache_usage)
        return Response(self.metrics.exposition(),
                        media_type="text/plain; version=0.0.4; charset=utf-8")

    async def _report_load(self) -> None:
        """Tell each LLMServer deployment's autoscaler how many requests its engines serve."""
        from llmserve.serve.handle import report_ongoing

        while True:
            for pool in self.pools.values():
                if pool.handle is not None:
                    report_ongoing(pool.handle, pool.in_flight)
            await asyncio.sleep(0.1)

    def __del__(self) -> Any:
        """The replica's shutdown hook (the runtime awaits the coroutine), once: when the
        garbage collector calls it again later there is nothing left to close."""
        if not hasattr(self, "directory") or getattr(self, "_closed", False):
            return None
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return None
        self._closed = True
        return self._close()

    async def _close(self) -> None:
        self._report_task.cancel()
        await self.directory.close()
        await self.relay.close()


ingress_deployment = serve.deployment(OpenAiIngress, name="OpenAiIngress",
                                      max_ongoing_requests=100_000)


def _tokenizer_source(model: ModelSource) -> str | None:
    """Where to load the model's tokenizer from: the config, else the model's local files."""
    explicit = model.routing_config.get("tokenizer_source")
    if explicit:
        return str(explicit)
    if model.handle is not None and model.source:
        return model.source  # the files the engine loads (a local dir or a hub id)
    candidate = model.source or model.model_id
    return candidate if Path(candidate).is_dir() else None  # worker URLs: only local files


def _session_key(request: Request, payload: Mapping[str, Any]) -> str | None:
    key = request.headers.get("x-session-id") or payload.get("prompt_cache_key") \
        or payload.get("user")
    return str(key) if key else None
