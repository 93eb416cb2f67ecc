"""Where this process's deployment handles send their calls.

A `DeploymentHandle` is a picklable name; the process it is used in decides how calls
reach replicas. Exactly one `HandleContext` is installed per process: the serve
instance's (driver, local runtime), a Ray replica actor's view of the cluster, or a Ray
node proxy's. Each gives the event loop calls run on and a `RouterSource`.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from typing import Protocol

from llmserve.serve.router import Router


class RouterSource(Protocol):
    def router_for(self, app_name: str, deployment: str) -> Router:
        """The router of one deployment (raises `DeploymentUnavailableError`)."""
        ...


@dataclass(frozen=True)
class HandleContext:
    loop: asyncio.AbstractEventLoop
    routers: RouterSource


_lock = threading.Lock()
_context: HandleContext | None = None


def install_handle_context(context: HandleContext) -> None:
    global _context
    with _lock:
        _context = context


def remove_handle_context(context: HandleContext) -> None:
    """Uninstall ``context`` (a no-op when another one has replaced it)."""
    global _context
    with _lock:
        if _context is context:
            _context = None


def handle_context() -> HandleContext:
    context = _context
    if context is None:
        raise RuntimeError("serve is not running: call serve.run(...) or serve.start() first")
    return context
