"""Reads of the training service (org-scoped through `OrgScopedModel.objects`)."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from django.utils import timezone

from services.training.models import Model, ModelVersion, TrainingRun
from services.training.options import OPTION_DEFAULTS


def model_list() -> QuerySet[Model]:
    return Model.objects.prefetch_related("versions__run")


def version_list(*, model_id: int) -> QuerySet[ModelVersion]:
    return ModelVersion.objects.select_related("run", "parent").filter(model_id=model_id)


def run_list() -> QuerySet[TrainingRun]:
    return TrainingRun.objects.select_related("version")


def run_progress(run: TrainingRun) -> dict[str, Any]:
    """How far the run got: the last finished epoch of its current attempt, and every epoch so far."""
    last = run.epochs[-1] if run.epochs else None
    return {
        "epoch": last["epoch"] if last else 0,
        "max_epochs": last.get("max_epochs") if last else run.version.options.get("max_epochs"),
        "epochs": run.epochs,
    }


def run_outcome(run: TrainingRun) -> dict[str, str] | None:
    """The reason and message of a run's end, for people and scripts that do not read conditions."""
    for type in ("Succeeded", "Failed", "Cancelled"):
        condition = run.condition(type)
        if condition is not None and condition["status"] == "True":
            return {"reason": condition["reason"], "message": condition["message"]}
    return None


def time_budget_seconds(options: dict[str, Any]) -> float:
    """A version's time budget; versions from before the option have the default."""
    return float(options.get("time_budget_minutes") or OPTION_DEFAULTS["time_budget_minutes"]) * 60.0


def version_time(version: ModelVersion) -> dict[str, Any]:
    """The time budget and the time used: from the trainer's start to the run's end (or now, while it runs)."""
    run = version.run
    used = None
    if run.started_at is not None:
        used = round(((run.finished_at or timezone.now()) - run.started_at).total_seconds(), 1)
    return {"budget_seconds": time_budget_seconds(version.options), "used_seconds": used}


# Keys of a candidate's record shown in their own columns; the rest is its detail.
_CANDIDATE_COLUMNS = ("name", "seconds", "selection_metric", "head_metrics", "skipped")


def version_candidates(version: ModelVersion) -> list[dict[str, Any]]:
    """The `auto` plan as it ran (metrics.json's `training.candidates`): one row per step, skipped ones with
    their reason; empty for the other strategies and for versions not trained yet."""
    training = (version.evaluation or {}).get("training") or {}
    return [
        {
            "name": candidate["name"],
            "ran": "skipped" not in candidate,
            "seconds": candidate.get("seconds"),
            "selection_metric": candidate.get("selection_metric"),
            "head_metrics": candidate.get("head_metrics") or {},
            "skipped": candidate.get("skipped"),
            "detail": {key: value for key, value in candidate.items() if key not in _CANDIDATE_COLUMNS},
        }
        for candidate in training.get("candidates") or []
    ]
