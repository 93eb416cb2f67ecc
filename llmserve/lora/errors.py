"""LoRA adapter errors; each is an OpenAI error class, so the ingress maps them once."""

from __future__ import annotations

from llmserve.openai.errors import EngineUnavailable, InvalidRequest, ModelNotFound


class AdapterNotFound(ModelNotFound):
    """No adapter of that name in the model's adapter folder or static modules (404)."""


class InvalidAdapterName(InvalidRequest):
    """A name with path separators, ``..`` or other characters a folder name cannot hold."""

    code = "invalid_adapter_name"


class InvalidAdapter(InvalidRequest):
    """The adapter's files are missing, corrupt or do not fit this model (400)."""

    code = "invalid_adapter"


class AdapterUnavailable(EngineUnavailable):
    """The adapter could not be fetched or loaded right now; retry later (503)."""

    code = "adapter_unavailable"
