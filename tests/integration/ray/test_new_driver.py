"""A driver that exits without ``serve.shutdown()`` leaves its applications running; a
new driver (another process) attaches to the same detached controller, sees them (with
``serve.status()`` alone), and updates, deletes and shuts them down. Meanwhile the head
node's proxy, which shared the first driver's port, keeps serving that port."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.integration.ray.conftest import RayCluster
from tests.integration.serve.ports import free_port

pytestmark = [pytest.mark.ray, pytest.mark.timeout(180)]
ROOT = Path(__file__).resolve().parents[3]

FIRST = """
import json, sys, time, ray
from llmserve import serve
from tests.integration.ray.apps import SlowPlain
ray.init(address=sys.argv[1])
serve.run(SlowPlain.bind(), route_prefix="/slow", port=int(sys.argv[2]), runtime="ray",
          proxy_location="HeadOnly")
from llmserve.serve.ray.proxy_actor import node_proxy_urls
while not (urls := node_proxy_urls()):  # the head's proxy, bound beside this one's
    time.sleep(0.1)
replicas = serve.status().applications["default"].deployments["SlowPlain"].replicas
print(json.dumps({"replicas": [r.replica_id for r in replicas],
                  "proxies": list(urls.values())}), flush=True)
"""  # exits without serve.shutdown()

SECOND = """
import json, sys, httpx, ray
from llmserve import serve
from tests.integration.ray.apps import SlowPlain
ray.init(address=sys.argv[1])
def replicas():
    apps = serve.status().applications
    return sorted(r.replica_id for r in apps["default"].deployments["SlowPlain"].replicas)
seen = replicas()  # attached by serve.status() alone
serve.run(SlowPlain.options(num_replicas=2).bind(), route_prefix="/slow", port=0,
          runtime="ray", proxy_location="Disabled")
scaled = replicas()
code = httpx.get(f"{serve.http_url()}/slow", timeout=10).status_code
serve.delete("default")
left = sorted(serve.status().applications)
serve.shutdown()
print(json.dumps({"seen": seen, "scaled": scaled, "code": code, "left": left}), flush=True)
"""


def _driver(script: str, *args: str) -> str:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", script, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


def test_a_new_driver_attaches_updates_and_shuts_down(ray_serve: RayCluster) -> None:
    import ray
    from ray.experimental import internal_kv
    from ray.util import list_named_actors

    from llmserve.serve.ray.controller_actor import CHECKPOINT_KEY
    from llmserve.serve.ray.names import NAMESPACE

    address = ray.get_runtime_context().gcs_address
    port = free_port()
    started = json.loads(_driver(FIRST, address, str(port)))
    first = started["replicas"]
    assert len(first) == 1
    assert started["proxies"] == [f"http://127.0.0.1:{port}"]  # shared the driver's port
    # the first driver is gone; the head's node proxy serves that port on
    response = httpx.get(f"http://127.0.0.1:{port}/slow", timeout=10)
    assert response.status_code == 200
    second = json.loads(_driver(SECOND, address))
    assert second["seen"] == first  # the same replica, still running
    # its code is a new version to the controller (a class pickled by value in another
    # process), so the update rolls the replicas over: two new ones
    assert len(second["scaled"]) == 2 and first[0] not in second["scaled"]
    assert second["code"] == 200 and second["left"] == []

    deadline = time.monotonic() + 10  # serve.shutdown() from the new driver removed all
    while [e for e in list_named_actors(all_namespaces=True)
           if e["namespace"] == NAMESPACE]:  # type: ignore[index]
        assert time.monotonic() < deadline, list_named_actors(all_namespaces=True)
        time.sleep(0.1)
    assert not internal_kv._internal_kv_get(CHECKPOINT_KEY, namespace=NAMESPACE)
