"""Text shipped with the package to train the tiny model's tokenizer offline.

The corpus is fixed prose plus sentences generated from small word lists with a
seeded ``random.Random`` (stable across Python versions), so the tokenizer it
trains is the same on every machine.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

PROSE = """\
The quick brown fox jumps over the lazy dog. A serving gateway accepts requests
from many clients, picks a replica for each one, and relays the answer back as
it is produced. Every replica runs an inference engine that keeps a cache of
keys and values for the tokens it has already seen, so a prompt that shares a
prefix with an earlier one can skip part of the work.

Hello! How are you today? I am fine, thank you. What is the weather like in
Paris, London, Tokyo, Berlin, Madrid, Rome, Cairo, Lima and Sydney? It is sunny
in the morning and it may rain in the evening. Please bring an umbrella.

def add(a: int, b: int) -> int:
    return a + b

class Counter:
    def __init__(self) -> None:
        self.count = 0

    def increment(self) -> int:
        self.count += 1
        return self.count

for i in range(10):
    print(f"step {i}: {i * i}")

import json
data = {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}]}
print(json.dumps(data, indent=2))

Once upon a time there was a small model that lived on a single computer. It
did not know many words, but it could count, it could repeat what it heard, and
it could tell a short story about a cat, a dog, a bird and a fish. The cat sat
on the mat. The dog ran in the park. The bird sang in the tree. The fish swam in
the river. At the end of the day they all went home and slept.

Questions and answers. Q: What is two plus two? A: Two plus two is four.
Q: What color is the sky? A: The sky is blue. Q: Who wrote this text? A: A
program that builds a tiny model for tests. Q: Why is it tiny? A: So that it
starts in seconds and fits on any machine.

The system prompt tells the assistant how to behave. The user asks a question.
The assistant answers politely, briefly and truthfully. When the assistant does
not know the answer, it says so. Tokens are pieces of words; a tokenizer splits
text into tokens and joins tokens back into text.

Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 32 64 100 128 256 512 1000
1024 2048 4096 8192 65536. Dates: 2024-01-01, 2025-12-31. Times: 09:30, 17:45.
Symbols: + - * / = < > ( ) [ ] { } # @ $ % & ! ? , . ; : ' " ` ~ ^ | \\ _
"""

SUBJECTS = (
    "the model",
    "a user",
    "the server",
    "the gateway",
    "a replica",
    "the router",
    "the engine",
    "a client",
    "the cache",
    "the scheduler",
    "my friend",
    "the teacher",
    "a student",
    "the robot",
    "our team",
    "the city",
    "the old man",
    "a young girl",
)
VERBS = (
    "reads",
    "writes",
    "sends",
    "receives",
    "counts",
    "answers",
    "starts",
    "stops",
    "loads",
    "serves",
    "routes",
    "measures",
    "builds",
    "tests",
    "finds",
    "keeps",
    "likes",
    "sees",
    "opens",
    "closes",
    "streams",
    "returns",
    "waits for",
    "helps",
)
OBJECTS = (
    "a request",
    "the response",
    "many tokens",
    "a short story",
    "the prompt",
    "a new adapter",
    "the metrics",
    "a long list",
    "the answer",
    "a small file",
    "the weights",
    "every batch",
    "a question",
    "the door",
    "a green apple",
    "the first line",
    "a cup of tea",
    "the results",
    "a warm welcome",
    "the data",
)
ENDINGS = (
    "today",
    "again",
    "quickly",
    "slowly",
    "in the morning",
    "at night",
    "every day",
    "without errors",
    "in order",
    "on time",
    "for the test",
    "with care",
    "by itself",
)


def generated_sentences(count: int, *, seed: int = 1234) -> Iterator[str]:
    """``count`` simple sentences drawn from the word lists above."""
    rng = random.Random(seed)
    for index in range(count):
        sentence = " ".join(
            (rng.choice(SUBJECTS), rng.choice(VERBS), rng.choice(OBJECTS), rng.choice(ENDINGS))
        )
        yield f"{sentence[0].upper()}{sentence[1:]} (#{index})."


def corpus_lines(num_generated: int = 4000) -> list[str]:
    """The whole training corpus, one string per line."""
    return PROSE.splitlines() + list(generated_sentences(num_generated))
