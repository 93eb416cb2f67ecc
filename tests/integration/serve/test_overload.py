"""A call rejected for overload anywhere in a graph is a 503 with Retry-After over HTTP."""

from __future__ import annotations

import pytest

from llmserve import serve
from tests.integration.serve.overload_apps import Busy, Front, Middle, PlainFront
from tests.integration.serve.overload_checks import (
    assert_one_served_rest_rejected,
    server_errors,
)

pytestmark = pytest.mark.usefixtures("serve_instance")


@pytest.mark.parametrize("path", ["/direct", "/deep", "/sync"])
def test_fastapi_ingress_answers_503_when_a_deployment_behind_it_rejects(path: str) -> None:
    busy = Busy.bind()
    serve.run(Front.bind(Middle.bind(busy), busy), port=0)
    with server_errors() as errors:
        assert_one_served_rest_rejected(f"{serve.http_url()}{path}")
    assert not errors, [r.getMessage() for r in errors]


def test_plain_ingress_answers_503_when_a_deployment_two_hops_down_rejects() -> None:
    serve.run(PlainFront.bind(Middle.bind(Busy.bind())), port=0)
    with server_errors() as errors:
        assert_one_served_rest_rejected(str(serve.http_url()))
    assert not errors, [r.getMessage() for r in errors]
