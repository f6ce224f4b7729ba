"""Writes of the training service: models, versions, runs and their lifecycle, and the snapshot read model.

Every state change of a run happens here, in one transaction on the training database with the event that
announces it (`training.requested`, `training.progress`, `training.completed`, `training.failed`). The API,
the operator and the trainer all come through these functions, so a run has one set of rules whoever
moves it. A run that reached a terminal state (succeeded, failed, cancelled) never moves again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Max
from django.utils import timezone

from arbiter.api.errors import ApiError
from arbiter.entitlements import entitlements_check
from arbiter.events import publish
from arbiter.ml.image_encoders import builtin_heads, is_image_base
from arbiter.tenancy.scoping import org_scope
from services.training.models import Entitlement, Model, ModelVersion, RunState, Snapshot, TrainingRun
from services.training.operator.conditions import JobObservation, JobPhase, condition_set
from services.training.options import OPTION_DEFAULTS

ALIAS = "training"
DEFAULT_TEST: dict[str, Any] = {"split_percent": 20.0}
TEXT_CLASSIFICATION = "text_classification"
# Heads a version answers without training them: kept from its parent, or built into its base.
NOT_TRAINED = ("kept", "builtin")
IMAGE_CLASSIFICATION = "image_classification"


@dataclass(frozen=True)
class VersionRef:
    """A model version named in a request: `{"model": <id>, "version": <number>}`."""

    model_id: int
    number: int


# --- the snapshot read model ------------------------------------------------------------------------------


def snapshot_record(*, org_id: int, manifest: Mapping[str, Any]) -> Snapshot:
    """Remember a snapshot from its `snapshot.created` manifest (snapshots are immutable: once is enough)."""
    snapshot, _ = Snapshot.objects.unscoped().get_or_create(
        org_id=org_id,
        snapshot_id=int(manifest["snapshot_id"]),
        defaults={
            "dataset_id": int(manifest["dataset_id"]),
            "name": str(manifest.get("name") or ""),
            "type": manifest["type"],
            "input_column": manifest["input_column"],
            "heads": list(manifest["heads"]),
            "rows": int(manifest["rows"]),
            "sha256": manifest["sha256"],
            "blob": manifest["blob"],
            "report": dict(manifest.get("report") or {}),
        },
    )
    _awaiting_runs_resolve(org_id=org_id, snapshot_id=snapshot.snapshot_id)
    return snapshot


def _awaiting_runs_resolve(*, org_id: int | None = None, snapshot_id: int | None = None) -> None:
    """Runs created before their snapshots reached the training service go on: requested once every snapshot
    they name is here, failed (saying why) when the data turns out not to fit the request.

    Called with the snapshot that just arrived, and per org by the operator's sweep: a run created
    while its snapshot's event was being handled (each transaction blind to the other's uncommitted row) would
    otherwise wait for an event that already came."""
    waiting = (
        TrainingRun.objects.unscoped()
        .select_for_update(of=("self",))
        .select_related("version__model", "version__parent")
        .filter(state=RunState.QUEUED)
        .exclude(awaiting_snapshots=[])
    )
    if org_id is not None:
        waiting = waiting.filter(org_id=org_id)
    for run in waiting:
        if snapshot_id is not None and snapshot_id not in run.awaiting_snapshots:
            continue
        known = set(
            Snapshot.objects.unscoped()
            .filter(org_id=run.org_id, snapshot_id__in=run.awaiting_snapshots)
            .values_list("snapshot_id", flat=True)
        )
        if not known:
            continue
        run.awaiting_snapshots = [i for i in run.awaiting_snapshots if i not in known]
        if run.awaiting_snapshots:
            run.save(update_fields=["awaiting_snapshots"])
            continue
        version = run.version
        try:
            version.heads, version.test = _version_plan(
                model_type=version.model.type,
                base_model=version.base_model,
                parent=version.parent,
                snapshot_ids=version.snapshot_ids,
                test=version.test,
                options=version.options,
            )
        except ApiError as error:
            run.conditions = condition_set(
                run.conditions,
                type="WaitingForSnapshot",
                status=False,
                reason="SnapshotsArrived",
                message="Every snapshot arrived.",
            )
            _run_end(run, state=RunState.FAILED, reason="InvalidRequest", message=error.message)
            continue
        version.save(update_fields=["heads", "test"])
        run.conditions = condition_set(
            run.conditions,
            type="WaitingForSnapshot",
            status=False,
            reason="SnapshotsArrived",
            message="Every snapshot arrived; waiting for the operator.",
        )
        run.save(update_fields=["awaiting_snapshots", "conditions"])
        _run_request(run)


def runs_awaiting_resume() -> None:
    """The operator's sweep: runs waiting for snapshots that have arrived go on (see `_awaiting_runs_resolve`)."""
    with transaction.atomic(using=ALIAS):
        for org_id in (
            TrainingRun.objects.unscoped()
            .filter(state=RunState.QUEUED)
            .exclude(awaiting_snapshots=[])
            .values_list("org_id", flat=True)
            .distinct()
        ):
            with org_scope(org_id):
                _awaiting_runs_resolve(org_id=org_id)


