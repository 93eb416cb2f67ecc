"""Turning on the KV-cache events of the engines llmserve launches.

For a vLLM (or simulated) engine whose model routes by prefix, the replica adds vLLM's
``kv_events_config`` to the engine's flags: a ZMQ publisher bound on two free ports of the
engine's own address only (loopback on one machine, the node's IP on Ray; not every
interface), events and replay, so the ingresses can subscribe
(:mod:`llmserve.openai.kv_events`). A ``kv_events_config`` already in ``engine_kwargs`` is
kept as given (its endpoints are reported when it publishes over ZMQ). ``routing_config``
``{"kv_events": false}`` turns it off.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from engines.kv_events import connect_address
from engines.process import free_port

EVENT_ENGINES = ("vllm", "sim")
PREFIX_POLICIES = ("prefix_aware", "scored")
TOPIC = "kv-events"

# (events endpoint, replay endpoint or None, topic): addresses an ingress connects to
EventAddresses = tuple[str, str | None, str]


def with_kv_events(engine: str, engine_kwargs: Mapping[str, Any], host: str,
                   routing_config: Mapping[str, Any]) -> tuple[dict[str, Any],
                                                               EventAddresses | None]:
    """``engine_kwargs`` with events turned on, and where to subscribe (None: no events)."""
    kwargs = dict(engine_kwargs)
    if (engine not in EVENT_ENGINES or routing_config.get("kv_events", True) is False
            or routing_config.get("policy", "prefix_aware") not in PREFIX_POLICIES):
        return kwargs, None
    given = kwargs.get("kv_events_config")
    if given is None:
        if kwargs.get("enable_prefix_caching") is False:
            return kwargs, None
        given = {"enable_kv_cache_events": True, "publisher": "zmq",
                 "endpoint": publisher_bind_address(host, free_port(host)),
                 "replay_endpoint": f"tcp://{_shown(host)}:{free_port(host)}", "topic": TOPIC}
        kwargs["kv_events_config"] = given
    if not isinstance(given, Mapping):
        raise ValueError("engine_kwargs.kv_events_config must be a mapping (vLLM's "
                         f"KVEventsConfig), got {type(given).__name__}")
    publisher = given.get("publisher") or ("zmq" if given.get("enable_kv_cache_events")
                                           else "null")
    if not given.get("enable_kv_cache_events") or publisher != "zmq":
        return kwargs, None
    endpoint = connect_address(str(given.get("endpoint", "tcp://*:5557")), host)
    replay = given.get("replay_endpoint")
    return kwargs, (endpoint, connect_address(str(replay), host) if replay else None,
                    str(given.get("topic", "")))


def publisher_bind_address(host: str, port: int) -> str:
    """A PUB endpoint that makes vLLM (and the simulator) bind ``host:port`` only.

    vLLM binds its event publisher only on an endpoint with ``*`` or ``::`` in it and
    *connects* on any other (``ZmqEventPublisher._is_bind_endpoint``), so
    ``tcp://127.0.0.1:P`` would not listen at all. An IPv4 address written IPv4-mapped
    (``tcp://[::ffff:127.0.0.1]:P``) has ``::`` and ZMQ binds it as the plain IPv4 address.
    An IPv6 address with ``::`` binds as it is; other IPv6 hosts keep the wildcard."""
    if ":" not in host:
        return f"tcp://[::ffff:{host}]:{port}"
    if "::" in host:
        return f"tcp://[{host}]:{port}"
    return f"tcp://*:{port}"


def _shown(host: str) -> str:
    return f"[{host}]" if ":" in host else host
