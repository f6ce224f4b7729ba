"""The training API: models, versions, runs, options, validation before training, cancelling, tenancy."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from arbiter.tenancy.scoping import org_scope
from arbiter.testing.tenants import Tenant, assert_not_found
from services.training import logic
from services.training.models import Snapshot, TrainingRun
from tests.training.conftest import (
    SENTIMENT,
    TOPIC,
    TOXICITY,
    deliver,
    deliver_requests,
    published,
    sentiment_rows,
    snapshot_event,
    snapshot_publish,
    toxicity_rows,
)

pytestmark = pytest.mark.django_db(databases="__all__")

WRITER = ["models:read", "models:write"]


def create(tenant: Tenant, snapshots: list[int], **fields: Any) -> Any:
    body = {"name": fields.pop("name", "moderation"), "snapshots": snapshots, **fields}
    return tenant.client(WRITER).post(tenant.url("/models"), body, format="json")


def pretend_trained(tenant: Tenant, run_id: int) -> None:
    """Move a run to succeeded through the trainer's own calls, without training (for API-level tests)."""
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


def test_creating_a_model_queues_version_1_and_requests_training(tenant: Tenant, toxicity_snapshot: int):
    response = create(tenant, [toxicity_snapshot], base_model="minilm-l6", options={"strategy": "head"})

    assert response.status_code == 201, response.content
    body = response.json()
    model, version = body["model"], body["version"]
    assert (model["name"], model["type"], model["base_model"]) == (
        "moderation",
        "text_classification",
        "minilm-l6",
    )
    assert model["versions"] == [
        {"number": 1, "status": "queued", "run": version["run"]["id"], "created_at": version["created_at"]}
    ]
    assert version["number"] == 1 and version["parent"] is None
    assert version["status"] == "queued"
    assert [(h["name"], h["origin"]) for h in version["heads"]] == [("toxicity", "new"), ("topic", "new")]
    assert version["test"] == {"split_percent": 20.0}
    assert version["options"]["strategy"] == "head"
    assert version["options"]["max_invalid_row_percent"] == 5.0
    assert (
        version["options"]["max_epochs"] >= 1 and version["options"]["selection_rule"] == "balanced_accuracy"
    )
    assert version["metrics"] is None
    assert [c["type"] for c in version["run"]["conditions"]] == ["Requested"]
    assert published("training.requested") == [
        {"run_id": version["run"]["id"], "model_id": model["id"], "version": 1}
    ]

    assert deliver_requests() == 1
    run = tenant.client(WRITER).get(tenant.url(f"/runs/{version['run']['id']}")).json()
    assert run["state"] == "queued"
    admitted = next(c for c in run["conditions"] if c["type"] == "Admitted")
    assert (admitted["status"], admitted["reason"]) == ("True", "Validated")
    assert deliver_requests() == 0

    listed = tenant.client(WRITER).get(tenant.url("/models")).json()
    assert [m["name"] for m in listed["results"]] == ["moderation"]
    detail = tenant.client(WRITER).get(tenant.url(f"/models/{model['id']}")).json()
    assert detail["latest_version"] == 1


@pytest.mark.parametrize(
    ("fields", "starts_with"),
    [
        ({"options": {"max_epochs": 0}}, "options.max_epochs:"),
        ({"options": {"strategy": "magic"}}, "options.strategy:"),
        ({"options": {"selection_rule": "accuracy"}}, "options.selection_rule:"),
        ({"options": {"learning_rate": 2}}, "options.learning_rate:"),
        ({"options": {"batch_size": 0}}, "options.batch_size:"),
        ({"options": {"max_invalid_row_percent": 120}}, "options.max_invalid_row_percent:"),
        ({"options": {"target_precision": 1.5}}, "options.target_precision:"),
        ({"options": {"epochs": 3}}, "options.epochs:"),
        ({"options": {"selection_head": "spam"}}, "options.selection_head:"),
        ({"test": {"snapshot": 1, "split_percent": 10}}, "test:"),
        ({"test": {"split_percent": 99}}, "test.split_percent:"),
        ({"base_model": {"model": "x"}}, "base_model:"),
        ({"type": "image_generation"}, "type:"),
        ({"type": "text_classification", "base_model": "vision-moderation"}, "base_model:"),
        ({"name": ""}, "name:"),
    ],
)
def test_bad_fields_are_400_naming_the_field(
    tenant: Tenant, toxicity_snapshot: int, fields: dict, starts_with: str
):
    response = create(tenant, [toxicity_snapshot], **fields)

    assert response.status_code == 400, response.content
    assert response.json()["error"]["message"].startswith(starts_with), response.json()
    assert published("training.requested") == []


