"""Deterministic filler text of a given token length.

With a tokenizer (a model directory holding ``tokenizer.json``) lengths are measured with
it: words are drawn until the text encodes to at least ``n`` tokens, then the ids are cut
to ``n`` and decoded. Without one, one word counts as one token (short common words are
one token in most BPE vocabularies).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Protocol

_WORD_TEXT = (
    "the of and to in is was for on that with as by at from his her it an were are which "
    "this be or has had not but one all new more after also two first other their its "
    "who out time can year some when there been into would up over only most may city "
    "state world about could school under where during use part way many then these work "
    "people than later made well team while group game home season such high them both "
    "system model cache token route node data load queue batch prompt reply block page "
    "value field light river north south east west water stone green blue red black white "
    "small large early late open close start end long short left right north card plan "
    "book word line house music film song art story class table order market power field"
)
WORDS = tuple(_WORD_TEXT.split())


class TokenCounter(Protocol):
    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


class HfTokenCounter:
    """A ``tokenizer.json`` loaded with the ``tokenizers`` package (no special tokens)."""

    def __init__(self, model_dir: str | Path) -> None:
        from tokenizers import Tokenizer

        self._tokenizer = Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))

    def encode(self, text: str) -> list[int]:
        return list(self._tokenizer.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: list[int]) -> str:
        return str(self._tokenizer.decode(ids, skip_special_tokens=True))


class TextSource:
    """Makes texts of exact token lengths from a seeded RNG."""

    def __init__(self, rng: random.Random, counter: TokenCounter | None = None) -> None:
        self.rng = rng
        self.counter = counter

    def words(self, n: int) -> str:
        return " ".join(self.rng.choice(WORDS) for _ in range(n))

    def text(self, num_tokens: int) -> str:
        if num_tokens <= 0:
            return ""
        if self.counter is None:
            return self.words(num_tokens)
        ids: list[int] = []
        text = ""
        while len(ids) < num_tokens:
            text = f"{text} {self.words(num_tokens - len(ids))}" if text else self.words(
                num_tokens)
            ids = self.counter.encode(text)
        return self.counter.decode(ids[:num_tokens]).strip()

    def count(self, text: str) -> int:
        if self.counter is None:
            return len(text.split())
        return len(self.counter.encode(text))


def load_counter(tokenizer_dir: str | Path | None) -> TokenCounter | None:
    return HfTokenCounter(tokenizer_dir) if tokenizer_dir else None
