"""Writes of the inference service: the version read model, deployments and their lifecycle, classifying,
the playground allowance, usage and the request log.

Every state change happens in one transaction on the inference database together with the event that
announces it (`deployment.requested`, `deployment.live`, `deployment.failed`, `deployment.stopped`,
`usage.recorded`). Callers hold the org scope (the base viewset, the consumer runner or `org_scope`).
"""

from __future__ import annotations

import functools
import logging
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from django.db import IntegrityError, connections, transaction
from django.db.models import F, Q
from django.utils import timezone
from django.utils.text import slugify

from arbiter.api.errors import ApiError
from arbiter.entitlements import entitlements_check, quota_error
from arbiter.events import publish
from arbiter.groupcommit import GroupCommit
from arbiter.llm.policy import is_policy_artifact
from arbiter.ml.errors import ArtifactError, MLError
from arbiter.ml.specs import HeadSpec
from arbiter.sql import insert_rows
from arbiter.storage import BlobNotFoundError
from services.inference.cascade import CascadeOutcome, PolicyRef, cascade_apply, cascade_parse, cascade_routes
from services.inference.compat import NativeResult
from services.inference.conf import inference_settings
from services.inference.models import (
    ACTIVE_STATUSES,
    Deployment,
    DeploymentStatus,
    Entitlement,
    Meter,
    ModelVersion,
    PlaygroundCounter,
    RequestLogEntry,
)
from services.inference.serving.artifacts import artifact_config_read
from services.inference.serving.cache import LoadedModel, model_cache
from services.inference.serving.fastpath import deployment_forget
from services.inference.serving.policy import PolicyModel

log = logging.getLogger(__name__)

ALIAS = "inference"
# The `reason` of a pending deployment whose version has not reached this service yet.
WAITING_FOR_VERSION = "waiting_for_version"
DEPLOYMENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


@dataclass(frozen=True)
class Caller:
    """Who a classification is billed to and logged for."""

    org_id: int
    api_key_id: int | None
    user_id: int | None


@dataclass(frozen=True)
class Classification:
    """What a model answered for a request's inputs, with the heads the answer describes."""

    results: list[NativeResult]
    heads: list[HeadSpec]


# --- the version read model ---------------------------------------------------------------------------------


def _heads_from_config(config: Mapping[str, Any]) -> tuple[list[dict[str, Any]], dict[str, dict[str, float]]]:
    heads = [HeadSpec.from_dict(entry).to_dict() for entry in config.get("heads", [])]
    thresholds = {
        str(entry["name"]): {
            str(label): float(value) for label, value in (entry.get("thresholds") or {}).items()
        }
        for entry in config.get("heads", [])
    }
    return heads, thresholds


def model_version_record(*, org_id: int, data: Mapping[str, Any]) -> ModelVersion:
    """Remember a trained version (from `training.completed`) so it can be deployed and tried.

    Heads and thresholds come from the event when it carries them, else from the artifact's config,
    read from the blob store without downloading the whole artifact.
    """
    heads = [HeadSpec.from_dict(entry).to_dict() for entry in data.get("heads") or []]
    thresholds = dict(data.get("thresholds") or {})
    metrics: dict[str, Any] = {"summary": dict(data.get("metrics_summary") or {})}
    try:
        config = artifact_config_read(str(data["artifact"]))
    except (BlobNotFoundError, ArtifactError) as error:
        # Deploying it will fail with the reason; the version is still worth knowing about.
        log.warning(
            "cannot read a trained version's artifact: %s", error, extra={"artifact": data["artifact"]}
        )
        config = {}
    config_heads, config_thresholds = _heads_from_config(config)
    heads = heads or config_heads
    thresholds = thresholds or config_thresholds
    if config.get("onnx"):
        onnx = config["onnx"]
        metrics["onnx"] = {key: onnx.get(key) for key in ("selected", "rule", "scores", "drop")}
    with transaction.atomic(using=ALIAS):
        version, _ = ModelVersion.objects.update_or_create(
            model_id=int(data["model_id"]),
            version=int(data["version"]),
            defaults={
                "org_id": org_id,
                "run_id": data.get("run_id"),
                "model_name": str(data.get("model_name") or data.get("name") or ""),
                "artifact": str(data["artifact"]),
                "heads": heads,
                "thresholds": thresholds,
                "metrics": metrics,
            },
        )
        for deployment in Deployment.objects.select_for_update().filter(
            Q(model_id=version.model_id, version=version.version)
            | Q(policy_model_id=version.model_id, policy_version=version.version),
            reason=WAITING_FOR_VERSION,
        ):
            _deployment_resume(deployment)
    return version


def _known_version(deployment: Deployment, model_id: int, number: int) -> ModelVersion | None:
    return (
        ModelVersion.objects.unscoped()
        .filter(org_id=deployment.org_id, model_id=model_id, version=number)
        .first()
    )


