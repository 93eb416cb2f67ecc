"""The serving core's deployment gauges on the Ray runtime.

The controller runs in its own actor, away from every gateway, so its figures (replicas by
state, desired against running replicas, queued and ongoing requests per deployment) take
the membership actor as a relay: the controller sends them every `PERIOD_S`
(`send_core_figures`), and each process with an HTTP proxy (the driver's and every node
proxy's) fetches them as often (`CoreFiguresFollower`) and exports them at ``/metrics``
and ``/-/metrics`` under the same names as the local runtime, labelled with the
``controller`` they come from.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from llmserve.serve.metrics import DeploymentFigures, controller_id, figures_of, watch_figures

if TYPE_CHECKING:
    from llmserve.serve.deployment_state import DeploymentState

log = logging.getLogger("llmserve.serve")
PERIOD_S = 1.0


async def send_core_figures(
        deployments: Callable[[], Mapping[tuple[str, str], DeploymentState]],
        membership: Any) -> None:
    """In the controller actor: send its deployments' gauges to the membership actor."""
    here = controller_id()
    while True:
        try:
            queued = await membership.queued.remote()
            await membership.publish_figures.remote(here, figures_of(deployments(), queued))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the membership actor is restarting
            log.debug("sending the deployment gauges failed: %r", exc)
        await asyncio.sleep(PERIOD_S)


class CoreFiguresFollower:
    """In a gateway process: the controller's latest gauges, exported from this process."""

    def __init__(self, membership: Any) -> None:
        self.membership = membership
        self.controller = ""
        self.figures: tuple[DeploymentFigures, ...] = ()

    def current(self) -> tuple[str, tuple[DeploymentFigures, ...]]:
        return self.controller, self.figures

    def start(self) -> asyncio.Task[None]:
        watch_figures(self.current)
        return asyncio.get_running_loop().create_task(self._follow())

    async def _follow(self) -> None:
        while True:
            try:
                self.controller, self.figures = await self.membership.figures.remote()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the membership actor is restarting: keep the last
                log.debug("fetching the deployment gauges failed: %r", exc)
            await asyncio.sleep(PERIOD_S)
