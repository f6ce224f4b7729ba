"""The training service's lists (models, versions, runs; API and console) run as many queries for many items as
for one, and reading them never writes."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from arbiter.tenancy.scoping import org_scope
from arbiter.testing.queries import assert_same_query_counts, queries_of
from arbiter.testing.tenants import Tenant
from services.training import logic
from tests.training.conftest import deliver_requests

pytestmark = pytest.mark.django_db(databases="__all__")

WRITER = ["models:read", "models:write"]


def model(tenant: Tenant, snapshot: int, name: str) -> dict[str, Any]:
    response = tenant.client(WRITER).post(
        tenant.url("/models"), {"name": name, "snapshots": [snapshot]}, format="json"
    )
    assert response.status_code == 201, response.content
    return dict(response.json())


def trained(tenant: Tenant, run_id: int) -> None:
    """The run succeeds through the trainer's own calls, without training."""
    with org_scope(tenant.org.pk):
        deliver_requests()
        assert logic.run_start(run_id=run_id) is not None
        assert logic.run_succeed(
            run_id=run_id,
            evaluation={"heads": {}},
            thresholds={},
            artifact_key=f"artifacts/test/{run_id}.tar.gz",
            metrics_summary={},
        )


def test_model_version_and_run_lists(tenant: Tenant, toxicity_snapshot: int) -> None:
    api = tenant.client(WRITER)
    console = Client()
    console.force_login(tenant.owner)
    first = model(tenant, toxicity_snapshot, "first")
    model_id = first["model"]["id"]

    def lists() -> tuple[Any, ...]:
        return (
            api.get(tenant.url("/models")),
            api.get(tenant.url(f"/models/{model_id}/versions")),
            api.get(tenant.url("/runs")),
            console.get(f"/console/{tenant.slug}/models"),
            console.get(f"/console/{tenant.slug}/models/{model_id}"),
        )

    lists()  # the key's first use is recorded (a write, once): not part of what is compared
    (models_one, *_), one = queries_of(lists)
    trained(tenant, first["version"]["run"]["id"])
    for _ in range(2):
        response = api.post(tenant.url(f"/models/{model_id}/versions"), {"parent": 1}, format="json")
        assert response.status_code == 201, response.content
    for name in ("second", "third"):
        trained(tenant, model(tenant, toxicity_snapshot, name)["version"]["run"]["id"])
    (models_many, versions_many, runs_many, list_page, model_page), many = queries_of(lists)

    assert len(models_one.json()["results"]) == 1 and len(models_many.json()["results"]) == 3
    assert len(versions_many.json()["results"]) == 3
    assert len(runs_many.json()["results"]) == 5
    assert list_page.status_code == 200 and b"third" in list_page.content
    assert model_page.status_code == 200
    assert_same_query_counts(one, many)
    assert many.writes("training") == []
