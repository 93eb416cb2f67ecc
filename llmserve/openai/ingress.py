"""The OpenAI-compatible ingress deployment.

Authenticates, validates just enough (JSON, size, model), picks an engine for the
request and relays the raw body to that engine's own OpenAI endpoint, so every engine
feature (tools, response_format, logprobs, chat templates, ...) comes through unchanged.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from llmserve import serve
from llmserve.lora.directory import AdapterDirectory, AdapterTarget, WorkerAdapter
from llmserve.lora.holds import AdapterHolds
from llmserve.lora.settings import LoraSettings
from llmserve.openai.access_log import log_access
from llmserve.openai.auth import ApiKeys, bearer_token
from llmserve.openai.background import keep_running
from llmserve.openai.client_left import ClientLeft, until_left
from llmserve.openai.disaggregated import SPLIT_PATHS, DisaggregatedFlow
from llmserve.openai.engine_targets import engine_targets
from llmserve.openai.errors import (
    BodyTooLarge,
    EngineUnavailable,
    InvalidRequest,
    ModelNotAllowed,
    ModelNotFound,
    NotFound,
    OpenAIError,
    RequestTimeout,
    TooManyRequests,
    Unauthorized,
    error_response,
)
from llmserve.openai.key_policy import KeyPolicy
from llmserve.openai.kv_events import HUB as KV_EVENTS_HUB
from llmserve.openai.kv_events import EventSource
from llmserve.openai.metrics import IngressMetrics
from llmserve.openai.openapi import openapi_document
from llmserve.openai.pd_metrics import PDMetrics
from llmserve.openai.pool import EngineDirectory, ModelPool, make_pool
from llmserve.openai.prompt import PromptRenderer
from llmserve.openai.rate_limit import RateLimiter, TokenHold, token_estimate
from llmserve.openai.relay import (
    EngineConnectError,
    Outcome,
    Relay,
    RelayedStream,
    read_whole,
    wait_disconnect,
)
from llmserve.openai.request_checks import (
    check_header_size,
    id_header,
    parse_json_body,
    refuse_request_chat_template,
)
from llmserve.openai.routes import app_path, route_template
from llmserve.openai.tracing import RequestSpans
from llmserve.openai.workers import PendingWorkers, WorkerWatch, base_url
from routing import RouteRequest

log = logging.getLogger("llmserve.openai")

FORWARDED = {
    "/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses",
    "/tokenize", "/detokenize",
}
MODEL_OPTIONAL = {"/tokenize", "/detokenize"}
CREATED_AT = int(time.time())
PARSE_OFF_LOOP_BYTES = 1024 * 1024  # larger bodies are parsed on a worker thread
CLIENT_CLOSED = 499  # nginx's status for a client that left before the answer


@dataclass(frozen=True)
class IngressSettings:
    api_keys: ApiKeys = field(default_factory=ApiKeys)
    admin_keys: ApiKeys = field(default_factory=ApiKeys)  # for /metrics
    body_read_timeout_s: float = 30.0  # the longest wait for the next piece of a body
    max_request_header_bytes: int = 64 * 1024
    max_request_body_bytes: int = 32 * 1024 * 1024
    request_timeout_s: float | None = 600.0
    stats_refresh_s: float = 0.5
    max_ongoing_requests_per_model: int | None = None  # beyond it: 429 + Retry-After

    @classmethod
    def from_mapping(cls, value: Mapping[str, Any]) -> IngressSettings:
        keys = value.get("api_keys") or ()
        return cls(
            api_keys=ApiKeys(value["api_key_policies"]) if "api_key_policies" in value
            else ApiKeys.plain([keys] if isinstance(keys, str) else keys),
            admin_keys=ApiKeys.plain([value["admin_key"]] if value.get("admin_key") else []),
            body_read_timeout_s=float(value.get("body_read_timeout_s",
                                                cls.body_read_timeout_s)),
            max_request_header_bytes=int(value.get("max_request_header_bytes",
                                                   cls.max_request_header_bytes)),
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
    served_name: str = ""  # the engines' name for the model when clients use another
    prefill: ModelSource | None = None  # set: prefill here, decode on handle/urls (docs/pd.md)
    log_engine_metrics: bool = True  # list its engines at /metrics/engines
    lora: LoraSettings | None = None  # adapters the gateway loads on demand (docs/lora.md)
    adapters: tuple[WorkerAdapter, ...] = ()  # adapters the workers at ``urls`` list
    kv_events: tuple[EventSource | None, ...] = ()  # per URL: where it publishes KV events
    api_key: str | None = field(default=None, repr=False)  # the workers at ``urls`` demand it


class OpenAiIngress:
    async def __init__(self, models: Sequence[ModelSource],  # type: ignore[misc]
                       settings: IngressSettings | None = None,
                       pending_workers: PendingWorkers | None = None) -> None:
        self.settings = settings or IngressSettings()
        self.sources = {m.model_id: m for m in models}
        self.pools: dict[str, ModelPool] = {
            m.model_id: make_pool(m.model_id, m.engine, dict(m.routing_config), m.handle,
                                  m.urls, m.kv_events, m.api_key) for m in models
        }
        self.prefill_pools: dict[str, ModelPool] = {
            m.model_id: make_pool(m.model_id, m.prefill.engine, dict(m.prefill.routing_config),
                                  m.prefill.handle, m.prefill.urls, api_key=m.prefill.api_key)
            for m in models if m.prefill is not None
        }
        pending_workers = pending_workers or PendingWorkers()
        self.directory = EngineDirectory(
            {**self.pools, **{f"{k} (prefill)": p for k, p in self.prefill_pools.items()}},
            self.settings.stats_refresh_s,
            [(base_url(u), pending_workers.api_key) for u in pending_workers.urls])
        await self.directory.refresh()
        self.directory.start()
        self.relay = Relay(read_timeout_s=self.settings.request_timeout_s)
        self.prompts: dict[str, PromptRenderer] = {
            m.model_id: PromptRenderer(m.model_id, _tokenizer_source(m), self.directory.client)
            for m in models if self.pools[m.model_id].policy.needs_prompt
            or (m.model_id in self.prefill_pools
                and self.prefill_pools[m.model_id].policy.needs_prompt)
        }
        # tokenizers load before the first request, not during it (transformers: seconds)
        await asyncio.gather(*(r.wait_loaded() for r in self.prompts.values()))
        self.metrics = IngressMetrics(self.pools)
        self.metrics.registry.register(KV_EVENTS_HUB)  # llmserve_kv_events_*
        pd_metrics = PDMetrics(self.metrics.registry) if self.prefill_pools else None
        self.disaggregated = {
            model: DisaggregatedFlow(prefill, self.pools[model], self.relay, self.metrics,
                                     pd_metrics, self.directory,
                                     self.settings.max_ongoing_requests_per_model)
            for model, prefill in self.prefill_pools.items() if pd_metrics is not None
        }
        self.limiter = RateLimiter()
        self.adapters = AdapterDirectory(
            {m.model_id: (m.lora, self.pools[m.model_id].engine) for m in models if m.lora},
            [a for m in models for a in m.adapters], self.directory.client,
            self.metrics.registry, self._resident_adapters)
        await self.adapters.start()
        self.workers = WorkerWatch(pending_workers, self.directory.client,
                                   self._take_in_worker, self._take_in_adapters)
        self.workers.start()
        self._report_task = asyncio.get_running_loop().create_task(self._report_load())
        self._routes: dict[tuple[str, str], Callable[[Request, str], Any]] = {
            ("GET", "/v1/models"): self._list_models,
            ("GET", "/health"): self._health,
            ("GET", "/metrics"): self._metrics,
            ("GET", "/metrics/engines"): self._engine_targets,
            ("GET", "/openapi.json"): self._openapi,
        }

    async def __call__(self, request: Request) -> Response:
        request.state.arrival_s = time.monotonic()
        request_id = uuid.uuid4().hex
        path = app_path(request.scope)
        try:
            check_header_size(request.headers.raw, self.settings.max_request_header_bytes)
            request_id = id_header(request.headers.get("x-request-id"),
                                   "x-request-id") or request_id
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
                key = self._authenticate(request)
                response = await self._forward(request, path, request_id, key)
            else:
                raise NotFound(f"no route for {request.method} {path}")
        except OpenAIError as exc:
            self._answered(request, request_id, path, exc.status_code)
            log.info("request %s: %d %s", request_id, exc.status_code, exc.message)
            return error_response(exc, request_id)
        except ClientDisconnect:  # left while sending the body: nobody to answer
            log.info("request %s: the client left before sending its whole body", request_id)
            self._answered(request, request_id, path, CLIENT_CLOSED)
            return Response(status_code=CLIENT_CLOSED)
        if not isinstance(response, RelayedStream):  # a stream is counted at its end
            self._answered(request, request_id, path, response.status_code)
        response.headers["x-request-id"] = request_id
        return response

    def _answered(self, request: Request, request_id: str, path: str, status: int) -> None:
        """The answer is complete: count and log it, unless the relay already did."""
        state = request.state
        spans = getattr(state, "spans", None)
        if spans is not None:
            spans.end(status)
        if getattr(state, "recorded", False):
            return
        model = getattr(state, "model_name", "")
        route = route_template(path)
        self.metrics.record_local(model, route, status)
        log_access(request, request_id, model, route, status)

    # ---- checks ----------------------------------------------------------------------
    def _authenticate(self, request: Request) -> KeyPolicy | None:
        keys = self.settings.api_keys
        if not keys:
            return None
        token = bearer_token(request.headers.get("authorization", ""))
        if token is None:
            raise Unauthorized("You didn't provide an API key. Provide it in the "
                               "Authorization header as 'Bearer YOUR_KEY'.")
        policy = keys.match(token)
        if policy is None:
            raise Unauthorized("Incorrect API key provided.")
        return policy

    async def _read_body(self, request: Request) -> bytes:
        limit = self.settings.max_request_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise BodyTooLarge(f"request body of {declared} bytes exceeds the limit of "
                               f"{limit} bytes")
        chunks: list[bytes] = []
        size = 0
        pieces = request.stream().__aiter__()
        while True:
            try:
                chunk = await asyncio.wait_for(pieces.__anext__(),
                                               self.settings.body_read_timeout_s)
            except StopAsyncIteration:
                break
            except TimeoutError:
                raise RequestTimeout(f"the request body did not arrive within "
                                     f"{self.settings.body_read_timeout_s:g} s") from None
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(f"request body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def _parse(self, body: bytes, path: str) -> tuple[dict[str, Any], str]:
        if len(body) > PARSE_OFF_LOOP_BYTES:
            payload = await asyncio.to_thread(parse_json_body, body)
        else:
            payload = parse_json_body(body)
        refuse_request_chat_template(payload)
        model = payload.get("model")
        if model is None and path in MODEL_OPTIONAL and len(self.pools) == 1:
            model = next(iter(self.pools))
        if not isinstance(model, str) or not model:
            raise InvalidRequest("you must provide a model parameter", param="model")
        known = model in self.pools or self.adapters.resolve(model) is not None
        if not known and self.workers.not_ready:
            raise EngineUnavailable(  # no addresses: clients need not know the workers'
                f"the model `{model}` is not served yet: {len(self.workers.not_ready)} "
                f"workers are not up yet", retry_after_s=5.0)
        if not known:
            raise ModelNotFound(
                f"The model `{model}` does not exist. Available models: "
                f"{', '.join(sorted(self.pools))}", param="model")
        return payload, model

    # ---- forwarding ------------------------------------------------------------------
    async def _forward(self, request: Request, path: str, request_id: str,
                       key: KeyPolicy | None) -> Response:
        body = await self._read_body(request)
        payload, model = await self._parse(body, path)
        request.state.model_name = model
        adapter = self.adapters.resolve(model) if model not in self.pools else None
        if key is not None and not key.allows(model, adapter.base_model if adapter else None):
            raise ModelNotAllowed(f"API key {key.name!r} may not use `{model}`", param="model")
        pool = self.pools[adapter.base_model if adapter else model]
        limit = self.settings.max_ongoing_requests_per_model
        if limit is not None and pool.in_flight >= limit:
            raise TooManyRequests(f"`{model}` is serving its limit of {limit} requests; "
                                  f"retry shortly", retry_after_s=1.0)
        hold = None if key is None else self.limiter.admit(
            key, token_estimate(path, payload, len(body)))  # held until the request ends
        served_name = model if adapter else self.sources[model].served_name or model
        if payload.get("model", model) == model and payload.get("model") != served_name:
            payload["model"] = served_name  # absent, or clients' name for the engines' one
            body = json.dumps(payload).encode()
        if pool.membership_changed():  # a replica came or went since the last refresh
            await self.directory.refresh_pool(pool)
        leaving = asyncio.ensure_future(wait_disconnect(request.receive))
        try:
            return await self._relay(request, path, request_id, payload, body, pool, leaving,
                                     hold, adapter)
        except EngineUnavailable:
            self.limiter.settle(hold, 0)  # no engine took it
            raise
        except ClientLeft:
            log.info("request %s: the client left before the answer; engine request aborted",
                     request_id)
            return Response(status_code=CLIENT_CLOSED)
        finally:
            leaving.cancel()  # a stream watches for itself from here on

    async def _relay(self, request: Request, path: str, request_id: str,
                     payload: dict[str, Any], body: bytes, pool: ModelPool,
                     leaving: asyncio.Future[None], hold: TokenHold | None,
                     adapter: AdapterTarget | None = None) -> Response:
        model = pool.model_id
        spans = request.state.spans = RequestSpans(request.headers, model, path)
        flow = self.disaggregated.get(model)
        if flow is not None and path in SPLIT_PATHS:  # prefill, then decode (docs/pd.md)
            with spans.routing():
                route = await until_left(self._route_request(
                    request_id, path, payload, request, flow.prefill), leaving)
            if adapter is not None:
                route = dataclasses.replace(route, lora_adapter=adapter.adapter_id)
            return await flow.forward(path, payload, request_id, route, leaving,
                                      functools.partial(self._pd_done, request, request_id,
                                                        hold, payload.get("stream") is True),
                                      AdapterHolds(self.adapters, adapter) if adapter else None)
        with spans.routing():
            route = await until_left(
                self._route_request(request_id, path, payload, request, pool), leaving)
        if adapter is not None:
            route = dataclasses.replace(route, lora_adapter=adapter.adapter_id)
        headers = {"content-type": "application/json", "x-request-id": request_id,
                   **spans.engine_headers()}
        outcome = Outcome(started_s=request.state.arrival_s)
        streamed = payload.get("stream") is True
        only = adapter.urls if adapter is not None else None
        unreachable: set[str] = set()  # engines this request could not connect to
        # one more try for an adapter: an engine that lost it (404) gets it loaded again
        for _ in range(max(1, len(pool.endpoints)) + (adapter is not None)):
            endpoint = pool.choose(route, only, unreachable)
            if endpoint is None:
                await self.directory.refresh_pool(pool)  # membership may be newer than ours
                endpoint = pool.choose(route, only, unreachable)
            if endpoint is None:
                break
            self.metrics.record_routing(model, pool.policy_name, pool.last_decision)
            spans.replica(endpoint.key)
            if adapter is not None:
                await until_left(self._load_adapter(adapter, pool, endpoint, route), leaving)
            outcome.on_first_chunk = functools.partial(pool.first_token, endpoint, route)

            def done(result: Outcome, endpoint: Any = endpoint) -> None:
                self._finish(pool, endpoint, route, adapter, failed=result.error is not None)
                self.metrics.record(model, path, result, time.monotonic(), streamed=streamed)
                status = CLIENT_CLOSED if result.disconnected else result.status
                log_access(request, request_id, model, path, status, result, endpoint.key,
                           streamed)
                spans.end(status)
                request.state.recorded = True
                self.limiter.settle(hold, _tokens_used(result))

            try:
                upstream = await until_left(
                    self.relay.open(endpoint.url + path, body, headers | endpoint.auth), leaving)
            except EngineConnectError as exc:
                log.warning("request %s: %s; trying another replica", request_id, exc)
                unreachable.add(endpoint.key)
                pool.mark_unreachable(endpoint)
                self._finish(pool, endpoint, route, adapter, failed=True)
                continue
            except ClientLeft:
                outcome.disconnected = True
                done(outcome)
                raise
            except OpenAIError:
                self._finish(pool, endpoint, route, adapter, failed=True)
                raise
            if adapter is not None and upstream.status == 404 and adapter.entry is not None:
                # the engine lost the adapter (it restarted): load it again, once
                upstream.close()
                endpoint.lora.forget(adapter.adapter_id)
                self._finish(pool, endpoint, route, adapter, failed=True)
                continue

            if streamed and upstream.status == 200:
                return RelayedStream(upstream, {"x-request-id": request_id}, outcome, done)
            try:
                content = await read_whole(upstream, outcome, leaving)
            except OpenAIError as exc:
                outcome.error = exc.message
                outcome.status = exc.status_code
                done(outcome)
                raise
            done(outcome)
            if content is None:  # the client left; the engine request was aborted
                raise ClientLeft
            return Response(content, status_code=upstream.status,
                            media_type=upstream.headers.get("content-type",
                                                            "application/json"))
        raise EngineUnavailable(f"no engine replica of `{model}` is available right now",
                                retry_after_s=1.0)

    def _pd_done(self, request: Request, request_id: str, hold: TokenHold | None,
                 streamed: bool, result: Outcome, prefill_replica: str,
                 decode_replica: str) -> None:
        """A disaggregated request ended (the flow counted it in the metrics)."""
        self.limiter.settle(hold, _tokens_used(result))
        status = CLIENT_CLOSED if result.disconnected else result.status
        log_access(request, request_id, getattr(request.state, "model_name", ""),
                   request.url.path, status, result, decode_replica, streamed,
                   prefill_replica=prefill_replica)
        request.state.spans.end(status)
        request.state.recorded = True

    async def _load_adapter(self, adapter: AdapterTarget, pool: ModelPool, endpoint: Any,
                            route: RouteRequest) -> None:
        try:
            await self.adapters.acquire(adapter, endpoint.lora, endpoint.url)
        except BaseException:
            pool.finish(endpoint, route, failed=True)
            raise

    def _resident_adapters(self) -> list[tuple[str, str, int]]:
        """Per live replica of each model with ``lora_config``: its adapters resident."""
        pools = [pool for model, pool in [*self.pools.items(), *self.prefill_pools.items()]
                 if self.sources[model].lora is not None]
        return [(pool.model_id, e.key, len(e.lora.resident))
                for pool in pools for e in list(pool.endpoints.values())]

    def _finish(self, pool: ModelPool, endpoint: Any, route: RouteRequest,
                adapter: AdapterTarget | None, *, failed: bool) -> None:
        pool.finish(endpoint, route, failed=failed)
        if adapter is not None:
            self.adapters.release(adapter, endpoint.lora)

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
                             "data": [self._model_card(m) for m in sorted(self.pools)]
                             + self.adapters.cards(CREATED_AT)})

    def _get_model(self, model_id: str) -> Response:
        if model_id not in self.pools and self.adapters.resolve(model_id) is not None:
            return JSONResponse(next(c for c in self.adapters.cards(CREATED_AT)
                                     if c["id"] == model_id))
        if model_id not in self.pools:
            raise ModelNotFound(f"The model `{model_id}` does not exist. Available models: "
                                f"{', '.join(sorted(self.pools))}")
        return JSONResponse(self._model_card(model_id))

    def _model_card(self, model_id: str) -> dict[str, Any]:
        source = self.sources[model_id]
        return {"id": model_id, "object": "model", "created": CREATED_AT,
                "owned_by": "llmserve", "root": source.source or model_id, "parent": None}

    async def _health(self, request: Request, request_id: str) -> Response:
        down = [m for m, pool in self.pools.items() if pool.is_down]
        workers = self.workers.report()
        if not self.pools and "workers_not_ready" in workers:
            return JSONResponse({"status": "starting", **workers}, status_code=503)
        if down or not self.pools:
            return JSONResponse({"status": "unavailable", "models_down": down, **workers},
                                status_code=503)
        return JSONResponse({"status": "ok", **workers})

    def _take_in_worker(self, model_id: str, url: str) -> None:
        """A worker given by URL answered: serve its model from it too."""
        pending = self.workers.pending
        served_name = model_id
        if pending.model_id:  # clients' name for the workers' one model
            bound = self.sources.get(pending.model_id)
            if bound is not None and bound.served_name != served_name:
                log.error("worker %s serves `%s`, but `%s` is mapped onto `%s`; not taking "
                          "it in", url, served_name, pending.model_id, bound.served_name)
                return
            model_id = pending.model_id
        events = pending.kv_events.get(url)
        kv_events = EventSource(url, *events) if events is not None else None
        pool = self.pools.get(model_id)
        if pool is not None:
            pool.add_url(url, kv_events)
            return
        aliased = served_name if pending.model_id else ""
        lora = None if pending.lora is None else dataclasses.replace(
            pending.lora, base_model=model_id, base_names=(model_id, served_name))
        source = ModelSource(model_id, pending.engine, dict(pending.routing_config),
                             urls=(url,), source=aliased, served_name=aliased, lora=lora,
                             kv_events=(kv_events,), api_key=pending.api_key)
        pool = make_pool(model_id, source.engine, dict(source.routing_config), None, (url,),
                         source.kv_events, api_key=pending.api_key)
        if lora is not None:
            self.adapters.add_model(lora, pool.engine)
        self.sources[model_id] = source
        self.pools[model_id] = pool
        self.directory.pools[model_id] = pool  # its engine stats refreshed, its feed closed
        if pool.policy.needs_prompt:
            renderer = PromptRenderer(model_id, _tokenizer_source(source),
                                      self.directory.client)
            renderer.start_loading()
            self.prompts[model_id] = renderer

    def _take_in_adapters(self, url: str, listed: list[tuple[str, str, str]]) -> None:
        """A worker that came up later lists LoRA adapters: serve them from it."""
        for adapter_id, parent, root in listed:
            model_id = self.workers.pending.model_id or parent
            pool = self.pools.get(model_id)
            if pool is None or url.rstrip("/") not in pool.endpoints:
                continue  # not taken in (its model is mapped elsewhere)
            if adapter_id in self.pools:
                log.error("worker %s lists adapter `%s`, the name of a model; not serving "
                          "it", url, adapter_id)
                continue
            self.adapters.add_worker_adapter(adapter_id, model_id, url.rstrip("/"), root)

    async def _openapi(self, request: Request, request_id: str) -> Response:
        return JSONResponse(openapi_document(list(self.pools)))

    def _check_admin(self, request: Request) -> None:
        admin = self.settings.admin_keys
        token = bearer_token(request.headers.get("authorization", ""))
        if admin and (token is None or admin.match(token) is None):
            raise Unauthorized(f"{request.url.path} needs the admin key")

    async def _metrics(self, request: Request, request_id: str) -> Response:
        self._check_admin(request)
        return Response(self.metrics.exposition(),
                        media_type="text/plain; version=0.0.4; charset=utf-8")

    async def _engine_targets(self, request: Request, request_id: str) -> Response:
        """The engines as a Prometheus HTTP service-discovery list (admin key as /metrics)."""
        self._check_admin(request)
        logged = {m: s.log_engine_metrics for m, s in self.sources.items()}
        return JSONResponse(engine_targets(self.pools, logged))

    async def _report_load(self) -> None:
        """Tell each LLMServer deployment's autoscaler how many requests its engines serve."""
        from llmserve.serve.handle import report_ongoing

        async def report() -> None:
            for pool in [*self.pools.values(), *self.prefill_pools.values()]:
                if pool.handle is not None:
                    report_ongoing(pool.handle, pool.in_flight)

        await keep_running("load report", report, 0.1)

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
        await self.workers.close()
        await self.adapters.close()
        for renderer in self.prompts.values():
            renderer.close()
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


def _tokens_used(result: Outcome) -> int | None:
    """The tokens a finished request used: its usage; 0 for an engine's error answer;
    None (unknown) when the client left or the engine failed on the way."""
    if result.usage:
        return int(result.usage.get("total_tokens") or 0)
    if result.status >= 400 and result.error is None and not result.disconnected:
        return 0
    return None


def _session_key(request: Request, payload: Mapping[str, Any]) -> str | None:
    key = id_header(request.headers.get("x-session-id"), "x-session-id") \
        or payload.get("prompt_cache_key") or payload.get("user")
    return str(key) if key else None
