"""Reads of the training service (org-scoped through `OrgScopedModel.objects`)."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet

from services.training.models import Model, ModelVersion, TrainingRun


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
