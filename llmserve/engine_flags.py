"""Engine flags given to `llmserve serve` as themselves, the way `vllm serve` takes them.

``llmserve serve DIR --max-model-len 1024 --enable-prefix-caching`` passes every
``--flag`` that `llmserve serve` does not know itself to the engine:
``{"max_model_len": 1024, "enable_prefix_caching": True}`` in ``engine_kwargs``, which the
engine renders back to the same flags. A flag takes the words after it up to the next
``--flag`` as its value (none: ``True``; one: that value, parsed as JSON when it can be;
several: a list); ``--flag=value`` always takes exactly one. So engine flags go after
MODEL, as in ``vllm serve MODEL [flags]``.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from llmserve.serve.exceptions import ConfigError


@dataclass(frozen=True)
class SplitArgs:
    """A command line cut into what `llmserve serve` parses and what goes to the engine."""

    own: list[str] = field(default_factory=list)
    engine_kwargs: dict[str, Any] = field(default_factory=dict)


def split_engine_flags(argv: Sequence[str], known_flags: Collection[str]) -> SplitArgs:
    """Move every ``--flag`` not in ``known_flags`` (and its values) to ``engine_kwargs``."""
    split = SplitArgs()
    i = 0
    while i < len(argv):
        token = argv[i]
        i += 1
        if token == "--":  # the rest is positional, for our own parser
            split.own.extend(argv[i - 1:])
            break
        name, has_value, inline = token.partition("=")
        if not name.startswith("--") or len(name) == 2 or name in known_flags:
            split.own.append(token)
            continue
        if has_value:
            values = [inline]
        else:
            values = []
            while i < len(argv) and not _is_flag(argv[i]):
                values.append(argv[i])
                i += 1
        _add(split.engine_kwargs, name[2:].replace("-", "_"), values, token)
    return split


def _is_flag(token: str) -> bool:
    if not token.startswith("-") or token == "-":
        return False
    try:
        float(token)  # a negative number is a value
    except ValueError:
        return True
    return False


def _add(kwargs: dict[str, Any], key: str, values: list[str], token: str) -> None:
    value: Any = True if not values else _parse(values[0]) if len(values) == 1 \
        else [_parse(v) for v in values]
    if key not in kwargs:
        kwargs[key] = value
        return
    if value is True or kwargs[key] is True:
        raise ConfigError(f"engine flag {token} given twice")
    previous = kwargs[key] if isinstance(kwargs[key], list) else [kwargs[key]]
    kwargs[key] = previous + (value if isinstance(value, list) else [value])


def _parse(value: str) -> Any:
    """Numbers, booleans, JSON objects and lists as such; anything else as the string."""
    try:
        return json.loads(value)
    except ValueError:
        return value