def _awaited(deployment: Deployment) -> list[str]:
    """What a deployment still waits for: its trained version, a cascade's policy version (as sentences)."""
    awaited = []
    if not deployment.artifact:
        awaited.append(f"version {deployment.version} of model {deployment.model_id}")
    if deployment.is_cascade and not deployment.policy_artifact:
        awaited.append(f"version {deployment.policy_version} of policy {deployment.policy_model_id}")
    return awaited


def _waiting_message(awaited: Sequence[str]) -> str:
    when = "they do" if len(awaited) > 1 else "it does"
    return f"Waiting for {' and '.join(awaited)} to reach the inference service; it loads when {when}."


def _deployment_resume(deployment: Deployment) -> bool:
    """Fill in the versions that reached this service; ask for the load once none is awaited (True)."""
    trained = _known_version(deployment, deployment.model_id, deployment.version)
    if trained is not None:
        deployment.artifact = trained.artifact
        deployment.model_name = trained.model_name
    if deployment.is_cascade and deployment.policy_version is not None:
        policy = _known_version(deployment, int(deployment.policy_model_id or 0), deployment.policy_version)
        if policy is not None:
            deployment.policy_artifact = policy.artifact
    awaited = _awaited(deployment)
    message = _waiting_message(awaited) if awaited else ""
    if awaited and message == deployment.message:
        return False  # nothing new arrived
    deployment.reason = WAITING_FOR_VERSION if awaited else ""
    deployment.message = message
    deployment.save(update_fields=["artifact", "model_name", "policy_artifact", "reason", "message"])
    if not awaited:
        _deployment_request(deployment)
    return not awaited


def deployments_waiting_resume() -> int:
    """Load the deployments still waiting for a version that has arrived; returns how many.

    A deployment created while `training.completed` was being handled (each transaction blind to the other's
    uncommitted row) would otherwise wait for an event that already came: the purge loop calls this."""
    resumed = 0
    with transaction.atomic(using=ALIAS):
        waiting = (
            Deployment.objects.unscoped()
            .select_for_update()
            .filter(reason=WAITING_FOR_VERSION, status=DeploymentStatus.PENDING)
        )
        for deployment in waiting:
            if _deployment_resume(deployment):
                resumed += 1
    return resumed


def deployments_waiting_fail(*, model_id: int, version: int, message: str) -> int:
    """Fail the deployments waiting for a version that will never be trained (`training.failed`)."""
    waiting = Deployment.objects.select_for_update().filter(
        model_id=model_id, version=version, reason=WAITING_FOR_VERSION
    )
    for deployment in waiting:
        _deployment_fail(deployment, reason="version_not_trained", message=message)
    return len(waiting)


def deployments_waiting_expire(*, older_than: timedelta) -> int:
    """Fail the deployments that waited longer than `older_than` for a version that never reached this service
    (a wrong id, or another org's model); returns how many."""
    expired = 0
    with transaction.atomic(using=ALIAS):
        stale = (
            Deployment.objects.unscoped()
            .select_for_update()
            .filter(
                reason=WAITING_FOR_VERSION,
                status=DeploymentStatus.PENDING,
                created_at__lt=timezone.now() - older_than,
            )
        )
        for deployment in stale:
            awaited = _awaited(deployment) or [f"version {deployment.version} of model {deployment.model_id}"]
            never = " and ".join(awaited)
            _deployment_fail(
                deployment,
                reason="version_not_found",
                message=f"{never[0].upper()}{never[1:]} never reached the inference service as a version of this "
                "org. Check the model and version, and that the event relay and consumers are running, then deploy "
                "again.",
            )
            expired += 1
    return expired


def _is_id(value: str) -> bool:
    """Whether a model named by a string names it by id (ASCII digits: "²" is a digit Python cannot int())."""
    return value.isascii() and value.isdigit()


def version_resolve(*, model: int | str, version: int | None) -> ModelVersion:
    """A trained version of a model named by id or name; the newest one when `version` is None."""
    versions = ModelVersion.objects.all()
    if isinstance(model, int) or _is_id(str(model)):
        versions = versions.filter(model_id=int(model))
        named = f"Model {model}"
    else:
        versions = versions.filter(model_name=str(model))
        named = f"Model '{model}'"
    if version is not None:
        found = versions.filter(version=version).first()
        if found is None:
            raise ApiError(
                status=404, code="not_found", message=f"{named} has no trained version {version} in this org."
            )
        return found
    found = versions.order_by("-version").first()
    if found is None:
        raise ApiError(status=404, code="not_found", message=f"{named} has no trained version in this org.")
    return found


