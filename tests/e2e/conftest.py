from __future__ import annotations

import socket


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_port_run(count: int) -> int:
    """A free port whose next ``count - 1`` ports are free too (replica k of a simulated
    cluster publishes KV events on base + k)."""
    for _ in range(50):
        base = free_port()
        try:
            for k in range(1, count):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", base + k))
            return base
        except OSError:
            continue
    raise RuntimeError("no run of free ports")
