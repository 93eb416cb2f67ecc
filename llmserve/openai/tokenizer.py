"""A model's tokenizer for the gateway: ``tokenizer.json`` and the chat template, no torch.

``transformers.AutoTokenizer`` imports torch (seconds of start-up and hundreds of MB in
the gateway) though routing only needs two things from it: the chat template, rendered
(:mod:`llmserve.openai.chat_template` does that as transformers does), and the Rust
tokenizer in ``tokenizer.json`` (the ``tokenizers`` package, which transformers' fast
tokenizers wrap). :class:`LightTokenizer` offers the part of the transformers interface
the prompt renderer uses: ``apply_chat_template``, ``backend_tokenizer`` and calling it to
encode.

It reads a local model directory as transformers does for a generic fast tokenizer:
special tokens (``bos_token``, ``eos_token``, ... and other ``*_token`` entries, plain or
``AddedToken`` dicts) from ``tokenizer_config.json`` (else ``special_tokens_map.json``),
its ``added_tokens_decoder`` and special tokens added to the Rust tokenizer when
``tokenizer.json`` lacks them, and ``split_special_tokens``. What it does not reproduce:
model-specific tokenizer classes that transformers rebuilds from the vocabulary with their
own settings (rare for ``tokenizer.json`` models) and its Mistral pre-tokenizer patch.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Tokenizer

from llmserve.openai.chat_template import (
    ChatTemplates,
    choose_template,
    find_chat_templates,
    render_chat,
)

TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_FILE = "special_tokens_map.json"
NAMED_SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token",
                        "cls_token", "mask_token")


class LightTokenizer:
    """``tokenizer.json`` plus chat template: what routing needs of a model's tokenizer."""

    def __init__(self, backend: Tokenizer, chat_template: ChatTemplates,
                 special_tokens: Mapping[str, str]) -> None:
        self.backend_tokenizer = backend
        self.chat_template = chat_template
        self.special_tokens_map = dict(special_tokens)

    @classmethod
    def from_dir(cls, model_dir: str | Path) -> LightTokenizer:
        """Load from a local directory holding ``tokenizer.json``; FileNotFoundError if it
        has none."""
        root = Path(model_dir)
        if not (root / TOKENIZER_FILE).is_file():
            raise FileNotFoundError(f"no {TOKENIZER_FILE} in {root}")
        backend = Tokenizer.from_file(str(root / TOKENIZER_FILE))
        config_path = root / CONFIG_FILE
        config: dict[str, Any] = (json.loads(config_path.read_text(encoding="utf-8"))
                                  if config_path.is_file() else {})
        special = _special_tokens(root, config, backend)
        _add_missing_tokens(backend, config, special)
        backend.encode_special_tokens = bool(config.get("split_special_tokens", False))
        return cls(backend, find_chat_templates(root, config),
                   {name: str(token) for name, token in special.items()})

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        ids = self.backend_tokenizer.encode(text, add_special_tokens=add_special_tokens).ids
        return {"input_ids": list(ids)}

    def apply_chat_template(self, conversation: Sequence[Mapping[str, Any]],
                            tools: Sequence[Any] | None = None,
                            documents: Sequence[Any] | None = None,
                            chat_template: str | None = None,
                            add_generation_prompt: bool = False,
                            continue_final_message: bool | str = False,
                            tokenize: bool = True,
                            **kwargs: Any) -> str | list[int]:
        """As transformers' method for one conversation: the text when ``tokenize=False``,
        else its token ids (without special tokens). ``kwargs`` become template variables
        (overriding special tokens of the same name)."""
        template = choose_template(self.chat_template, chat_template, tools)
        text = render_chat(template, conversation, tools=tools, documents=documents,
                           add_generation_prompt=add_generation_prompt,
                           continue_final_message=continue_final_message,
                           variables={**self.special_tokens_map, **kwargs})
        if not tokenize:
            return text
        return self(text, add_special_tokens=False)["input_ids"]


def _token_text(value: Any) -> str | None:
    """A token's text from its config form: a string or an ``AddedToken`` dict."""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return str(value["content"])
    return None


def _special_tokens(root: Path, config: Mapping[str, Any], backend: Tokenizer
                    ) -> dict[str, str]:
    """Named special tokens, as transformers' ``special_tokens_map``."""
    source: dict[str, Any] = dict(config)
    legacy = root / SPECIAL_TOKENS_FILE
    if "added_tokens_decoder" not in config and legacy.is_file():
        for key, value in json.loads(legacy.read_text(encoding="utf-8")).items():
            source[key] = value
    extra = source.get("extra_special_tokens")
    if isinstance(extra, Mapping):  # named model-specific tokens
        source = {**source, **extra}
    special: dict[str, str] = {}
    for key, value in source.items():
        if key.endswith("_token"):
            text = _token_text(value)
            if text is not None:
                special[key] = text
    padding = backend.padding
    if "pad_token" not in special and padding and isinstance(padding.get("pad_token"), str):
        special["pad_token"] = padding["pad_token"]
    # transformers' order (the order missing tokens get their ids): named, then the rest
    named = {key: special[key] for key in NAMED_SPECIAL_TOKENS if key in special}
    return {**named, **{k: v for k, v in special.items() if k not in named}}


def _add_missing_tokens(backend: Tokenizer, config: Mapping[str, Any],
                        special: Mapping[str, str]) -> None:
    """Tokens the config declares that ``tokenizer.json`` lacks, added as transformers
    adds them when it loads the tokenizer."""
    present = {str(token.content) for token in backend.get_added_tokens_decoder().values()}
    missing: list[AddedToken] = []
    decoder = config.get("added_tokens_decoder")
    if isinstance(decoder, Mapping):
        for _, entry in sorted(decoder.items(), key=lambda item: int(item[0])):
            if isinstance(entry, Mapping) and entry.get("content") not in present:
                fields = {k: v for k, v in entry.items() if k != "__type"}
                missing.append(AddedToken(**fields))
                present.add(str(entry["content"]))
    extra = config.get("extra_special_tokens", config.get("additional_special_tokens"))
    extra_texts = ([t for t in (_token_text(v) for v in extra) if t is not None]
                   if isinstance(extra, list) else [])
    for text in [*special.values(), *extra_texts]:
        if text not in present:
            missing.append(AddedToken(text, special=True))
            present.add(text)
    if missing:
        backend.add_tokens(missing)


__all__ = ["LightTokenizer"]
