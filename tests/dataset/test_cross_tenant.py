"""Another org's datasets, rows, jobs and snapshots answer exactly like missing ones: 404."""

from __future__ import annotations

import io

import pytest

from arbiter.testing.tenants import Tenant, assert_not_found
from services.dataset.models import Dataset, Row, Snapshot

pytestmark = pytest.mark.django_db(databases="__all__")


@pytest.mark.cross_tenant(
    "dataset-list",
    "dataset-detail",
    "dataset-upload",
    "dataset-job-list",
    "dataset-job-detail",
    "dataset-history",
    "dataset-export",
    "dataset-row-list",
    "dataset-row-detail",
    "dataset-snapshot-list",
    "snapshot-list",
    "snapshot-detail",
    "snapshot-invalid-rows",
    "snapshot-test-check",
    "snapshot-download",
)
def test_a_victims_dataset_is_404_everywhere(tenant: Tenant, victim: Tenant) -> None:
    owner = victim.client(["datasets:read", "datasets:write"])
    dataset = owner.post(victim.url("/datasets"), {"example": "moderation"}, format="json").json()
    snapshot = owner.post(victim.url(f"/datasets/{dataset['id']}/snapshots"), {}, format="json").json()
    job = dataset["job"]["id"]
    d = f"/datasets/{dataset['id']}"
    s = f"/snapshots/{snapshot['id']}"

    attacker = tenant.client(["admin"])
    own = attacker.post(
        tenant.url("/datasets"), {"rows": [{"text": "mine", "label": "a"}]}, format="json"
    ).json()
    own_snapshot = attacker.post(tenant.url(f"/datasets/{own['id']}/snapshots"), {}, format="json").json()
    file = io.BytesIO(b"text,label\nx,y\n")
    file.name = "x.csv"
    for org in (victim, tenant):
        # Through the victim's org slug (not a member), and through the attacker's own org with victim ids.
        assert_not_found(attacker.get(org.url(d)))
        assert_not_found(attacker.patch(org.url(d), {"name": "pwned"}, format="json"))
        assert_not_found(attacker.delete(org.url(d)))
        assert_not_found(attacker.post(org.url(f"{d}/uploads"), {"rows": [{"text": "x"}]}, format="json"))
        assert_not_found(attacker.get(org.url(f"{d}/jobs")))
        assert_not_found(attacker.get(org.url(f"{d}/jobs/{job}")))
        assert_not_found(attacker.get(org.url(f"{d}/history")))
        assert_not_found(attacker.get(org.url(f"{d}/export.csv")))
        assert_not_found(attacker.get(org.url(f"{d}/rows")))
        assert_not_found(attacker.post(org.url(f"{d}/rows"), {"text": "x"}, format="json"))
        assert_not_found(attacker.get(org.url(f"{d}/rows/1")))
        assert_not_found(attacker.patch(org.url(f"{d}/rows/1"), {"text": "x"}, format="json"))
        assert_not_found(attacker.delete(org.url(f"{d}/rows/1")))
        assert_not_found(attacker.get(org.url(f"{d}/snapshots")))
        assert_not_found(attacker.post(org.url(f"{d}/snapshots"), {}, format="json"))
        assert_not_found(attacker.get(org.url(s)))
        assert_not_found(attacker.get(org.url(f"{s}/invalid-rows")))
        assert_not_found(attacker.get(org.url(f"{s}/test-check"), {"test_snapshot": own_snapshot["id"]}))
        assert_not_found(attacker.get(org.url(f"{s}/download")))
    assert_not_found(attacker.get(victim.url("/datasets")))
    assert_not_found(attacker.get(victim.url("/snapshots")))
    assert_not_found(attacker.post(victim.url("/datasets"), {"file": file}, format="multipart"))
    # The victim's snapshot cannot be used as the attacker's test set either.
    own_check = attacker.get(
        tenant.url(f"/snapshots/{own_snapshot['id']}/test-check"), {"test_snapshot": snapshot["id"]}
    )
    assert_not_found(own_check)
    # Listings of the attacker's org show only its own things.
    assert [d["id"] for d in attacker.get(tenant.url("/datasets")).json()["results"]] == [own["id"]]
    assert [s["id"] for s in attacker.get(tenant.url("/snapshots")).json()["results"]] == [own_snapshot["id"]]
    # Nothing of the victim's changed.
    assert Dataset.objects.unscoped().get(pk=dataset["id"]).name == dataset["name"]
    assert Row.objects.unscoped().filter(dataset_id=dataset["id"]).count() == dataset["rows"]
    assert Snapshot.objects.unscoped().filter(dataset_id=dataset["id"]).count() == 1
