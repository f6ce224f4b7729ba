"""Reads of the inference service. Callers hold the org scope."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, datetime
from typing import Any

from django.db.models import Count, QuerySet, Sum

from arbiter.api.errors import ApiError
from services.inference.models import (
    ACTIVE_STATUSES,
    Deployment,
    DeploymentStatus,
    Meter,
    ModelVersion,
    PolicyDecision,
    RequestLogEntry,
    UsageDay,
)


def deployments_list(*, status: str | None = None, model_id: int | None = None) -> QuerySet[Deployment]:
    deployments = Deployment.objects.all()
    if status:
        deployments = deployments.filter(status=status)
    if model_id is not None:
        deployments = deployments.filter(model_id=model_id)
    return deployments.order_by("-created_at", "-id")


def model_versions_list(*, model_id: int | None = None) -> QuerySet[ModelVersion]:
    versions = ModelVersion.objects.all()
    if model_id is not None:
        versions = versions.filter(model_id=model_id)
    return versions.order_by("model_id", "version")


def deployment_for_model(*, model: str | None) -> Deployment:
    """The deployment a compatibility request's `model` names.

    In order: an active deployment with that name, a deployment with that id, then the newest live
    deployment of a model with that name or id. Without `model`, the org's newest live deployment.
    """
    live = Deployment.objects.filter(status=DeploymentStatus.LIVE).order_by("-live_at", "-id")
    if not model:
        newest = live.first()
        if newest is None:
            raise ApiError(
                status=404,
                code="not_found",
                message="This org has no live deployment; deploy a model, then name it as `model`.",
            )
        return newest
    named = Deployment.objects.filter(name=model, status__in=ACTIVE_STATUSES).first()
    if named is not None:
        return named
    if model.isdigit():
        by_id = Deployment.objects.filter(pk=int(model)).first()
        if by_id is not None:
            return by_id
    of_model = live.filter(model_name=model).first()
    if of_model is None and model.isdigit():
        of_model = live.filter(model_id=int(model)).first()
    if of_model is None:
        raise ApiError(
            status=404,
            code="not_found",
            message=f"No deployment or model named '{model}' is live in this org.",
            details={"model": model},
        )
    return of_model


def usage_days(*, start: date, end: date) -> QuerySet[UsageDay]:
    return UsageDay.objects.filter(day__gte=start, day__lte=end).order_by("day", "meter", "deployment_id")


def policy_llm_usage(*, start: date, end: date) -> dict[str, int]:
    """The LLM calls and tokens policies cost in the period: each cached decision was asked once."""
    totals = PolicyDecision.objects.filter(created_at__date__gte=start, created_at__date__lte=end).aggregate(
        decisions=Count("id"),
        calls=Sum("llm_calls"),
        prompt_tokens=Sum("prompt_tokens"),
        completion_tokens=Sum("completion_tokens"),
    )
    return {key: int(value or 0) for key, value in totals.items()}


def cascade_usage(*, deployment_id: int) -> dict[str, Any]:
    """A cascade deployment's classify calls and inputs since it was created: how many the trained model decided
    alone, how many went to its policy, and the LLM calls and tokens the policy's decisions cost."""
    totals = {
        key: int(value or 0)
        for key, value in UsageDay.objects.filter(deployment_id=deployment_id, meter=Meter.CLASSIFICATION)
        .aggregate(
            requests=Sum("requests"),
            inputs=Sum("units"),
            policy_requests=Sum("policy_requests"),
            policy_inputs=Sum("policy_units"),
            calls=Sum("llm_calls"),
            prompt_tokens=Sum("llm_prompt_tokens"),
            completion_tokens=Sum("llm_completion_tokens"),
        )
        .items()
    }
    return {
        "requests": totals["requests"],
        "inputs": totals["inputs"],
        "model_requests": totals["requests"] - totals["policy_requests"],
        "policy_requests": totals["policy_requests"],
        "model_inputs": totals["inputs"] - totals["policy_inputs"],
        "policy_inputs": totals["policy_inputs"],
        "policy_share": round(totals["policy_inputs"] / totals["inputs"], 4) if totals["inputs"] else None,
        "llm": {key: totals[key] for key in ("calls", "prompt_tokens", "completion_tokens")},
    }


def request_log_entries(
    *, deployment_id: int, start: datetime | None = None, end: datetime | None = None
) -> QuerySet[RequestLogEntry]:
    entries = RequestLogEntry.objects.filter(deployment_id=deployment_id)
    if start is not None:
        entries = entries.filter(created_at__gte=start)
    if end is not None:
        entries = entries.filter(created_at__lt=end)
    return entries.order_by("created_at", "id")


def request_log_iter(entries: QuerySet[RequestLogEntry]) -> Iterator[RequestLogEntry]:
    """Entries streamed from the database in chunks: an export of a busy deployment never sits in memory."""
    return entries.only("text", "prediction", "created_at").iterator(chunk_size=2000)


def deployment_names(*, ids: set[int]) -> dict[int, str]:
    return dict(Deployment.objects.filter(pk__in=ids).values_list("pk", "name")) if ids else {}


def deployment_head_names(*, deployment: Deployment) -> list[str]:
    """The heads of a deployment's version, from the read model, else from what its log recorded."""
    version = ModelVersion.objects.filter(model_id=deployment.model_id, version=deployment.version).first()
    if version is not None and version.heads:
        return [str(head["name"]) for head in version.heads]
    first = RequestLogEntry.objects.filter(deployment_id=deployment.pk).only("prediction").first()
    return list(first.prediction) if first is not None else []
