"""OpenAI completions and chat completions over a simulated replica (vLLM's wire format)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from engines.sim.engine import EngineRejected, TimedOutput
from engines.sim.errors import BadRequest
from engines.sim.protocol import ChatCompletionRequest, CompletionRequest
from engines.sim.replica import SimReplica
from engines.sim.request import LoraRef, RemotePrefill, RequestStatus, SamplingSpec, SimRequest
from engines.sim.text_gen import output_plan

JSON = dict[str, Any]


@dataclass
class Choice:
    index: int
    request_id: str
    text: str = ""
    num_tokens: int = 0
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    block_ids: tuple[int, ...] = ()


@dataclass
class Call:
    """One HTTP request: ``n`` engine requests sharing a prompt."""

    call_id: str
    kind: str  # "chat" or "completion"
    model: str
    prompt_token_ids: tuple[int, ...]
    stop_strings: tuple[str, ...]
    choices: list[Choice]
    kv_transfer_params: dict[str, Any] | None
    created: int = field(default_factory=lambda: int(time.time()))
    num_cached_tokens: int = 0

    @property
    def is_done(self) -> bool:
        return all(choice.finish_reason is not None for choice in self.choices)

    def usage(self) -> JSON:
        completion = sum(choice.num_tokens for choice in self.choices)
        prompt = len(self.prompt_token_ids)
        return {
            "prompt_tokens": prompt,
            "total_tokens": prompt + completion,
            "completion_tokens": completion,
            "prompt_tokens_details": None,
        }


def sse(data: JSON | str) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {payload}\n\n".encode()


def message_text(content: Any) -> str:
    """Flatten OpenAI content parts to the string most chat templates expect."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return str(content)


def normalize_messages(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**m, "content": message_text(m.get("content"))} for m in messages]


def _remote_prefill(
    params: dict[str, Any] | None, num_prompt_tokens: int, block_size: int
) -> RemotePrefill | None:
    if not params or not params.get("do_remote_prefill"):
        return None
    num_tokens = params.get("remote_num_tokens")
    if not isinstance(num_tokens, int) or num_tokens <= 0:
        block_ids = params.get("remote_block_ids") or []
        if block_ids and isinstance(block_ids[0], list):  # one list per KV cache group
            block_ids = block_ids[0]
        num_tokens = len(block_ids) * block_size if block_ids else num_prompt_tokens
    return RemotePrefill(min(num_tokens, num_prompt_tokens), dict(params))