def test_bad_snapshot_lists_and_taken_names_are_refused(tenant: Tenant, toxicity_snapshot: int):
    assert create(tenant, []).json()["error"]["message"].startswith("snapshots:")
    same = create(tenant, [toxicity_snapshot], test={"snapshot": toxicity_snapshot})
    assert same.status_code == 400 and same.json()["error"]["message"].startswith("test.snapshot:")

    assert create(tenant, [toxicity_snapshot]).status_code == 201
    taken = create(tenant, [toxicity_snapshot])
    assert taken.status_code == 409
    assert taken.json()["error"]["code"] == "model_name_taken"


def test_the_model_type_follows_the_base_and_the_snapshots_when_left_out(
    tenant: Tenant, toxicity_snapshot: int
):
    text = create(tenant, [toxicity_snapshot], name="from-the-snapshot")
    assert text.status_code == 201 and text.json()["model"]["type"] == "text_classification"
    # An image encoder reads images: the model is an image model, so a text snapshot does not fit it.
    image = create(tenant, [toxicity_snapshot], name="on-images", base_model="vision-moderation")
    assert image.status_code == 400, image.content
    assert image.json()["error"]["code"] == "snapshot_type_mismatch"
    assert "is text_classification, but the model is image_classification" in image.json()["error"]["message"]


def conditions(tenant: Tenant, run_id: int) -> dict[str, dict[str, Any]]:
    run = tenant.client(WRITER).get(tenant.url(f"/runs/{run_id}")).json()
    return {c["type"]: c for c in run["conditions"]} | {"state": {"state": run["state"]}}


def test_a_model_on_a_snapshot_still_on_its_way_waits_for_it_then_trains(tenant: Tenant):
    """A script that snapshots and then creates a model at once is not told to retry: the run waits."""
    event = snapshot_event(org_id=tenant.org.pk, rows=toxicity_rows(), heads=[TOXICITY, TOPIC])
    snapshot_id = int(event.data["snapshot_id"])

    response = create(tenant, [snapshot_id], options={"strategy": "head", "selection_head": "toxicity"})
    assert response.status_code == 201, response.content
    run_id = response.json()["version"]["run"]["id"]
    waiting = conditions(tenant, run_id)
    assert waiting["WaitingForSnapshot"]["status"] == "True"
    assert str(snapshot_id) in waiting["WaitingForSnapshot"]["message"]
    assert waiting["state"]["state"] == "queued"
    assert published("training.requested") == []

    deliver(event)  # snapshot.created reaches the training service

    arrived = conditions(tenant, run_id)
    assert arrived["WaitingForSnapshot"]["status"] == "False"
    assert [r["run_id"] for r in published("training.requested")] == [run_id]
    model_id = response.json()["model"]["id"]
    version = tenant.client(WRITER).get(tenant.url(f"/models/{model_id}/versions/1"))
    assert {h["name"] for h in version.json()["heads"]} == {"toxicity", "topic"}
    deliver_requests()
    assert conditions(tenant, run_id)["Admitted"]["status"] == "True"


