from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.test import Client

from arbiter.api.health import register_readiness_check, unregister_readiness_check

pytestmark = pytest.mark.django_db(databases="__all__")


@pytest.fixture
def failing_check() -> Iterator[str]:
    yield "test-check"
    unregister_readiness_check("test-check")


def test_healthz_and_readyz_answer_with_every_database() -> None:
    assert Client().get("/healthz").json()["status"] == "ok"
    ready = Client().get("/readyz")
    assert ready.status_code == 200
    assert {"database:default", "database:dataset", "database:training"} <= set(ready.json()["checks"])


def test_a_failing_optional_check_degrades_and_a_required_one_fails(failing_check: str) -> None:
    register_readiness_check(failing_check, lambda: "broker unreachable", required=False)
    degraded = Client().get("/readyz")
    assert degraded.status_code == 200
    assert degraded.json()["status"] == "degraded"
    assert degraded.json()["checks"][failing_check] == {"ok": False, "reason": "broker unreachable"}
    register_readiness_check(failing_check, lambda: "database gone", required=True)
    failed = Client().get("/readyz")
    assert failed.status_code == 503
    assert failed.json()["status"] == "not_ready"
