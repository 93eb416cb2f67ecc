"""Application status values are Ray Serve's (RUNNING, DEPLOYING, ...), not deployment ones."""

from __future__ import annotations

import pytest

from llmserve.serve.status import ApplicationStatusCode, DeploymentStatusCode

D = DeploymentStatusCode


@pytest.mark.parametrize(("deployments", "expected"), [
    ({D.HEALTHY}, "RUNNING"),
    ({D.HEALTHY, D.UPDATING}, "DEPLOYING"),
    ({D.HEALTHY, D.UNHEALTHY, D.UPDATING}, "UNHEALTHY"),
    ({D.DEPLOY_FAILED, D.UNHEALTHY}, "DEPLOY_FAILED"),
])
def test_application_status_from_its_deployments(deployments: set[DeploymentStatusCode],
                                                 expected: str) -> None:
    assert ApplicationStatusCode.of(deployments) == expected
