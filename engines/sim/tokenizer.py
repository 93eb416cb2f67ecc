"""Tokenisation as the real engine does it: ``tokenizer.json`` + the model's chat template.

Loads a Hugging Face model directory with the ``tokenizers`` package (no
transformers), renders the chat template with jinja2 the way transformers'
``apply_chat_template`` does, and falls back to a byte-level tokenizer when no
directory is given.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

import jinja2
import jinja2.sandbox

logger = logging.getLogger(__name__)

Message = Mapping[str, Any]

FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


class Tokenizer(Protocol):
    name: str
    eos_token_id: int | None
    stop_token_ids: tuple[int, ...]

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]: ...

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = True) -> str: ...

    def render_chat(
        self, messages: Sequence[Message], add_generation_prompt: bool = True
    ) -> str: ...

    @property
    def word_token_ids(self) -> tuple[int, ...]: ...

    def token_text(self, token_id: int) -> str: ...


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def compile_chat_template(source: str) -> jinja2.Template:
    """Compile as transformers does (sandboxed, trim_blocks, lstrip_blocks)."""
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
    )
    env.filters["tojson"] = lambda value, indent=None: json.dumps(
        value, ensure_ascii=False, indent=indent
    )
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(source)


def _special_text(value: object) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        content = value.get("content")
        return content if isinstance(content, str) else None
    return None


def _load_chat_template(model_dir: Path, config: Mapping[str, Any]) -> str | None:
    jinja_file = model_dir / "chat_template.jinja"
    if jinja_file.is_file():
        return jinja_file.read_text()
    template = config.get("chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, Mapping)}
        template = named.get("default") or next(iter(named.values()), None)
    return template if isinstance(template, str) else None


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    return data if isinstance(data, dict) else {}


class _TemplateMixin:
    _template: jinja2.Template
    bos_token: str
    eos_token: str

    def render_chat(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> str:
        return self._template.render(
            messages=[dict(m) for m in messages],
            add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token,
            eos_token=self.eos_token,
            tools=None,
        )


class HFTokenizer(_TemplateMixin):
    """A model directory's ``tokenizer.json`` through the ``tokenizers`` package."""

    def __init__(self, model_dir: str | Path) -> None:
        from tokenizers import Tokenizer as RustTokenizer

        directory = Path(model_dir)
        self.name = str(directory)
        self._tok = RustTokenizer.from_file(str(directory / "tokenizer.json"))
        config = _read_json(directory / "tokenizer_config.json")
        generation = _read_json(directory / "generation_config.json")
        self.bos_token = _special_text(config.get("bos_token")) or ""
        self.eos_token = _special_text(config.get("eos_token")) or ""
        self.eos_token_id = self._tok.token_to_id(self.eos_token) if self.eos_token else None
        extra = generation.get("eos_token_id")
        extra_ids = extra if isinstance(extra, list) else [extra] if isinstance(extra, int) else []
        self.stop_token_ids = tuple(i for i in extra_ids if i != self.eos_token_id)
        template = _load_chat_template(directory, config)
        if template is None:
            logger.warning("%s has no chat template; using a plain one", directory)
        self._template = compile_chat_template(template or FALLBACK_CHAT_TEMPLATE)
        added = self._tok.get_added_tokens_decoder()
        self._special_ids = frozenset(i for i, token in added.items() if token.special)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=add_special_tokens).ids)

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return str(self._tok.decode(list(token_ids), skip_special_tokens=skip_special_tokens))

    def token_text(self, token_id: int) -> str:
        return "" if token_id in self._special_ids else self.decode([token_id])

    @cached_property
    def word_token_ids(self) -> tuple[int, ...]:
        """Tokens that decode to a space and a few ASCII letters: readable, no byte splits."""
        words = []
        for token_id in range(self._tok.get_vocab_size(with_added_tokens=False)):
            if token_id in self._special_ids:
                continue
            text = self.decode([token_id])
            if len(text) >= 3 and text[0] == " " and text[1:].isascii() and text[1:].isalpha():
                words.append(token_id)
        if not words:
            words = [i for i in range(self._tok.get_vocab_size()) if i not in self._special_ids]
        return tuple(words)


class ByteTokenizer(_TemplateMixin):
    """UTF-8 bytes are ids 0-255; 256 is BOS, 257 is EOS. Used when no model dir is given."""

    BOS_ID = 256
    EOS_ID = 257

    def __init__(self) -> None:
        self.name = "byte-level"
        self.bos_token = "<s>"
        self.eos_token = "</s>"
        self.eos_token_id: int | None = self.EOS_ID
        self.stop_token_ids: tuple[int, ...] = ()
        self._template = compile_chat_template(FALLBACK_CHAT_TEMPLATE)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        prefix = [self.BOS_ID] if add_special_tokens else []
        return prefix + list(text.encode("utf-8"))

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        data = bytes(i for i in token_ids if 0 <= i < 256)
        return data.decode("utf-8", errors="replace")

    def token_text(self, token_id: int) -> str:
        return chr(token_id) if 0 <= token_id < 128 else ""

    @property
    def word_token_ids(self) -> tuple[int, ...]:
        return tuple(range(ord("a"), ord("z") + 1)) + (ord(" "),) * 5


def load_tokenizer(model_dir: str | Path | None) -> Tokenizer:
    if model_dir is None:
        logger.warning("no --model directory: using the byte-level fallback tokenizer")
        return ByteTokenizer()
    return HFTokenizer(model_dir)
