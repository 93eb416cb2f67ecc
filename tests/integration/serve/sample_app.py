"""An app for the config-file tests (imported by import_path)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from llmserve import serve


@serve.deployment
class Hello:
    def __init__(self, greeting: str = "hello") -> None:
        self.greeting = greeting

    async def __call__(self, request: Request) -> dict[str, Any]:
        return {"greeting": self.greeting, "replica": serve.get_replica_context().replica_id}


app = Hello.bind()


def build(args: dict[str, Any]) -> serve.Application:
    return Hello.bind(args.get("greeting", "hello"))
