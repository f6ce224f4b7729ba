"""The `model` labeler (a deployed trained version of the org, reached through the inference service by
events), and the plan's automated annotations: counted before a job starts, refused beyond, metered by billing."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import transaction

from arbiter.entitlements import entitlements_cache_clear
from arbiter.storage import get_blob_store
from arbiter.tenancy.scoping import org_scope
from arbiter.testing.artifacts import cached_head_artifact
from arbiter.testing.tenants import Tenant, assert_not_found
from services.billing import logic as billing
from services.billing.models import LedgerEntry
from tests.annotation.conftest import AnnotationApi, comments_csv, deliver
from tests.inference.conftest import training_completed, training_rows

pytestmark = pytest.mark.django_db(databases="__all__")

ARTIFACT = "artifacts/tests/annotation-toxicity.tar.gz"


@pytest.fixture(scope="session")
def toxicity_artifact(pytestconfig: pytest.Config) -> str:
    blob = cached_head_artifact(
        cache_dir=pytestconfig.cache.mkdir("inference-artifacts"),
        prefix="",
        rows=training_rows(),
        heads=[
            {"name": "toxicity", "labels": ["safe", "toxic"]},
            {"name": "topic", "labels": ["insult", "spam", "none"], "multi_label": True},
        ],
        max_epochs=60,
    )
    get_blob_store().put_bytes(ARTIFACT, blob)
    return ARTIFACT


def deployed(tenant: Tenant, artifact: str) -> dict[str, Any]:
    """A live deployment of a trained version, announced to the annotation service as the consumers would."""
    trained = training_completed(org_id=tenant.org.pk, artifact=artifact, model_name="toxicity")
    admin = tenant.client(["admin"])
    response = admin.post(tenant.url("/deployments"), {"model": trained["model_id"]}, format="json")
    assert response.status_code == 202, response.content
    deliver(producer="inference", consumer="inference", type="deployment.requested")
    assert deliver(producer="inference", consumer="annotation", type="deployment.live") >= 1
    return dict(admin.get(tenant.url(f"/deployments/{response.json()['id']}")).json())


def round_trip() -> None:
    """The job's rows to the inference service and its predictions back, as the consumers would."""
    assert deliver(producer="annotation", consumer="inference", type="predictions.requested") == 1
    assert deliver(producer="inference", consumer="annotation", type="predictions.written") == 1


def test_a_deployed_model_labels_rows_and_a_missing_head_fails_the_job_with_the_reason(
    api: AnnotationApi, tenant: Tenant, toxicity_artifact: str
) -> None:
    deployment = deployed(tenant, toxicity_artifact)
    assert deployment["status"] == "live"
    dataset = api.dataset(comments_csv(12, labeled=6))
    api.schema(dataset["id"])

    job = api.job(dataset["id"], provider={"deployment": deployment["id"]}, rows="all")
    assert job["state"] == "running" and job["provider"]["kind"] == "model"
    round_trip()
    done = api.get(f"/annotation-jobs/{job['id']}").json()
    assert done["state"] == "completed", done
    assert done["agent"] == "model:toxicity.v1@v1"
    assert done["progress"]["done"] == 12 and done["progress"]["failed"] == 0
    # The six rows people labeled measure the model: it learned these very insults.
    assert done["agreement"]["rows"] == 6 and done["agreement"]["accuracy"] >= 5 / 6
    suggestions = api.get(f"/annotation-jobs/{job['id']}/suggestions").json()["results"]
    assert {s["agent"] for s in suggestions} == {"model:toxicity.v1@v1"}
    assert all(set(s["scores"]) == {"safe", "toxic"} and 0 <= s["score"] <= 1 for s in suggestions)

    # A head the model never learned: the inference service says so, and the job fails with that reason.
    api.schema(dataset["id"], head="sentiment", labels=[{"name": "pos"}, {"name": "neg"}])
    failed = api.job(dataset["id"], head="sentiment", provider={"deployment": deployment["id"]}, rows="all")
    round_trip()
    failed = api.get(f"/annotation-jobs/{failed['id']}").json()
    assert failed["state"] == "failed"
    assert failed["error"]["code"] == "head_not_in_model" and "toxicity" in failed["error"]["message"]

    # A deployment that is not live, or not this org's, is refused before anything starts.
    refused = api.post(
        "/annotation-jobs",
        {"dataset": dataset["id"], "head": "toxicity", "provider": {"deployment": deployment["id"] + 999}},
    )
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "deployment_not_live"
    tenant.client(["admin"]).delete(tenant.url(f"/deployments/{deployment['id']}"))
    deliver(producer="inference", consumer="annotation", type="deployment.stopped")
    refused = api.post(
        "/annotation-jobs",
        {"dataset": dataset["id"], "head": "toxicity", "provider": {"deployment": deployment["id"]}},
    )
    assert refused.status_code == 400 and "not live" in refused.json()["error"]["message"]