def thresholds_validate(
    thresholds: Any, heads: Sequence[Mapping[str, Any]] | None
) -> dict[str, dict[str, float]]:
    """`{head: {label: threshold}}` with every threshold within [0, 1] and, when `heads` are known (None: not
    yet), every head and label among them."""
    if thresholds in (None, {}):
        return {}
    if not isinstance(thresholds, dict):
        raise ApiError(
            status=400, code="invalid", message="thresholds: give an object {head: {label: threshold}}."
        )
    labels = {str(head["name"]): set(head["labels"]) for head in heads} if heads is not None else None
    clean: dict[str, dict[str, float]] = {}
    for head, per_label in thresholds.items():
        if labels is not None and head not in labels:
            raise ApiError(
                status=400,
                code="invalid",
                message=f"thresholds.{head}: the model has no head '{head}' (heads: {', '.join(labels)}).",
                details={"thresholds": {head: ["Unknown head."]}},
            )
        if not isinstance(per_label, dict):
            raise ApiError(
                status=400, code="invalid", message=f"thresholds.{head}: give an object {{label: threshold}}."
            )
        for label, value in per_label.items():
            if labels is not None and label not in labels[head]:
                raise ApiError(
                    status=400,
                    code="invalid",
                    message=f"thresholds.{head}.{label}: head '{head}' has no label '{label}'.",
                    details={"thresholds": {head: {label: ["Unknown label."]}}},
                )
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
                raise ApiError(
                    status=400,
                    code="invalid",
                    message=f"thresholds.{head}.{label}: a threshold is a number from 0 to 1.",
                    details={"thresholds": {head: {label: ["Must be within [0, 1]."]}}},
                )
            clean.setdefault(head, {})[label] = float(value)
    return clean


# --- deployments --------------------------------------------------------------------------------------------


def _default_name(version: ModelVersion) -> str:
    base = (slugify(version.model_name) or f"model-{version.model_id}")[:80]
    stem = f"{base}-v{version.version}"
    taken = set(
        Deployment.objects.filter(status__in=ACTIVE_STATUSES, name__startswith=stem).values_list(
            "name", flat=True
        )
    )
    name, n = stem, 1
    while name in taken:
        n += 1
        name = f"{stem}-{n}"
    return name


def _check_name(name: str) -> str:
    if not DEPLOYMENT_NAME.match(name) or name.isdigit():
        raise ApiError(
            status=400,
            code="invalid",
            message="name: use up to 100 letters, digits, dots, dashes and underscores, not only digits "
            "(clients pass it as `model`).",
            details={"name": ["Invalid name."]},
        )
    return name


def _version_or_awaited(*, model: int | str, version: int | None) -> ModelVersion:
    """The trained version a deployment names; an unsaved stand-in when it names a model by id and a version
    number this service has not heard of yet (`training.completed` is on its way): the deployment then waits
    for it instead of the request failing."""
    try:
        return version_resolve(model=model, version=version)
    except ApiError:
        if version is None or not (isinstance(model, int) or _is_id(str(model))):
            raise
        return ModelVersion(model_id=int(model), version=int(version), model_name="", artifact="", heads=[])


def _policy_or_awaited(*, org_id: int, ref: PolicyRef) -> ModelVersion:
    """The policy version a cascade names, of this org; an unsaved stand-in when it names a policy by id and a
    version this service has not heard of yet (its `training.completed` is on its way)."""
    field = "cascade.policy.model"
    if isinstance(ref.model, int) and (
        ModelVersion.objects.unscoped().filter(model_id=ref.model).exclude(org_id=org_id).exists()
    ):
        raise ApiError(
            status=400,
            code="invalid",
            message=f"{field}: model {ref.model} is not a policy of this org.",
            details={field: ["Not a policy of this org."]},
        )
    try:
        policy = version_resolve(model=ref.model, version=ref.version)
    except ApiError as error:
        if ref.version is None or not isinstance(ref.model, int):
            raise ApiError(
                status=400,
                code="invalid",
                message=f"{field}: {error.message}",
                details={field: [error.message]},
            ) from None
        return ModelVersion(model_id=ref.model, version=ref.version, model_name="", artifact="", heads=[])
    if not is_policy_artifact(policy.artifact):
        raise ApiError(
            status=400,
            code="invalid",
            message=f"{field}: model {policy.model_id} is a trained model, not a policy; name a model of type "
            "policy (POST .../policies) to decide the inputs inside the band.",
            details={field: ["Not a policy."]},
        )
    return policy


def _deployment_request(deployment: Deployment) -> None:
    """Ask for the deployment to be loaded (`deployment.requested`), in the caller's transaction."""
    publish(
        type="deployment.requested",
        org_id=deployment.org_id,
        subject=f"deployments/{deployment.pk}",
        data={
            "deployment_id": deployment.pk,
            "name": deployment.name,
            "model_id": deployment.model_id,
            "version": deployment.version,
            "artifact": deployment.artifact,
        },
    )