def test_a_run_created_while_its_snapshot_event_was_handled_goes_on_at_the_operators_next_pass(
    tenant: Tenant,
):
    """The event's transaction and the request's cannot see each other's rows: the snapshot is recorded and
    the run written as waiting, each blind to the other. The operator's sweep notices the snapshot is here."""
    event = snapshot_event(org_id=tenant.org.pk, rows=toxicity_rows(), heads=[TOXICITY])
    response = create(tenant, [int(event.data["snapshot_id"])], options={"selection_head": "toxicity"})
    run_id = response.json()["version"]["run"]["id"]
    manifest = event.data
    Snapshot.objects.unscoped().create(  # what the handler committed, before the run above existed
        org_id=tenant.org.pk,
        snapshot_id=int(manifest["snapshot_id"]),
        dataset_id=int(manifest["dataset_id"]),
        type=manifest["type"],
        input_column=manifest["input_column"],
        heads=list(manifest["heads"]),
        rows=int(manifest["rows"]),
        sha256=manifest["sha256"],
        blob=manifest["blob"],
    )
    assert conditions(tenant, run_id)["WaitingForSnapshot"]["status"] == "True"

    logic.runs_awaiting_resume()

    assert conditions(tenant, run_id)["WaitingForSnapshot"]["status"] == "False"
    assert [r["run_id"] for r in published("training.requested")] == [run_id]


def test_a_waiting_run_whose_data_does_not_fit_fails_saying_why(tenant: Tenant):
    event = snapshot_event(org_id=tenant.org.pk, rows=toxicity_rows(), heads=[TOXICITY])
    response = create(tenant, [int(event.data["snapshot_id"])], options={"selection_head": "sentiment"})
    assert response.status_code == 201
    deliver(event)
    run = conditions(tenant, response.json()["version"]["run"]["id"])
    assert run["state"]["state"] == "failed"
    assert run["Failed"]["reason"] == "InvalidRequest"
    assert "options.selection_head" in run["Failed"]["message"]
    assert published("training.requested") == []


def test_a_snapshot_that_never_arrives_fails_the_run_after_the_wait(tenant: Tenant, victim: Tenant):
    """Naming another org's snapshot (or a wrong id) never trains on it: the run waits, then fails."""
    victim_event = snapshot_event(org_id=victim.org.pk, rows=toxicity_rows(), heads=[TOXICITY])
    response = create(tenant, [int(victim_event.data["snapshot_id"])])
    assert response.status_code == 201
    run_id = response.json()["version"]["run"]["id"]
    deliver(victim_event)  # the victim's own snapshot.created does not feed the tenant's run
    logic.runs_awaiting_resume()  # nor does the operator's sweep
    assert conditions(tenant, run_id)["WaitingForSnapshot"]["status"] == "True"

    assert logic.runs_awaiting_expire(older_than=timedelta(minutes=10)) == 0
    assert logic.runs_awaiting_expire(older_than=timedelta(seconds=0)) == 1
    run = conditions(tenant, run_id)
    assert run["state"]["state"] == "failed"
    assert run["WaitingForSnapshot"]["reason"] == "SnapshotNotFound"
    assert "never reached the training service" in run["Failed"]["message"]
    assert published("training.requested") == []


def test_a_retry_with_the_same_idempotency_key_creates_nothing_twice(tenant: Tenant, toxicity_snapshot: int):
    client = tenant.client(WRITER)
    body = {"name": "once", "snapshots": [toxicity_snapshot]}

    first = client.post(tenant.url("/models"), body, format="json", HTTP_IDEMPOTENCY_KEY="k-1")
    again = client.post(tenant.url("/models"), body, format="json", HTTP_IDEMPOTENCY_KEY="k-1")

    assert first.status_code == again.status_code == 201
    assert first.json()["version"]["run"]["id"] == again.json()["version"]["run"]["id"]
    assert len(published("training.requested")) == 1
    model_id = first.json()["model"]["id"]
    retrain = {"options": {"max_epochs": 2}}
    v2 = client.post(
        tenant.url(f"/models/{model_id}/versions"), retrain, format="json", HTTP_IDEMPOTENCY_KEY="k-2"
    )
    v2_again = client.post(
        tenant.url(f"/models/{model_id}/versions"), retrain, format="json", HTTP_IDEMPOTENCY_KEY="k-2"
    )
    assert v2.json()["number"] == v2_again.json()["number"] == 2
    assert len(published("training.requested")) == 2


