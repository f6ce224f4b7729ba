"""The reconcile loop of the training operator (`arbiter operator`).

Each pass reads the world and makes one step toward what the runs want:
1. every run whose trainer the operator answers for: look at the trainer job and write what it saw into the
   run's conditions; a job that ended takes a still-running run down with it (failed, saying why); the job of
   a run that ended (cancelled) is stopped;
2. trainer jobs of this installation that no live run answers for (orphans) are stopped;
3. admitted runs are launched from the queue, oldest first, while trainer slots are free (a run whose
   trainer started but whose launch was never written down is launched again, which adopts that trainer).
Before these, fine-tuning jobs whose files have arrived are validated (started with `auto_start`), and runs
that waited too long for a snapshot that never reached the training service are failed.
All state lives in the training database and in the executor's world (Jobs, processes), none in the loop: it
can be killed at any line and started again. Launching twice adopts the first trainer.
"""

from __future__ import annotations

import hashlib
import logging
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

from django.conf import settings
from django.db import close_old_connections
from django.utils import timezone

from arbiter.config.typed_settings import TrainingSettings, arbiter_settings
from arbiter.tenancy.scoping import org_scope
from services.training import fine_tuning, logic, policies
from services.training.models import RunState, TrainingRun
from services.training.operator.conditions import JobPhase
from services.training.operator.executor import Executor, LaunchError
from services.training.operator.kubernetes_executor import KubernetesExecutor, kubernetes_api_client
from services.training.operator.local_executor import LocalExecutor
from services.training.selectors import time_budget_seconds

log = logging.getLogger(__name__)

LIVE = (JobPhase.PENDING, JobPhase.RUNNING)
# How long a trainer that reported its result may take to exit before the operator stops it.
TRAINER_EXIT_GRACE = timedelta(seconds=60)


def operator_owner() -> str:
    """This installation's name on trainer jobs: a digest of where its training database lives."""
    database = settings.DATABASES[logic.ALIAS]
    where = f"{database['ENGINE']}|{database.get('HOST', '')}|{database.get('PORT', '')}|{database['NAME']}"
    return hashlib.sha256(where.encode()).hexdigest()[:16]


def executor_from_settings(training: TrainingSettings) -> Executor:
    """The executor ARBITER_TRAINING_EXECUTOR names; SettingsError when its settings cannot launch a trainer."""
    if training.executor == "kubernetes":
        return KubernetesExecutor(
            settings=arbiter_settings().kubernetes.checked(),
            api_client=kubernetes_api_client(),
            owner=operator_owner(),
        )
    return LocalExecutor(
        command=[sys.executable, "-m", "arbiter.cli"],
        log_dir=arbiter_settings().core.home / "logs" / "training",
        owner=operator_owner(),
    )


def operator_reconcile(*, executor: Executor, concurrency: int | None) -> None:
    """One pass of the loop (see the module docstring)."""
    wait = timedelta(seconds=arbiter_settings().training.wait_for_events_s)
    fine_tuning.jobs_validate(older_than=wait)
    logic.runs_awaiting_resume()
    policies.evaluations_recover()
    logic.runs_awaiting_expire(older_than=wait)
    for run in TrainingRun.objects.unscoped().filter(job_active=True).order_by("id"):
        with org_scope(run.org_id), _each("reconciling a run's trainer failed", run.pk):
            _job_reconcile(executor, run)
    _orphans_stop(executor)
    _queue_launch(executor, concurrency)


@contextmanager
def _each(what: str, run_id: int) -> Iterator[None]:
    """One run's trouble (an API error, a bad handle) must not hold up the others: log it, go on."""
    try:
        yield
    except Exception:
        log.exception(what, extra={"run_id": run_id})


def operator_run(
    *, executor: Executor, concurrency: int | None, interval_s: float, stop: threading.Event
) -> None:
    """Reconcile every `interval_s` until `stop` is set; a failed pass is logged and the next one retries."""
    log.info("training operator started", extra={"executor": executor.name, "concurrency": concurrency})
    while not stop.is_set():
        close_old_connections()
        try:
            operator_reconcile(executor=executor, concurrency=concurrency)
        except Exception:
            log.exception("reconcile pass failed; retrying")
        stop.wait(interval_s)
    log.info("training operator stopped")