def deployment_create(
    *,
    org_id: int,
    model: int | str,
    version: int | None,
    actor: str,
    name: str | None = None,
    thresholds: Any = None,
    log_requests: bool = False,
    log_retention_days: int | None = None,
    idempotency_key: str = "",
    cascade: Any = None,
) -> tuple[Deployment, bool]:
    """Create a deployment of a trained version and ask for it to be loaded (`deployment.requested`).

    `cascade` pairs it with a policy version that decides the inputs inside an uncertainty band
    (`services.inference.cascade`). Returns the deployment and whether it was created: a retry carrying the
    `idempotency_key` of an earlier create returns that deployment and does nothing else.
    """
    if idempotency_key:
        earlier = Deployment.objects.filter(idempotency_key=idempotency_key).first()
        if earlier is not None:
            return earlier, False
    settings = inference_settings()
    retention = settings.log_retention_days if log_retention_days is None else log_retention_days
    if not 1 <= retention <= settings.max_log_retention_days:
        raise ApiError(
            status=400,
            code="invalid",
            message=f"log_retention_days: keep logs from 1 to {settings.max_log_retention_days} days.",
            details={"log_retention_days": ["Out of range."]},
        )
    parsed = cascade_parse(cascade)
    with transaction.atomic(using=ALIAS):
        trained = _version_or_awaited(model=model, version=version)
        # Heads unknown yet (the version is still on its way, or its artifact was unreadable when it was
        # recorded): checked at load.
        clean_thresholds = thresholds_validate(thresholds, trained.heads or None)
        policy: ModelVersion | None = None
        clean_cascade: dict[str, Any] = {}
        if parsed is not None:
            ref, clean_cascade = parsed
            policy = _policy_or_awaited(org_id=org_id, ref=ref)
            if trained.pk is not None and is_policy_artifact(trained.artifact):
                raise ApiError(
                    status=400,
                    code="invalid",
                    message=f"cascade: model {trained.model_id} is itself a policy; a cascade pairs a trained "
                    "model with a policy.",
                    details={"cascade": ["The deployed model is a policy."]},
                )
            cascade_routes(
                clean_cascade,
                trained.heads or None,
                [str(head["name"]) for head in policy.heads] if policy.heads else None,
            )
        awaited: list[str] = (
            [] if trained.pk is not None else [f"version {trained.version} of model {trained.model_id}"]
        )
        if policy is not None and policy.pk is None:
            awaited.append(f"version {policy.version} of policy {policy.model_id}")
        if name:
            _check_name(name)
            if Deployment.objects.filter(name=name, status__in=ACTIVE_STATUSES).exists():
                raise ApiError(
                    status=409,
                    code="name_taken",
                    message=f"A deployment named '{name}' is already active; choose another name.",
                    details={"name": ["Taken."]},
                )
        try:
            with transaction.atomic(using=ALIAS):
                deployment = Deployment.objects.create(
                    org_id=org_id,
                    name=name or _default_name(trained),
                    model_id=trained.model_id,
                    version=trained.version,
                    model_name=trained.model_name,
                    artifact=trained.artifact,
                    reason=WAITING_FOR_VERSION if awaited else "",
                    message=_waiting_message(awaited) if awaited else "",
                    thresholds=clean_thresholds,
                    policy_model_id=policy.model_id if policy is not None else None,
                    policy_version=policy.version if policy is not None else None,
                    policy_artifact=policy.artifact if policy is not None else "",
                    cascade=clean_cascade,
                    log_requests=bool(log_requests),
                    log_retention_days=retention,
                    created_by=actor,
                    idempotency_key=idempotency_key[:200],
                )
        except IntegrityError:
            earlier = (
                Deployment.objects.filter(idempotency_key=idempotency_key).first()
                if idempotency_key
                else None
            )
            if earlier is not None:
                return earlier, False
            raise ApiError(
                status=409,
                code="name_taken",
                message="Another deployment took that name meanwhile; choose another name.",
            ) from None
        if not awaited:
            _deployment_request(deployment)
    return deployment, True


def _deployment_fail(deployment: Deployment, *, reason: str, message: str) -> None:
    deployment.status = DeploymentStatus.FAILED
    deployment.reason = reason[:100]
    deployment.message = message
    deployment.save(update_fields=["status", "reason", "message"])
    publish(
        type="deployment.failed",
        org_id=deployment.org_id,
        subject=f"deployments/{deployment.pk}",
        data={
            "deployment_id": deployment.pk,
            "model_id": deployment.model_id,
            "version": deployment.version,
            "reason": deployment.reason,
            "message": message,
        },
    )
    log.warning("deployment failed: %s", message, extra={"deployment_id": deployment.pk, "reason": reason})


def _load_for(deployment: Deployment, artifact: str | None = None) -> LoadedModel | tuple[str, str]:
    """The loaded model (the deployment's, or `artifact`), or `(reason, message)` saying why it cannot be
    served."""
    artifact = artifact or deployment.artifact
    try:
        return model_cache().get(artifact)
    except BlobNotFoundError:
        return "artifact_missing", f"The model artifact '{artifact}' is not in the blob store."
    except MLError as error:
        return error.code, error.message
    except Exception as error:
        log.exception("loading a deployment's model failed", extra={"deployment_id": deployment.pk})
        return "load_failed", f"The model could not be loaded: {type(error).__name__}: {error}"


