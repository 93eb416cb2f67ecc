"""Routing reads a bounded head of the prompt, rendered off the event loop."""

from __future__ import annotations

import asyncio
import threading

from llmserve.openai.prompt import (
    CHAT,
    COMPLETIONS,
    MAX_ROUTED_CHARS,
    MAX_ROUTED_TOKENS,
    PromptRenderer,
    routed_head,
)
from tests.fixtures_engines import cached_tiny_model

HUGE = "word " * 2_000_000  # 10 MB of text


def test_the_routed_head_is_cut_to_the_char_budget() -> None:
    messages = [{"role": "system", "content": HUGE},
                {"role": "user", "content": [{"type": "text", "text": HUGE}]}]
    head = routed_head(CHAT, {"messages": messages})
    assert len(head["messages"]) == 1
    assert len(head["messages"][0]["content"]) == MAX_ROUTED_CHARS
    head = routed_head(CHAT, {"messages": [{"role": "user", "content": "hi"}, *messages[1:]]})
    assert len(head["messages"][1]["content"][0]["text"]) == MAX_ROUTED_CHARS - 2
    assert len(routed_head(COMPLETIONS, {"prompt": HUGE})["prompt"]) == MAX_ROUTED_CHARS
    assert len(routed_head(COMPLETIONS, {"prompt": list(range(10**6))})["prompt"]) \
        == MAX_ROUTED_TOKENS


def test_a_huge_prompt_routes_on_at_most_the_token_budget_rendered_off_the_loop() -> None:
    async def main() -> tuple[int, list[str]]:
        renderer = PromptRenderer("m", str(cached_tiny_model()))
        await renderer.wait_loaded()
        assert renderer.mode == "tokenizer"
        request = await renderer.route_request(
            "r", CHAT, {"messages": [{"role": "user", "content": HUGE}]}, None)
        threads = [t.name for t in threading.enumerate()]
        renderer.close()
        assert request.prompt_token_ids is not None
        return len(request.prompt_token_ids), threads

    tokens, threads = asyncio.run(main())
    assert 1000 < tokens <= MAX_ROUTED_TOKENS
    assert any(name.startswith("llmserve-render") for name in threads)