def run_of(tenant: Tenant, response: Any) -> dict[str, Any]:
    run_id = response.json()["version"]["run"]["id"]
    return tenant.client(WRITER).get(tenant.url(f"/runs/{run_id}")).json()


def test_a_snapshot_over_the_invalid_row_limit_fails_before_training(tenant: Tenant):
    dirty = snapshot_publish(
        org_id=tenant.org.pk, rows=toxicity_rows(), heads=[TOXICITY, TOPIC], invalid_percent=7.5
    )

    strict = create(tenant, [dirty], name="strict")
    lenient = create(tenant, [dirty], name="lenient", options={"max_invalid_row_percent": 10})
    deliver_requests()

    run = run_of(tenant, strict)
    assert run["state"] == "failed"
    assert run["outcome"]["reason"] == "TooManyInvalidRows"
    assert "7.5% invalid rows" in run["outcome"]["message"]
    assert "max_invalid_row_percent" in run["outcome"]["message"]
    assert run["job"] == "" and run["attempt"] == 0
    assert published("training.failed") == [
        {
            "run_id": run["id"],
            "model_id": strict.json()["model"]["id"],
            "version": 1,
            "state": "failed",
            "reason": "TooManyInvalidRows",
            "message": run["outcome"]["message"],
        }
    ]
    assert run_of(tenant, lenient)["state"] == "queued"


def test_a_single_class_head_fails_with_what_to_do(tenant: Tenant):
    one_class = snapshot_publish(
        org_id=tenant.org.pk,
        rows=[{"row": 1, "input": "idiot", "labels": {"toxicity": ["toxic"]}, "split": None}],
        heads=[{"name": "toxicity", "labels": ["toxic"], "multi_label": False}],
    )
    response = create(tenant, [one_class])
    deliver_requests()

    run = run_of(tenant, response)
    assert run["state"] == "failed"
    assert run["outcome"]["reason"] == "SingleClassHead"
    assert "Head 'toxicity' has a single class (toxic)" in run["outcome"]["message"]
    assert next(c for c in run["conditions"] if c["type"] == "Admitted")["status"] == "False"


@pytest.mark.parametrize(
    ("test_heads", "complaint"),
    [
        ([TOXICITY], "has the heads ['toxicity'], but this version trains ['topic', 'toxicity']"),
        ([{**TOXICITY, "labels": ["safe", "toxic", "spam"]}, TOPIC], "Head 'toxicity' has the classes"),
    ],
)
def test_a_test_snapshot_with_other_heads_or_classes_fails(
    tenant: Tenant, toxicity_snapshot: int, test_heads, complaint
):
    test_snapshot = snapshot_publish(org_id=tenant.org.pk, rows=toxicity_rows(10), heads=test_heads)
    response = create(tenant, [toxicity_snapshot], test={"snapshot": test_snapshot})
    deliver_requests()

    run = run_of(tenant, response)
    assert (run["state"], run["outcome"]["reason"]) == ("failed", "TestSetMismatch")
    assert complaint in run["outcome"]["message"]