def runs_awaiting_expire(*, older_than: timedelta) -> int:
    """Fail the runs that waited longer than `older_than` for a snapshot that never arrived (the operator
    calls this on every pass); returns how many."""
    deadline = timezone.now() - older_than
    expired = 0
    with transaction.atomic(using=ALIAS):
        stale = (
            TrainingRun.objects.unscoped()
            .select_for_update()
            .select_related("version__model")
            .filter(state=RunState.QUEUED, created_at__lt=deadline)
            .exclude(awaiting_snapshots=[])
        )
        for run in stale:
            missing = ", ".join(str(i) for i in run.awaiting_snapshots)
            message = (
                f"Snapshot {missing} never reached the training service within {_minutes(older_than)}. Check "
                f"that it exists (GET /api/v1/orgs/<org>/snapshots/{run.awaiting_snapshots[0]}) and that the "
                "event relay and consumers are running, then train again."
            )
            run.conditions = condition_set(
                run.conditions,
                type="WaitingForSnapshot",
                status=False,
                reason="SnapshotNotFound",
                message=message,
            )
            _run_end(run, state=RunState.FAILED, reason="SnapshotNotFound", message=message)
            expired += 1
    return expired


def _minutes(delta: timedelta) -> str:
    minutes = delta.total_seconds() / 60
    return f"{minutes:g} minute{'s' if minutes != 1 else ''}"


# --- models and versions ------------------------------------------------------------------------------------


def model_create(
    *,
    org_id: int,
    name: str,
    type: str | None,
    base_model: str | VersionRef,
    snapshot_ids: Sequence[int],
    test: Mapping[str, Any] | None,
    options: Mapping[str, Any],
) -> ModelVersion:
    """Create a model with version 1 and its training run; returns version 1. Without a `type`, the model
    is of its parent's type, else an image model on an image base, else of its (known) snapshots' type."""
    parent = _trained_version(base_model, field="base_model") if isinstance(base_model, VersionRef) else None
    encoder = parent.base_model if parent is not None else str(base_model)
    type = _model_type(type, parent=parent, encoder=encoder, snapshot_ids=snapshot_ids)
    taken = ApiError(
        status=409,
        code="model_name_taken",
        message=f"name: a model named '{name}' already exists in this org; choose another name.",
        details={"name": ["Taken."]},
    )
    if Model.objects.filter(name=name).exists():
        raise taken
    try:
        with transaction.atomic(using=ALIAS):
            model = Model.objects.create(org_id=org_id, name=name, type=type, base_model=encoder)
            return _version_create(
                model=model,
                number=1,
                parent=parent,
                snapshot_ids=snapshot_ids,
                test=test,
                options={**OPTION_DEFAULTS, **options},
            )
    except IntegrityError as error:
        if Model.objects.filter(name=name).exists():
            raise taken from error  # created by a concurrent request since the check above
        raise


def _model_type(
    wanted: str | None, *, parent: ModelVersion | None, encoder: str, snapshot_ids: Sequence[int]
) -> str:
    image_base = is_image_base(encoder)
    if wanted is None:
        if parent is not None:
            return parent.model.type
        if image_base:
            return IMAGE_CLASSIFICATION
        types = set(
            Snapshot.objects.filter(snapshot_id__in=list(snapshot_ids)).values_list("type", flat=True)
        )
        return types.pop() if len(types) == 1 else TEXT_CLASSIFICATION
    if image_base and wanted != IMAGE_CLASSIFICATION:
        raise ApiError(
            status=400,
            code="base_model_type_mismatch",
            message=f"base_model: {encoder} encodes images; the model is {wanted} (use type "
            f"{IMAGE_CLASSIFICATION}, or a text encoder).",
            details={"base_model": ["An image encoder."]},
        )
    return wanted