def deployment_load(*, deployment_id: int) -> Deployment | None:
    """Fetch, load and warm a requested deployment's model, then mark it live (or failed, saying why).

    Idempotent: a deployment that is no longer pending (live, failed, stopped meanwhile) is left alone.
    """
    with transaction.atomic(using=ALIAS):
        deployment = Deployment.objects.select_for_update().filter(pk=deployment_id).first()
        if deployment is None or deployment.status != DeploymentStatus.PENDING:
            return deployment
        loaded = _load_for(deployment)
        if isinstance(loaded, tuple):
            reason, message = loaded
            _deployment_fail(deployment, reason=reason, message=message)
            return deployment
        heads = [head.spec.to_dict() for head in loaded.heads]
        try:
            thresholds_validate(deployment.thresholds, heads)
        except ApiError as error:
            _deployment_fail(deployment, reason="invalid_thresholds", message=error.message)
            return deployment
        if deployment.is_cascade:
            refused = _cascade_check(deployment, loaded)
            if refused is not None:
                reason, message = refused
                _deployment_fail(deployment, reason=reason, message=message)
                return deployment
        _version_complete(deployment, loaded)
        deployment.status = DeploymentStatus.LIVE
        deployment.runtime = loaded.runtime
        deployment.live_at = timezone.now()
        deployment.reason = ""
        deployment.message = ""
        deployment.save(update_fields=["status", "runtime", "live_at", "reason", "message"])
        publish(
            type="deployment.live",
            org_id=deployment.org_id,
            subject=f"deployments/{deployment.pk}",
            data={
                "deployment_id": deployment.pk,
                "name": deployment.name,
                "model_id": deployment.model_id,
                "version": deployment.version,
                "runtime": deployment.runtime,
            },
        )
    return deployment


def _cascade_check(deployment: Deployment, loaded: LoadedModel) -> tuple[str, str] | None:
    """Why a cascade cannot be served with its loaded trained model and policy, or None: the policy is a policy
    of the deployment's org, the trained model classifies texts, and every handed-over category exists."""
    if isinstance(loaded, PolicyModel):
        return "invalid_cascade", (
            f"cascade: model {deployment.model_id} is itself a policy; a cascade pairs a trained model with a policy."
        )
    if loaded.input_kind != "text":
        return (
            "invalid_cascade",
            "cascade: the policy decides texts; an image model cannot hand inputs to it.",
        )
    policy = _load_for(deployment, deployment.policy_artifact)
    if isinstance(policy, tuple):
        return policy
    if not isinstance(policy, PolicyModel) or policy.org_id != deployment.org_id:
        return "invalid_cascade", (
            f"cascade.policy.model: model {deployment.policy_model_id} is not a policy of this org."
        )
    try:
        cascade_routes(
            deployment.cascade,
            [head.spec.to_dict() for head in loaded.heads],
            list(policy.document.category_names),
        )
    except ApiError as error:
        return "invalid_cascade", error.message
    return None


def _version_complete(deployment: Deployment, loaded: LoadedModel) -> None:
    """Fill heads and thresholds the read model lacked (its artifact was unreadable when it was recorded)."""
    version = ModelVersion.objects.filter(model_id=deployment.model_id, version=deployment.version).first()
    if version is not None and not version.heads:
        version.heads = [head.spec.to_dict() for head in loaded.heads]
        version.thresholds = {head.spec.name: dict(head.thresholds) for head in loaded.heads}
        version.save(update_fields=["heads", "thresholds"])


def deployment_stop(*, deployment: Deployment, reason: str = "stopped by user") -> Deployment:
    """Stop serving a deployment (`deployment.stopped`); stopping a stopped one changes nothing."""
    with transaction.atomic(using=ALIAS):
        locked = Deployment.objects.select_for_update().get(pk=deployment.pk)
        if locked.status == DeploymentStatus.STOPPED:
            return locked
        locked.status = DeploymentStatus.STOPPED
        locked.stopped_at = timezone.now()
        locked.reason = "stopped"
        locked.message = reason
        locked.save(update_fields=["status", "stopped_at", "reason", "message"])
        publish(
            type="deployment.stopped",
            org_id=locked.org_id,
            subject=f"deployments/{locked.pk}",
            data={
                "deployment_id": locked.pk,
                "name": locked.name,
                "model_id": locked.model_id,
                "version": locked.version,
                "reason": reason,
            },
        )
        for artifact in (locked.artifact, locked.policy_artifact):
            if artifact:
                transaction.on_commit(functools.partial(_unload_if_unused, artifact), using=ALIAS)
    deployment_forget(locked.pk)
    return locked


def _unload_if_unused(artifact: str) -> None:
    # Playground queries may still want it; they reload on demand, as after any eviction.
    live = Deployment.objects.unscoped().filter(status=DeploymentStatus.LIVE)
    if not live.filter(Q(artifact=artifact) | Q(policy_artifact=artifact)).exists():
        model_cache().unload(artifact)


# --- classifying --------------------------------------------------------------------------------------------