def test_a_new_version_keeps_untouched_heads_retrains_carried_ones_and_adds_new_ones(
    tenant: Tenant, toxicity_snapshot: int
):
    client = tenant.client(WRITER)
    created = create(tenant, [toxicity_snapshot], options={"strategy": "head", "max_epochs": 4})
    model_id = created.json()["model"]["id"]
    versions = tenant.url(f"/models/{model_id}/versions")

    early = client.post(versions, {}, format="json")
    assert (
        early.status_code == 201 and early.json()["parent"] is None
    )  # nothing trained yet: from the encoder
    pretend_trained(tenant, created.json()["version"]["run"]["id"])

    sentiment = snapshot_publish(org_id=tenant.org.pk, rows=sentiment_rows(), heads=[SENTIMENT])
    added = client.post(versions, {"parent": 1, "snapshots": [sentiment]}, format="json")
    assert added.status_code == 201, added.content
    v3 = added.json()
    assert v3["number"] == 3 and v3["parent"] == {"model": model_id, "version": 1}
    assert sorted((h["name"], h["origin"]) for h in v3["heads"]) == [
        ("sentiment", "new"),
        ("topic", "kept"),
        ("toxicity", "kept"),
    ]
    assert v3["snapshots"] == [sentiment]
    assert v3["options"]["max_epochs"] == 4  # the parent's options carry over

    toxicity_only = snapshot_publish(
        org_id=tenant.org.pk, rows=toxicity_rows(with_topic=False), heads=[TOXICITY]
    )
    retrained = client.post(
        versions, {"snapshots": [toxicity_only], "options": {"max_epochs": 2}}, format="json"
    )
    assert sorted((h["name"], h["origin"]) for h in retrained.json()["heads"]) == [
        ("topic", "kept"),
        ("toxicity", "retrained"),
    ]
    assert retrained.json()["parent"] == {"model": model_id, "version": 1}
    assert retrained.json()["options"]["max_epochs"] == 2

    untrained_parent = client.post(versions, {"parent": 3}, format="json")
    assert untrained_parent.status_code == 409
    assert untrained_parent.json()["error"]["code"] == "version_not_trained"
    assert client.post(versions, {"parent": 99}, format="json").status_code == 400

    listed = client.get(versions).json()
    assert [v["number"] for v in listed["results"]] == [1, 2, 3, 4]
    assert client.get(f"{versions}/3").json()["heads"] == v3["heads"]


def test_a_new_model_can_start_from_another_models_version(tenant: Tenant, toxicity_snapshot: int):
    first = create(tenant, [toxicity_snapshot], name="first")
    pretend_trained(tenant, first.json()["version"]["run"]["id"])
    sentiment = snapshot_publish(org_id=tenant.org.pk, rows=sentiment_rows(), heads=[SENTIMENT])

    second = create(
        tenant, [sentiment], name="second", base_model={"model": first.json()["model"]["id"], "version": 1}
    )

    assert second.status_code == 201, second.content
    version = second.json()["version"]
    assert version["parent"] == {"model": first.json()["model"]["id"], "version": 1}
    assert version["base_model"] == "minilm-l6"
    assert {h["name"]: h["origin"] for h in version["heads"]}["toxicity"] == "kept"


CANCELLABLE = ["queued", "admitted", "launched", "running"]


def bring_to(tenant: Tenant, run_id: int, state: str) -> None:
    with org_scope(tenant.org.pk):
        if state != "queued":
            deliver_requests()
        if state in ("launched", "running", "succeeded"):
            assert logic.run_launched(run_id=run_id, executor="local", job="12345")
        if state in ("running", "succeeded"):
            assert logic.run_start(run_id=run_id)
        if state == "succeeded":
            assert logic.run_succeed(
                run_id=run_id, evaluation={}, thresholds={}, artifact_key="a", metrics_summary={}
            )
        if state == "failed":
            logic.run_fail(run_id=run_id, reason="TrainerCrashed", message="boom")
        if state == "cancelled":
            logic.run_cancel(run=TrainingRun.objects.get(pk=run_id))


