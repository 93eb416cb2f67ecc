"""One simulated engine replica: tokenizer + engine + metrics + LoRA registry."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from engines.sim.clock import Clock
from engines.sim.engine import EngineConfig, SimEngine
from engines.sim.errors import BadRequest, NotFound
from engines.sim.event_publisher import ZmqEventPublisher
from engines.sim.kv_transfer import KVTransferConfig
from engines.sim.metrics import EngineMetrics
from engines.sim.request import LoraRef
from engines.sim.tokenizer import Tokenizer


@dataclass(frozen=True)
class ReplicaConfig:
    served_model_name: str
    engine: EngineConfig
    model_path: str = ""
    host: str = "127.0.0.1"
    port: int = 0
    kv_transfer: KVTransferConfig | None = None  # None: no KV connector, as vLLM without one

    @property
    def has_kv_connector(self) -> bool:
        return self.kv_transfer is not None and self.kv_transfer.has_connector


class SimReplica:
    def __init__(self, config: ReplicaConfig, tokenizer: Tokenizer, clock: Clock,
                 publisher: ZmqEventPublisher | None = None) -> None:
        self.config = config
        self.tokenizer = tokenizer
        self.clock = clock
        self.metrics = EngineMetrics(config.served_model_name, config.engine.max_loras)
        self.publisher = publisher
        self.engine = SimEngine(config.engine, clock, self.metrics,
                                publisher.publish if publisher is not None else None)
        self.loras: dict[str, str] = {}
        self.created = int(time.time())
        self.engine_id = uuid.uuid4().hex
        self.port = config.port

    @property
    def model_name(self) -> str:
        return self.config.served_model_name

    @property
    def max_model_len(self) -> int:
        return self.config.engine.max_model_len

    def resolve_model(self, name: str | None) -> LoraRef | None:
        """The LoRA a request's ``model`` names, None for the base model; 404 otherwise."""
        if name is None or name == self.model_name:
            return None
        if name in self.loras:
            return LoraRef(name, self.loras[name])
        raise NotFound(f"The model `{name}` does not exist.", param="model")

    def load_lora(self, name: str, path: str) -> None:
        """Register an adapter at once (``--lora-modules`` at start-up)."""
        self._check_new(name)
        self.loras[name] = path or name

    async def add_lora(self, name: str, path: str) -> None:
        """``/v1/load_lora_adapter``: takes the profile's ``lora_add_s`` between steps."""
        self._check_new(name)
        await self.engine.add_lora()
        self.load_lora(name, path)

    def _check_new(self, name: str) -> None:
        if name in self.loras:
            raise BadRequest(
                f"The lora adapter '{name}' has already been loaded. "
                "If you want to load the adapter in place, set 'load_inplace' to True."
            )

    def unload_lora(self, name: str) -> None:
        if name not in self.loras:
            raise NotFound(f"The lora adapter '{name}' cannot be found.", param="lora_name")
        del self.loras[name]
        self.engine.scheduler.unload_lora(name)