def inputs_validate(value: Any, *, field: str = "inputs") -> list[str]:
    """The texts of a request: a string or a non-empty list of strings, within the configured limits."""
    settings = inference_settings()
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list):
        raise ApiError(
            status=400,
            code="invalid",
            message=f"{field}: give a string or a list of strings.",
            details={field: ["Expected a string or a list of strings."]},
        )
    if not texts:
        raise ApiError(
            status=400,
            code="invalid",
            message=f"{field}: give at least one text.",
            details={field: ["Empty list."]},
        )
    if len(texts) > settings.max_inputs:
        raise ApiError(
            status=413,
            code="too_many_inputs",
            message=f"{field}: at most {settings.max_inputs} texts per request, got {len(texts)}; "
            "split them into several requests.",
            details={"max_inputs": settings.max_inputs, "inputs": len(texts)},
        )
    for index, text in enumerate(texts):
        where = f"{field}[{index}]" if not isinstance(value, str) else field
        if not isinstance(text, str):
            raise ApiError(
                status=400,
                code="invalid",
                message=f"{where}: expected a string, got {_json_type(text)}.",
                details={"index": index},
            )
        if len(text) > settings.max_input_chars:
            raise ApiError(
                status=400,
                code="input_too_long",
                message=f"{where}: {len(text):,} characters; at most {settings.max_input_chars:,} per input.",
                details={"index": index, "max_input_chars": settings.max_input_chars},
            )
        if not text.strip():
            raise ApiError(
                status=400, code="invalid", message=f"{where}: the text is empty.", details={"index": index}
            )
    return texts


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", dict: "an object", list: "a list"}.get(
        type(value), type(value).__name__
    )


def loaded_or_unavailable(artifact: str) -> LoadedModel:
    try:
        return model_cache().get(artifact)
    except BlobNotFoundError:
        raise ApiError(
            status=503,
            code="model_unavailable",
            message="The model's artifact is missing from the blob store; redeploy the model.",
        ) from None
    except MLError as error:
        raise ApiError(status=503, code="model_unavailable", message=error.message) from None
    except Exception as error:
        log.exception("loading a model for a request failed", extra={"artifact": artifact})
        raise ApiError(
            status=503,
            code="model_unavailable",
            message=f"The model could not be loaded: {type(error).__name__}.",
        ) from None


def deployment_classify(
    *, deployment: Deployment, texts: Sequence[str], caller: Caller, endpoint: str
) -> Classification:
    """Classify texts with a live deployment; record usage (and log the inputs if the deployment asks)."""
    if deployment.status != DeploymentStatus.LIVE:
        raise ApiError(
            status=409,
            code="deployment_not_live",
            message=f"Deployment '{deployment.name}' is {deployment.status}"
            + (" (still loading; retry in a few seconds)." if deployment.status == "pending" else "."),
            details={"status": deployment.status},
        )
    # The org's plan, as billing last announced it: a cached read, never a call to billing.
    entitlements_check(
        model=Entitlement, org_id=caller.org_id, meter=Meter.CLASSIFICATION.value, units=len(texts)
    )
    loaded = loaded_or_unavailable(deployment.artifact)
    results = loaded.classify(texts, deployment.thresholds)
    heads = [head.spec for head in loaded.heads]
    outcome = _cascade(deployment, texts, results, heads) if deployment.is_cascade else None
    usage_record(
        meter=Meter.CLASSIFICATION,
        caller=caller,
        endpoint=endpoint,
        units=len(texts),
        model_id=deployment.model_id,
        version=deployment.version,
        deployment=deployment,
        logged=list(zip(texts, results, strict=True)) if deployment.log_requests else None,
        cascade=outcome,
    )
    return Classification(results=results, heads=heads)


def _cascade(
    deployment: Deployment, texts: Sequence[str], results: list[NativeResult], heads: list[HeadSpec]
) -> CascadeOutcome:
    """Hand the inputs the trained model is unsure of to the deployment's policy (see `cascade`)."""
    policy = loaded_or_unavailable(deployment.policy_artifact)
    if not isinstance(policy, PolicyModel):  # checked at load; the artifact cannot have changed since
        raise ApiError(
            status=503, code="model_unavailable", message="The cascade's policy could not be loaded."
        )
    return cascade_apply(
        results,
        texts=texts,
        routes=cascade_routes(deployment.cascade, [spec.to_dict() for spec in heads], None),
        band=deployment.cascade["band"],
        heads=heads,
        policy=policy,
    )


def classify_answer(*, deployment: Deployment, classification: Classification) -> dict[str, Any]:
    """The body of a native classify answer (the DRF view and the fast path send the same)."""
    return {
        "id": f"clf-{uuid.uuid4().hex}",
        "model": deployment.name,
        "version": deployment.version,
        "results": classification.results,
    }


@dataclass(frozen=True)
class PlaygroundAnswer:
    classification: Classification
    model_name: str
    used: int
    # What the org's plan includes per model; None: unlimited.
    free: int | None


