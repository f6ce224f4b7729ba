"""The time budget of a training run: an option with limits, the console's estimate of what will run, the
operator stopping a trainer well past it, and the version reporting the time used and auto's candidates."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.test import Client

from arbiter.tenancy.scoping import org_scope
from arbiter.testing.tenants import Tenant, assert_not_found
from services.training import logic
from services.training.models import Snapshot, TrainingRun
from services.training.operator.kubernetes_executor import KubernetesExecutor, KubernetesSettings
from services.training.operator.reconcile import operator_owner, operator_reconcile
from tests.training.conftest import TOXICITY, deliver_requests, published, snapshot_publish, toxicity_rows
from tests.training.kube import KubeOnLoopback, kube_on_loopback

pytestmark = pytest.mark.django_db(databases="__all__")

NAMESPACE = "training"
WRITER = ["admin"]


def create(tenant: Tenant, snapshot: int, **options: Any) -> Any:
    body = {"name": "moderation", "snapshots": [snapshot], "options": options}
    return tenant.client(WRITER).post(tenant.url("/models"), body, format="json")


def browser(tenant: Tenant) -> Client:
    client = Client()
    client.force_login(tenant.owner)
    return client


def test_the_budget_defaults_to_twenty_minutes_and_is_refused_outside_a_minute_to_a_day(
    tenant: Tenant, toxicity_snapshot: int
):
    default = create(tenant, toxicity_snapshot)
    assert default.status_code == 201, default.content
    version = default.json()["version"]
    assert version["options"]["time_budget_minutes"] == 20
    assert version["time"] == {"budget_seconds": 1200.0, "used_seconds": None}
    assert version["candidates"] == []

    for bad in (0.5, 1441, "soon"):
        response = create(tenant, toxicity_snapshot, time_budget_minutes=bad)
        assert response.status_code == 400, response.content
        assert response.json()["error"]["message"].startswith("options.time_budget_minutes:"), response.json()

    day = tenant.client(WRITER).post(
        tenant.url("/models"),
        {"name": "day", "snapshots": [toxicity_snapshot], "options": {"time_budget_minutes": 1440}},
        format="json",
    )
    assert day.json()["version"]["time"]["budget_seconds"] == 86400.0


def candidates_evaluation() -> dict[str, Any]:
    """What an auto run writes into metrics.json's `training` (trimmed to what the tests read)."""
    return {
        "split": "test",
        "rows": 10,
        "macro": {"f1": 0.8, "balanced_accuracy": 0.8, "precision": 0.8, "recall": 0.8, "loss": 0.4},
        "weighted_f1": 0.85,
        "heads": {},
        "training": {
            "strategy": "auto",
            "selected": "blend",
            "seconds": 1100.0,
            "time_budget_s": 1200.0,
            "plan": {"budget_s": 1190.0, "head": False, "full_epochs": 1, "max_tokens": 64},
            "candidates": [
                {
                    "name": "tfidf",
                    "selection_metric": 0.81,
                    "head_metrics": {"toxicity": 0.81},
                    "seconds": 77.0,
                },
                {"name": "head", "skipped": "fine-tuning gets the budget: embedding every row would leave 0"},
                {
                    "name": "full",
                    "selection_metric": 0.84,
                    "head_metrics": {"toxicity": 0.84},
                    "seconds": 900.5,
                    "best_epoch": 1,
                    "epochs": 1,
                },
                {
                    "name": "blend",
                    "selection_metric": 0.86,
                    "seconds": 1.0,
                    "encoder_share": {"toxicity": 0.5},
                    "noise": {"toxicity": {"gain": 0.03, "standard_error": 0.01, "kept": "encoder"}},
                },
            ],
        },
    }


def test_the_version_reports_the_time_used_and_what_auto_ran(tenant: Tenant, toxicity_snapshot: int):
    version = create(tenant, toxicity_snapshot).json()["version"]
    run_id = version["run"]["id"]
    with org_scope(tenant.org.pk):
        deliver_requests()
        logic.run_start(run_id=run_id)
        TrainingRun.objects.filter(pk=run_id).update(
            started_at=TrainingRun.objects.get(pk=run_id).started_at - timedelta(minutes=5)
        )
        assert logic.run_succeed(
            run_id=run_id,
            evaluation=candidates_evaluation(),
            thresholds={},
            artifact_key="artifacts/x.tar.gz",
            metrics_summary={},
        )
    body = tenant.client(WRITER).get(tenant.url(f"/models/{version['model']}/versions/1")).json()
    assert body["time"]["budget_seconds"] == 1200.0 and 300 <= body["time"]["used_seconds"] < 360
    rows = {c["name"]: c for c in body["candidates"]}
    assert list(rows) == ["tfidf", "head", "full", "blend"]
    assert (rows["head"]["ran"], rows["head"]["skipped"]) == (False, rows["head"]["skipped"])
    assert rows["head"]["skipped"].startswith("fine-tuning gets the budget")
    assert (rows["full"]["ran"], rows["full"]["seconds"], rows["full"]["selection_metric"]) == (
        True,
        900.5,
        0.84,
    )
    assert rows["full"]["detail"] == {"best_epoch": 1, "epochs": 1}
    assert rows["blend"]["detail"] == {
        "encoder_share": {"toxicity": 0.5},
        "noise": {"toxicity": {"gain": 0.03, "standard_error": 0.01, "kept": "encoder"}},
    }

    page = browser(tenant).get(f"/console/{tenant.slug}/models/{version['model']}/versions/1")
    html = page.content.decode()
    assert page.status_code == 200
    assert "What auto ran" in html and 'data-candidate="full"' in html
    assert "fine-tuning gets the budget" in html and "900.5" in html
    assert "Weighted F1" in html and "0.850" in html
    assert "s used of 1200 s" in html
    # The blend's noise check in words: which candidate each head kept, its gain over TF-IDF and the noise.
    assert "noise check: toxicity kept encoder (gain +0.0300 ± 0.0100)" in html


