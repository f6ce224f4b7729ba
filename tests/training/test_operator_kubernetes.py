"""The operator's reconcile loop with the Kubernetes executor, against the kmock API emulator on loopback.

The tests play the Job controller (Job status, pods) and the trainer (its reports through the service's own
functions); the operator must turn what it sees into run conditions and events, whatever order things happen.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import kmock
import pytest

from arbiter.tenancy.scoping import org_scope
from arbiter.testing.tenants import Tenant
from services.training import logic
from services.training.models import TrainingRun
from services.training.operator.kubernetes_executor import (
    KubernetesExecutor,
    KubernetesSettings,
    job_manifest_build,
)
from services.training.operator.reconcile import TRAINER_EXIT_GRACE, operator_owner, operator_reconcile
from tests.training.conftest import deliver_requests, published
from tests.training.kube import KubeOnLoopback, kube_on_loopback

pytestmark = pytest.mark.django_db(databases="__all__")

NAMESPACE = "training"
SETTINGS = KubernetesSettings(image="registry.example.com/arbiter:1.4.0", namespace=NAMESPACE)
FAILED_CONDITION = {"type": "Failed", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}


@pytest.fixture
def kube() -> Iterator[KubeOnLoopback]:
    with kube_on_loopback() as kube:
        yield kube


@pytest.fixture
def executor(kube: KubeOnLoopback) -> KubernetesExecutor:
    return KubernetesExecutor(settings=SETTINGS, api_client=kube.api_client, owner=operator_owner())


def reconcile(executor: KubernetesExecutor) -> None:
    operator_reconcile(executor=executor, concurrency=None)


def admitted_run(tenant: Tenant, snapshot: int, name: str = "moderation") -> TrainingRun:
    created = tenant.client(["admin"]).post(
        tenant.url("/models"), {"name": name, "snapshots": [snapshot]}, format="json"
    )
    assert created.status_code == 201, created.content
    deliver_requests()
    return TrainingRun.objects.unscoped().get(pk=created.json()["version"]["run"]["id"])


def fresh(run: TrainingRun) -> TrainingRun:
    return TrainingRun.objects.unscoped().get(pk=run.pk)


def condition(run: TrainingRun, type: str) -> dict[str, Any]:
    found = fresh(run).condition(type)
    assert found is not None, fresh(run).conditions
    return found


def jobs(kube: KubeOnLoopback) -> list[str]:
    return sorted(job.metadata.name for job in kube.batch.list_namespaced_job(NAMESPACE).items)


def test_an_admitted_run_gets_one_labelled_job(tenant: Tenant, toxicity_snapshot: int, executor, kube):
    run = admitted_run(tenant, toxicity_snapshot)

    reconcile(executor)
    reconcile(executor)
    seen = fresh(run).conditions
    reconcile(executor)

    assert jobs(kube) == [f"arbiter-train-{run.pk}"]
    job = kube.batch.read_namespaced_job(name=f"arbiter-train-{run.pk}", namespace=NAMESPACE)
    assert job.metadata.labels["arbiter.io/run-id"] == str(run.pk)
    assert job.metadata.labels["arbiter.io/org"] == str(tenant.org.pk)
    assert job.metadata.labels["app.kubernetes.io/managed-by"] == "arbiter-operator"
    assert job.spec.template.spec.containers[0].command == ["arbiter", "train", "--run", str(run.pk)]
    run = fresh(run)
    assert (run.executor, run.job, run.job_active, run.state) == (
        "kubernetes",
        f"arbiter-train-{run.pk}",
        True,
        "queued",
    )
    assert (
        condition(run, "JobCreated")["message"]
        == f"Trainer started as Kubernetes Job arbiter-train-{run.pk}."
    )
    assert condition(run, "Running")["reason"] == "JobPending"
    assert run.conditions == seen  # nothing new seen, nothing new written


def test_pending_and_running_pods_show_in_the_conditions(
    tenant: Tenant, toxicity_snapshot: int, executor, kube
):
    run = admitted_run(tenant, toxicity_snapshot)
    reconcile(executor)
    name = fresh(run).job
    kube.job_status_set(NAMESPACE, name, {"active": 1, "ready": 0})
    unschedulable = {
        "type": "PodScheduled",
        "status": "False",
        "reason": "Unschedulable",
        "message": "0/2 nodes: GPU",
    }
    kube.job_pod_add(NAMESPACE, name, {"phase": "Pending", "conditions": [unschedulable]})

    reconcile(executor)
    waiting = condition(run, "Running")
    assert (waiting["status"], waiting["reason"]) == ("False", "Unschedulable")
    assert "0/2 nodes: GPU" in waiting["message"]

    kube.job_status_set(NAMESPACE, name, {"active": 1, "ready": 1})
    reconcile(executor)
    running = condition(run, "Running")
    assert (running["status"], running["reason"]) == ("True", "PodRunning")
    assert fresh(run).state == "queued"  # running is the trainer's word, once it starts


def test_a_job_past_its_deadline_fails_the_run(tenant: Tenant, toxicity_snapshot: int, executor, kube):
    run = admitted_run(tenant, toxicity_snapshot)
    reconcile(executor)
    with org_scope(tenant.org.pk):
        logic.run_start(run_id=run.pk)
    kube.job_status_set(
        NAMESPACE,
        fresh(run).job,
        {"failed": 1, "conditions": [{**FAILED_CONDITION, "reason": "DeadlineExceeded"}]},
    )

    reconcile(executor)

    run = fresh(run)
    assert (run.state, run.job_active) == ("failed", False)
    failed = condition(run, "Failed")
    assert failed["reason"] == "DeadlineExceeded"
    assert "ARBITER_K8S_ACTIVE_DEADLINE_SECONDS" in failed["message"]
    assert published("training.failed")[-1]["reason"] == "DeadlineExceeded"
    assert jobs(kube) == [run.job]  # kept for its logs until ttlSecondsAfterFinished


def test_a_deleted_job_fails_its_run(tenant: Tenant, toxicity_snapshot: int, executor, kube):
    run = admitted_run(tenant, toxicity_snapshot)
    reconcile(executor)
    with org_scope(tenant.org.pk):
        logic.run_start(run_id=run.pk)
    kube.batch.delete_namespaced_job(name=fresh(run).job, namespace=NAMESPACE)

    reconcile(executor)

    run = fresh(run)
    assert run.state == "failed"
    assert condition(run, "Failed")["reason"] == "JobDeleted"


def test_a_trainer_that_exits_without_a_result_fails_the_run(
    tenant: Tenant, toxicity_snapshot: int, executor, kube
):
    run = admitted_run(tenant, toxicity_snapshot)
    reconcile(executor)
    complete = {"type": "Complete", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}
    kube.job_status_set(NAMESPACE, fresh(run).job, {"succeeded": 1, "conditions": [complete]})

    reconcile(executor)

    run = fresh(run)
    assert run.state == "failed"
    assert condition(run, "Failed")["reason"] == "NoResult"


def test_a_trainer_that_reported_success_keeps_it(tenant: Tenant, toxicity_snapshot: int, executor, kube):
    run = admitted_run(tenant, toxicity_snapshot)
    reconcile(executor)
    with org_scope(tenant.org.pk):
        logic.run_start(run_id=run.pk)
        logic.run_succeed(run_id=run.pk, evaluation={}, thresholds={}, artifact_key="a", metrics_summary={})
    complete = {"type": "Complete", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}
    kube.job_status_set(NAMESPACE, fresh(run).job, {"succeeded": 1, "conditions": [complete]})

    reconcile(executor)
    reconcile(executor)

    run = fresh(run)
    assert (run.state, run.job_active) == ("succeeded", False)
    assert condition(run, "Running")["reason"] == "TrainerFinished"
    assert jobs(kube) == [run.job]


def test_a_trainer_that_reported_its_result_gets_time_to_exit(
    tenant: Tenant, toxicity_snapshot: int, executor, kube
):
    run = admitted_run(tenant, toxicity_snapshot)
    reconcile(executor)
    kube.job_status_set(NAMESPACE, fresh(run).job, {"active": 1, "ready": 1})
    with org_scope(tenant.org.pk):
        logic.run_start(run_id=run.pk)
        logic.run_fail(
            run_id=run.pk, reason="InvalidTrainingData", message="Head 'toxicity' has no training rows."
        )

    reconcile(executor)
    assert jobs(kube) == [fresh(run).job]  # still exiting: left alone

    TrainingRun.objects.unscoped().filter(pk=run.pk).update(
        finished_at=fresh(run).finished_at - TRAINER_EXIT_GRACE
    )
    reconcile(executor)
    assert jobs(kube) == []  # it lingered past the grace: stopped
    assert condition(run, "Failed")["reason"] == "InvalidTrainingData"


def test_cancelling_deletes_the_job(tenant: Tenant, toxicity_snapshot: int, executor, kube):
    run = admitted_run(tenant, toxicity_snapshot)
    reconcile(executor)
    kube.job_status_set(NAMESPACE, fresh(run).job, {"active": 1, "ready": 1})
    with org_scope(tenant.org.pk):
        logic.run_start(run_id=run.pk)

    assert tenant.client(["admin"]).post(tenant.url(f"/runs/{run.pk}/cancel")).json()["state"] == "cancelled"
    reconcile(executor)

    assert jobs(kube) == []
    run = fresh(run)
    assert (run.state, run.job_active) == ("cancelled", False)
    assert condition(run, "Running")["reason"] == "JobStopped"


def test_a_run_cancelled_while_queued_never_gets_a_job(
    tenant: Tenant, toxicity_snapshot: int, executor, kube
):
    run = admitted_run(tenant, toxicity_snapshot)
    tenant.client(["admin"]).post(tenant.url(f"/runs/{run.pk}/cancel"))

    reconcile(executor)

    assert jobs(kube) == []


def test_orphaned_jobs_are_deleted_and_others_left_alone(
    tenant: Tenant, toxicity_snapshot: int, executor, kube
):
    finished = admitted_run(tenant, toxicity_snapshot, name="finished")
    reconcile(executor)
    with org_scope(tenant.org.pk):
        logic.run_start(run_id=finished.pk)
        logic.run_succeed(
            run_id=finished.pk, evaluation={}, thresholds={}, artifact_key="a", metrics_summary={}
        )
    complete = {"type": "Complete", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}
    kube.job_status_set(NAMESPACE, fresh(finished).job, {"succeeded": 1, "conditions": [complete]})
    reconcile(executor)
    for body in (
        job_manifest_build(run_id=999999, org_id=tenant.org.pk, owner=operator_owner(), settings=SETTINGS),
        job_manifest_build(run_id=999998, org_id=tenant.org.pk, owner="another-install", settings=SETTINGS),
    ):
        kube.batch.create_namespaced_job(namespace=NAMESPACE, body=body)

    reconcile(executor)

    assert jobs(kube) == sorted([fresh(finished).job, "arbiter-train-999998"])


def test_a_restarted_operator_adopts_the_job_it_created_before_crashing(
    tenant: Tenant, toxicity_snapshot: int, kube
):
    run = admitted_run(tenant, toxicity_snapshot)
    # The first operator created the Job, then died before it wrote that down; the trainer started meanwhile.
    KubernetesExecutor(settings=SETTINGS, api_client=kube.api_client, owner=operator_owner()).launch(
        run_id=run.pk, org_id=tenant.org.pk
    )
    with org_scope(tenant.org.pk):
        logic.run_start(run_id=run.pk)

    restarted = KubernetesExecutor(settings=SETTINGS, api_client=kube.api_client, owner=operator_owner())
    reconcile(restarted)

    assert jobs(kube) == [f"arbiter-train-{run.pk}"]
    assert (fresh(run).job, fresh(run).job_active, fresh(run).state) == (
        f"arbiter-train-{run.pk}",
        True,
        "running",
    )

    # Should that trainer die now, the run does not stay running.
    kube.batch.delete_namespaced_job(name=f"arbiter-train-{run.pk}", namespace=NAMESPACE)
    reconcile(restarted)
    assert fresh(run).state == "failed"


def test_a_job_the_cluster_refuses_fails_the_run(tenant: Tenant, toxicity_snapshot: int, executor, kube):
    forbidden = {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "reason": "Forbidden",
        "code": 403,
        "message": 'jobs.batch is forbidden: cannot create resource "jobs" in the namespace "training"',
    }
    kube.emulator[kmock.action.CREATE, kmock.resource("batch/v1/jobs")] << 403 << forbidden
    run = admitted_run(tenant, toxicity_snapshot)

    reconcile(executor)

    run = fresh(run)
    assert run.state == "failed"
    failed = condition(run, "Failed")
    assert failed["reason"] == "LaunchFailed"
    assert "jobs.batch is forbidden" in failed["message"] and "RBAC" in failed["message"]
