from __future__ import annotations

import json
import random
import socket
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_port_run(count: int) -> int:
    """A run of ``count`` free ports (replica k of a simulated cluster publishes KV events
    on base + k), below the kernel's ephemeral range: a port the kernel hands out for
    ``bind(0)`` (another server's, in the same test) can never fall inside the run."""
    low = _ephemeral_low()
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(10_000, low - count)
        try:
            for k in range(count):
                with socket.socket() as sock:
                    sock.bind(("", base + k))  # every interface, as the publishers bind
            return base
        except OSError:
            continue
    raise RuntimeError("no run of free ports")


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (where ``bind(0)`` picks)."""
    try:
        return max(12_000, int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
                               .split()[0]))
    except (OSError, ValueError, IndexError):
        return 32768


def access_lines(log: Path) -> list[dict[str, Any]]:
    """The access-log records of a gateway run with ``--log-format json`` (complete lines
    only: the last piece may be a line being written)."""
    complete = log.read_text().split("\n")[:-1]
    records = (json.loads(raw) for raw in complete if raw.startswith("{"))
    return [r for r in records if r.get("logger") == "llmserve.access"]
