"""A gateway routing on prompt tokens never imports torch or transformers."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.fixtures_engines import cached_tiny_model

GATEWAY = textwrap.dedent("""
    import asyncio, sys

    import llmserve.cli, llmserve.openai.ingress
    from llmserve.openai.prompt import CHAT, COMPLETIONS, PromptRenderer
    from llmserve.openai.tokenizer import LightTokenizer
    from routing import Candidate
    from routing.prefix_aware import PrefixAwarePolicy

    async def main():
        renderer = PromptRenderer("m", sys.argv[1])
        await renderer.wait_loaded()
        assert renderer.mode == "tokenizer", renderer.mode
        assert isinstance(renderer.tokenizer, LightTokenizer)
        policy = PrefixAwarePolicy(block_size=4)
        candidates = [Candidate("a"), Candidate("b")]
        chat = {"messages": [{"role": "system", "content": "You are terse. " * 20},
                             {"role": "user", "content": "Hello there"}]}
        for path, body in ((CHAT, chat), (COMPLETIONS, {"prompt": "Once upon a time " * 9})):
            for n in range(2):
                request = await renderer.route_request(f"{path}{n}", path, body, None)
                assert request.prompt_token_ids and len(request.prompt_token_ids) > 8
                chosen = policy.choose(request, candidates)[0]
                policy.on_routed(request, chosen.replica_id)
                policy.on_finished(request, chosen.replica_id)
        renderer.close()

    asyncio.run(main())
    heavy = sorted(m for m in ("torch", "transformers", "triton") if m in sys.modules)
    print("HEAVY", heavy)
""")


def test_a_prefix_routing_gateway_never_imports_torch_or_transformers() -> None:
    model = cached_tiny_model()
    done = subprocess.run([sys.executable, "-c", GATEWAY, str(model)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "HEAVY []" in done.stdout, done.stdout
