"""The trainer (`arbiter train --run <id>`): one run, from snapshot blobs to an evaluated artifact.

It runs wherever the executor put it (a local subprocess, a Kubernetes pod), with the training database and
the blob store in reach. Each epoch is reported (`training.progress`); the end is `training.completed` with
the artifact and the evaluation, or `training.failed` with a message the user can act on. A trainer that
dies without reporting is noticed by the operator, which fails the run for it.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from arbiter.config.typed_settings import arbiter_settings
from arbiter.ml.artifacts import Artifact, artifact_pack, artifact_unpack
from arbiter.ml.encoders import EmbeddingCache
from arbiter.ml.errors import MLError, TrainingCancelled
from arbiter.ml.heads import EpochProgress
from arbiter.ml.specs import HeadSpec, TrainOptions
from arbiter.ml.training import TrainResult, train_from_snapshot
from arbiter.storage import get_blob_store
from arbiter.tenancy.scoping import org_scope
from services.training import logic
from services.training.models import ModelVersion, RunState, Snapshot, TrainingRun
from services.training.operator.conditions import TRAINER_EXIT_REPORTED_FAILURE
from services.training.snapshots import snapshot_rows

log = logging.getLogger(__name__)

# How often, at most, the trainer asks the database whether its run was cancelled.
CANCEL_POLL_S = 1.0


class RunNotFound(LookupError):
    pass


def trainer_run(*, run_id: int) -> int:
    """Train the run and report how it ended; returns the process exit status for the executor.

    0: the run ended and its result is recorded (or there was nothing to do); TRAINER_EXIT_REPORTED_FAILURE:
    the run failed and says why. Anything else escapes: the executor sees a crash.
    """
    found = TrainingRun.objects.unscoped().filter(pk=run_id).values_list("org_id", flat=True).first()
    if found is None:
        raise RunNotFound(f"There is no training run {run_id} in this installation's training database.")
    with org_scope(found):
        run = logic.run_start(run_id=run_id)
        if run is None:
            state = TrainingRun.objects.filter(pk=run_id).values_list("state", flat=True).first()
            log.info("nothing to train", extra={"run_id": run_id, "state": state})
            return 0
        try:
            _train(run)
        except TrainingCancelled:
            log.info("training cancelled", extra={"run_id": run_id})
            return 0
        except MLError as error:
            logic.run_fail(run_id=run_id, reason=_reason(error.code), message=error.message)
            return TRAINER_EXIT_REPORTED_FAILURE
        except (MemoryError, torch.OutOfMemoryError):
            log.exception("out of memory", extra={"run_id": run_id})
            logic.run_fail(
                run_id=run_id,
                reason="OutOfMemory",
                message="The trainer ran out of memory. Lower options.batch_size or options.max_tokens, use "
                "the 'head' strategy, or give the trainer more memory.",
            )
            return TRAINER_EXIT_REPORTED_FAILURE
        except Exception as error:
            log.exception("trainer crashed", extra={"run_id": run_id})
            logic.run_fail(
                run_id=run_id,
                reason="TrainerCrashed",
                message=f"The trainer crashed: {type(error).__name__}: {error}. The trainer's log has the "
                "details; if the cause was passing, train a new version.",
            )
            return TRAINER_EXIT_REPORTED_FAILURE
        return 0


def _reason(code: str) -> str:
    """The ML core's error code (`invalid_training_data`) as a condition reason (`InvalidTrainingData`)."""
    return "".join(part.title() for part in code.split("_"))