@pytest.mark.parametrize("state", [*CANCELLABLE, "succeeded", "failed", "cancelled"])
def test_cancel_works_at_any_state(tenant: Tenant, toxicity_snapshot: int, state: str):
    run_id = create(tenant, [toxicity_snapshot]).json()["version"]["run"]["id"]
    bring_to(tenant, run_id, state)
    before = tenant.client(WRITER).get(tenant.url(f"/runs/{run_id}")).json()
    events_before = len(published("training.failed"))

    response = tenant.client(WRITER).post(tenant.url(f"/runs/{run_id}/cancel"))
    again = tenant.client(WRITER).post(tenant.url(f"/runs/{run_id}/cancel"))

    assert response.status_code == again.status_code == 200
    run = response.json()
    assert again.json()["state"] == run["state"]
    if state in CANCELLABLE:
        assert run["state"] == "cancelled"
        assert run["outcome"]["reason"] == "CancelRequested"
        assert run["finished_at"] is not None
        assert published("training.failed")[-1]["state"] == "cancelled"
        assert len(published("training.failed")) == events_before + 1
        with org_scope(tenant.org.pk):
            # A trainer that is still going learns it must stop, and cannot succeed any more.
            assert logic.run_progress(run_id=run_id, epoch={"epoch": 1}) is False
            assert logic.run_start(run_id=run_id) is None
            assert TrainingRun.objects.get(pk=run_id).job_active is (state in ("launched", "running"))
    else:
        assert run["state"] == before["state"] == state
        assert len(published("training.failed")) == events_before


def test_scopes_are_enforced(tenant: Tenant, toxicity_snapshot: int):
    reader = tenant.client(["models:read"])
    assert reader.get(tenant.url("/models")).status_code == 200
    denied = reader.post(
        tenant.url("/models"), {"name": "x", "snapshots": [toxicity_snapshot]}, format="json"
    )
    assert denied.status_code == 403
    assert tenant.client(["datasets:read"]).get(tenant.url("/models")).status_code == 403


@pytest.mark.cross_tenant(
    "model-list",
    "model-detail",
    "model-version-list",
    "model-version-detail",
    "run-list",
    "run-detail",
    "run-cancel",
)
def test_another_orgs_models_versions_and_runs_are_404(tenant: Tenant, victim: Tenant):
    victim_snapshot = snapshot_publish(org_id=victim.org.pk, rows=toxicity_rows(), heads=[TOXICITY])
    victim_created = create(victim, [victim_snapshot], name="secret").json()
    model_id, run_id = victim_created["model"]["id"], victim_created["version"]["run"]["id"]
    pretend_trained(victim, run_id)
    attacker = tenant.client(["admin"])

    for path in [
        "/models",
        f"/models/{model_id}",
        f"/models/{model_id}/versions",
        f"/models/{model_id}/versions/1",
        "/runs",
        f"/runs/{run_id}",
    ]:
        assert_not_found(attacker.get(victim.url(path)))
        if path not in ("/models", "/runs"):
            assert_not_found(attacker.get(tenant.url(path)))
    assert_not_found(attacker.post(victim.url(f"/runs/{run_id}/cancel")))
    assert_not_found(attacker.post(tenant.url(f"/runs/{run_id}/cancel")))
    assert_not_found(
        attacker.post(victim.url("/models"), {"name": "x", "snapshots": [victim_snapshot]}, format="json")
    )
    assert_not_found(attacker.post(tenant.url(f"/models/{model_id}/versions"), {}, format="json"))
    assert_not_found(attacker.post(victim.url(f"/models/{model_id}/versions"), {}, format="json"))

    # The victim's snapshots and versions cannot be trained on, nor trained from, by naming their ids.
    stolen = create(tenant, [victim_snapshot], name="stolen")
    assert stolen.status_code == 201 and stolen.json()["version"]["heads"] == []  # it waits for its own
    own = snapshot_publish(org_id=tenant.org.pk, rows=toxicity_rows(), heads=[TOXICITY])
    from_victim = create(tenant, [own], name="from-victim", base_model={"model": model_id, "version": 1})
    assert from_victim.status_code == 400 and from_victim.json()["error"]["code"] == "unknown_version"
    # The tenant sees only its own model, waiting for a snapshot of its own: nothing of the victim's.
    assert [m["name"] for m in attacker.get(tenant.url("/models")).json()["results"]] == ["stolen"]
    runs = attacker.get(tenant.url("/runs")).json()["results"]
    assert [r["id"] for r in runs] == [stolen.json()["version"]["run"]["id"]] and runs[0]["state"] == "queued"

    assert victim.client(WRITER).get(victim.url(f"/runs/{run_id}")).json()["state"] == "succeeded"
