"""The inference service's lists (deployments, usage; API and console) run as many queries for many items as
for one, and reading them never writes."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from arbiter.testing.queries import assert_same_query_counts, queries_of
from tests.inference.conftest import InferenceApi

pytestmark = pytest.mark.django_db(databases="__all__")


def test_deployment_and_usage_lists(api: InferenceApi, artifact_key: str) -> None:
    tenant = api.tenant
    console = Client()
    console.force_login(tenant.owner)

    def used_deployment() -> dict[str, Any]:
        deployment = api.deploy({"model": api.train(artifact_key)["model_id"]})
        assert api.classify(deployment["id"], ["a friendly hello"]).status_code == 200
        return deployment

    first = used_deployment()

    def lists() -> tuple[Any, ...]:
        return (
            api.client.get(api.url("/deployments")),
            api.client.get(api.url("/usage")),
            console.get(f"/console/{tenant.slug}/deployments"),
            console.get(f"/console/{tenant.slug}/usage"),
        )

    lists()  # the key's first use is recorded (a write, once): not part of what is compared
    (deployments_one, usage_one, *_), one = queries_of(lists)
    others = [used_deployment() for _ in range(3)]
    assert api.client.delete(api.url(f"/deployments/{others[0]['id']}")).status_code in (200, 202, 204)
    (deployments_many, usage_many, list_page, usage_page), many = queries_of(lists)

    assert len(deployments_one.json()["results"]) == 1 and len(deployments_many.json()["results"]) == 4
    assert len(usage_one.json()["days"]) == 1 and len(usage_many.json()["days"]) == 4
    assert list_page.status_code == 200 and first["name"].encode() in list_page.content
    assert usage_page.status_code == 200
    assert_same_query_counts(one, many)
    assert many.writes("inference") == []
