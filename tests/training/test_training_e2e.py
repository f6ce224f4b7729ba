"""End to end with the local executor: the operator launches the real trainer (`arbiter train --run <id>`)
as a subprocess, which trains on a tiny snapshot from the blob store and reports through the training
database.

Covers the update-model walkthrough (a `sentiment` head added beside kept heads), an operator restart in the
middle of a run, a trainer killed mid-run, cancelling a running trainer, and a base model that cannot load.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.db import connections

from arbiter.storage import get_blob_store
from arbiter.testing.tenants import Tenant
from services.training.models import TrainingRun
from services.training.operator.local_executor import LocalExecutor
from services.training.operator.reconcile import operator_owner, operator_reconcile
from tests.training.conftest import (
    SENTIMENT,
    TOPIC,
    TOXICITY,
    deliver_requests,
    published,
    sentiment_rows,
    snapshot_publish,
    toxicity_rows,
)

pytestmark = [pytest.mark.django_db(databases="__all__", transaction=True), pytest.mark.slow]

FAST = {"strategy": "head", "max_epochs": 3}
METRICS = {
    "precision",
    "recall",
    "f1",
    "balanced_accuracy",
    "average_precision",
    "confusion",
    "pr_curve",
    "thresholds",
}


@pytest.fixture(autouse=True)
def trainer_database(monkeypatch: pytest.MonkeyPatch) -> None:
    """Trainer subprocesses must use this test's training database (the test runner renamed it)."""
    db = connections["training"].settings_dict
    where = f"{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}"
    monkeypatch.setenv(
        "DATABASE_URL_TRAINING", f"postgres://{db['USER']}:{db['PASSWORD']}@{where}/{db['NAME']}"
    )


@pytest.fixture
def executor(tmp_path: Path) -> Iterator[LocalExecutor]:
    executor = local_executor(tmp_path)
    yield executor
    for job in executor.owned():
        executor.stop(job.handle, run_id=job.run_id)


def local_executor(tmp_path: Path) -> LocalExecutor:
    return LocalExecutor(
        command=[sys.executable, "-m", "arbiter.cli"], log_dir=tmp_path / "logs", owner=operator_owner()
    )


def run(run_id: int) -> TrainingRun:
    return TrainingRun.objects.unscoped().get(pk=run_id)


def reconcile_until(executor: LocalExecutor, run_id: int, done: Callable[[TrainingRun], bool]) -> TrainingRun:
    deadline = time.monotonic() + 300
    while True:
        operator_reconcile(executor=executor, concurrency=1)
        current = run(run_id)
        if done(current):
            return current
        assert time.monotonic() < deadline, f"run {run_id} stuck: {current.state} {current.conditions}"
        time.sleep(0.2)


def ended(current: TrainingRun) -> bool:
    return current.is_terminal and not current.job_active


def training(current: TrainingRun) -> bool:
    return current.state == "running" or current.is_terminal


def create(tenant: Tenant, snapshot: int, **fields: Any) -> dict[str, Any]:
    body = {"name": fields.pop("name", "moderation"), "snapshots": [snapshot], "options": FAST, **fields}
    response = tenant.client(["admin"]).post(tenant.url("/models"), body, format="json")
    assert response.status_code == 201, response.content
    deliver_requests()
    return response.json()


