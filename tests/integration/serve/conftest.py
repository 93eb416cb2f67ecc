from __future__ import annotations

from collections.abc import Iterator

import pytest

from llmserve import serve


@pytest.fixture
def serve_instance() -> Iterator[None]:
    serve.shutdown()
    yield
    serve.shutdown()