@pytest.fixture
def kube() -> Iterator[KubeOnLoopback]:
    with kube_on_loopback() as kube:
        yield kube


def test_a_trainer_well_past_its_budget_is_stopped_and_its_run_failed(
    tenant: Tenant, toxicity_snapshot: int, kube: KubeOnLoopback, override_arbiter_settings: Any
):
    override_arbiter_settings(ARBITER_TRAINING_BUDGET_GRACE_SECONDS="60")
    executor = KubernetesExecutor(
        settings=KubernetesSettings(image="registry.example.com/arbiter:1.4.0", namespace=NAMESPACE),
        api_client=kube.api_client,
        owner=operator_owner(),
    )
    version = create(tenant, toxicity_snapshot, time_budget_minutes=2).json()["version"]
    deliver_requests()
    operator_reconcile(executor=executor, concurrency=None)
    run = TrainingRun.objects.unscoped().get(pk=version["run"]["id"])
    kube.job_status_set(NAMESPACE, run.job, {"active": 1, "ready": 1})
    with org_scope(tenant.org.pk):
        logic.run_start(run_id=run.pk)
    started = TrainingRun.objects.unscoped().get(pk=run.pk).started_at

    # Past the budget but within the grace: left to finish.
    TrainingRun.objects.unscoped().filter(pk=run.pk).update(started_at=started - timedelta(seconds=170))
    operator_reconcile(executor=executor, concurrency=None)
    assert TrainingRun.objects.unscoped().get(pk=run.pk).state == "running"
    assert [job.metadata.name for job in kube.batch.list_namespaced_job(NAMESPACE).items] == [run.job]

    TrainingRun.objects.unscoped().filter(pk=run.pk).update(started_at=started - timedelta(seconds=190))
    operator_reconcile(executor=executor, concurrency=None)

    run = TrainingRun.objects.unscoped().get(pk=run.pk)
    assert (run.state, run.job_active) == ("failed", False)
    failed = run.condition("Failed")
    assert failed is not None and failed["reason"] == "TimeBudgetExceeded"
    assert (
        "time budget of 2 minutes" in failed["message"] and "options.time_budget_minutes" in failed["message"]
    )
    assert published("training.failed")[-1]["reason"] == "TimeBudgetExceeded"
    assert kube.batch.list_namespaced_job(NAMESPACE).items == []


def plan_html(tenant: Tenant, snapshot: int, **fields: str) -> str:
    query = {"snapshots": str(snapshot), "option_strategy": "auto", "test_split_percent": "20", **fields}
    response = browser(tenant).get(f"/console/{tenant.slug}/models/new/plan", query)
    assert response.status_code == 200, response.content
    return response.content.decode()


def test_the_form_estimates_what_auto_will_run_in_the_budget(tenant: Tenant):
    snapshot = snapshot_publish(org_id=tenant.org.pk, rows=toxicity_rows(with_topic=False), heads=[TOXICITY])
    form = browser(tenant).get(f"/console/{tenant.slug}/models/new").content.decode()
    assert 'name="option_time_budget_minutes"' in form and 'value="20' in form
    assert "What will run in 20 minutes" in form and 'id="plan"' in form

    # A 25,000-row snapshot: on a 2-core CPU, 20 minutes leave no room for a fine-tuning epoch; a day does.
    Snapshot.objects.unscoped().filter(snapshot_id=snapshot).update(rows=25_000)
    default = plan_html(tenant, snapshot, option_time_budget_minutes="20")
    assert "for 25000 rows" in default
    assert "one fine-tuning epoch" in default and "does not fit" in default
    day = plan_html(tenant, snapshot, option_time_budget_minutes="1440")
    assert "What will run in 1440 minutes" in day and "does not fit" not in day
    assert "fine-tuning, 20 epochs" in day or "epochs" in day
    head = plan_html(tenant, snapshot, option_time_budget_minutes="20", option_strategy="head")
    assert "head embeds 25000 rows" in head


@pytest.mark.cross_tenant("console-training-plan")
def test_the_estimate_never_counts_another_orgs_snapshot(tenant: Tenant, victim: Tenant):
    victim_snapshot = snapshot_publish(
        org_id=victim.org.pk, rows=toxicity_rows(with_topic=False), heads=[TOXICITY]
    )
    assert_not_found(
        browser(tenant).get(f"/console/{victim.slug}/models/new/plan", {"snapshots": victim_snapshot})
    )
    own = plan_html(tenant, victim_snapshot)
    assert "Choose a snapshot to see an estimate." in own