def playground_query(
    *, model_id: int, version: int, texts: Sequence[str], caller: Caller
) -> PlaygroundAnswer:
    """Classify with a trained version, deployed or not, within what the org's plan allows per model.

    The plan (from billing's entitlements) says how many queries per model are free and whether more are
    billed or refused; this service counts each model's queries itself, so the allowance is exact.
    """
    trained = version_resolve(model=model_id, version=version)
    counter = PlaygroundCounter.objects.filter(model_id=model_id).first()
    used = counter.queries if counter else 0
    entitlements = entitlements_check(
        model=Entitlement, org_id=caller.org_id, meter=Meter.PLAYGROUND.value, units=len(texts), used=used
    )
    allowance = entitlements.meters[Meter.PLAYGROUND.value]
    # Refused beyond the free queries (rather than billed): the limit is enforced where the queries are spent.
    hard_limit = (
        allowance.included
        if allowance.included is not None and not (allowance.overage and entitlements.payment_ok)
        else None
    )
    loaded = loaded_or_unavailable(trained.artifact)
    results = loaded.classify(texts)
    with transaction.atomic(using=ALIAS):
        # Checked again where it is spent: concurrent queries cannot overdraw a hard limit.
        if counter is None:
            PlaygroundCounter.objects.get_or_create(model_id=model_id)
        counters = PlaygroundCounter.objects.filter(model_id=model_id)
        if hard_limit is not None:
            counters = counters.filter(queries__lte=hard_limit - len(texts))
        if not counters.update(queries=F("queries") + len(texts), updated_at=timezone.now()):
            raise quota_error(
                entitlements=entitlements,
                meter=Meter.PLAYGROUND.value,
                used=PlaygroundCounter.objects.get(model_id=model_id).queries,
                now=timezone.now(),
            )
        usage_record(
            meter=Meter.PLAYGROUND,
            caller=caller,
            endpoint="playground",
            units=len(texts),
            model_id=model_id,
            version=version,
            deployment=None,
            logged=None,
        )
        used = PlaygroundCounter.objects.get(model_id=model_id).queries
    return PlaygroundAnswer(
        classification=Classification(results=results, heads=[head.spec for head in loaded.heads]),
        model_name=trained.model_name,
        used=used,
        free=allowance.included,
    )


# --- usage and the request log ------------------------------------------------------------------------------


@dataclass(frozen=True)
class UsageItem:
    """One call's usage, as `usage_write` records it."""

    org_id: int
    meter: str
    endpoint: str
    units: int
    model_id: int
    version: int
    deployment_id: int  # 0: a playground query, which runs against a version, not a deployment
    api_key_id: int | None
    user_id: int | None
    at: datetime
    logged: tuple[tuple[str, NativeResult], ...] = ()
    # A cascade deployment's call: how many inputs went to its policy and what their LLM calls cost.
    cascade: CascadeOutcome | None = None


def usage_record(
    *,
    meter: Meter,
    caller: Caller,
    endpoint: str,
    units: int,
    model_id: int,
    version: int,
    deployment: Deployment | None,
    logged: list[tuple[str, NativeResult]] | None,
    cascade: CascadeOutcome | None = None,
) -> None:
    """Count a call in the day's usage (with a cascade's share sent to its policy and the LLM cost), log its
    inputs if asked and publish `usage.recorded`; return once that is committed, so that a call answered 200 is
    counted even if the process dies right after.

    Inside a transaction (the playground's) it is written there. Otherwise concurrent calls of this process
    share one transaction (`arbiter.groupcommit`): a lone call writes at once, and under load a commit carries
    every call that arrived while the previous one committed.
    """
    item = UsageItem(
        org_id=caller.org_id,
        meter=str(meter),
        endpoint=endpoint,
        units=units,
        model_id=model_id,
        version=version,
        deployment_id=deployment.pk if deployment is not None else 0,
        api_key_id=caller.api_key_id,
        user_id=caller.user_id,
        at=timezone.now(),
        logged=tuple(logged or ()),
        cascade=cascade,
    )
    if transaction.get_connection(ALIAS).in_atomic_block:
        usage_write([item])
    else:
        _usage_group.submit(item)


# One statement per day row, whether it exists or not (PostgreSQL and SQLite alike): the ORM's UPDATE, then
# INSERT in a savepoint when nothing matched, cost several times more per call.
_USAGE_COUNTS = (
    "requests",
    "units",
    "policy_requests",
    "policy_units",
    "llm_calls",
    "llm_prompt_tokens",
    "llm_completion_tokens",
)
_USAGE_UPSERT = (
    "INSERT INTO inference_usageday (org_id, day, meter, deployment_id, model_id, version, requests, units, "
    "policy_requests, policy_units, llm_calls, llm_prompt_tokens, llm_completion_tokens) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
    "ON CONFLICT (org_id, day, meter, deployment_id, model_id, version) DO UPDATE SET "
    "requests = inference_usageday.requests + EXCLUDED.requests, "
    "units = inference_usageday.units + EXCLUDED.units, "
    "policy_requests = inference_usageday.policy_requests + EXCLUDED.policy_requests, "
    "policy_units = inference_usageday.policy_units + EXCLUDED.policy_units, "
    "llm_calls = inference_usageday.llm_calls + EXCLUDED.llm_calls, "
    "llm_prompt_tokens = inference_usageday.llm_prompt_tokens + EXCLUDED.llm_prompt_tokens, "
    "llm_completion_tokens = inference_usageday.llm_completion_tokens + EXCLUDED.llm_completion_tokens"
)


