"""The classify fast path answers ordinary API-key calls exactly as the DRF view does, in fewer queries, and
leaves every other call (and every error) to the normal pipeline."""

from __future__ import annotations

import time
from typing import Any

import pytest
from rest_framework.test import APIClient

from arbiter.testing.queries import queries_captured
from arbiter.testing.tenants import Tenant, assert_not_found
from services.inference.models import Deployment, UsageDay
from tests.inference.conftest import InferenceApi

pytestmark = pytest.mark.django_db(databases="__all__")


def without_id(body: dict[str, Any]) -> dict[str, Any]:
    assert body.pop("id").startswith("clf-")
    return body


def test_an_ordinary_call_is_answered_as_the_view_answers_it_in_fewer_queries(
    api: InferenceApi, artifact_key: str
) -> None:
    deployment = api.deploy({"model": api.train(artifact_key)["model_id"]})
    url = api.url(f"/deployments/{deployment['id']}/classify")
    texts = {"inputs": ["you are an idiot", "have a nice day"]}
    api.client.post(url, texts, format="json")  # both paths start with the model loaded and the key cached

    with queries_captured() as fast_queries:
        fast = api.client.post(url, texts, format="json")
    # An Idempotency-Key is one of the things only the full pipeline handles.
    with queries_captured() as full_queries:
        full = api.client.post(url, texts, format="json", HTTP_IDEMPOTENCY_KEY="k-1")

    assert fast.status_code == full.status_code == 200
    assert without_id(fast.json()) == without_id(full.json())
    assert fast["Content-Type"] == "application/json"
    assert dict(fast.headers) == dict(full.headers)
    assert sum(fast_queries.counts.values()) < sum(full_queries.counts.values()), fast_queries.listing()
    usage = UsageDay.objects.unscoped().get(org_id=api.tenant.org.pk, deployment_id=deployment["id"])
    assert (usage.requests, usage.units) == (3, 6)  # each call counted once, whichever path took it


def test_every_unusual_call_gets_the_normal_answer(
    api: InferenceApi, artifact_key: str, victim: Tenant
) -> None:
    deployment = api.deploy({"model": api.train(artifact_key)["model_id"]})
    path = f"/deployments/{deployment['id']}/classify"
    url = api.url(path)

    bad = api.client.post(url, {"inputs": ["ok", 3]}, format="json")
    assert bad.status_code == 400 and "inputs" in bad.content.decode()
    nul = api.client.post(url, {"inputs": ["a\x00b"]}, format="json")
    assert nul.status_code == 400 and "NUL" in nul.content.decode()
    assert api.client.post(url, "inputs=x", content_type="text/plain").status_code == 415

    no_scope = api.tenant.client(["models:read"]).post(url, {"inputs": ["x"]}, format="json")
    assert no_scope.status_code == 403 and "inference" in no_scope.json()["error"]["message"]
    anonymous = APIClient().post(url, {"inputs": ["x"]}, format="json")
    assert anonymous.status_code == 401
    wrong_key = APIClient()
    wrong_key.credentials(HTTP_AUTHORIZATION="Bearer arb_not-a-key")
    assert wrong_key.post(url, {"inputs": ["x"]}, format="json").status_code == 401

    # Another org's key, on the tenant's org and under its own: the same 404 as any missing deployment.
    thief = victim.client(["admin"])
    assert_not_found(thief.post(url, {"inputs": ["x"]}, format="json"))
    assert_not_found(thief.post(victim.url(path), {"inputs": ["x"]}, format="json"))

    assert api.client.delete(api.url(f"/deployments/{deployment['id']}")).status_code == 200
    stopped = api.client.post(url, {"inputs": ["x"]}, format="json")
    assert stopped.status_code == 409 and stopped.json()["error"]["code"] == "deployment_not_live"
    assert not UsageDay.objects.unscoped().filter(org_id=victim.org.pk).exists()


def test_a_deployment_stopped_through_another_replica_stops_answering_within_the_cache_time(
    api: InferenceApi, artifact_key: str, override_arbiter_settings
) -> None:
    override_arbiter_settings(ARBITER_INFERENCE_DEPLOYMENT_CACHE_SECONDS="0.5")
    deployment = api.deploy({"model": api.train(artifact_key)["model_id"]})
    assert api.classify(deployment["id"], ["hello"]).status_code == 200
    # Another replica's stop: the row changes, this process's cache does not hear of it.
    Deployment.objects.unscoped().filter(pk=deployment["id"]).update(status="stopped")
    assert api.classify(deployment["id"], ["hello"]).status_code == 200
    time.sleep(0.6)
    assert api.classify(deployment["id"], ["hello"]).status_code == 409