def _job_reconcile(executor: Executor, run: TrainingRun) -> None:
    if _past_budget(run, executor):
        return
    observation = executor.observe(run.job, run_id=run.pk)
    if run.is_terminal and observation.phase in LIVE:
        # A trainer that reported its result is on its way out: stop it only if it lingers. A cancelled
        # run's trainer is stopped at once.
        ended = run.finished_at or timezone.now()
        if run.state != RunState.CANCELLED and timezone.now() - ended < TRAINER_EXIT_GRACE:
            return
        executor.stop(run.job, run_id=run.pk)
        logic.run_job_stopped(
            run_id=run.pk, message=f"Stopped the trainer {run.job}: the run is {run.state}."
        )
        log.info("stopped the trainer of an ended run", extra={"run_id": run.pk, "job": run.job})
        return
    updated = logic.run_observed(run_id=run.pk, observation=observation)
    if updated.state == RunState.FAILED and not run.is_terminal:
        log.warning(
            "trainer job ended without a result", extra={"run_id": run.pk, "reason": observation.reason}
        )


def _past_budget(run: TrainingRun, executor: Executor) -> bool:
    """Step 1 for a running trainer past its run's time budget plus the grace
    (`ARBITER_TRAINING_BUDGET_GRACE_SECONDS`): stopped, and its run failed; True if it was."""
    if run.state != RunState.RUNNING or run.started_at is None:
        return False
    budget = time_budget_seconds(run.version.options)
    grace = arbiter_settings().training.budget_grace_s
    used = (timezone.now() - run.started_at).total_seconds()
    if used <= budget + grace:
        return False
    executor.stop(run.job, run_id=run.pk)
    logic.run_fail(
        run_id=run.pk,
        reason="TimeBudgetExceeded",
        message=f"Training ran {used / 60:.0f} minutes, past its time budget of {budget / 60:g} minutes and "
        f"the {grace / 60:g} minutes of grace, and was stopped. Raise options.time_budget_minutes, train on fewer "
        "rows, or use the 'head' strategy.",
    )
    logic.run_job_stopped(
        run_id=run.pk, message=f"Stopped the trainer {run.job}: it ran past its time budget."
    )
    log.warning("stopped a trainer past its time budget", extra={"run_id": run.pk, "seconds": used})
    return True


def _orphans_stop(executor: Executor) -> None:
    owned = executor.owned()
    runs = {r.pk: r for r in TrainingRun.objects.unscoped().filter(pk__in=[job.run_id for job in owned])}
    for job in owned:
        run = runs.get(job.run_id)
        if run is not None and run.job_active and run.job == job.handle:
            continue  # the run's own trainer: step 1 looks after it
        if run is not None and not run.is_terminal and not run.job_active:
            continue  # launched, but not recorded before a restart: launching adopts it
        if run is not None and not job.live:
            continue  # a finished Job of an ended run, kept until its TTL for its logs
        executor.stop(job.handle, run_id=job.run_id)
        log.warning("stopped an orphaned trainer", extra={"run_id": job.run_id, "job": job.handle})


def _queue_launch(executor: Executor, concurrency: int | None) -> None:
    # A running run without a job is one whose trainer started before its launch was written down (the
    # operator died in between): launching it again adopts that trainer, or replaces one that died since.
    queue = (
        TrainingRun.objects.unscoped()
        .filter(state__in=[RunState.QUEUED, RunState.RUNNING], admitted_at__isnull=False, job_active=False)
        .order_by("admitted_at", "id")
    )
    if concurrency is not None:
        busy = TrainingRun.objects.unscoped().filter(job_active=True).count()
        queue = queue[: max(0, concurrency - busy)]
    for run in queue:
        with org_scope(run.org_id), _each("launching a trainer failed", run.pk):
            try:
                handle = executor.launch(run_id=run.pk, org_id=run.org_id)
            except LaunchError as error:
                logic.run_fail(run_id=run.pk, reason="LaunchFailed", message=str(error))
                continue
            if logic.run_launched(run_id=run.pk, executor=executor.name, job=handle):
                log.info("launched a trainer", extra={"run_id": run.pk, "job": handle})
            else:
                executor.stop(handle, run_id=run.pk)  # cancelled while it was being launched