def test_a_stopped_deployment_fails_a_waiting_job_and_cancel_ends_it_at_once(
    api: AnnotationApi, tenant: Tenant, toxicity_artifact: str
) -> None:
    deployment = deployed(tenant, toxicity_artifact)
    dataset = api.dataset(comments_csv(4))
    api.schema(dataset["id"])
    job = api.job(dataset["id"], provider={"deployment": deployment["id"]}, rows="all")
    tenant.client(["admin"]).delete(tenant.url(f"/deployments/{deployment['id']}"))
    round_trip()
    failed = api.get(f"/annotation-jobs/{job['id']}").json()
    assert failed["state"] == "failed" and failed["error"]["code"] == "deployment_not_live"

    other = deployed(tenant, toxicity_artifact)
    waiting = api.job(dataset["id"], provider={"deployment": other["id"]}, rows="all")
    cancelled = api.post(f"/annotation-jobs/{waiting['id']}/cancel", {}).json()
    assert cancelled["state"] == "cancelled"
    round_trip()  # the late answer changes nothing
    assert api.get(f"/annotation-jobs/{waiting['id']}").json()["state"] == "cancelled"


def announce(org_id: int) -> None:
    """Billing's newest announcement of the org, handed to the annotation service as its consumer would."""
    with transaction.atomic(using="billing"), org_scope(org_id):
        billing.entitlements_publish(account=billing.account_get(org_id=org_id), reason="refresh")
    deliver(producer="billing", consumer="annotation", type="entitlements.changed")


def test_the_months_automated_annotations_are_shown_before_a_job_and_enforced_and_metered(
    api: AnnotationApi, override_arbiter_settings: Any
) -> None:
    override_arbiter_settings(ARBITER_BILLING_PLANS='{"free": {"meters": {"auto_label": {"included": 15}}}}')
    entitlements_cache_clear()
    org = api.tenant.org.pk
    dataset = api.dataset(comments_csv(12))
    api.schema(dataset["id"])

    estimate = api.post("/annotation-jobs/estimate", {"dataset": dataset["id"], "head": "toxicity"}).json()
    assert estimate["rows"] == 12 and estimate["calls"] == 0 and estimate["allowed"] is True
    assert estimate["quota"] == {
        **estimate["quota"],
        "meter": "auto_label",
        "plan": "free",
        "included": 15,
        "used": 0,
        "remaining": 15,
    }
    job = api.job(dataset["id"], rows={"sample": 10})
    assert job["state"] == "completed"

    # Billing counts the labeled rows as auto-labels, from the job's `annotation.completed`, once.
    assert deliver(producer="annotation", consumer="billing", type="annotation.completed") == 1
    ledger = LedgerEntry.objects.unscoped().filter(org_id=org, meter="auto_label")
    assert [entry.units for entry in ledger] == [10]
    announce(org)

    estimate = api.post(
        "/annotation-jobs/estimate", {"dataset": dataset["id"], "head": "toxicity", "rows": "all"}
    ).json()
    assert estimate["quota"]["used"] == 10 and estimate["quota"]["remaining"] == 5
    assert estimate["allowed"] is False and "15 auto-labels a month" in estimate["refusal"]
    refused = api.post("/annotation-jobs", {"dataset": dataset["id"], "head": "toxicity", "rows": "all"})
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert error["code"] == "quota_exceeded"
    assert error["details"] == {**error["details"], "meter": "auto_label", "limit": 15, "used": 10}
    assert refused["Retry-After"]
    # What still fits is allowed.
    assert api.job(dataset["id"], rows={"sample": 5, "from": "all"})["state"] == "completed"


@pytest.mark.cross_tenant("annotation-job-estimate")
def test_a_victims_dataset_cannot_be_estimated(tenant: Tenant, victim: Tenant) -> None:
    owner = AnnotationApi(victim, ["admin"])
    dataset = owner.dataset(comments_csv(4))
    owner.schema(dataset["id"])
    attacker = AnnotationApi(tenant, ["admin"])
    body = {"dataset": dataset["id"], "head": "toxicity"}
    assert_not_found(attacker.client.post(victim.url("/annotation-jobs/estimate"), body, format="json"))
    mine = attacker.post("/annotation-jobs/estimate", body).json()
    assert mine["rows"] == 0  # the victim's rows are not the attacker's
