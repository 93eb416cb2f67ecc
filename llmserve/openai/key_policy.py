"""What each API key may do: its models and its request and token rates.

A keys file is either plain (one key a line, ``#`` comments) or YAML::

    keys:
      - key: sk-team-a-...          # or key_sha256: <hex digest>, to keep it out of files
        name: team-a                # used in logs and errors instead of the key
        requests_per_minute: 60
        tokens_per_minute: 100000
        models: [llama-8b]          # omitted: every model
                                    # a base model allows its LoRA adapters too;
                                    # BASE:ADAPTER (or a static adapter's name): only it
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from llmserve.serve.exceptions import ConfigError

POLICY_FIELDS = {"key", "key_sha256", "name", "requests_per_minute", "tokens_per_minute",
                 "models"}


@dataclass(frozen=True)
class KeyPolicy:
    digest: bytes
    name: str
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    models: frozenset[str] | None = None  # None: every model

    def allows(self, model: str, base_model: str | None = None) -> bool:
        """``model`` may be used: listed, or an adapter (``base_model`` set) of a listed
        base model."""
        return (self.models is None or model in self.models
                or (base_model is not None and base_model in self.models))


def plain_policy(key: str, index: int) -> KeyPolicy:
    return KeyPolicy(hashlib.sha256(key.encode()).digest(), f"key-{index}")


def policies_from_file(path: str | Path) -> list[KeyPolicy]:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read API keys file {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        data = None
    if isinstance(data, dict):
        entries = data.get("keys")
        if set(data) != {"keys"} or not isinstance(entries, list) or not entries:
            raise ConfigError(f"API keys file {path}: expected one 'keys' list")
        return [_policy(entry, i, path) for i, entry in enumerate(entries)]
    keys = [line.strip() for line in text.splitlines()
            if line.strip() and not line.strip().startswith("#")]
    if not keys:
        raise ConfigError(f"API keys file {path} holds no key")
    return [plain_policy(k, i) for i, k in enumerate(keys)]


def _policy(entry: Any, index: int, path: str | Path) -> KeyPolicy:
    where = f"API keys file {path}, entry {index}"
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: expected a mapping")
    unknown = sorted(set(entry) - POLICY_FIELDS)
    if unknown:
        raise ConfigError(f"{where}: unknown fields {unknown}; known: {sorted(POLICY_FIELDS)}")
    if ("key" in entry) == ("key_sha256" in entry):
        raise ConfigError(f"{where}: give exactly one of key or key_sha256")
    try:
        digest = (hashlib.sha256(str(entry["key"]).encode()).digest() if "key" in entry
                  else bytes.fromhex(str(entry["key_sha256"])))
    except ValueError:
        raise ConfigError(f"{where}: key_sha256 is not a hex digest") from None
    if len(digest) != 32:
        raise ConfigError(f"{where}: key_sha256 must be a SHA-256 digest (64 hex digits)")
    models = entry.get("models")
    if models is not None and (not isinstance(models, list)
                               or not all(isinstance(m, str) for m in models)):
        raise ConfigError(f"{where}: models must be a list of model ids")
    return KeyPolicy(digest, str(entry.get("name") or f"key-{index}"),
                     _rate(entry, "requests_per_minute", where),
                     _rate(entry, "tokens_per_minute", where),
                     frozenset(models) if models is not None else None)


def _rate(entry: dict[str, Any], name: str, where: str) -> int | None:
    value = entry.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{where}: {name} must be a positive integer")
    return value