def _train(run: TrainingRun) -> None:
    version = run.version
    store = get_blob_store()
    trained = [HeadSpec.from_dict(h) for h in version.heads if h["origin"] not in logic.NOT_TRAINED]
    options = TrainOptions.from_dict(
        {**version.options, "test_percent": float(version.test.get("split_percent", 0.0))}
    )
    cancel = _CancelWatch(run.pk)
    log.info(
        "training started",
        extra={
            "run_id": run.pk,
            "model_id": version.model_id,
            "version": version.number,
            "attempt": run.attempt,
            "heads": [spec.name for spec in trained],
            "strategy": options.strategy,
        },
    )

    def on_progress(progress: EpochProgress) -> None:
        log.info("epoch finished", extra={"run_id": run.pk, **progress.to_dict()})
        if not logic.run_progress(run_id=run.pk, epoch=progress.to_dict()):
            cancel.stopped = True

    with tempfile.TemporaryDirectory(prefix=f"arbiter-run-{run.pk}-") as scratch:
        parent = _parent_artifact(version, Path(scratch) / "parent")
        result = train_from_snapshot(
            rows=_rows(version),
            heads=trained,
            out_dir=Path(scratch) / "artifact",
            options=options,
            base_model=None if parent is not None else version.base_model,
            parent=parent,
            on_progress=on_progress,
            should_cancel=cancel,
            cache=EmbeddingCache(arbiter_settings().core.home / "cache" / "embeddings"),
        )
        artifact_key = f"artifacts/org-{run.org_id}/model-{version.model_id}/v{version.number}.tar.gz"
        store.put_bytes(artifact_key, artifact_pack(result.artifact_dir))
    log.info(
        "training finished", extra={"run_id": run.pk, "artifact": artifact_key, "selected": result.selected}
    )
    if not logic.run_succeed(
        run_id=run.pk,
        evaluation=result.metrics,
        thresholds=_thresholds(result),
        artifact_key=artifact_key,
        metrics_summary=_summary(result),
    ):
        # Cancelled while the artifact was being written: nothing may point at it, so it goes.
        store.delete(artifact_key)
        raise TrainingCancelled("The training run was cancelled.")


def _rows(version: ModelVersion) -> Iterator[dict[str, Any]]:
    """The training snapshots' rows (weighted by `options.snapshot_weights`, when given), then the validation
    snapshots' (`options.validation_snapshots`) marked as validation rows, then the test snapshot's (if any)
    marked as test rows."""
    test_id = version.test.get("snapshot")
    validation = [int(i) for i in version.options.get("validation_snapshots") or []]
    weights = version.options.get("snapshot_weights") or {}
    wanted = [*version.snapshot_ids, *validation, *([test_id] if test_id else [])]
    snapshots = {s.snapshot_id: s for s in Snapshot.objects.filter(snapshot_id__in=wanted)}
    for snapshot_id in version.snapshot_ids:
        # With a test or validation snapshot, every training-snapshot row trains; else rows keep their split.
        weight = float(weights.get(str(snapshot_id), 1.0))
        for row in snapshot_rows(snapshots[snapshot_id], split="train" if test_id or validation else None):
            if weight != 1.0:
                row["weight"] = weight
            yield row
    for snapshot_id in validation:
        yield from snapshot_rows(snapshots[snapshot_id], split="valid")
    if test_id:
        yield from snapshot_rows(snapshots[test_id], split="test")


def _parent_artifact(version: ModelVersion, folder: Path) -> Artifact | None:
    parent = version.parent
    if parent is None:
        return None
    return artifact_unpack(get_blob_store().get_bytes(parent.artifact_key), folder)


def _thresholds(result: TrainResult) -> dict[str, dict[str, float]]:
    return {head.spec.name: dict(head.thresholds) for head in result.artifact.model.heads}


def _summary(result: TrainResult) -> dict[str, Any]:
    """A few numbers per head for `training.completed` (the full evaluation is on the version)."""
    heads = result.metrics.get("heads", {})
    return {
        "selected": result.selected,
        "selection_metric": result.selection_metric,
        "heads": {
            name: {
                "f1": (head.get("macro") or {}).get("f1"),
                "balanced_accuracy": (head.get("macro") or {}).get("balanced_accuracy"),
            }
            for name, head in heads.items()
        },
    }


class _CancelWatch:
    """`should_cancel` for the ML core: asks the database at most every CANCEL_POLL_S seconds."""

    def __init__(self, run_id: int) -> None:
        self.run_id = run_id
        self.stopped = False
        self._checked = 0.0

    def __call__(self) -> bool:
        now = time.monotonic()
        if not self.stopped and now - self._checked >= CANCEL_POLL_S:
            self._checked = now
            state = TrainingRun.objects.filter(pk=self.run_id).values_list("state", flat=True).first()
            self.stopped = state != RunState.RUNNING
        return self.stopped
