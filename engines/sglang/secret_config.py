"""The engine secret for SGLang, kept off its command line.

SGLang reads its API key only from ``--api-key`` (``ServerArgs.api_key``), which every
local user sees in ``ps``. It also reads ``--config FILE.yaml`` and turns each key of
that file into a flag (``ConfigArgumentMerger``: ``api-key: K`` becomes ``--api-key K``
inside the server process, not on its visible command line). So the key goes into such
a file, readable by its owner only, merged with the user's own ``config`` file if any
(SGLang takes one). With the key set, SGLang demands ``Authorization: Bearer <key>`` on
every path but ``/health*`` and ``/metrics*``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import yaml

API_KEY_FIELD = "api-key"


def write_secret_config(api_key: str, user_config: str | None = None) -> Path:
    """A new owner-only YAML file holding ``api_key`` and the user's config's settings."""
    settings: dict[str, Any] = {}
    if user_config:
        loaded = yaml.safe_load(Path(user_config).read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"engine_kwargs config {user_config!r}: SGLang needs a YAML "
                             "mapping at its root")
        settings.update(loaded)
    settings.pop("api_key", None)
    settings[API_KEY_FIELD] = api_key
    directory = Path(tempfile.mkdtemp(prefix="llmserve-sglang-"))  # mode 0700
    path = directory / "config.yaml"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as file:
        yaml.safe_dump(settings, file)
    return path
