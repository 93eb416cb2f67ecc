"""Prefill/decode workers given by URL: an adapter is served when both roles list it."""

from __future__ import annotations

from llmserve.llm.pd import both_roles
from llmserve.lora.directory import WorkerAdapter
from llmserve.openai.ingress import ModelSource


def source(*adapters: WorkerAdapter) -> ModelSource:
    return ModelSource("m", "vllm", {}, adapters=adapters)


def test_only_adapters_both_roles_list_are_served_from_every_worker_listing_them() -> None:
    prefill = source(WorkerAdapter("sql", "m", ("http://p1",)),
                     WorkerAdapter("only-prefill", "m", ("http://p1",)))
    decode = source(WorkerAdapter("sql", "m", ("http://d1", "http://d2"), "/a/sql"),
                    WorkerAdapter("only-decode", "m", ("http://d1",)))
    assert both_roles(prefill, decode) == (
        WorkerAdapter("sql", "m", ("http://p1", "http://d1", "http://d2"), "/a/sql"),)
