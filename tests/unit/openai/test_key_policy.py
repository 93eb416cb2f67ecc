"""Keys files: plain lines or YAML policies; mistakes are errors naming the entry."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from llmserve.openai.auth import ApiKeys
from llmserve.openai.key_policy import policies_from_file
from llmserve.serve.exceptions import ConfigError


def test_plain_and_yaml_files(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.write_text("# comment\nsk-one\n\nsk-two\n")
    keys = ApiKeys(policies_from_file(plain))
    assert keys.match(b"sk-two") is not None and keys.match(b"sk-three") is None
    assert "sk-one" not in repr(keys)
    rich = tmp_path / "keys.yaml"
    digest = hashlib.sha256(b"sk-hidden").hexdigest()
    rich.write_text(f"keys:\n  - key: sk-a\n    name: a\n    requests_per_minute: 5\n"
                    f"    models: [m1]\n  - key_sha256: {digest}\n")
    a, hidden = policies_from_file(rich)
    assert (a.name, a.requests_per_minute, a.allows("m1"), a.allows("m2")) == \
        ("a", 5, True, False)
    assert ApiKeys([a, hidden]).match(b"sk-hidden") is hidden and hidden.allows("m2")


@pytest.mark.parametrize(("text", "message"), [
    ("keys:\n  - name: x\n", "exactly one of key or key_sha256"),
    ("keys:\n  - key: a\n    rpm: 3\n", "unknown fields \\['rpm'\\]"),
    ("keys:\n  - key: a\n    tokens_per_minute: -1\n", "tokens_per_minute must be"),
    ("keys:\n  - key_sha256: zz\n", "not a hex digest"),
    ("keys: []\n", "one 'keys' list"),
    ("# nothing\n", "holds no key"),
])
def test_mistakes_are_named(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "keys"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        policies_from_file(path)
