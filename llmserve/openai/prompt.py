"""The prompt as the engine will see it, for routing: chat template applied, tokenised.

Prefix-aware routing matches prompts in the engine's token blocks, so the ingress renders
``messages`` with the model's own chat template and tokenises with the model's own
tokenizer (loaded once per model, lazily and off the event loop), exactly as vLLM's
OpenAI server does (template text, then the tokenizer without special tokens;
completions: the tokenizer with them). A model directory with ``tokenizer.json`` is read
by :class:`~llmserve.openai.tokenizer.LightTokenizer` (the ``tokenizers`` package and
Jinja, as transformers renders templates, without importing torch); anything else
(a hub id, a slow-only tokenizer) by ``transformers.AutoTokenizer``. When no tokenizer can be
loaded (``--worker-urls`` fronting a model the gateway has no files for), it asks the
engine's own ``/tokenize``; when that fails too it falls back to the prompt's characters
and says so in the log, once.

Routing only needs the prompt's head: the request is cut to its first
``MAX_ROUTED_CHARS`` characters before rendering and to ``MAX_ROUTED_TOKENS`` tokens after,
so a huge prompt costs routing no more than a long one (and cannot flush the shared
prefix index). Rendering and tokenising run on a worker thread, not the event loop, and
give up after ``RENDER_DEADLINE_S`` (the request is then routed on the prompt's text).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from llmserve.openai.tokenizer import TOKENIZER_FILE, LightTokenizer
from routing import RouteRequest

log = logging.getLogger("llmserve.openai")

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
MAX_ROUTED_CHARS = 64 * 1024  # of message contents / prompt text that routing reads
MAX_ROUTED_TOKENS = 16 * 1024  # of the prompt's tokens that routing matches
RENDER_DEADLINE_S = 1.0


class PromptRenderer:
    """Turns a request body into prompt token ids for one model."""

    def __init__(self, model_id: str, tokenizer_source: str | None,
                 client: httpx.AsyncClient | None = None) -> None:
        self.model_id = model_id
        self.tokenizer_source = tokenizer_source
        self.tokenizer: Any = None
        self.mode = "pending"  # -> "tokenizer" | "engine" | "text"
        self._client = client
        self._loading: asyncio.Task[None] | None = None
        self._warned = False
        self._late_warned = False
        self._executor: ThreadPoolExecutor | None = None

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    def start_loading(self) -> None:
        if self._loading is None:
            self._loading = asyncio.get_running_loop().create_task(self._load())

    async def wait_loaded(self) -> None:
        """Load the tokenizer now (the ingress does this before it takes requests)."""
        self.start_loading()
        assert self._loading is not None
        await asyncio.shield(self._loading)

    async def _load(self) -> None:
        if not self.tokenizer_source:
            self.mode = "engine"
            return
        try:
            self.tokenizer = await asyncio.to_thread(load_tokenizer, self.tokenizer_source)
            self.mode = "tokenizer"
            log.info("routing %r on token ids from %s", self.model_id, self.tokenizer_source)
        except Exception as exc:  # no files, no network, not a tokenizer: ask the engine
            log.warning("cannot load the tokenizer of %r from %s (%r); routing will ask the "
                        "engine's /tokenize", self.model_id, self.tokenizer_source, exc)
            self.mode = "engine"

    async def route_request(self, request_id: str, path: str, payload: Mapping[str, Any],
                            session_key: str | None, engine_url: str | None = None
                            ) -> RouteRequest:
        """A RouteRequest carrying the prompt's token ids (or, failing that, its text)."""
        self.start_loading()
        if self._loading is not None and not self._loading.done():
            await asyncio.shield(self._loading)
        tokens: Sequence[int] | None = None
        text: str | None = None
        try:
            if self.mode == "tokenizer":
                tokens = await self._tokenize_off_loop(path, payload)
            elif self.mode == "engine" and engine_url is not None:
                tokens = await self._engine_tokenize(engine_url, path,
                                                     routed_head(path, payload))
        except TimeoutError:
            if not self._late_warned:
                self._late_warned = True
                log.warning("routing %r: rendering a prompt took longer than %g s; such "
                            "requests are routed on the prompt's text", self.model_id,
                            RENDER_DEADLINE_S)
        except Exception as exc:  # a template error is the engine's to report, not ours
            log.debug("request %s: no prompt tokens for routing: %r", request_id, exc)
        if tokens is not None:
            tokens = tokens[:MAX_ROUTED_TOKENS]
        else:
            text = prompt_text(path, routed_head(path, payload))
            if text is not None and not self._warned:
                self._warned = True
                log.warning("routing %r on prompt characters: no tokenizer available, so "
                            "prefix matches ignore the engine's block boundaries",
                            self.model_id)
        salt = payload.get("cache_salt")
        return RouteRequest(request_id, self.model_id, session_key, prompt=text,
                            prompt_token_ids=tuple(tokens) if tokens is not None else None,
                            cache_salt=salt if isinstance(salt, str) and salt else None)

    async def _tokenize_off_loop(self, path: str, payload: Mapping[str, Any]
                                 ) -> list[int] | None:
        """The head's tokens, on the renderer's thread; TimeoutError after the deadline."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="llmserve-render")
        work = asyncio.get_running_loop().run_in_executor(
            self._executor, lambda: self.tokenize(path, routed_head(path, payload)))
        return await asyncio.wait_for(work, RENDER_DEADLINE_S)

    def tokenize(self, path: str, payload: Mapping[str, Any]) -> list[int] | None:
        tokenizer = self.tokenizer
        if path == CHAT and isinstance(payload.get("messages"), list):
            options = dict(payload.get("chat_template_kwargs") or {})
            if payload.get("continue_final_message"):
                options["continue_final_message"] = True
            text = tokenizer.apply_chat_template(
                payload["messages"], tokenize=False,
                add_generation_prompt=payload.get("add_generation_prompt", True),
                tools=payload.get("tools"), **options)
            return self.encode(text, bool(payload.get("add_special_tokens", False)))
        if path == COMPLETIONS:
            prompt = payload.get("prompt")
            if isinstance(prompt, list) and len(prompt) == 1:
                prompt = prompt[0]
            if isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
                return [int(t) for t in prompt]
            if isinstance(prompt, str):
                return self.encode(prompt, bool(payload.get("add_special_tokens", True)))
        return None

    def encode(self, text: str, add_special_tokens: bool) -> list[int]:
        """Token ids as ``tokenizer(text)["input_ids"]``; a fast tokenizer's Rust core is
        called directly (the transformers wrapper around it costs several times more)."""
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is not None:
            return list(backend.encode(text, add_special_tokens=add_special_tokens).ids)
        return list(self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])

    async def _engine_tokenize(self, engine_url: str, path: str,
                               payload: Mapping[str, Any]) -> list[int] | None:
        if self._client is None or path not in (CHAT, COMPLETIONS):
            return None
        keys = ("model", "messages", "prompt", "add_generation_prompt", "add_special_tokens",
                "continue_final_message", "chat_template_kwargs", "tools")
        body = {k: payload[k] for k in keys if k in payload}
        response = await self._client.post(engine_url + "/tokenize", json=body, timeout=5.0)
        if response.status_code != 200:
            self.mode = "text"  # this engine has no usable /tokenize; stop asking
            return None
        tokens = response.json().get("tokens")
        return [int(t) for t in tokens] if isinstance(tokens, list) else None


def load_tokenizer(source: str) -> Any:
    """The light tokenizer for a directory with ``tokenizer.json`` (no torch in the
    gateway); otherwise (a hub id, a slow-only tokenizer) ``transformers.AutoTokenizer``."""
    if Path(source, TOKENIZER_FILE).is_file():
        return LightTokenizer.from_dir(source)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(source)


def routed_head(path: str, payload: Mapping[str, Any]) -> Mapping[str, Any]:
    """The request cut to the part routing reads: contents up to ``MAX_ROUTED_CHARS``."""
    if path == CHAT and isinstance(payload.get("messages"), list):
        budget = MAX_ROUTED_CHARS
        messages: list[Any] = []
        for message in payload["messages"]:
            if budget <= 0:
                break
            if isinstance(message, Mapping):
                message, budget = _cut_message(message, budget)
            messages.append(message)
        head = {**payload, "messages": messages}
        tools = payload.get("tools")
        if tools is not None and len(json.dumps(tools)) > MAX_ROUTED_CHARS:
            head.pop("tools")
        return head
    prompt = payload.get("prompt")
    if isinstance(prompt, str) and len(prompt) > MAX_ROUTED_CHARS:
        return {**payload, "prompt": prompt[:MAX_ROUTED_CHARS]}
    if isinstance(prompt, list) and len(prompt) > MAX_ROUTED_TOKENS:
        return {**payload, "prompt": prompt[:MAX_ROUTED_TOKENS]}
    return payload


def _cut_message(message: Mapping[str, Any], budget: int) -> tuple[Mapping[str, Any], int]:
    content = message.get("content")
    if isinstance(content, str):
        return {**message, "content": content[:budget]}, budget - len(content)
    if isinstance(content, list):
        parts: list[Any] = []
        for part in content:
            if budget <= 0:
                break
            text = part.get("text") if isinstance(part, Mapping) else None
            if isinstance(text, str):
                part = {**part, "text": text[:budget]}
                budget -= len(text)
            parts.append(part)
        return {**message, "content": parts}, budget
    return message, budget


def prompt_text(path: str, payload: Mapping[str, Any]) -> str | None:
    """The prompt's text without a template: messages' contents in order, or the prompt."""
    if path == CHAT and isinstance(payload.get("messages"), list):
        parts = []
        for message in payload["messages"]:
            if not isinstance(message, Mapping):
                continue
            content = message.get("content")
            if isinstance(content, list):
                content = "".join(p.get("text", "") for p in content if isinstance(p, Mapping))
            parts.append(f"{message.get('role', '')}\n{content or ''}\n")
        return "".join(parts)
    prompt = payload.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    return prompt if isinstance(prompt, str) else None