class OpenAIServing:
    def __init__(self, replica: SimReplica) -> None:
        self.replica = replica

    # -- prompt -> call --------------------------------------------------------------

    def completion_prompt(self, body: CompletionRequest) -> list[int]:
        prompt = body.prompt
        if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int):
            if len(prompt) != 1:
                raise BadRequest("the simulator takes one prompt per request", param="prompt")
            prompt = prompt[0]  # type: ignore[assignment]
        if isinstance(prompt, str):
            return self.replica.tokenizer.encode(prompt, add_special_tokens=body.add_special_tokens)
        return [int(token) for token in prompt]  # type: ignore[arg-type]

    def chat_prompt(self, body: ChatCompletionRequest) -> list[int]:
        tokenizer = self.replica.tokenizer
        try:
            text = tokenizer.render_chat(
                normalize_messages(body.messages), body.add_generation_prompt
            )
        except Exception as exc:  # jinja errors are the client's bad input
            raise BadRequest(f"chat template error: {exc}", param="messages") from exc
        return tokenizer.encode(text, add_special_tokens=body.add_special_tokens)

    def start(
        self,
        kind: str,
        body: CompletionRequest | ChatCompletionRequest,
        prompt_token_ids: list[int],
        max_tokens: int | None,
    ) -> tuple[Call, asyncio.Queue[TimedOutput]]:
        replica = self.replica
        lora = replica.resolve_model(body.model)
        num_prompt = len(prompt_token_ids)
        if num_prompt == 0:
            raise BadRequest("The prompt cannot be empty.", param="prompt")
        max_len = replica.max_model_len
        if max_tokens is None:
            max_tokens = max_len - num_prompt
        if num_prompt + max_tokens > max_len or max_tokens < 1:
            raise BadRequest(
                f"This model's maximum context length is {max_len} tokens. However, you "
                f"requested {num_prompt + max_tokens} tokens ({num_prompt} in the messages, "
                f"{max_tokens} in the completion). Please reduce the length of the messages "
                "or completion.",
                param="max_tokens",
            )
        prefix = "chatcmpl" if kind == "chat" else "cmpl"
        call = Call(
            call_id=f"{prefix}-{uuid.uuid4().hex}",
            kind=kind,
            model=body.model or replica.model_name,
            prompt_token_ids=tuple(prompt_token_ids),
            stop_strings=body.stop_strings,
            choices=[],
            kv_transfer_params=body.kv_transfer_params,
        )
        queue: asyncio.Queue[TimedOutput] = asyncio.Queue()
        requests = [
            self._engine_request(call, body, index, max_tokens, lora) for index in range(body.n)
        ]
        try:
            for request in requests:
                replica.engine.submit(request, queue)
                call.choices.append(Choice(len(call.choices), request.request_id))
        except EngineRejected as exc:
            self.abort(call)
            raise BadRequest(str(exc), param="prompt") from exc
        return call, queue

    def _engine_request(
        self,
        call: Call,
        body: CompletionRequest | ChatCompletionRequest,
        index: int,
        max_tokens: int,
        lora: LoraRef | None,
    ) -> SimRequest:
        tokenizer = self.replica.tokenizer
        config = self.replica.config.engine
        sampling = SamplingSpec(
            max_tokens=max_tokens,
            eos_token_id=tokenizer.eos_token_id,
            ignore_eos=body.ignore_eos,
            stop_token_ids=tuple(body.stop_token_ids or ()) + tokenizer.stop_token_ids,
            min_tokens=body.min_tokens,
        )
        plan = output_plan(
            call.prompt_token_ids,
            tokenizer.word_token_ids,
            max_tokens,
            tokenizer.eos_token_id,
            body.ignore_eos,
            body.seed,
            index,
            lora.name if lora is not None else None,
        )
        return SimRequest(
            request_id=f"{call.call_id}-{index}",
            prompt_token_ids=call.prompt_token_ids,
            sampling=sampling,
            output_plan=plan,
            block_size=config.block_size,
            lora=lora,
            cache_salt=body.cache_salt,
            remote_prefill=_remote_prefill(
                body.kv_transfer_params, len(call.prompt_token_ids), config.block_size
            ),
        )

    def abort(self, call: Call) -> None:
        for choice in call.choices:
            if choice.finish_reason is None:
                self.replica.engine.abort(choice.request_id)

    # -- outputs ---------------------------------------------------------------------

    async def deltas(
        self, call: Call, queue: asyncio.Queue[TimedOutput]
    ) -> AsyncIterator[tuple[Choice, str]]:
        """(choice, new text) per engine output until every choice has finished."""
        by_id = {choice.request_id: choice for choice in call.choices}
        try:
            while not call.is_done:
                item = await queue.get()
                choice = by_id[item.output.request_id]
                if choice.finish_reason is not None:
                    continue
                if item.output.num_cached_prompt_tokens:
                    call.num_cached_tokens = item.output.num_cached_prompt_tokens
                yield choice, self._apply(call, choice, item)
        finally:
            self.abort(call)

    def _apply(self, call: Call, choice: Choice, item: TimedOutput) -> str:
        output = item.output
        tokenizer = self.replica.tokenizer
        delta = ""
        if output.token_id is not None:
            choice.num_tokens += 1
            delta = tokenizer.token_text(output.token_id)
        if output.finish is not None:
            choice.finish_reason = output.finish.value
            choice.block_ids = output.block_ids
            stopped_on = output.token_id
            if (
                stopped_on is not None
                and stopped_on != tokenizer.eos_token_id
                and (output.finish is RequestStatus.FINISHED_STOPPED)
            ):
                choice.stop_reason = stopped_on
        start = max(0, len(choice.text) - max((len(s) for s in call.stop_strings), default=0))
        choice.text += delta
        for stop in call.stop_strings:
            at = choice.text.find(stop, start)
            if at >= 0:
                delta = delta[: max(0, len(delta) - (len(choice.text) - at))]
                choice.text = choice.text[:at]
                choice.stop_reason = stop
                if choice.finish_reason is None:
                    choice.finish_reason = "stop"
                    self.replica.engine.abort(choice.request_id, RequestStatus.FINISHED_STOPPED)
                else:
                    choice.finish_reason = "stop"
                break
        return delta

    def response_kv_transfer_params(self, call: Call) -> dict[str, Any] | None:
        """What a prefill engine hands the decode engine (vLLM's NIXL connector fields)."""
        params = call.kv_transfer_params
        if not params or not params.get("do_remote_decode"):
            return None
        replica = self.replica
        return {
            "do_remote_prefill": True,
            "do_remote_decode": False,
            "remote_block_ids": list(call.choices[0].block_ids),
            "remote_engine_id": replica.engine_id,
            "remote_request_id": call.choices[0].request_id,
            "remote_host": replica.config.host,
            "remote_port": replica.port,
            "tp_size": replica.config.engine.profile.tensor_parallel,
            "remote_num_tokens": len(call.prompt_token_ids),
        }

    # -- wire format -----------------------------------------------------------------

    def _header(self, call: Call, obj: str) -> JSON:
        return {"id": call.call_id, "object": obj, "created": call.created, "model": call.model}

    async def full_response(self, call: Call, queue: asyncio.Queue[TimedOutput]) -> JSON:
        async for _ in self.deltas(call, queue):
            pass
        if call.kind == "chat":
            choices: list[JSON] = [
                {
                    "index": c.index,
                    "message": {"role": "assistant", "content": c.text, "tool_calls": []},
                    "logprobs": None,
                    "finish_reason": c.finish_reason,
                    "stop_reason": c.stop_reason,
                }
                for c in call.choices
            ]
            body = self._header(call, "chat.completion")
        else:
            choices = [
                {
                    "index": c.index,
                    "text": c.text,
                    "logprobs": None,
                    "finish_reason": c.finish_reason,
                    "stop_reason": c.stop_reason,
                }
                for c in call.choices
            ]
            body = self._header(call, "text_completion")
        body["choices"] = choices
        body["usage"] = call.usage()
        body["kv_transfer_params"] = self.response_kv_transfer_params(call)
        return body

    async def stream(
        self, call: Call, queue: asyncio.Queue[TimedOutput], include_usage: bool
    ) -> AsyncIterator[bytes]:
        is_chat = call.kind == "chat"
        obj = "chat.completion.chunk" if is_chat else "text_completion"
        roles_sent = not is_chat
        async for choice, delta in self.deltas(call, queue):
            if not roles_sent:  # as vLLM: the role chunks come with the first engine output
                roles_sent = True
                for each in call.choices:
                    first = {"index": each.index, "delta": {"role": "assistant", "content": ""},
                             "logprobs": None, "finish_reason": None}  # fmt: skip
                    yield sse({**self._header(call, obj), "choices": [first]})
            if not delta and choice.finish_reason is None:
                continue
            entry: JSON = {"index": choice.index, "logprobs": None,
                           "finish_reason": choice.finish_reason}  # fmt: skip
            if is_chat:
                entry["delta"] = {"content": delta} if delta else {}
            else:
                entry["text"] = delta
            if choice.finish_reason is not None:
                entry["stop_reason"] = choice.stop_reason
            chunk = {**self._header(call, obj), "choices": [entry]}
            if call.is_done and call.kv_transfer_params:
                chunk["kv_transfer_params"] = self.response_kv_transfer_params(call)
            yield sse(chunk)
        if include_usage:
            yield sse({**self._header(call, obj), "choices": [], "usage": call.usage()})
        yield sse("[DONE]")
