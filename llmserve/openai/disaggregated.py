"""One request through a prefill pool and a decode pool, with vLLM's KV-transfer protocol.

As vLLM's disaggregated-serving proxies: the prefill replica gets the request with
``max_tokens: 1``, ``stream: false`` and ``kv_transfer_params: {"do_remote_decode": true}``
and answers with the ``kv_transfer_params`` that locate its KV blocks; the original
request, carrying those, goes to a decode replica, whose answer (streamed or not, usage
counting the prompt once) is what the client gets. See docs/pd.md.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from starlette.responses import Response

from llmserve.lora.holds import AdapterHolds
from llmserve.openai.client_left import ClientLeft, until_left
from llmserve.openai.errors import (
    BadGateway,
    EngineUnavailable,
    InvalidRequest,
    OpenAIError,
    TooManyRequests,
)
from llmserve.openai.metrics import IngressMetrics
from llmserve.openai.pd_metrics import PDMetrics
from llmserve.openai.pool import Endpoint, EngineDirectory, ModelPool
from llmserve.openai.relay import (
    EngineConnectError,
    Outcome,
    Relay,
    RelayedStream,
    read_whole,
)
from llmserve.openai.upstream import UpstreamResponse
from routing import RouteRequest

log = logging.getLogger("llmserve.openai")

CLIENT_CLOSED = 499
SPLIT_PATHS = frozenset({"/v1/chat/completions", "/v1/completions"})
PREFILL_PARAMS: dict[str, Any] = {
    "do_remote_decode": True, "do_remote_prefill": False, "remote_engine_id": None,
    "remote_block_ids": None, "remote_host": None, "remote_port": None,
}
# Request fields only the decode replica can honour: dropped from the prefill request.
DECODE_ONLY = ("stream_options", "min_tokens", "min_completion_tokens")


def check_splittable(payload: Mapping[str, Any]) -> None:
    """A 400 for requests one prefill plus one decode cannot serve as one engine would."""
    for name in ("n", "best_of"):
        value = payload.get(name)
        if value is not None and value != 1:
            raise InvalidRequest(f"`{name}` = {value!r} is not supported with prefill/decode "
                                 f"disaggregation; send one request per choice", param=name)
    if payload.get("echo"):
        raise InvalidRequest("`echo` is not supported with prefill/decode disaggregation",
                             param="echo")
    if payload.get("prompt_logprobs") is not None:
        raise InvalidRequest("`prompt_logprobs` is not supported with prefill/decode "
                             "disaggregation", param="prompt_logprobs")


def prefill_payload(payload: Mapping[str, Any]) -> dict[str, Any]:
    body = {k: v for k, v in payload.items() if k not in DECODE_ONLY}
    body.update(stream=False, max_tokens=1, kv_transfer_params=dict(PREFILL_PARAMS))
    if "max_completion_tokens" in body:
        body["max_completion_tokens"] = 1
    return body


def decode_payload(payload: Mapping[str, Any],
                   kv_transfer_params: Mapping[str, Any] | None) -> dict[str, Any]:
    body = dict(payload)
    if kv_transfer_params:
        body["kv_transfer_params"] = dict(kv_transfer_params)
    return body


@dataclass(frozen=True)
class PrefillResult:
    kv_transfer_params: Mapping[str, Any] | None
    done_s: float
    replica: str  # the prefill replica's key


# (decode outcome, prefill replica key, decode replica key), once per decoded request
Finished = Callable[[Outcome, str, str], None]


class DisaggregatedFlow:
    """Prefill on ``prefill`` (its policy, e.g. prefix-aware), then decode on ``decode``."""

    def __init__(self, prefill: ModelPool, decode: ModelPool, relay: Relay,
                 metrics: IngressMetrics, pd_metrics: PDMetrics, directory: EngineDirectory,
                 max_in_flight: int | None = None) -> None:
        self.prefill = prefill
        self.decode = decode
        self.relay = relay
        self.metrics = metrics
        self.pd_metrics = pd_metrics
        self.directory = directory
        self.max_in_flight = max_in_flight
        self.in_flight = 0  # requests between arrival and the end of their decode answer

    @property
    def model_id(self) -> str:
        return self.decode.model_id

    async def forward(self, path: str, payload: dict[str, Any], request_id: str,
                      route: RouteRequest, leaving: asyncio.Future[None],
                      on_done: Finished,
                      adapter: AdapterHolds | None = None) -> Response:
        """The client's response. ``leaving`` completes when the client disconnects;
        ``on_done`` gets the decode outcome (usage, for per-key token limits and the access
        log) and the keys of the prefill and decode replicas that served the request;
        ``adapter``: the LoRA adapter the request names, made resident on both replicas it
        runs on."""
        model = self.model_id
        try:
            check_splittable(payload)
        except InvalidRequest:
            self.pd_metrics.requests.labels(model, "rejected").inc()
            raise
        if self.max_in_flight is not None and self.in_flight >= self.max_in_flight:
            raise TooManyRequests(f"`{model}` is serving its limit of {self.max_in_flight} "
                                  f"requests; retry shortly", retry_after_s=1.0)
        started_s = time.monotonic()
        self._count(+1)
        finished = False
        try:
            try:
                prefill = await self._prefill(path, payload, request_id, route, leaving,
                                              adapter)
            finally:
                if adapter is not None:
                    adapter.release()  # the prefill replica's hold: its part is done
            if isinstance(prefill, Response):  # the prefill's error, or the client left
                finished = True
                return prefill
            response = await self._decode(path, payload, request_id, route, prefill,
                                          started_s, leaving, on_done, adapter)
            finished = not isinstance(response, RelayedStream)  # a stream ends later
            return response
        except BaseException:
            finished = True
            raise
        finally:
            if finished:
                self._ended(adapter)

    def _ended(self, adapter: AdapterHolds | None) -> None:
        self._count(-1)
        if adapter is not None:
            adapter.release()

    def _count(self, change: int) -> None:
        self.in_flight += change
        self.pd_metrics.in_flight.labels(self.model_id).set(self.in_flight)

    # ---- prefill ---------------------------------------------------------------------
    async def _prefill(self, path: str, payload: Mapping[str, Any], request_id: str,
                       route: RouteRequest, leaving: asyncio.Future[None],
                       adapter: AdapterHolds | None = None) -> PrefillResult | Response:
        """The prefill answer's KV location, or the response to give the client instead
        (the prefill replica's own error, or 499 when the client left)."""
        model, pool = self.model_id, self.prefill
        if pool.membership_changed():
            await self.directory.refresh_pool(pool)
        body = json.dumps(prefill_payload(payload)).encode()
        headers = {"content-type": "application/json", "x-request-id": f"{request_id}-p"}
        died: BadGateway | None = None
        # one more try for an adapter: an engine that lost it (404) gets it loaded again
        for _ in range(max(1, len(pool.endpoints)) + (adapter is not None)):
            endpoint = await self._choose(pool, route, adapter, last=False)
            if endpoint is None:
                break
            outcome = Outcome(on_first_chunk=functools.partial(pool.first_token, endpoint,
                                                               route))
            try:
                # vLLM sends a whole answer's headers when it is done: watch the client
                # meanwhile (leaving closes the connection, which aborts the prefill)
                upstream = await until_left(self.relay.open(
                    endpoint.url + path, body, headers | endpoint.auth), leaving)
                content = await read_whole(upstream, outcome, leaving)
            except EngineConnectError as exc:
                log.warning("request %s: prefill %s; trying another replica", request_id, exc)
                await self._lost(pool, endpoint, route)
                self.pd_metrics.prefill_retries.labels(model).inc()
                continue
            except BadGateway as exc:
                # The prefill engine died while computing. Nothing has reached the client
                # and the KV died with the engine, so another prefill replica starts over.
                log.warning("request %s: prefill replica %s failed (%s); trying another "
                            "replica", request_id, endpoint.url, exc.message)
                died = exc
                await self._lost(pool, endpoint, route)
                self.pd_metrics.prefill_retries.labels(model).inc()
                continue
            except ClientLeft:
                content = None
            except OpenAIError:
                pool.finish(endpoint, route, failed=True)
                self.pd_metrics.requests.labels(model, "prefill_error").inc()
                raise
            done_s = time.monotonic()
            pool.finish(endpoint, route, failed=content is None or upstream.status != 200)
            if content is None:
                self.pd_metrics.requests.labels(model, "client_left").inc()
                return Response(status_code=CLIENT_CLOSED)
            if upstream.status == 404 and adapter is not None and adapter.lost_by(endpoint):
                continue
            if upstream.status != 200:
                self.pd_metrics.requests.labels(model, "prefill_error").inc()
                return _relayed(content, upstream)
            self.pd_metrics.prefill_ttft.labels(model).observe(done_s - outcome.started_s)
            return PrefillResult(self._kv_params(content, request_id), done_s, endpoint.key)
        self.pd_metrics.requests.labels(model, "prefill_error").inc()
        if died is not None:
            raise BadGateway(f"the prefill replicas of `{model}` failed while computing the "
                             f"prompt: {died.message}")
        raise EngineUnavailable(f"no prefill replica of `{model}` is available right now",
                                retry_after_s=1.0)

    def _kv_params(self, content: bytes, request_id: str) -> Mapping[str, Any] | None:
        try:
            params = json.loads(content).get("kv_transfer_params")
        except (ValueError, AttributeError):
            params = None
        if not isinstance(params, Mapping):
            log.warning("request %s: the prefill answer has no kv_transfer_params; the "
                        "decode replica computes the prompt itself", request_id)
            return None
        blocks = params.get("remote_block_ids") or []
        groups = blocks if blocks and isinstance(blocks[0], list) else [blocks]
        self.pd_metrics.kv_blocks.labels(self.model_id).inc(sum(len(g) for g in groups))
        return params

    # ---- decode ----------------------------------------------------------------------
    async def _decode(self, path: str, payload: Mapping[str, Any], request_id: str,
                      route: RouteRequest, prefill: PrefillResult, started_s: float,
                      leaving: asyncio.Future[None], on_done: Finished,
                      adapter: AdapterHolds | None = None) -> Response:
        model, pool = self.model_id, self.decode
        body = json.dumps(decode_payload(payload, prefill.kv_transfer_params)).encode()
        headers = {"content-type": "application/json", "x-request-id": request_id}
        attempts = 0
        for _ in range(max(1, len(pool.endpoints)) + (adapter is not None)):
            endpoint = await self._choose(pool, route, adapter, last=True)
            if endpoint is None:
                break
            attempts += 1
            if attempts > 1:
                self.pd_metrics.decode_retries.labels(model).inc()
            outcome = Outcome(on_first_chunk=functools.partial(pool.first_token, endpoint,
                                                               route))
            try:
                # a whole answer's headers come when it is done: watch the client meanwhile
                upstream = await until_left(self.relay.open(
                    endpoint.url + path, body, headers | endpoint.auth), leaving)
            except ClientLeft:  # the connection is closed: the engine aborts the request
                pool.finish(endpoint, route, failed=False)
                self.pd_metrics.requests.labels(model, "client_left").inc()
                return Response(status_code=CLIENT_CLOSED)
            except EngineConnectError as exc:
                # The request never reached it, so the KV is still on the prefill engine
                # waiting to be pulled: another decode replica can take it.
                log.warning("request %s: decode %s; trying another replica", request_id, exc)
                await self._lost(pool, endpoint, route)
                continue
            except OpenAIError:
                pool.finish(endpoint, route, failed=True)
                self.pd_metrics.requests.labels(model, "decode_error").inc()
                raise
            if upstream.status == 404 and adapter is not None and adapter.lost_by(endpoint):
                upstream.close()  # the request never started there: the KV still waits
                pool.finish(endpoint, route, failed=True)
                continue
            return await self._relay_decode(path, payload, endpoint, route, upstream, outcome,
                                            prefill, started_s, leaving, on_done, adapter)
        self.pd_metrics.requests.labels(model, "decode_error").inc()
        raise BadGateway(f"no decode replica of `{model}` could take the request after its "
                         f"prefill")

    async def _relay_decode(self, path: str, payload: Mapping[str, Any], endpoint: Endpoint,
                            route: RouteRequest, upstream: UpstreamResponse,
                            outcome: Outcome, prefill: PrefillResult, started_s: float,
                            leaving: asyncio.Future[None], on_done: Finished,
                            adapter: AdapterHolds | None = None) -> Response:
        model, pool = self.model_id, self.decode

        def done(result: Outcome, stream: bool = False) -> None:
            now_s = time.monotonic()
            pool.finish(endpoint, route, failed=result.error is not None)
            ended = ("client_left" if result.disconnected else
                     "decode_error" if result.error or result.status != 200 else "ok")
            self.pd_metrics.requests.labels(model, ended).inc()
            self.pd_metrics.record_decode(model, result, prefill.done_s, now_s)
            self.metrics.record(model, path, dataclasses.replace(result, started_s=started_s),
                                now_s, streamed=payload.get("stream") is True)
            on_done(result, prefill.replica, endpoint.key)
            if stream:
                self._ended(adapter)

        if payload.get("stream") is True and upstream.status == 200:
            return RelayedStream(upstream, {"x-request-id": route.request_id}, outcome,
                                 functools.partial(done, stream=True))
        try:
            content = await read_whole(upstream, outcome, leaving)
        except OpenAIError as exc:
            outcome.error = exc.message
            done(outcome)
            raise
        done(outcome)
        if content is None:
            return Response(status_code=CLIENT_CLOSED)
        return _relayed(content, upstream)

    async def _lost(self, pool: ModelPool, endpoint: Endpoint, route: RouteRequest) -> None:
        """A replica's engine could not be reached: stop routing there and re-read the
        pool (a replica that restarted its engine serves it at a new address)."""
        pool.mark_unreachable(endpoint)
        pool.finish(endpoint, route, failed=True)
        await self.directory.refresh_pool(pool)

    async def _choose(self, pool: ModelPool, route: RouteRequest,
                      adapter: AdapterHolds | None = None, *,
                      last: bool = False) -> Endpoint | None:
        only = adapter.only_urls if adapter is not None else None
        endpoint = pool.choose(route, only)
        if endpoint is None:
            await self.directory.refresh_pool(pool)  # membership may be newer than ours
            endpoint = pool.choose(route, only)
        if endpoint is not None and adapter is not None:
            try:  # resident there before the request goes (loaded on demand)
                await adapter.take(endpoint, last=last)
            except BaseException:
                pool.finish(endpoint, route, failed=True)
                raise
        return endpoint


def _relayed(content: bytes, upstream: UpstreamResponse) -> Response:
    return Response(content, status_code=upstream.status,
                    media_type=upstream.headers.get("content-type", "application/json"))
