"""Where a replica actor landed (plain data, shown in status)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ReplicaNodeInfo:
    node_id: str
    node_ip: str
    hostname: str
    pid: int
    gpu_ids: list[str] = field(default_factory=list)
    resources: dict[str, float] = field(default_factory=dict)
    placement_group_id: str | None = None
