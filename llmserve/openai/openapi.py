"""The OpenAPI document of the OpenAI routes the gateway serves (``GET /openapi.json``).

Request bodies are described as far as the gateway itself reads them; the rest goes to
the engine unchanged (its own validation answers 400). Every error status the gateway
may answer is listed, so a client or a fuzzer knows which ones are expected.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

ERROR = {"$ref": "#/components/schemas/Error"}
ERRORS = {
    "400": "invalid request (the gateway's checks or the engine's own)",
    "401": "missing or wrong API key",
    "403": "the API key may not use this model",
    "404": "unknown model",
    "408": "the request body did not arrive in time",
    "413": "request body too large",
    "429": "a rate or concurrency limit; see Retry-After",
    "431": "request headers too large",
    "502": "the engine failed while answering",
    "503": "no engine can take the request now; see Retry-After",
    "504": "the engine did not answer in time",
}


def _responses(ok: str) -> dict[str, Any]:
    responses: dict[str, Any] = {"200": {"description": ok}}
    for status, text in ERRORS.items():
        responses[status] = {"description": text,
                             "content": {"application/json": {"schema": ERROR}}}
    return responses


def _post(summary: str, body: dict[str, Any]) -> dict[str, Any]:
    return {"post": {
        "summary": summary,
        "requestBody": {"required": True,
                        "content": {"application/json": {"schema": body}}},
        "responses": _responses(summary),
    }}


def openapi_document(model_ids: Sequence[str]) -> dict[str, Any]:
    model = {"type": "string", "enum": sorted(model_ids)} if model_ids else {"type": "string"}
    message = {"type": "object", "required": ["role", "content"], "properties": {
        "role": {"type": "string", "enum": ["system", "user", "assistant"]},
        "content": {"type": "string"}}}
    sampling = {
        "max_tokens": {"type": "integer", "minimum": 1, "maximum": 16},
        "temperature": {"type": "number", "minimum": 0, "maximum": 2},
        "stream": {"type": "boolean"},
        "user": {"type": "string"},
    }
    chat = {"type": "object", "required": ["model", "messages"], "properties": {
        "model": model, "messages": {"type": "array", "items": message, "minItems": 1},
        **sampling}}
    completion = {"type": "object", "required": ["model", "prompt"], "properties": {
        "model": model, "prompt": {"type": "string"}, **sampling}}
    tokenize = {"type": "object", "required": ["prompt"], "properties": {
        "model": model, "prompt": {"type": "string"}}}
    detokenize = {"type": "object", "required": ["tokens"], "properties": {
        "model": model, "tokens": {"type": "array",
                                   "items": {"type": "integer", "minimum": 0,
                                             "maximum": 255}}}}
    return {
        "openapi": "3.0.3",
        "info": {"title": "llmserve OpenAI-compatible API", "version": "1"},
        "components": {"schemas": {"Error": {
            "type": "object", "required": ["error"], "properties": {"error": {
                "type": "object", "required": ["message", "type"], "properties": {
                    "message": {"type": "string"}, "type": {"type": "string"},
                    "param": {"type": "string", "nullable": True},
                    "code": {"type": "string", "nullable": True}}}}}}},
        "paths": {
            "/v1/models": {"get": {"summary": "models served",
                                   "responses": _responses("the model list")}},
            "/v1/chat/completions": _post("a chat completion", chat),
            "/v1/completions": _post("a completion", completion),
            "/tokenize": _post("the prompt's token ids", tokenize),
            "/detokenize": _post("the tokens' text", detokenize),
        },
    }
