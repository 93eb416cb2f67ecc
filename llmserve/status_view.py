"""`llmserve status`: fetch ``GET /-/status`` from a running proxy and print it."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from typing import Any

from llmserve.serve.admin import ADMIN_KEY_ENV

DEFAULT_ADDRESS = "http://127.0.0.1:8000"
COLUMNS = ("REPLICA", "STATE", "NODE", "NODE IP", "PID", "ONGOING", "RESOURCES")
NODE_ID_CHARS = 12


def fetch_status(address: str, timeout_s: float = 10.0) -> dict[str, Any]:
    """``/-/status`` (with the admin key from ``LLMSERVE_ADMIN_KEY`` when set), plus the
    workers ``/health`` reports not up (``--worker-urls``) under ``workers``."""
    base = address.rstrip("/")
    if "://" not in base:
        base = "http://" + base
    key = os.environ.get(ADMIN_KEY_ENV)
    headers = {"authorization": f"Bearer {key}"} if key else {}
    request = urllib.request.Request(base + "/-/status", headers=headers)
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        data: dict[str, Any] = json.loads(response.read())
    data["workers"] = _workers(base, timeout_s)
    return data


def _workers(base: str, timeout_s: float) -> dict[str, list[str]]:
    try:
        with urllib.request.urlopen(base + "/health", timeout=timeout_s) as response:
            health = json.loads(response.read())
    except urllib.error.HTTPError as error:  # 503 still carries the report
        try:
            health = json.loads(error.read())
        except ValueError:
            return {}
    except (OSError, ValueError):
        return {}
    if not isinstance(health, dict):
        return {}
    return {k: list(health[k]) for k in ("workers_not_ready", "workers_failed")
            if isinstance(health.get(k), list)}


def format_status(data: dict[str, Any]) -> str:
    """Applications, their deployments and a table of each deployment's replicas."""
    lines = [f"runtime: {data['runtime']}   proxy: {data.get('http_url') or '-'}"]
    for state, urls in (data.get("workers") or {}).items():
        lines.append(f"{state.replace('_', ' ')}: {', '.join(urls)}")
    apps: dict[str, Any] = data["applications"]
    if not apps:
        lines.append("no applications")
    for name, app in apps.items():
        lines.append(f"application {name}: {app['status']}   route: "
                     f"{app['route_prefix'] or '-'}   ingress: {app['ingress_deployment']}")
        for dep_name, dep in app["deployments"].items():
            lines.append(f"  deployment {dep_name}: {dep['status']}   running "
                         f"{dep['running_replicas']}/{dep['target_replicas']}   queued "
                         f"{dep['num_queued_requests']}")
            if dep["message"]:
                lines.append(f"    message: {dep['message'].splitlines()[0]}")
            rows = [_replica_row(r) for r in dep["replicas"]]
            lines += ["    " + line for line in _table([COLUMNS, *rows])]
    return "\n".join(lines)


def _replica_row(replica: dict[str, Any]) -> tuple[str, ...]:
    node = replica.get("node")
    if node is None:
        return (replica["replica_id"], replica["state"], "-", "-", "-",
                str(replica["num_ongoing_requests"]), "-")
    return (replica["replica_id"], replica["state"], node["node_id"][:NODE_ID_CHARS],
            node["node_ip"], str(node["pid"]), str(replica["num_ongoing_requests"]),
            _resources(node["resources"], node.get("gpu_ids") or []))


def _resources(resources: dict[str, float], gpu_ids: list[str]) -> str:
    if not resources:
        return "-"
    text = " ".join(f"{k}={v:g}" for k, v in sorted(resources.items()))
    return f"{text} (GPU ids {','.join(gpu_ids)})" if gpu_ids else text


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
            for row in rows]
