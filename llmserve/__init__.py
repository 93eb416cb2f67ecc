"""llmserve: an LLM-first, OpenAI-compatible serving gateway.

``from llmserve import serve`` gives the serving core (mirrors ``ray.serve``);
``from llmserve.llm import LLMConfig, build_openai_app`` the LLM layer.
"""

from __future__ import annotations

__version__ = "0.1.0"
