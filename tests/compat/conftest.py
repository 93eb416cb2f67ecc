from __future__ import annotations

from collections.abc import Iterator

import pytest

from llmserve import serve


@pytest.fixture
def fresh_serve() -> Iterator[None]:
    serve.shutdown()
    yield
    serve.shutdown()
