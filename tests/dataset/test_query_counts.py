"""The dataset service's lists run as many queries for many items as for one, and reading them never writes."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from arbiter.testing.queries import assert_same_query_counts, queries_of
from arbiter.testing.tenants import Tenant
from tests.dataset.conftest import DatasetApi

pytestmark = pytest.mark.django_db(databases="__all__")

ROWS = [{"text": f"comment number {i}", "label": "toxic" if i % 2 else "safe"} for i in range(12)]


def dataset(api: DatasetApi, name: str) -> dict[str, Any]:
    response = api.post("/datasets", {"name": name, "rows": ROWS})
    assert response.status_code == 201, response.content
    return response.json()


def snapshot(api: DatasetApi, dataset_id: int) -> dict[str, Any]:
    response = api.post(f"/datasets/{dataset_id}/snapshots", {"name": "s", "test_percent": 20})
    assert response.status_code == 201, response.content
    return response.json()


def browser(tenant: Tenant) -> Client:
    client = Client()
    client.force_login(tenant.owner)
    return client


def test_dataset_lists(tenant: Tenant, api: DatasetApi) -> None:
    console = browser(tenant)
    first = dataset(api, "first")

    def lists() -> tuple[Any, Any]:
        return api.get("/datasets"), console.get(f"/console/{tenant.slug}/datasets")

    (api_one, page_one), one = queries_of(lists)
    for name in ("second", "third", "fourth"):
        dataset(api, name)
    # One more with an import that failed halfway: its state and counts come from the same queries.
    api.upload(b"text,label\n", "empty.csv", path=f"/datasets/{first['id']}/uploads")
    (api_many, page_many), many = queries_of(lists)

    assert api_one.json()["count"] == 1 and api_many.json()["count"] == 4
    assert page_many.status_code == 200
    assert all(name.encode() in page_many.content for name in ("first", "second", "third", "fourth"))
    assert_same_query_counts(one, many)
    assert many.writes("dataset") == []


def test_snapshot_lists(tenant: Tenant, api: DatasetApi) -> None:
    console = browser(tenant)
    created = dataset(api, "comments")
    snapshot(api, created["id"])

    def lists() -> tuple[Any, Any, Any]:
        return (
            api.get("/snapshots"),
            api.get(f"/datasets/{created['id']}/snapshots"),
            console.get(f"/console/{tenant.slug}/datasets/{created['id']}/snapshots"),
        )

    (org_one, _, _), one = queries_of(lists)
    for _ in range(3):
        snapshot(api, created["id"])
    snapshot(api, dataset(api, "other")["id"])
    (org_many, dataset_many, page_many), many = queries_of(lists)

    assert len(org_one.json()["results"]) == 1 and len(org_many.json()["results"]) == 5
    assert len(dataset_many.json()["results"]) == 4
    assert page_many.status_code == 200
    assert_same_query_counts(one, many)
    assert many.writes("dataset") == []


def test_rows_jobs_and_history(tenant: Tenant, api: DatasetApi) -> None:
    console = browser(tenant)
    created = dataset(api, "comments")
    base = f"/datasets/{created['id']}"

    def lists() -> tuple[Any, ...]:
        return (
            api.get(f"{base}/rows", page_size=500),
            api.get(f"{base}/jobs"),
            api.get(f"{base}/history"),
            console.get(f"/console/{tenant.slug}{base}"),
        )

    (rows_one, *_), one = queries_of(lists)
    api.upload(b"text,label\nmore,safe\nagain,toxic\n", "more.csv", path=f"{base}/uploads")
    api.patch(base, {"name": "renamed"})
    (rows_many, jobs_many, history_many, page_many), many = queries_of(lists)

    assert len(rows_one.json()["results"]) == len(ROWS)
    assert rows_many.json()["count"] == len(ROWS) + 2
    assert len(jobs_many.json()["results"]) == 2
    assert len(history_many.json()["results"]) >= 3
    assert page_many.status_code == 200
    assert_same_query_counts(one, many)
    assert many.writes("dataset") == []
