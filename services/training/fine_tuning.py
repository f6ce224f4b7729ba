"""Mistral's fine-tuning jobs (`job_type: "classifier"`) as Arbiter model versions.

- `model` names a base model: Mistral's classifier bases map onto Arbiter's base encoders (`BASE_MODELS`), and an
  Arbiter encoder name is taken as is; anything else is a 422.
- Files are the training service's read model of the files API (`file.created`): a training file is a snapshot.
  Creating a job checks its request (422 naming the field) and answers at once with the job VALIDATING; the
  operator's pass then validates the data against the snapshots' heads and reports, once the files have reached
  this service (a file just uploaded may still be on its way): the job is VALIDATED, or FAILED_VALIDATION with
  the reason in `events` (also when a file never arrives within ARBITER_WAIT_FOR_EVENTS_SECONDS).
- Starting it creates a model named `fine_tuned_model` (`ft:classifier:<model>:<org>:<date>:<job>`) with
  version 1 and its run, trained by the operator like any other. Hyperparameters map onto training options:
  `learning_rate` as is; `training_steps` onto epochs of the frozen-encoder `head` strategy, where one step is
  one optimizer step over a batch (`batch_size` rows), so `steps_per_epoch = ceil(training rows / batch_size)`
  and the run trains `ceil(training_steps / steps_per_epoch)` epochs, early stopping off. Every epoch is a
  checkpoint (train and validation loss at `step_number = epoch * steps_per_epoch`).
  `invalid_sample_skip_percentage` is `max_invalid_row_percent`.
- A training file's `weight` is the sample weight of each of its rows in the loss; the weights travel to the
  trainer in the version's options (`snapshot_weights`, by snapshot id). The validation files' rows together
  are the validation rows (`validation_snapshots`): `valid_loss`, the epoch kept and the version's metrics are
  theirs, and every training row trains. Without validation files, 10% of the training rows validate and 20%
  test.
- When the run succeeds, `fine_tuning.succeeded` asks the inference service to deploy the version; the job says
  SUCCESS once that deployment is live (`deployment.live`), so `classify(model=fine_tuned_model)` answers at
  once.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from django.db import transaction
from django.utils import timezone

from arbiter.api.errors import ApiError
from arbiter.api.keyscoped import invalid_at
from arbiter.events import publish
from arbiter.ml.encoders import DEFAULT_BASE_MODEL
from arbiter.tenancy.scoping import org_scope
from services.training import logic
from services.training.models import (
    FineTuningJob,
    ModelVersion,
    RunState,
    Snapshot,
    TrainingFile,
)
from services.training.options import OPTION_DEFAULTS

ALIAS = logic.ALIAS
FINE_TUNE = "fine-tune"

# Mistral's classifier base models and the Arbiter base encoder each trains on. Only encoders that install
# offline are listed: the Ministral models themselves are not available to a self-hosted Arbiter.
BASE_MODELS: dict[str, str] = {
    "ministral-3b-latest": DEFAULT_BASE_MODEL,
    "ministral-3b-2410": DEFAULT_BASE_MODEL,
    "ministral-8b-latest": DEFAULT_BASE_MODEL,
    "ministral-8b-2410": DEFAULT_BASE_MODEL,
    DEFAULT_BASE_MODEL: DEFAULT_BASE_MODEL,
}
MAX_TRAINING_STEPS = 10_000
MAX_EPOCHS = 500
MAX_WEIGHT = 1e6

QUEUED, VALIDATING, VALIDATED, RUNNING = "QUEUED", "VALIDATING", "VALIDATED", "RUNNING"
FAILED_VALIDATION, FAILED, SUCCESS, CANCELLED = "FAILED_VALIDATION", "FAILED", "SUCCESS", "CANCELLED"
_RUN_STATUS = {
    RunState.QUEUED: QUEUED,
    RunState.RUNNING: RUNNING,
    RunState.FAILED: FAILED,
    RunState.CANCELLED: CANCELLED,
}


# --- the file read model ------------------------------------------------------------------------------------


def file_record(*, org_id: int, data: Mapping[str, Any]) -> None:
    TrainingFile.objects.unscoped().get_or_create(
        file_id=str(data["file_id"]),
        defaults={
            "org_id": org_id,
            "purpose": str(data["purpose"]),
            "filename": str(data.get("filename") or ""),
            "num_lines": data.get("num_lines"),
            "snapshot_id": data.get("snapshot_id"),
        },
    )


def file_forget(*, data: Mapping[str, Any]) -> None:
    TrainingFile.objects.unscoped().filter(file_id=str(data["file_id"])).update(deleted=True)


def _file_id(file_id: Any, loc: list[str | int]) -> str:
    """A file id the job may name: the org's training file, or one not heard of yet (just uploaded, its
    `file.created` on its way: the job waits for it). Anything else is a 422 naming `loc`."""
    if not isinstance(file_id, str) or not file_id:
        raise invalid_at(loc, "give the id of a file uploaded with purpose 'fine-tune'.")
    file = TrainingFile.objects.filter(file_id=file_id).first()
    if file is None:
        # The files API names files by UUID: anything else, or another org's file, is no file of this org's.
        if not _is_uuid(file_id) or TrainingFile.objects.unscoped().filter(file_id=file_id).exists():
            raise invalid_at(loc, f"no file with id '{file_id}' (upload it with client.files.upload first).")
        return file_id
    problem = _file_problem(file)
    if problem:
        raise invalid_at(loc, problem)
    return file_id


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def _file_problem(file: TrainingFile) -> str:
    if file.deleted:
        return f"no file with id '{file.file_id}' (it was deleted)."
    if file.purpose != FINE_TUNE or file.snapshot_id is None:
        return f"file '{file.file_id}' was uploaded with purpose '{file.purpose}', not 'fine-tune'."
    return ""


# --- creating, validating, starting, cancelling -------------------------------------------------------------


def _number(value: Any, loc: list[str | int], *, low: float, high: float, integer: bool = False) -> float:
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not low <= value <= high:
        raise invalid_at(loc, f"must be {'an integer' if integer else 'a number'} from {low:g} to {high:g}.")
    return value


def _hyperparameters(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise invalid_at(["body", "hyperparameters"], "must be an object ({training_steps, learning_rate}).")
    loc: list[str | int] = ["body", "hyperparameters"]
    out: dict[str, Any] = {"learning_rate": 0.0001}
    if raw.get("training_steps") is not None:
        out["training_steps"] = int(
            _number(
                raw["training_steps"], [*loc, "training_steps"], low=1, high=MAX_TRAINING_STEPS, integer=True
            )
        )
    if raw.get("epochs") is not None:
        out["epochs"] = _number(raw["epochs"], [*loc, "epochs"], low=0.01, high=MAX_EPOCHS)
    if raw.get("learning_rate") is not None:
        out["learning_rate"] = _number(raw["learning_rate"], [*loc, "learning_rate"], low=1e-8, high=1.0)
    if "training_steps" not in out and "epochs" not in out:
        raise invalid_at([*loc, "training_steps"], "give training_steps (or epochs).")
    for name in ("weight_decay", "warmup_fraction"):
        if raw.get(name) is not None:
            out[name] = _number(raw[name], [*loc, name], low=0.0, high=1.0)
    if raw.get("seq_len") is not None:
        out["seq_len"] = int(_number(raw["seq_len"], [*loc, "seq_len"], low=8, high=8192, integer=True))
    return out


def _training_files(raw: Any) -> list[tuple[str, float]]:
    if not isinstance(raw, list) or not raw:
        raise invalid_at(["body", "training_files"], "give at least one {file_id, weight}.")
    files: list[tuple[str, float]] = []
    for index, entry in enumerate(raw):
        loc: list[str | int] = ["body", "training_files", index]
        if not isinstance(entry, dict):
            raise invalid_at(loc, "each training file is {file_id, weight}.")
        weight = entry.get("weight")
        weight = 1.0 if weight is None else weight
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0 < weight <= MAX_WEIGHT:
            raise invalid_at(
                [*loc, "weight"],
                f"must be a positive number (at most {MAX_WEIGHT:g}): each row of the file counts that many "
                f"times in the loss; got {weight!r}.",
            )
        files.append((_file_id(entry.get("file_id"), [*loc, "file_id"]), float(weight)))
    return files


def _validation_files(raw: Any, *, training: Sequence[str]) -> list[str]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise invalid_at(["body", "validation_files"], "give a list of validation file ids.")
    files: list[str] = []
    for i, file_id in enumerate(raw):
        loc: list[str | int] = ["body", "validation_files", i]
        files.append(_file_id(file_id, loc))
        if file_id in training:
            raise invalid_at(loc, f"file '{file_id}' is also a training file; validating on it says nothing.")
    return list(dict.fromkeys(files))


def _steps_per_epoch(snapshot_ids: Sequence[int], batch_size: int) -> int:
    rows = sum(Snapshot.objects.filter(snapshot_id__in=list(snapshot_ids)).values_list("rows", flat=True))
    return max(1, math.ceil(rows / batch_size))


def _event(status: str, **data: Any) -> dict[str, Any]:
    return {"name": "status-updated", "created_at": int(time.time()), "data": {"status": status, **data}}


def _options(job: FineTuningJob) -> dict[str, Any]:
    params = job.hyperparameters
    if "training_steps" in params:
        epochs = math.ceil(params["training_steps"] / job.steps_per_epoch)
    else:
        epochs = math.ceil(params["epochs"])
    options: dict[str, Any] = {
        "strategy": "head",
        "max_epochs": max(1, min(epochs, MAX_EPOCHS)),
        "early_stopping": 0,
        "selection_rule": "loss",
        "learning_rate": params["learning_rate"],
        "max_invalid_row_percent": job.invalid_sample_skip_percentage,
    }
    if "weight_decay" in params:
        options["weight_decay"] = params["weight_decay"]
    if "seq_len" in params:
        options["max_tokens"] = params["seq_len"]
    # What the trainer reads the files with: each training snapshot's row weight, the validation snapshots.
    weights: dict[str, float] = {}
    for snapshot_id, entry in zip(_snapshot_ids(job), job.training_files, strict=True):
        # One file uploaded twice is one snapshot: its weights add up, as two copies of its rows would.
        weights[str(snapshot_id)] = weights.get(str(snapshot_id), 0.0) + float(entry["weight"])
    options["snapshot_weights"] = weights
    if job.validation_files:
        options["validation_snapshots"] = _snapshot_ids_of(list(job.validation_files))
    return options


def _test(job: FineTuningJob) -> dict[str, Any] | None:
    """The test share: none when validation files are given (their rows validate and are the metrics' rows),
    else the default share of the training rows."""
    return {"split_percent": 0.0} if job.validation_files else None


def _snapshot_ids_of(file_ids: Sequence[str]) -> list[int]:
    by_id = dict(
        TrainingFile.objects.filter(file_id__in=list(file_ids)).values_list("file_id", "snapshot_id")
    )
    return [int(by_id[file_id]) for file_id in file_ids]


def _snapshot_ids(job: FineTuningJob) -> list[int]:
    return _snapshot_ids_of([entry["file_id"] for entry in job.training_files])


def _validate(job: FineTuningJob) -> tuple[list[dict[str, Any]], str | None]:
    """The classifier targets the data gives, and the first problem that makes training pointless (or None)."""
    try:
        heads = logic._snapshot_heads(
            list(Snapshot.objects.filter(snapshot_id__in=_snapshot_ids(job)).order_by("snapshot_id"))
        )
    except ApiError as error:
        return [], error.message
    weights = {entry["file_id"]: entry["weight"] for entry in job.training_files}
    weight = max(weights.values()) if weights else 1.0
    targets = [
        {
            "name": head["name"],
            "labels": head["labels"],
            "weight": weight,
            "loss_function": "multi_class" if head["multi_label"] else "single_class",
        }
        for head in heads
    ]
    version = ModelVersion(
        snapshot_ids=_snapshot_ids(job),
        test=_test(job) or {},
        options={**OPTION_DEFAULTS, **_options(job)},
        heads=[{**head, "origin": "new"} for head in heads],
    )
    problem = logic._validation_problem(version)
    return targets, problem[1] if problem else None


def job_create(*, org_id: int, body: Mapping[str, Any]) -> FineTuningJob:
    """Check the request (422 naming the field) and accept the job as VALIDATING: the operator validates its
    data in the background (`jobs_validate`), so the request never waits for files or snapshots."""
    model = body.get("model")
    if not isinstance(model, str) or model not in BASE_MODELS:
        raise invalid_at(
            ["body", "model"],
            f"{model!r} is not a base model Arbiter can fine-tune; use one of {', '.join(BASE_MODELS)}.",
        )
    job_type = body.get("job_type")
    if job_type not in (None, "classifier"):
        raise invalid_at(["body", "job_type"], f"only 'classifier' jobs are supported, not {job_type!r}.")
    hyperparameters = _hyperparameters(body.get("hyperparameters"))
    skip = body.get("invalid_sample_skip_percentage")
    skip = 0.0 if skip is None else _number(skip, ["body", "invalid_sample_skip_percentage"], low=0, high=100)
    suffix = body.get("suffix") or ""
    if not isinstance(suffix, str) or len(suffix) > 40:
        raise invalid_at(["body", "suffix"], "must be a string of at most 40 characters.")
    training = _training_files(body.get("training_files"))
    validation = _validation_files(
        body.get("validation_files"), training=[file_id for file_id, _ in training]
    )
    return FineTuningJob.objects.create(
        org_id=org_id,
        public_id=str(uuid.uuid4()),
        model=model,
        base_model=BASE_MODELS[model],
        hyperparameters=hyperparameters,
        training_files=[{"file_id": file_id, "weight": weight} for file_id, weight in training],
        validation_files=validation,
        suffix=suffix,
        auto_start=bool(body.get("auto_start", False)),
        invalid_sample_skip_percentage=float(skip),
        status=VALIDATING,
        events=[_event(QUEUED), _event(VALIDATING)],
    )


def _job_validate(job: FineTuningJob, *, waited_too_long: bool) -> None:
    """Validate a VALIDATING job once every file and snapshot it names has reached this service: VALIDATED
    (started at once with `auto_start`) or FAILED_VALIDATION saying why. A file still on its way keeps it
    waiting, until `waited_too_long`."""
    file_ids = [entry["file_id"] for entry in job.training_files] + list(job.validation_files)
    files = {file.file_id: file for file in TrainingFile.objects.filter(file_id__in=file_ids)}
    problem = next((_file_problem(files[i]) for i in file_ids if i in files and _file_problem(files[i])), "")
    missing = [i for i in file_ids if i not in files]
    snapshot_ids = {int(file.snapshot_id) for file in files.values() if file.snapshot_id is not None}
    known = set(Snapshot.objects.filter(snapshot_id__in=snapshot_ids).values_list("snapshot_id", flat=True))
    if not problem and (missing or known != snapshot_ids):
        if not waited_too_long:
            return
        problem = (
            f"no file with id '{missing[0]}' reached the training service (upload it with client.files.upload "
            "first; if you did, check that the event relay and consumers are running)."
            if missing
            else "the files' data never reached the training service; check that the event relay and "
            "consumers are running, then create the job again."
        )
    if not problem:
        training_snapshots = _snapshot_ids(job)
        job.steps_per_epoch = _steps_per_epoch(training_snapshots, int(OPTION_DEFAULTS["batch_size"]))
        job.classifier_targets, found = _validate(job)
        problem = found or ""
    if problem:
        job.status = FAILED_VALIDATION
        job.events = [*job.events, _event(FAILED_VALIDATION, error=problem)]
    else:
        job.status = VALIDATED
        job.events = [*job.events, _event(VALIDATED)]
    job.modified_at = timezone.now()
    job.save(update_fields=["status", "events", "steps_per_epoch", "classifier_targets", "modified_at"])
    if job.auto_start and job.status == VALIDATED:
        _start(job)


def jobs_validate(*, older_than: timedelta) -> int:
    """The operator's pass: validate every VALIDATING job whose files have arrived (see `_job_validate`); a job
    that waited longer than `older_than` for one fails validation naming it. Returns how many were settled."""
    settled = 0
    cutoff = timezone.now() - older_than
    pending = FineTuningJob.objects.unscoped().filter(status=VALIDATING, version__isnull=True)
    for job_id, org_id in pending.order_by("id").values_list("pk", "org_id"):
        with transaction.atomic(using=ALIAS), org_scope(org_id):
            job = FineTuningJob.objects.select_for_update().filter(pk=job_id, status=VALIDATING).first()
            if job is None:
                continue
            _job_validate(job, waited_too_long=job.created_at < cutoff)
            settled += job.status != VALIDATING
    return settled


def _fine_tuned_model(job: FineTuningJob) -> str:
    suffix = f"{job.suffix}:" if job.suffix else ""
    date = job.created_at.strftime("%Y%m%d")
    return f"ft:classifier:{job.model}:{suffix}{job.org_id}:{date}:{job.public_id[:8]}"


def _start(job: FineTuningJob) -> None:
    name = _fine_tuned_model(job)
    version = logic.model_create(
        org_id=job.org_id,
        name=name,
        type="text_classification",
        base_model=job.base_model,
        snapshot_ids=_snapshot_ids(job),
        test=_test(job),
        options=_options(job),
    )
    job.version = version
    job.fine_tuned_model = name
    job.status = QUEUED
    job.events = [*job.events, _event(QUEUED)]
    job.modified_at = timezone.now()
    job.save(update_fields=["version", "fine_tuned_model", "status", "events", "modified_at"])


def job_start(*, job: FineTuningJob) -> FineTuningJob:
    with transaction.atomic(using=ALIAS):
        locked = FineTuningJob.objects.select_for_update().get(pk=job.pk)
        if locked.version_id is None and locked.status == VALIDATED:
            _start(locked)
        elif locked.version_id is None:
            raise ApiError(
                status=409,
                code="job_not_startable",
                message=f"The job is {locked.status}; only a VALIDATED job can be started.",
            )
    return locked


def job_cancel(*, job: FineTuningJob) -> FineTuningJob:
    """Cancel at any point: a job not started never trains; a running trainer is stopped by the operator."""
    with transaction.atomic(using=ALIAS):
        locked = (
            FineTuningJob.objects.select_for_update(of=("self",))
            .select_related("version__run")
            .get(pk=job.pk)
        )
        if locked.version is not None:
            logic.run_cancel(run=locked.version.run)
        elif locked.status in (VALIDATING, VALIDATED):
            locked.status = CANCELLED
            locked.events = [*locked.events, _event(CANCELLED)]
            locked.modified_at = timezone.now()
            locked.save(update_fields=["status", "events", "modified_at"])
    return locked


def model_archive(*, job: FineTuningJob) -> None:
    FineTuningJob.objects.filter(pk=job.pk).update(archived=True, modified_at=timezone.now())


# --- what the other services tell --------------------------------------------------------------------------


def _job_of(model_id: int, number: int) -> FineTuningJob | None:
    return (
        FineTuningJob.objects.unscoped()
        .select_for_update()
        .filter(version__model_id=model_id, version__number=number)
        .first()
    )


def job_trained(*, data: Mapping[str, Any]) -> None:
    """The job's version trained (`training.completed`): ask the inference service to deploy it."""
    job = _job_of(int(data["model_id"]), int(data["version"]))
    if job is None:
        return
    publish(
        type="fine_tuning.succeeded",
        org_id=job.org_id,
        subject=f"fine_tuning/jobs/{job.public_id}",
        data={
            "job_id": job.public_id,
            "model_id": int(data["model_id"]),
            "version": int(data["version"]),
            "fine_tuned_model": job.fine_tuned_model,
        },
    )


def job_deployed(*, data: Mapping[str, Any], error: str = "") -> None:
    """The job's deployment is live (SUCCESS), or failed to load (FAILED, saying why)."""
    job = _job_of(int(data["model_id"]), int(data["version"]))
    if job is None or job.deployed_at is not None or job.deploy_error:
        return
    if error:
        job.deploy_error = error
    else:
        job.deployed_at = timezone.now()
    job.modified_at = timezone.now()
    job.save(update_fields=["deployed_at", "deploy_error", "modified_at"])


# --- reading ------------------------------------------------------------------------------------------------


def job_status(job: FineTuningJob) -> str:
    if job.version is None:
        return job.status
    run = job.version.run
    if run.state == RunState.SUCCEEDED:
        if job.deploy_error:
            return FAILED
        return SUCCESS if job.deployed_at is not None else RUNNING
    return _RUN_STATUS[RunState(run.state)]


def job_checkpoints(job: FineTuningJob) -> list[dict[str, Any]]:
    """One checkpoint per finished epoch, newest first, as Mistral lists them."""
    if job.version is None:
        return []
    run = job.version.run
    started = run.started_at.timestamp() if run.started_at else job.created_at.timestamp()
    steps = job.hyperparameters.get("training_steps")
    checkpoints, elapsed = [], 0.0
    for epoch in run.epochs:
        elapsed += float(epoch.get("seconds") or 0.0)
        step = int(epoch["epoch"]) * job.steps_per_epoch
        checkpoints.append(
            {
                "metrics": {
                    "train_loss": epoch.get("train_loss"),
                    "valid_loss": epoch.get("valid_loss"),
                    "valid_mean_token_accuracy": None,
                },
                "step_number": min(step, steps) if steps else step,
                "created_at": int(started + elapsed),
            }
        )
    return checkpoints[::-1]


def job_events(job: FineTuningJob) -> list[dict[str, Any]]:
    events = list(job.events)
    if job.version is not None:
        for condition in job.version.run.conditions:
            at = condition.get("time")
            events.append(
                {
                    "name": f"training-{condition['type'].lower()}",
                    "created_at": int(datetime.fromisoformat(at).timestamp()) if at else 0,
                    "data": {k: condition.get(k) for k in ("status", "reason", "message")},
                }
            )
        if job.deploy_error:
            events.append(_event(FAILED, error=job.deploy_error))
        elif job.deployed_at is not None:
            events.append(
                {
                    "name": "status-updated",
                    "created_at": int(job.deployed_at.timestamp()),
                    "data": {"status": SUCCESS},
                }
            )
    return events