def test_train_then_update_with_a_new_head_through_an_operator_restart(tenant: Tenant, executor, tmp_path):
    client = tenant.client(["admin"])
    snapshot = snapshot_publish(org_id=tenant.org.pk, rows=toxicity_rows(), heads=[TOXICITY, TOPIC])
    created = create(tenant, snapshot)
    model_id, run_id = created["model"]["id"], created["version"]["run"]["id"]

    reconcile_until(executor, run_id, training)
    # The operator dies mid-run and a new one starts: it finds the trainer by itself and sees it through.
    restarted = local_executor(tmp_path)
    finished = reconcile_until(restarted, run_id, ended)
    executor.observe(finished.job, run_id=run_id)  # the first operator's process reaps its child

    assert finished.state == "succeeded", finished.conditions
    assert (finished.executor, finished.attempt) == ("local", 1)
    v1 = client.get(tenant.url(f"/models/{model_id}/versions/1")).json()
    assert v1["status"] == "succeeded"
    assert v1["run"]["outcome"]["reason"] == "Trained"
    for name, labels in (("toxicity", TOXICITY["labels"]), ("topic", TOPIC["labels"])):
        head = v1["metrics"]["heads"][name]
        assert head["labels"] == labels
        assert set(head["per_label"]) == set(labels)
        for label in labels:
            assert set(head["per_label"][label]) >= METRICS, (name, label)
            assert head["per_label"][label]["pr_curve"], (name, label)
        assert set(v1["thresholds"][name]) == set(labels)
    assert v1["metrics"]["heads"]["toxicity"]["confusion_matrix"]["labels"] == ["safe", "toxic"]
    assert v1["metrics"]["heads"]["toxicity"]["macro"]["balanced_accuracy"] > 0.5
    epochs = v1["progress"]["epochs"]
    assert [e["epoch"] for e in epochs] == list(range(1, len(epochs) + 1)) and epochs
    assert all(e["train_loss"] is not None and e["valid_loss"] is not None for e in epochs)
    assert len(published("training.progress")) == len(epochs)
    [completed] = published("training.completed")
    assert completed["artifact"] == v1["artifact"]
    assert set(completed["metrics_summary"]["heads"]) == {"toxicity", "topic"}
    assert get_blob_store().exists(v1["artifact"])

    sentiment = snapshot_publish(org_id=tenant.org.pk, rows=sentiment_rows(), heads=[SENTIMENT])
    added = client.post(tenant.url(f"/models/{model_id}/versions"), {"snapshots": [sentiment]}, format="json")
    assert added.status_code == 201, added.content
    deliver_requests()
    assert reconcile_until(restarted, added.json()["run"]["id"], ended).state == "succeeded"

    v2 = client.get(tenant.url(f"/models/{model_id}/versions/2")).json()
    assert {h["name"]: h["origin"] for h in v2["heads"]} == {
        "sentiment": "new",
        "toxicity": "kept",
        "topic": "kept",
    }
    assert set(v2["metrics"]["heads"]) == {"sentiment"}
    assert set(v2["metrics"]["inherited_heads"]) == {"toxicity", "topic"}
    assert v2["metrics"]["inherited_heads"]["toxicity"] == v1["metrics"]["heads"]["toxicity"]
    # The artifact serves all three heads: the kept ones with the parent's thresholds.
    assert set(v2["thresholds"]) == {"sentiment", "toxicity", "topic"}
    assert v2["thresholds"]["toxicity"] == v1["thresholds"]["toxicity"]


def test_a_killed_trainer_fails_its_run(tenant: Tenant, executor):
    snapshot = snapshot_publish(org_id=tenant.org.pk, rows=toxicity_rows(with_topic=False), heads=[TOXICITY])
    run_id = create(tenant, snapshot, options={"strategy": "head", "max_epochs": 1000, "early_stopping": 0})[
        "version"
    ]["run"]["id"]
    started = reconcile_until(executor, run_id, training)

    os.killpg(int(started.job), signal.SIGKILL)
    failed = reconcile_until(executor, run_id, ended)

    assert failed.state == "failed"
    condition = failed.condition("Failed")
    assert condition is not None and condition["reason"] == "TrainerKilled"
    assert "SIGKILL" in condition["message"]


def test_cancelling_stops_a_running_trainer(tenant: Tenant, executor):
    snapshot = snapshot_publish(org_id=tenant.org.pk, rows=toxicity_rows(with_topic=False), heads=[TOXICITY])
    run_id = create(tenant, snapshot, options={"strategy": "head", "max_epochs": 1000, "early_stopping": 0})[
        "version"
    ]["run"]["id"]
    started = reconcile_until(executor, run_id, training)

    assert tenant.client(["admin"]).post(tenant.url(f"/runs/{run_id}/cancel")).json()["state"] == "cancelled"
    stopped = reconcile_until(executor, run_id, ended)

    assert stopped.state == "cancelled"
    assert executor.owned() == []
    assert executor.observe(started.job, run_id=run_id).phase == "missing"
    assert published("training.completed") == []


def test_a_base_model_that_cannot_load_fails_with_what_to_do(tenant: Tenant, executor):
    snapshot = snapshot_publish(org_id=tenant.org.pk, rows=toxicity_rows(with_topic=False), heads=[TOXICITY])
    run_id = create(tenant, snapshot, base_model="no-such-org/no-such-encoder")["version"]["run"]["id"]

    failed = reconcile_until(executor, run_id, ended)

    assert failed.state == "failed"
    condition = failed.condition("Failed")
    assert condition is not None and condition["reason"] == "BaseModelUnavailable"
    assert "no-such-org/no-such-encoder" in condition["message"]
    assert "all-MiniLM-L6-v2" in condition["message"]
