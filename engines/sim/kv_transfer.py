"""The simulator's ``--kv-transfer-config``: vLLM's KV connector settings, as vLLM checks them.

What vLLM 0.32 does, and so the simulator does (``vllm/config/kv_transfer.py``,
``vllm/distributed/kv_transfer/kv_connector/v1/nixl/``):

- Without a connector, ``kv_transfer_params`` in a request are ignored: the engine computes
  the whole prompt and answers ``"kv_transfer_params": null``.
- A connector needs a ``kv_role`` (``kv_producer``, ``kv_consumer`` or ``kv_both``); any
  other role, or a connector without a role, stops the engine at start-up.
- The role does not gate requests: NIXL acts on each request's ``kv_transfer_params``
  (``do_remote_decode``: prefill and keep the blocks for a decode engine;
  ``do_remote_prefill``: load the prompt's KV from the engine they name), on every role. A
  request without them is served as one engine does, on a producer as on a consumer.
  ``kv_both`` logs vLLM's deprecation warning.

Only ``NixlConnector`` is simulated (its pull of the prompt's blocks over the profile's
link); other connectors are refused by name. ``kv_buffer_device`` is accepted for
compatibility: the transfer time comes from the profile's hardware either way.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from engines.sim.flag_json import json_object

log = logging.getLogger(__name__)

ROLES = ("kv_producer", "kv_consumer", "kv_both")
SIMULATED_CONNECTORS = ("NixlConnector",)
BUFFER_DEVICES = ("cuda", "cpu", "xpu")


class KVTransferConfigError(ValueError):
    """A ``--kv-transfer-config`` that vLLM (or the simulator) refuses at start-up."""


@dataclass(frozen=True)
class KVTransferConfig:
    """The fields of vLLM's ``KVTransferConfig`` the simulator honours."""

    kv_connector: str | None = None
    kv_role: str | None = None
    kv_buffer_device: str = "cuda"

    @property
    def has_connector(self) -> bool:
        return self.kv_connector is not None

    @classmethod
    def from_json(cls, text: str | None) -> KVTransferConfig | None:
        if text is None:
            return None
        return cls.from_mapping(json_object(text, "--kv-transfer-config", KVTransferConfigError))

    @classmethod
    def from_mapping(cls, value: Mapping[str, Any]) -> KVTransferConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise KVTransferConfigError(f"--kv-transfer-config: the simulator does not model "
                                        f"{unknown}; it takes {sorted(known)}")
        config = cls(**value)
        config.check()
        return config

    def check(self) -> None:
        """vLLM's start-up checks, with vLLM's wording where it has one."""
        if self.kv_role is not None and self.kv_role not in ROLES:
            raise KVTransferConfigError(f"Unsupported kv_role: {self.kv_role}. Supported "
                                        f"roles are {list(ROLES)}")
        if self.kv_connector is not None and self.kv_role is None:
            raise KVTransferConfigError("Please specify kv_role when kv_connector is set, "
                                        f"supported roles are {list(ROLES)}")
        if self.kv_connector is not None and self.kv_connector not in SIMULATED_CONNECTORS:
            raise KVTransferConfigError(f"--kv-transfer-config: kv_connector "
                                        f"{self.kv_connector!r} is not simulated; use one of "
                                        f"{list(SIMULATED_CONNECTORS)}")
        if self.kv_buffer_device not in BUFFER_DEVICES:
            raise KVTransferConfigError(f"--kv-transfer-config: kv_buffer_device "
                                        f"{self.kv_buffer_device!r} is not one of "
                                        f"{list(BUFFER_DEVICES)}")

    def warn_deprecated(self) -> None:
        if self.kv_connector == "NixlConnector" and self.kv_role == "kv_both":
            log.warning("Using kv_role='kv_both' with NixlConnector is deprecated and will be "
                        "removed in a future release. Please set kv_role='kv_producer' for "
                        "prefill instances and kv_role='kv_consumer' for decode instances.")


__all__ = ["KVTransferConfig", "KVTransferConfigError"]
