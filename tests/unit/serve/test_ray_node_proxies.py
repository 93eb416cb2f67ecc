"""Where the controller wants node proxies (``proxy_location``), from ``ray.nodes()``."""

from __future__ import annotations

import pytest

from llmserve.serve.exceptions import ConfigError
from llmserve.serve.ray.proxy_actor import HEAD_NODE_RESOURCE, wanted_nodes
from llmserve.serve.ray.proxy_config import ProxyConfig

NODES = [
    {"NodeID": "head", "Alive": True, "Resources": {"CPU": 4.0, HEAD_NODE_RESOURCE: 1.0}},
    {"NodeID": "w1", "Alive": True, "Resources": {"CPU": 4.0, "GPU": 2.0}},
    {"NodeID": "w2", "Alive": False, "Resources": {"CPU": 4.0, "GPU": 2.0}},
]


def test_every_node_means_every_alive_node() -> None:
    assert wanted_nodes("EveryNode", NODES) == {"head", "w1"}


def test_head_only_and_disabled() -> None:
    assert wanted_nodes("HeadOnly", NODES) == {"head"}
    assert wanted_nodes("Disabled", NODES) == set()


def test_unknown_locations_are_refused() -> None:
    assert ProxyConfig("EveryNode", "0.0.0.0", 8000).port == 8000
    with pytest.raises(ConfigError, match="proxy_location"):
        ProxyConfig("AllNodes")
