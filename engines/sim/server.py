"""The HTTP face of a replica: the part of vLLM's OpenAI server the gateway uses (Starlette)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from engines.sim.auth import ApiKeyCheck
from engines.sim.errors import BadRequest, SimError, error_body, sim_error_body
from engines.sim.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    LoadLoraRequest,
    TokenizeRequest,
    UnloadLoraRequest,
)
from engines.sim.replica import SimReplica
from engines.sim.serving import Call, OpenAIServing, normalize_messages

BodyT = TypeVar("BodyT", bound=BaseModel)
CLIENT_CLOSED_REQUEST = 499


async def parse_body(request: Request, model: type[BodyT]) -> BodyT:
    try:
        data = json.loads(await request.body() or b"{}")
    except json.JSONDecodeError as exc:
        raise BadRequest(f"invalid JSON body: {exc}") from exc
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(part) for part in first.get("loc", ())) or None
        raise BadRequest(str(exc), param=param) from exc


async def wait_for_disconnect(request: Request) -> None:
    """Returns when the client has gone (the body must have been read already)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def until_disconnect(request: Request, work: Awaitable[Response]) -> Response:
    """Run ``work``; cancel it (which aborts its engine requests) if the client leaves."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(wait_for_disconnect(request))
    await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        watcher.cancel()
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return Response(status_code=CLIENT_CLOSED_REQUEST)


async def stream_until_disconnect(
    request: Request, serving: OpenAIServing, call: Call, chunks: AsyncIterator[bytes]
) -> AsyncIterator[bytes]:
    watcher = asyncio.ensure_future(wait_for_disconnect(request))
    watcher.add_done_callback(lambda _: serving.abort(call))
    try:
        async for chunk in chunks:
            yield chunk
    finally:
        watcher.cancel()
        serving.abort(call)


def sim_error_response(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, SimError)
    return JSONResponse(sim_error_body(exc), status_code=exc.status_code)


def build_app(replica: SimReplica, api_key: str | None = None) -> Starlette:
    """The replica's server; with ``api_key``, guarded as vLLM guards it (`engines.sim.auth`)."""
    serving = OpenAIServing(replica)
    tokenizer = replica.tokenizer

    async def generate(request: Request, kind: str) -> Response:
        body: CompletionRequest | ChatCompletionRequest
        if kind == "chat":
            body = await parse_body(request, ChatCompletionRequest)
            prompt = serving.chat_prompt(body)
            max_tokens = body.requested_max_tokens
        else:
            body = await parse_body(request, CompletionRequest)
            prompt = serving.completion_prompt(body)
            max_tokens = body.max_tokens
        call, queue = serving.start(kind, body, prompt, max_tokens)
        if body.stream:
            chunks = serving.stream(call, queue, body.include_usage)
            return StreamingResponse(
                stream_until_disconnect(request, serving, call, chunks),
                media_type="text/event-stream",
            )

        async def respond() -> Response:
            return JSONResponse(await serving.full_response(call, queue))

        return await until_disconnect(request, respond())

    async def completions(request: Request) -> Response:
        return await generate(request, "completion")

    async def chat_completions(request: Request) -> Response:
        return await generate(request, "chat")

    async def models(request: Request) -> Response:
        base = {"object": "model", "created": replica.created, "owned_by": "vllm",
                "max_model_len": replica.max_model_len}  # fmt: skip
        root = replica.config.model_path or replica.model_name
        data = [{**base, "id": replica.model_name, "root": root, "parent": None}]
        data += [
            {**base, "id": name, "root": path, "parent": replica.model_name}
            for name, path in replica.loras.items()
        ]
        return JSONResponse({"object": "list", "data": data})

    async def health(request: Request) -> Response:
        return Response(status_code=200)

    async def version(request: Request) -> Response:
        return JSONResponse({"version": "0.32.0+sim"})

    async def metrics(request: Request) -> Response:
        return Response(replica.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    async def tokenize(request: Request) -> Response:
        body = await parse_body(request, TokenizeRequest)
        replica.resolve_model(body.model)
        if body.messages is not None:
            text = tokenizer.render_chat(
                normalize_messages(body.messages), body.add_generation_prompt
            )
            tokens = tokenizer.encode(text, add_special_tokens=False)
        elif body.prompt is not None:
            tokens = tokenizer.encode(body.prompt, add_special_tokens=body.add_special_tokens)
        else:
            raise BadRequest("either prompt or messages is required", param="prompt")
        return JSONResponse({"count": len(tokens), "max_model_len": replica.max_model_len,
                             "tokens": tokens, "token_strs": None})  # fmt: skip

    async def detokenize(request: Request) -> Response:
        body = await parse_body(request, DetokenizeRequest)
        replica.resolve_model(body.model)
        return JSONResponse({"prompt": tokenizer.decode(body.tokens)})

    async def load_lora(request: Request) -> Response:
        body = await parse_body(request, LoadLoraRequest)
        await replica.add_lora(body.lora_name, body.lora_path)
        return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' added successfully.")

    async def unload_lora(request: Request) -> Response:
        body = await parse_body(request, UnloadLoraRequest)
        replica.unload_lora(body.lora_name)
        return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' removed successfully.")

    async def not_found(request: Request, exc: Exception) -> Response:
        return JSONResponse(error_body("Not Found", 404, "NotFoundError"), status_code=404)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        replica.engine.start()
        yield
        await replica.engine.stop()

    routes = [
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/version", version, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/tokenize", tokenize, methods=["POST"]),
        Route("/detokenize", detokenize, methods=["POST"]),
        Route("/v1/load_lora_adapter", load_lora, methods=["POST"]),
        Route("/v1/unload_lora_adapter", unload_lora, methods=["POST"]),
    ]
    handlers: dict[Any, Callable[[Request, Exception], Any]] = {
        SimError: sim_error_response,
        404: not_found,
    }
    middleware = [Middleware(ApiKeyCheck, api_key=api_key)] if api_key else []
    return Starlette(routes=routes, exception_handlers=handlers, lifespan=lifespan,
                     middleware=middleware)
