"""What the HTTP proxy, handles and `serve.*` calls need from a control plane: the
in-process `Controller` (local runtime), or on Ray the client of the detached controller
actor that the driver and every node proxy run (`ray/driver_control.py`)."""

from __future__ import annotations

from typing import Any, Protocol

from llmserve.serve.router import Router
from llmserve.serve.status import ServeStatus


class ControlPlane(Protocol):
    route_table: list[tuple[str, str]]  # (prefix without trailing /, app), longest first

    def routes(self) -> dict[str, str]: ...

    def router_for(self, app_name: str, deployment: str) -> Router: ...

    def ingress_of(self, app_name: str) -> str: ...

    async def deploy_app(self, app: Any, name: str, route_prefix: str | None) -> None: ...

    async def delete_app(self, name: str, wait: bool = True) -> None: ...

    async def fetch_status(self, http_url: str | None) -> ServeStatus: ...

    async def shutdown(self) -> None: ...