def version_create(
    *,
    model: Model,
    parent_number: int | None,
    snapshot_ids: Sequence[int] | None,
    test: Mapping[str, Any] | None,
    options: Mapping[str, Any],
) -> ModelVersion:
    """Train a new version of `model` from a parent version (named, else the newest that succeeded).

    Heads in the new data are retrained (when the parent has them) or added; the parent's other heads are kept
    as they are. Left out, the snapshots, the test data and the options are the latest version's.
    """
    if parent_number is not None:
        parent: ModelVersion | None = _trained_version(VersionRef(model.pk, parent_number), field="parent")
    else:
        parent = (
            ModelVersion.objects.filter(model=model, run__state=RunState.SUCCEEDED)
            .order_by("-number")
            .first()
        )
    latest = ModelVersion.objects.filter(model=model).order_by("-number").first()
    assert latest is not None  # a model is created with its first version
    inherited = (parent or latest).options
    with transaction.atomic(using=ALIAS):
        # Numbers are handed out one at a time per model.
        locked = Model.objects.select_for_update().get(pk=model.pk)
        number = (ModelVersion.objects.filter(model=locked).aggregate(n=Max("number"))["n"] or 0) + 1
        return _version_create(
            model=locked,
            number=number,
            parent=parent,
            snapshot_ids=snapshot_ids if snapshot_ids is not None else latest.snapshot_ids,
            test=test if test is not None else latest.test,
            options={**OPTION_DEFAULTS, **inherited, **options},
        )


def _version_create(
    *,
    model: Model,
    number: int,
    parent: ModelVersion | None,
    snapshot_ids: Sequence[int],
    test: Mapping[str, Any] | None,
    options: dict[str, Any],
) -> ModelVersion:
    """Create the version and its run. When a snapshot is not known here yet (its `snapshot.created` is on its
    way), the run waits for it instead of the request failing: a client that creates a snapshot and then a
    model at once must not have to know that services learn of each other's objects by events."""
    # Training minutes of the org's plan, as billing last announced them: refused once they are used up.
    entitlements_check(model=Entitlement, org_id=model.org_id, meter="training_minute", units=1)
    snapshot_ids = list(dict.fromkeys(int(i) for i in snapshot_ids))
    test_snapshot = (test or {}).get("snapshot")
    if test_snapshot is not None and int(test_snapshot) in snapshot_ids:
        raise ApiError(
            status=400,
            code="invalid",
            message=f"test.snapshot: snapshot {test_snapshot} is also a training snapshot; testing on training "
            "data would overstate every metric.",
        )
    wanted = [*snapshot_ids, *([int(test_snapshot)] if test_snapshot is not None else [])]
    known = set(Snapshot.objects.filter(snapshot_id__in=wanted).values_list("snapshot_id", flat=True))
    missing = [i for i in wanted if i not in known]
    if missing:
        heads: list[dict[str, Any]] = []
        test_spec = dict(test) if test else dict(DEFAULT_TEST)
    else:
        heads, test_spec = _version_plan(
            model_type=model.type,
            base_model=model.base_model,
            parent=parent,
            snapshot_ids=snapshot_ids,
            test=test,
            options=options,
        )
    version = ModelVersion.objects.create(
        org_id=model.org_id,
        model=model,
        number=number,
        parent=parent,
        base_model=model.base_model if parent is None else parent.base_model,
        heads=heads,
        snapshot_ids=snapshot_ids,
        test=test_spec,
        options=options,
    )
    source = (
        f"version {parent.number} of model {parent.model_id}"
        if parent
        else f"base model {version.base_model}"
    )
    conditions = condition_set(
        [],
        type="Requested",
        status=True,
        reason="VersionCreated",
        message=f"Version {number} of '{model.name}' is to be trained from {source}; waiting for the "
        "operator.",
    )
    if missing:
        conditions = condition_set(
            conditions,
            type="WaitingForSnapshot",
            status=True,
            reason="SnapshotNotYetKnown",
            message=f"Waiting for snapshot {', '.join(map(str, missing))} to reach the training service; "
            "training starts when it does.",
        )
    run = TrainingRun.objects.create(
        org_id=model.org_id, version=version, conditions=conditions, awaiting_snapshots=missing
    )
    if not missing:
        _run_request(run)
    return version


