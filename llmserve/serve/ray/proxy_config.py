"""Where node proxies run and what they bind (Ray Serve's ``proxy_location`` and
``http_options``): plain data, checked when made."""

from __future__ import annotations

from dataclasses import dataclass

from llmserve.serve.exceptions import ConfigError

PROXY_LOCATIONS = ("EveryNode", "HeadOnly", "Disabled")
DEFAULT_PROXY_LOCATION = "EveryNode"  # as Ray Serve; on the local runtime there are none


@dataclass(frozen=True)
class ProxyConfig:
    location: str = "Disabled"
    host: str = "127.0.0.1"
    port: int = 8000

    def __post_init__(self) -> None:
        if self.location not in PROXY_LOCATIONS:
            raise ConfigError(f"proxy_location must be one of {', '.join(PROXY_LOCATIONS)}; "
                              f"got {self.location!r}")