def _counts(item: UsageItem) -> list[int]:
    """An item's contribution to its day row, in `_USAGE_COUNTS` order."""
    cascade = item.cascade
    if cascade is None:
        return [1, item.units, 0, 0, 0, 0, 0]
    return [
        1,
        item.units,
        1 if cascade.policy_inputs else 0,
        cascade.policy_inputs,
        cascade.cost.calls,
        cascade.cost.prompt_tokens,
        cascade.cost.completion_tokens,
    ]


def usage_write(items: Sequence[UsageItem]) -> None:
    """Record calls' usage in one transaction: one UPDATE per day row they touch (in a fixed order, so that
    processes writing the same rows cannot deadlock), their request-log rows, and one `usage.recorded` per
    org, deployment, key and endpoint carrying how many calls and units (and, for a cascade deployment, how
    many inputs went to its policy and the LLM calls and tokens they cost)."""
    days: dict[tuple[int, date, str, int, int, int], list[int]] = {}
    announced: dict[tuple[int, str, int, int, int, int | None, int | None, str], list[int]] = {}
    cascades: set[tuple[int, str, int, int, int, int | None, int | None, str]] = set()
    entries: list[dict[str, Any]] = []
    for item in items:
        counts = _counts(item)
        day = days.setdefault(
            (item.org_id, item.at.date(), item.meter, item.deployment_id, item.model_id, item.version),
            [0] * len(_USAGE_COUNTS),
        )
        key = (
            item.org_id,
            item.meter,
            item.deployment_id,
            item.model_id,
            item.version,
            item.api_key_id,
            item.user_id,
            item.endpoint,
        )
        event = announced.setdefault(key, [0] * len(_USAGE_COUNTS))
        for i, value in enumerate(counts):
            day[i] += value
            event[i] += value
        if item.cascade is not None:
            cascades.add(key)
        entries.extend(
            {
                "org_id": item.org_id,
                "deployment_id": item.deployment_id,
                "created_at": item.at,
                "endpoint": item.endpoint,
                "api_key_id": item.api_key_id,
                "text": text,
                "prediction": {head: _logged(value) for head, value in result.items()},
            }
            for text, result in item.logged
        )
    with transaction.atomic(using=ALIAS):
        with connections[ALIAS].cursor() as cursor:
            cursor.executemany(_USAGE_UPSERT, [(*key, *counts) for key, counts in sorted(days.items())])
        insert_rows(RequestLogEntry, entries, using=ALIAS)
        for key, counts in announced.items():
            org_id, meter, deployment_id, model_id, version, api_key_id, user_id, endpoint = key
            data: dict[str, Any] = {
                "meter": meter,
                "units": counts[1],
                "requests": counts[0],
                "deployment_id": deployment_id or None,
                "model_id": model_id,
                "version": version,
                "api_key_id": api_key_id,
                "user_id": user_id,
                "endpoint": endpoint,
            }
            if key in cascades:
                data["cascade"] = dict(zip(_USAGE_COUNTS[2:], counts[2:], strict=True))
            publish(
                type="usage.recorded",
                org_id=org_id,
                subject=f"deployments/{deployment_id}" if deployment_id else f"models/{model_id}",
                data=data,
            )


def _logged(value: Mapping[str, Any]) -> dict[str, Any]:
    """What the request log keeps of a head's answer: its labels and flag, and who decided in a cascade."""
    logged = {"labels": value["labels"], "flagged": value["flagged"]}
    if "decided_by" in value:
        logged["decided_by"] = value["decided_by"]
        if value.get("reason"):
            logged["reason"] = value["reason"]
    return logged


# Under concurrency a commit waits ARBITER_INFERENCE_USAGE_LINGER_MS for company: the calls of a micro-batch
# finish one after another under the GIL, and a transaction that carries more of them costs each less.
_usage_group: GroupCommit[UsageItem] = GroupCommit(
    usage_write, linger_s=lambda: inference_settings().usage_linger_ms / 1000
)


def request_log_purge(*, now: datetime | None = None) -> int:
    """Delete logged requests older than their deployment's retention, in every org; return how many."""
    now = now or timezone.now()
    # Every deployment counts, logging or not any more: its logs outlive a switch of log_requests to off.
    by_retention: dict[int, list[int]] = {}
    for deployment_id, days in Deployment.objects.unscoped().values_list("pk", "log_retention_days"):
        by_retention.setdefault(days, []).append(deployment_id)
    deleted = 0
    for days, deployment_ids in sorted(by_retention.items()):
        with transaction.atomic(using=ALIAS):
            count, _ = (
                RequestLogEntry.objects.unscoped()
                .filter(deployment_id__in=deployment_ids, created_at__lt=now - timedelta(days=days))
                .delete()
            )
        deleted += count
    return deleted