def _version_plan(
    *,
    model_type: str,
    base_model: str,
    parent: ModelVersion | None,
    snapshot_ids: Sequence[int],
    test: Mapping[str, Any] | None,
    options: Mapping[str, Any],
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The heads a version trains and its test spec, from snapshots this service knows; ApiError when the
    request does not fit the data."""
    snapshots = _snapshots(snapshot_ids, model_type=model_type)
    test_spec = _test_spec(test, model_type=model_type)
    heads = _heads_plan(_snapshot_heads(snapshots), parent, base_model)
    trained = [h["name"] for h in heads if h["origin"] not in NOT_TRAINED]
    if options.get("selection_head") is not None and options["selection_head"] not in trained:
        raise ApiError(
            status=400,
            code="invalid",
            message=f"options.selection_head: '{options['selection_head']}' is not a head this version "
            f"trains ({', '.join(trained)}).",
            details={"options": {"selection_head": ["Not a trained head."]}},
        )
    return heads, test_spec


def _run_request(run: TrainingRun) -> None:
    """Hand the run to the operator (`training.requested`), in the transaction that made it ready."""
    version = run.version
    publish(
        type="training.requested",
        org_id=run.org_id,
        subject=_subject(version),
        data={"run_id": run.pk, "model_id": version.model_id, "version": version.number},
    )


def _trained_version(ref: VersionRef, *, field: str) -> ModelVersion:
    version = (
        ModelVersion.objects.select_related("run", "model")
        .filter(model_id=ref.model_id, number=ref.number)
        .first()
    )
    if version is None:
        raise ApiError(
            status=400,
            code="unknown_version",
            message=f"{field}: model {ref.model_id} has no version {ref.number} in this org.",
            details={field: ["Unknown version."]},
        )
    if version.run.state != RunState.SUCCEEDED:
        raise ApiError(
            status=409,
            code="version_not_trained",
            message=f"{field}: version {ref.number} of model {ref.model_id} is {version.run.state}; only a "
            "version that trained successfully can be a parent.",
        )
    return version


def _snapshots(snapshot_ids: Sequence[int], *, model_type: str) -> list[Snapshot]:
    """The named snapshots, all known here (a version waits until they are), checked against the model type."""
    found = {s.snapshot_id: s for s in Snapshot.objects.filter(snapshot_id__in=list(snapshot_ids))}
    snapshots = [found[i] for i in dict.fromkeys(snapshot_ids)]
    for snapshot in snapshots:
        if snapshot.type != model_type:
            raise ApiError(
                status=400,
                code="snapshot_type_mismatch",
                message=f"snapshots: snapshot {snapshot.snapshot_id} is {snapshot.type}, but the model is "
                f"{model_type}.",
            )
    return snapshots


def _test_spec(test: Mapping[str, Any] | None, *, model_type: str) -> dict[str, Any]:
    if not test:
        return dict(DEFAULT_TEST)
    if "snapshot" in test:
        [snapshot] = _snapshots([int(test["snapshot"])], model_type=model_type)
        return {"snapshot": snapshot.snapshot_id}
    return {"split_percent": float(test["split_percent"])}


def _snapshot_heads(snapshots: list[Snapshot]) -> list[dict[str, Any]]:
    """The heads of several snapshots together: a head's labels are the union of its labels in each."""
    merged: dict[str, dict[str, Any]] = {}
    for snapshot in snapshots:
        for head in snapshot.heads:
            seen = merged.get(head["name"])
            if seen is None:
                merged[head["name"]] = {
                    "name": head["name"],
                    "labels": list(head["labels"]),
                    "multi_label": bool(head["multi_label"]),
                }
            elif seen["multi_label"] != bool(head["multi_label"]):
                raise ApiError(
                    status=400,
                    code="head_conflict",
                    message=f"snapshots: head '{head['name']}' is multi-label in one snapshot and "
                    "multi-class in another; snapshot the data with one kind for it.",
                )
            else:
                seen["labels"] += [label for label in head["labels"] if label not in seen["labels"]]
    return list(merged.values())


def _heads_plan(
    data_heads: list[dict[str, Any]], parent: ModelVersion | None, base_model: str
) -> list[dict[str, Any]]:
    """Every head of the new version, with where it comes from: new, retrained, kept from the parent, or
    built into the base (vision-moderation's `nsfw`, answered beside the user's heads)."""
    parent_heads = {h["name"]: h for h in parent.heads} if parent is not None else {}
    planned = [{**h, "origin": "retrained" if h["name"] in parent_heads else "new"} for h in data_heads]
    trained = {h["name"] for h in data_heads}
    planned += [
        {"name": h["name"], "labels": h["labels"], "multi_label": h["multi_label"], "origin": "kept"}
        for name, h in parent_heads.items()
        if name not in trained
    ]
    if parent is None:
        planned += [
            {
                "name": head.spec.name,
                "labels": list(head.spec.labels),
                "multi_label": head.spec.multi_label,
                "origin": "builtin",
            }
            for head in builtin_heads(base_model)
            if head.spec.name not in trained
        ]
    return planned


def _subject(version: ModelVersion) -> str:
    return f"models/{version.model_id}/versions/{version.number}"


# --- validation, when the operator takes a run --------------------------------------------------------------


def run_admit(*, run_id: int) -> TrainingRun | None:
    """Check a requested run's data before any training starts: admit it for launch, or fail it saying why.

    Redelivered `training.requested` events find the run already admitted (or ended) and change nothing.
    """
    with transaction.atomic(using=ALIAS):
        run = (
            TrainingRun.objects.select_for_update().select_related("version__model").filter(pk=run_id).first()
        )
        if run is None or run.state != RunState.QUEUED or run.admitted_at is not None:
            return run
        problem = _validation_problem(run.version)
        if problem is not None:
            reason, message = problem
            run.conditions = condition_set(
                run.conditions, type="Admitted", status=False, reason=reason, message=message
            )
            _run_end(run, state=RunState.FAILED, reason=reason, message=message)
            return run
        run.admitted_at = timezone.now()
        run.conditions = condition_set(
            run.conditions,
            type="Admitted",
            status=True,
            reason="Validated",
            message="The training and test data passed validation; waiting for a trainer.",
        )
        run.save(update_fields=["admitted_at", "conditions"])
        return run


def _validation_problem(version: ModelVersion) -> tuple[str, str] | None:
    """(reason, message) of the first thing that makes training this version pointless, else None."""
    limit = float(version.options["max_invalid_row_percent"])
    snapshot_ids = list(version.snapshot_ids)
    test_id = version.test.get("snapshot")
    # Validation snapshots (fine-tuning jobs' validation files) are checked as the test snapshot is.
    checked = [(int(i), "validation") for i in version.options.get("validation_snapshots") or []]
    checked += [(test_id, "test")] if test_id else []
    wanted = [*snapshot_ids, *(i for i, _ in checked)]
    snapshots = {s.snapshot_id: s for s in Snapshot.objects.filter(snapshot_id__in=wanted)}
    for snapshot_id in wanted:
        snapshot = snapshots[snapshot_id]
        if snapshot.invalid_percent > limit:
            return (
                "TooManyInvalidRows",
                f"Snapshot {snapshot_id} has {snapshot.invalid_percent:g}% invalid rows, over the limit of "
                f"{limit:g}% (max_invalid_row_percent). Fix or remove the invalid rows of dataset "
                f"{snapshot.dataset_id} and snapshot it again, or raise options.max_invalid_row_percent.",
            )
    trained = [h for h in version.heads if h["origin"] not in NOT_TRAINED]
    for head in trained:
        if not head["multi_label"] and len(head["labels"]) < 2:
            return (
                "SingleClassHead",
                f"Head '{head['name']}' has a single class ({', '.join(head['labels'])}) in the training "
                "data: a classifier needs examples of at least two classes. Label some rows with another "
                "class, or make the head multi-label.",
            )
    heads = {h["name"]: h for h in trained}
    for other_id, role in checked:
        # A test snapshot has the training data's heads and classes; validation rows (one of several files)
        # may cover some of them, never others.
        reason = f"{role.title()}SetMismatch"
        other_heads = {h["name"]: h for h in snapshots[other_id].heads}
        if (set(other_heads) != set(heads)) if role == "test" else not (set(other_heads) <= set(heads)):
            return (
                reason,
                f"{role.title()} snapshot {other_id} has the heads {sorted(other_heads)}, but this version "
                f"trains {sorted(heads)}. Snapshot the {role} data with the same label columns.",
            )
        for name, other in other_heads.items():
            labels, trained_labels = set(other["labels"]), set(heads[name]["labels"])
            if (labels != trained_labels) if role == "test" else not (labels <= trained_labels):
                return (
                    reason,
                    f"Head '{name}' has the classes {sorted(labels)} in {role} snapshot {other_id} but "
                    f"{sorted(trained_labels)} in the training data. "
                    + ("Both must have the same classes." if role == "test" else "Train on every class."),
                )
    return None


# --- the run's lifecycle -----------------------------------------------------------------------------------


def run_cancel(*, run: TrainingRun) -> TrainingRun:
    """Cancel at any state: a queued run never starts, a running trainer is stopped by the operator."""
    with transaction.atomic(using=ALIAS):
        locked = TrainingRun.objects.select_for_update().select_related("version__model").get(pk=run.pk)
        if not locked.is_terminal:
            stopping = " The operator stops its trainer." if locked.job_active else ""
            _run_end(
                locked,
                state=RunState.CANCELLED,
                reason="CancelRequested",
                message=f"Cancelled on request.{stopping}",
            )
    return locked


def run_launched(*, run_id: int, executor: str, job: str) -> bool:
    """Record the trainer job the operator started; False when the run ended meanwhile (stop the job)."""
    with transaction.atomic(using=ALIAS):
        run = TrainingRun.objects.select_for_update().get(pk=run_id)
        if run.is_terminal:
            return False
        run.executor, run.job, run.job_active = executor, job, True
        where = "Kubernetes Job" if executor == "kubernetes" else "local process"
        run.conditions = condition_set(
            run.conditions,
            type="JobCreated",
            status=True,
            reason="JobCreated",
            message=f"Trainer started as {where} {job}.",
        )
        run.save(update_fields=["executor", "job", "job_active", "conditions"])
        return True


def run_observed(*, run_id: int, observation: JobObservation) -> TrainingRun:
    """Write what the operator saw of a run's trainer job; a job that ended leaves no run running."""
    with transaction.atomic(using=ALIAS):
        run = TrainingRun.objects.select_for_update().select_related("version__model").get(pk=run_id)
        if not run.job_active:
            return run
        if observation.phase in (JobPhase.PENDING, JobPhase.RUNNING):
            # An ended run's trainer is about to be stopped; its last words stay as the trainer wrote them.
            if not run.is_terminal:
                run.conditions = condition_set(
                    run.conditions,
                    type="Running",
                    status=observation.phase == JobPhase.RUNNING,
                    reason=observation.reason,
                    message=observation.message,
                )
                run.save(update_fields=["conditions"])
            return run
        # The job is over (finished, failed or gone): whatever the trainer did not report, it never will.
        run.job_active = False
        if run.is_terminal:
            run.save(update_fields=["job_active"])
            return run
        run.conditions = condition_set(
            run.conditions,
            type="Running",
            status=False,
            reason=observation.reason,
            message=observation.message,
        )
        run.save(update_fields=["job_active", "conditions"])
        if observation.phase == JobPhase.SUCCEEDED:
            _run_end(
                run,
                state=RunState.FAILED,
                reason="NoResult",
                message=f"The trainer exited without reporting a result ({observation.message}). Its log "
                "says why.",
            )
        else:
            _run_end(run, state=RunState.FAILED, reason=observation.reason, message=observation.message)
        return run


def run_job_stopped(*, run_id: int, message: str) -> None:
    """The operator stopped the trainer of an ended run (cancelled, or failed while its job still ran)."""
    with transaction.atomic(using=ALIAS):
        run = TrainingRun.objects.select_for_update().get(pk=run_id)
        run.job_active = False
        run.conditions = condition_set(
            run.conditions, type="Running", status=False, reason="JobStopped", message=message
        )
        run.save(update_fields=["job_active", "conditions"])


def run_start(*, run_id: int) -> TrainingRun | None:
    """The trainer begins an attempt; None when the run must not train (ended, or not admitted)."""
    with transaction.atomic(using=ALIAS):
        run = (
            TrainingRun.objects.select_for_update().select_related("version__model").filter(pk=run_id).first()
        )
        if run is None or run.is_terminal or run.admitted_at is None:
            return None
        run.state = RunState.RUNNING
        run.attempt += 1
        run.started_at = run.started_at or timezone.now()
        # A retried attempt trains from the start again: its epochs replace the earlier attempt's.
        run.epochs = []
        run.conditions = condition_set(
            run.conditions,
            type="Running",
            status=True,
            reason="TrainerStarted",
            message=f"The trainer is training (attempt {run.attempt}).",
        )
        run.save(update_fields=["state", "attempt", "started_at", "epochs", "conditions"])
        return run


def run_progress(*, run_id: int, epoch: Mapping[str, Any]) -> bool:
    """Record one finished epoch and announce it; False when the run is no longer running (stop training)."""
    with transaction.atomic(using=ALIAS):
        run = TrainingRun.objects.select_for_update().select_related("version__model").get(pk=run_id)
        if run.state != RunState.RUNNING:
            return False
        run.epochs = [*run.epochs, dict(epoch)]
        run.save(update_fields=["epochs"])
        version = run.version
        publish(
            type="training.progress",
            org_id=run.org_id,
            subject=_subject(version),
            data={"run_id": run.pk, "model_id": version.model_id, "version": version.number, **epoch},
        )
        return True


def run_succeed(
    *,
    run_id: int,
    evaluation: Mapping[str, Any],
    thresholds: Mapping[str, Any],
    artifact_key: str,
    metrics_summary: Mapping[str, Any],
) -> bool:
    """Store the version's evaluation and artifact and end the run; False when it was cancelled meanwhile."""
    with transaction.atomic(using=ALIAS):
        run = TrainingRun.objects.select_for_update().select_related("version__model").get(pk=run_id)
        if run.state != RunState.RUNNING:
            return False
        version = run.version
        version.evaluation = dict(evaluation)
        version.thresholds = dict(thresholds)
        version.artifact_key = artifact_key
        version.save(update_fields=["evaluation", "thresholds", "artifact_key"])
        run.state = RunState.SUCCEEDED
        run.finished_at = timezone.now()
        run.conditions = condition_set(
            condition_set(
                run.conditions,
                type="Running",
                status=False,
                reason="TrainerFinished",
                message="Training finished.",
            ),
            type="Succeeded",
            status=True,
            reason="Trained",
            message=f"Version {version.number} is trained and evaluated.",
        )
        run.save(update_fields=["state", "finished_at", "conditions"])
        publish(
            type="training.completed",
            org_id=run.org_id,
            subject=_subject(version),
            data={
                "run_id": run.pk,
                "model_id": version.model_id,
                "model_name": version.model.name,
                "version": version.number,
                "artifact": artifact_key,
                "metrics_summary": dict(metrics_summary),
                # Billed as training minutes.
                "duration_seconds": (
                    (run.finished_at - run.started_at).total_seconds() if run.started_at else 0.0
                ),
            },
        )
        return True


def run_fail(*, run_id: int, reason: str, message: str) -> None:
    """End a run failed with a message the user can act on (a run already ended keeps its outcome)."""
    with transaction.atomic(using=ALIAS):
        run = TrainingRun.objects.select_for_update().select_related("version__model").get(pk=run_id)
        if not run.is_terminal:
            _run_end(run, state=RunState.FAILED, reason=reason, message=message)


def _run_end(run: TrainingRun, *, state: RunState, reason: str, message: str) -> None:
    """End a run failed or cancelled and announce it with `training.failed` (in the caller's transaction)."""
    run.state = state
    run.finished_at = timezone.now()
    run.conditions = condition_set(
        run.conditions,
        type="Cancelled" if state == RunState.CANCELLED else "Failed",
        status=True,
        reason=reason,
        message=message,
    )
    run.save(update_fields=["state", "finished_at", "conditions"])
    version = run.version
    publish(
        type="training.failed",
        org_id=run.org_id,
        subject=_subject(version),
        data={
            "run_id": run.pk,
            "model_id": version.model_id,
            "version": version.number,
            "state": str(state),
            "reason": reason,
            "message": message,
        },
    )
