"""`llmserve shutdown --address` (Ray Serve's `serve shutdown`) removes the applications
another driver left running on the cluster."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from tests.integration.ray.conftest import RayCluster
from tests.integration.ray.test_new_driver import FIRST, ROOT, _driver
from tests.integration.serve.ports import free_port

pytestmark = [pytest.mark.ray, pytest.mark.timeout(180)]


def test_cli_shutdown_removes_what_another_driver_left(ray_serve: RayCluster) -> None:
    import ray
    from ray.util import list_named_actors

    from llmserve.serve.ray_runtime import NAMESPACE

    address = ray.get_runtime_context().gcs_address
    started = json.loads(_driver(FIRST, address, str(free_port())))
    assert len(started["replicas"]) == 1

    def ours() -> list[object]:
        return [a for a in list_named_actors(all_namespaces=True)
                if a["namespace"] == NAMESPACE]  # type: ignore[index]

    assert ours()
    done = subprocess.run([sys.executable, "-m", "llmserve.cli", "shutdown", "--address",
                           address], cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "shut down" in done.stdout
    deadline = time.monotonic() + 20
    while ours():
        assert time.monotonic() < deadline, ours()
        time.sleep(0.2)
