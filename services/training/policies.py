"""Policies: models of type `policy`, whose versions are written policies an LLM applies (`arbiter.llm.policy`).

Why the training service owns them: a policy is served and measured like a trained model, and models, their
versions and their evaluations are this service's. A policy version is "trained" the moment it is written: its
document is stored as the version's artifact in the blob store and announced with `training.completed`, so the
inference service deploys it, serves it on the classify APIs and meters it exactly as a trained version, without
knowing where it came from (it loads the artifact and calls the LLM itself). Evaluations run here, where the
snapshots are known: every row of a labelled snapshot is decided by the policy version, and one head of the
snapshot is evaluated with the ML core's metrics (`arbiter.ml.metrics`) in the same shape as a trained version's.
A diff compares two versions' evaluations of one snapshot and lists the rows whose decision flipped.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
from django.db import IntegrityError, close_old_connections, connections, transaction
from django.db.models import F, Max, Q
from django.utils import timezone

from arbiter.api.errors import ApiError
from arbiter.config.typed_settings import arbiter_settings
from arbiter.egress import EgressRefused, check_url
from arbiter.entitlements import entitlements_check
from arbiter.events import publish
from arbiter.llm import LlmClient, secret_encrypt, secret_hint
from arbiter.llm.policy import (
    PROMPT_STYLES,
    SAFE,
    UNSAFE,
    PolicyDecision,
    PolicyDocument,
    PolicyError,
    PolicyInvalid,
    categories_validate,
    policy_artifact_dump,
    policy_artifact_key,
    policy_decide,
    policy_heads,
)
from arbiter.llm.transport import llm_policy
from arbiter.ml.artifacts import artifact_unpack
from arbiter.ml.data import HeadLabels, rows_parse
from arbiter.ml.errors import MLError
from arbiter.ml.metrics import head_evaluate
from arbiter.ml.predict import Predictor
from arbiter.ml.specs import HeadSpec
from arbiter.storage import get_blob_store
from arbiter.tenancy.scoping import org_scope
from services.training.models import (
    Entitlement,
    Model,
    ModelVersion,
    PolicyEvaluation,
    RunState,
    Snapshot,
    TrainingRun,
)
from services.training.operator.conditions import condition_set
from services.training.snapshots import snapshot_rows

log = logging.getLogger(__name__)

ALIAS = "training"
POLICY = "policy"


def _invalid(message: str, field: str) -> ApiError:
    return ApiError(status=400, code="invalid", message=message, details={field: [message]})


# --- documents ----------------------------------------------------------------------------------------------


def _provider(value: Any, *, field: str, previous: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A provider of a request: `{base_url, model, api_key?, vision?, logprobs?}`; without `api_key` the
    previous version's key is kept (when the endpoint is the same)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _invalid(f"{field}: give an object {{base_url, model, api_key, vision, logprobs}}.", field)
    base_url, model = value.get("base_url"), value.get("model")
    if not isinstance(base_url, str) or not base_url.strip():
        raise _invalid(
            f"{field}.base_url: required (an OpenAI-compatible endpoint, e.g. https://host/v1).", field
        )
    if not isinstance(model, str) or not model.strip():
        raise _invalid(f"{field}.model: required (the model name the endpoint serves).", field)
    try:
        check_url(base_url.strip(), llm_policy())
    except EgressRefused as error:
        raise _invalid(f"{field}.base_url: {error}", field) from None
    api_key = value.get("api_key")
    if api_key is not None and not isinstance(api_key, str):
        raise _invalid(f"{field}.api_key: give a string.", field)
    for flag in ("vision", "logprobs"):
        if not isinstance(value.get(flag, False), bool):
            raise _invalid(f"{field}.{flag}: true or false.", field)
    kept = previous if previous and previous.get("base_url") == base_url.strip() else None
    return {
        "base_url": base_url.strip(),
        "model": model.strip(),
        "api_key_encrypted": secret_encrypt(api_key)
        if api_key
        else (kept or {}).get("api_key_encrypted", ""),
        "api_key_hint": secret_hint(api_key) if api_key else (kept or {}).get("api_key_hint", ""),
        "vision": bool(value.get("vision", False)),
        "logprobs": bool(value.get("logprobs", False)),
    }


def policy_document(
    *, data: Mapping[str, Any], name: str, previous: Mapping[str, Any] | None
) -> dict[str, Any]:
    """A stored policy document from a request; fields the request leaves out come from `previous` (the
    version it edits). Raises a 400 naming the field."""
    base = dict(previous or {})
    provider = _provider(data.get("provider"), field="provider", previous=base.get("provider")) or base.get(
        "provider"
    )
    if provider is None:
        raise _invalid("provider: required ({base_url, model, api_key}).", "provider")
    vision = (
        _provider(data["vision_provider"], field="vision_provider", previous=base.get("vision_provider"))
        if "vision_provider" in data
        else base.get("vision_provider")
    )
    style = data.get("prompt_style", base.get("prompt_style", "generic"))
    if style not in PROMPT_STYLES:
        raise _invalid(f"prompt_style: one of {', '.join(PROMPT_STYLES)}.", "prompt_style")
    instructions = data.get("instructions", base.get("instructions", ""))
    if not isinstance(instructions, str) or len(instructions) > 20000:
        raise _invalid("instructions: a string of at most 20000 characters.", "instructions")
    checklist = data.get("checklist", base.get("checklist", []))
    if not isinstance(checklist, list) or not all(isinstance(q, str) and q.strip() for q in checklist):
        raise _invalid("checklist: a list of questions (strings) for the vision model.", "checklist")
    try:
        categories = categories_validate(
            data["categories"] if "categories" in data else base.get("categories")
        )
    except PolicyInvalid as error:
        raise _invalid(str(error), "categories") from None
    document = {
        "name": name,
        "instructions": instructions.strip(),
        "prompt_style": style,
        "provider": provider,
        "vision_provider": vision,
        "checklist": [q.strip() for q in checklist],
        "categories": categories,
    }
    PolicyDocument.from_dict(document)  # the shape every reader expects
    return document


def policy_create(*, org_id: int, name: str, data: Mapping[str, Any]) -> ModelVersion:
    """Create a policy (a model of type `policy`) with version 1; returns the version."""
    if not isinstance(name, str) or not name.strip() or len(name) > 200:
        raise _invalid("name: required, at most 200 characters.", "name")
    document = policy_document(data=data, name=name.strip(), previous=None)
    with transaction.atomic(using=ALIAS):
        if Model.objects.filter(name=name.strip()).exists():
            raise ApiError(
                status=409,
                code="model_name_taken",
                message=f"name: a model named '{name}' already exists in this org; choose another name.",
                details={"name": ["Taken."]},
            )
        try:
            with transaction.atomic(using=ALIAS):
                model = Model.objects.create(
                    org_id=org_id, name=name.strip(), type=POLICY, base_model=_base_model(document)
                )
        except IntegrityError:
            raise ApiError(
                status=409, code="model_name_taken", message=f"name: a model named '{name}' already exists."
            ) from None
        return _version_write(model=model, document=document, number=1)


def policy_version_create(*, model: Model, data: Mapping[str, Any]) -> ModelVersion:
    """Edit a policy: a new version from the latest one with the request's changes."""
    with transaction.atomic(using=ALIAS):
        locked = Model.objects.select_for_update().get(pk=model.pk)
        latest = ModelVersion.objects.filter(model=locked).order_by("-number").first()
        document = policy_document(data=data, name=locked.name, previous=latest.policy if latest else None)
        number = (ModelVersion.objects.filter(model=locked).aggregate(n=Max("number"))["n"] or 0) + 1
        return _version_write(model=locked, document=document, number=number)


def _base_model(document: Mapping[str, Any]) -> str:
    return f"llm:{document['provider']['model']}"[:300]


def _version_write(*, model: Model, document: dict[str, Any], number: int) -> ModelVersion:
    """Store the version, its artifact and a finished run, and announce it (`training.completed`)."""
    policy = PolicyDocument.from_dict(document)
    key = policy_artifact_key(org_id=model.org_id, model_id=model.pk, version=number)
    get_blob_store().put_bytes(
        key, policy_artifact_dump(policy, org_id=model.org_id, model_id=model.pk, version=number)
    )
    now = timezone.now()
    version = ModelVersion.objects.create(
        org_id=model.org_id,
        model=model,
        number=number,
        base_model=_base_model(document),
        heads=[{**head, "origin": "written"} for head in policy_heads(policy)],
        options={},
        test={},
        policy=document,
        artifact_key=key,
    )
    run = TrainingRun.objects.create(
        org_id=model.org_id,
        version=version,
        state=RunState.SUCCEEDED,
        admitted_at=now,
        started_at=now,
        finished_at=now,
        conditions=condition_set(
            [],
            type="Succeeded",
            status=True,
            reason="PolicyWritten",
            message=f"Version {number} of the policy is written; evaluate it on a labelled snapshot.",
        ),
    )
    publish(
        type="training.completed",
        org_id=model.org_id,
        subject=f"models/{model.pk}/versions/{number}",
        data={
            "run_id": run.pk,
            "model_id": model.pk,
            "model_name": model.name,
            "version": number,
            "artifact": key,
            "heads": policy_heads(policy),
            "metrics_summary": {"selected": POLICY},
            "duration_seconds": 0.0,
        },
    )
    return version


def policy_public(document: Mapping[str, Any]) -> dict[str, Any]:
    """A stored document as the API shows it: the key's last characters, never the key."""

    def provider(value: Mapping[str, Any] | None) -> dict[str, Any] | None:
        if value is None:
            return None
        return {k: v for k, v in value.items() if k != "api_key_encrypted"}

    return {
        **document,
        "provider": provider(document.get("provider")),
        "vision_provider": provider(document.get("vision_provider")),
    }


def policy_version(*, model: Model, number: Any) -> ModelVersion:
    """A version of the policy by number; the newest when `number` is None."""
    if number is not None and (isinstance(number, bool) or not isinstance(number, int)):
        raise _invalid("version: give a version number of the policy.", "version")
    versions = ModelVersion.objects.filter(model=model, policy__isnull=False)
    found = (
        versions.filter(number=number).first() if number is not None else versions.order_by("-number").first()
    )
    if found is None:
        raise ApiError(
            status=404, code="not_found", message=f"Policy '{model.name}' has no version {number}."
        )
    return found


# --- evaluations --------------------------------------------------------------------------------------------


def _snapshot(snapshot_id: Any) -> Snapshot:
    if isinstance(snapshot_id, bool) or not isinstance(snapshot_id, int) or snapshot_id < 1:
        raise _invalid("snapshot: give a snapshot id.", "snapshot")
    snapshot = Snapshot.objects.filter(snapshot_id=snapshot_id).first()
    if snapshot is None:
        raise ApiError(
            status=404,
            code="not_found",
            message=f"snapshot: snapshot {snapshot_id} is not known to the training service (yet).",
            details={"snapshot": ["Not found."]},
        )
    return snapshot


def _head(snapshot: Snapshot, head: Any) -> str:
    names = [str(h["name"]) for h in snapshot.heads]
    if head in (None, "") and len(names) == 1:
        return names[0]
    if head not in names:
        raise _invalid(
            f"head: give the label column to evaluate against; snapshot {snapshot.snapshot_id} has "
            f"{', '.join(names) or 'none'}.",
            "head",
        )
    return str(head)


def evaluation_request(
    *, version: ModelVersion, snapshot_id: Any, head: Any = None, limit: Any = 0
) -> tuple[PolicyEvaluation, bool]:
    """The evaluation of a policy version on a snapshot's head, started when new (small ones finish within the
    request, larger ones in the background); returns it and whether it was created."""
    snapshot = _snapshot(snapshot_id)
    head_name = _head(snapshot, head)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise _invalid("limit: a number of rows (0: every row).", "limit")
    rows = min(snapshot.rows, limit) if limit else snapshot.rows
    earlier = PolicyEvaluation.objects.filter(
        version=version, snapshot_id=snapshot.snapshot_id, head=head_name, limit=limit
    ).first()
    if earlier is None or earlier.state == PolicyEvaluation.FAILED:
        # The plan's LLM calls this month, as billing last announced them: each row costs at least one.
        entitlements_check(model=Entitlement, org_id=version.org_id, meter="llm_call", units=rows)
    evaluation, created = PolicyEvaluation.objects.get_or_create(
        version=version,
        snapshot_id=snapshot.snapshot_id,
        head=head_name,
        limit=limit,
        defaults={"org_id": version.org_id, "rows": rows},
    )
    if evaluation.state == PolicyEvaluation.FAILED and not created:
        # A failed evaluation (the endpoint was down) is tried again when asked again.
        PolicyEvaluation.objects.filter(pk=evaluation.pk).update(
            state=PolicyEvaluation.QUEUED,
            done=0,
            errors=0,
            decisions=[],
            message="",
            finished_at=None,
            heartbeat_at=None,
            recoveries=0,
        )
        created = True
    if created:
        if rows <= arbiter_settings().llm.policy_inline_rows:
            evaluation_run(evaluation_id=evaluation.pk)
        else:
            transaction.on_commit(lambda: _start_in_background(evaluation.pk, version.org_id), using=ALIAS)
        evaluation.refresh_from_db()
    return evaluation, created


def _start_in_background(evaluation_id: int, org_id: int) -> None:
    threading.Thread(
        target=_thread, args=(evaluation_id, org_id), name=f"policy-evaluation-{evaluation_id}", daemon=True
    ).start()


def _thread(evaluation_id: int, org_id: int) -> None:
    close_old_connections()
    try:
        with org_scope(org_id):
            evaluation_run(evaluation_id=evaluation_id)
    except Exception:
        log.exception("policy evaluation failed unexpectedly", extra={"evaluation_id": evaluation_id})
    finally:
        connections.close_all()


def evaluation_run(*, evaluation_id: int) -> PolicyEvaluation:
    """Decide every row with the policy version, then evaluate the head. Rows the model gave no usable answer
    for are kept as errors with the reason and left out of the metrics, never counted as safe."""
    evaluation = PolicyEvaluation.objects.select_related("version").get(pk=evaluation_id)
    # Claimed by one process: a second start (a recovery racing a slow thread) finds it taken.
    claimed = PolicyEvaluation.objects.filter(pk=evaluation.pk, state=PolicyEvaluation.QUEUED).update(
        state=PolicyEvaluation.RUNNING, heartbeat_at=timezone.now()
    )
    if not claimed:
        evaluation.refresh_from_db()
        return evaluation
    try:
        _evaluate(evaluation)
    except (PolicyError, MLError, EgressRefused) as error:
        PolicyEvaluation.objects.filter(pk=evaluation.pk).update(
            state=PolicyEvaluation.FAILED, message=str(error), finished_at=timezone.now()
        )
    evaluation.refresh_from_db()
    return evaluation


def _evaluate(evaluation: PolicyEvaluation) -> None:
    version = evaluation.version
    assert version.policy is not None
    document = PolicyDocument.from_dict(version.policy)
    snapshot = Snapshot.objects.get(snapshot_id=evaluation.snapshot_id)
    spec = next(HeadSpec.from_dict(h) for h in snapshot.heads if h["name"] == evaluation.head)
    raw_rows = []
    for row in snapshot_rows(snapshot, split=None):
        row.pop("split", None)
        raw_rows.append(row)
        if evaluation.limit and len(raw_rows) >= evaluation.limit:
            break
    parsed = rows_parse(rows=raw_rows, heads=[HeadSpec.from_dict(h) for h in snapshot.heads]).unassigned
    labels = parsed.heads[spec.name]
    client = LlmClient(document.provider.endpoint())
    vision = LlmClient(document.vision_provider.endpoint()) if document.vision_provider else None

    beat = _Heartbeat(evaluation.pk)

    def decide(text: str) -> PolicyDecision | PolicyError:
        try:
            return policy_decide(document, client=client, text=text, vision_client=vision)
        except PolicyError as error:
            return error
        finally:
            beat()

    try:
        with ThreadPoolExecutor(max_workers=client.settings.concurrency) as pool:
            decided = list(pool.map(decide, parsed.texts))
    finally:
        client.close()
        if vision is not None:
            vision.close()
    decisions, calls, prompt, completion = [], 0, 0, 0
    for row_id, text, indicators, applies, outcome in zip(
        parsed.row_ids, parsed.texts, labels.indicators, labels.mask, decided, strict=True
    ):
        truth = (
            [label for label, on in zip(spec.labels, indicators, strict=True) if on > 0.5]
            if applies
            else None
        )
        entry: dict[str, Any] = {"row": row_id, "text": text, "truth": truth}
        if isinstance(outcome, PolicyError):
            calls += outcome.calls or 1
            entry.update({"error": outcome.reason, "message": outcome.message, "raw": outcome.raw})
        else:
            calls += outcome.calls
            prompt += outcome.prompt_tokens
            completion += outcome.completion_tokens
            entry.update(
                {
                    "flag": UNSAFE if outcome.flagged else SAFE,
                    "category": outcome.category,
                    "reason": outcome.reason,
                    "scores": outcome.scores,
                    "intermediate": outcome.intermediate,
                }
            )
        decisions.append(entry)
    answered = [i for i, d in enumerate(decisions) if "error" not in d]
    metrics, warnings = _head_metrics(document, spec, labels, [decisions[i] for i in answered], answered)
    errors = len(decisions) - len(answered)
    if errors and not answered:
        message = f"No row got a usable decision; the first error: {decisions[0]['message']}"
        state = PolicyEvaluation.FAILED
    else:
        message = (
            f"{errors} of {len(decisions)} rows got no usable decision (listed with the reason)."
            if errors
            else ""
        )
        state = PolicyEvaluation.SUCCEEDED
    with transaction.atomic(using=ALIAS):
        PolicyEvaluation.objects.filter(pk=evaluation.pk).update(
            state=state,
            rows=len(decisions),
            done=len(decisions),
            errors=errors,
            decisions=decisions,
            evaluation=metrics if answered else None,
            warnings=warnings,
            llm_calls=F("llm_calls") + calls,
            prompt_tokens=F("prompt_tokens") + prompt,
            completion_tokens=F("completion_tokens") + completion,
            message=message,
            finished_at=timezone.now(),
        )
        if answered:
            # The version page shows its newest evaluation, like a trained version's test metrics.
            ModelVersion.objects.filter(pk=version.pk).update(evaluation=metrics)
        # What this run of the rows cost, for billing (meter llm_call), in the transaction that records it.
        publish(
            type="policy.evaluated",
            org_id=evaluation.org_id,
            subject=f"policies/{version.model_id}/evaluations/{evaluation.pk}",
            data={
                "evaluation_id": evaluation.pk,
                "model_id": version.model_id,
                "version": version.number,
                "snapshot_id": evaluation.snapshot_id,
                "state": state,
                "rows": len(decisions),
                "errors": errors,
                "llm_calls": calls,
                "prompt_tokens": prompt,
                "completion_tokens": completion,
            },
        )


class _Heartbeat:
    """Counts decided rows; every few seconds writes `done` and the heartbeat (from the deciding threads)."""

    EVERY_S = 5.0

    def __init__(self, evaluation_id: int) -> None:
        self.evaluation_id = evaluation_id
        self.done = 0
        self.last = time.monotonic()
        self.lock = threading.Lock()

    def __call__(self) -> None:
        with self.lock:
            self.done += 1
            if time.monotonic() - self.last < self.EVERY_S:
                return
            self.last, done = time.monotonic(), self.done
        PolicyEvaluation.objects.filter(pk=self.evaluation_id, state=PolicyEvaluation.RUNNING).update(
            done=done, heartbeat_at=timezone.now()
        )


MAX_RECOVERIES = 3


def evaluations_recover(*, start: Callable[[int, int], None] | None = None) -> dict[str, int]:
    """The training operator's sweep: a background evaluation whose process died (running with a heartbeat
    older than `ARBITER_POLICY_STALE_SECONDS`, or queued that long and never started) is started again, at most
    `MAX_RECOVERIES` times, then failed saying so. `start` runs one (default: a thread of this process)."""
    start = start or _start_in_background
    cutoff = timezone.now() - timedelta(seconds=arbiter_settings().llm.policy_stale_after_s)
    stale = PolicyEvaluation.objects.unscoped().filter(
        Q(state=PolicyEvaluation.RUNNING, heartbeat_at__lt=cutoff)
        | Q(state=PolicyEvaluation.QUEUED, created_at__lt=cutoff, heartbeat_at__isnull=True)
        | Q(state=PolicyEvaluation.QUEUED, heartbeat_at__lt=cutoff)
    )
    counts = {"resumed": 0, "failed": 0}
    for evaluation in stale:
        same = PolicyEvaluation.objects.unscoped().filter(
            pk=evaluation.pk, state=evaluation.state, heartbeat_at=evaluation.heartbeat_at
        )
        if evaluation.recoveries >= MAX_RECOVERIES:
            if same.update(
                state=PolicyEvaluation.FAILED,
                message=f"The process deciding the rows stopped {evaluation.recoveries} times (process_died); "
                "ask for the evaluation again to retry.",
                finished_at=timezone.now(),
            ):
                counts["failed"] += 1
            continue
        # Claimed by this sweep (another operator's finds it changed); the heartbeat marks the restart.
        if same.update(
            state=PolicyEvaluation.QUEUED,
            done=0,
            recoveries=F("recoveries") + 1,
            heartbeat_at=timezone.now(),
        ):
            counts["resumed"] += 1
            log.warning(
                "resuming a policy evaluation whose process stopped", extra={"evaluation_id": evaluation.pk}
            )
            start(evaluation.pk, evaluation.org_id)
    return counts


def _label_map(document: PolicyDocument, spec: HeadSpec) -> tuple[set[str], bool, list[str]]:
    """How a head's labels meet the policy's categories: its negative labels, whether it is a binary head whose
    one other label stands for any category, and warnings for what does not match."""
    categories = document.category_names
    negative = set(spec.resolved_negative_labels)
    positive = [label for label in spec.labels if label not in negative]
    binary = len(positive) == 1 and positive[0] not in categories
    warnings = []
    if binary:
        warnings.append(f"Any flagged category counts as '{positive[0]}'.")
    else:
        missing = [label for label in positive if label not in categories]
        if missing:
            warnings.append(f"Labels without a policy category (never predicted): {', '.join(missing)}.")
        extra = [name for name in categories if name not in spec.labels]
        if extra:
            warnings.append(f"Policy categories the head has no label for: {', '.join(extra)}.")
    return negative, binary, warnings


def _policy_labels(
    decision: Mapping[str, Any], spec: HeadSpec, negative: set[str], binary: bool
) -> list[str]:
    """The head's labels a policy decision stands for."""
    flagged = decision["flag"] == UNSAFE
    return [
        label
        for label in spec.labels
        if (
            not flagged
            if label in negative
            else flagged
            if binary
            else flagged and decision["category"] == label
        )
    ]


def _head_metrics(
    document: PolicyDocument,
    spec: HeadSpec,
    labels: HeadLabels,
    decisions: list[dict[str, Any]],
    indices: list[int],
) -> tuple[dict[str, Any], list[str]]:
    """The head's evaluation from the decisions: each label of the head is scored and decided by the policy
    category of the same name; a negative label (safe, none, ...) by "not flagged"; a head with one other label
    (toxic/safe) by "flagged in any category"."""
    negative, binary, warnings = _label_map(document, spec)
    scores = np.zeros((len(decisions), len(spec.labels)), dtype=np.float64)
    decided = np.zeros((len(decisions), len(spec.labels)), dtype=bool)
    for r, decision in enumerate(decisions):
        category_scores = decision["scores"]
        p_unsafe = max(category_scores.values(), default=0.0)
        chosen = _policy_labels(decision, spec, negative, binary)
        for i, label in enumerate(spec.labels):
            decided[r, i] = label in chosen
            if label in negative:
                scores[r, i] = 1.0 - p_unsafe
            else:
                scores[r, i] = p_unsafe if binary else category_scores.get(label, 0.0)
    subset = labels.subset(np.asarray(indices, dtype=np.int64))
    head = head_evaluate(probabilities=scores, labels=subset, decided=decided)
    return {"split": "all", "rows": len(decisions), "source": POLICY, "heads": {spec.name: head}}, warnings


# --- comparing with a trained model -------------------------------------------------------------------------


def policy_compare(*, model: Model, evaluation_id: Any, against: Any, review: bool = False) -> dict[str, Any]:
    """A policy's evaluation beside a trained version's answers on the same rows and head: the share of rows on
    which they agree and every row on which they do not, with the policy's reason and the model's scores.
    With `review`, those rows go to the annotation service's review queue with the policy's answer."""
    if isinstance(evaluation_id, bool) or not isinstance(evaluation_id, int):
        raise _invalid("evaluation: give the id of an evaluation of this policy.", "evaluation")
    evaluation = (
        PolicyEvaluation.objects.filter(pk=evaluation_id, version__model=model)
        .select_related("version")
        .first()
    )
    if evaluation is None:
        raise ApiError(
            status=404,
            code="not_found",
            message=f"evaluation: this policy has no evaluation {evaluation_id}.",
        )
    if evaluation.state != PolicyEvaluation.SUCCEEDED:
        raise ApiError(
            status=409,
            code="not_ready",
            message=f"evaluation: it is {evaluation.state}; compare once it succeeded.",
        )
    if not isinstance(against, dict) or not all(
        isinstance(against.get(k), int) and not isinstance(against.get(k), bool) for k in ("model", "version")
    ):
        raise _invalid('model: give the trained version as {"model": <id>, "version": <number>}.', "model")
    trained = (
        ModelVersion.objects.select_related("run")
        .filter(
            model_id=against["model"],
            number=against["version"],
            policy__isnull=True,
            run__state=RunState.SUCCEEDED,
        )
        .first()
    )
    if trained is None:
        raise ApiError(
            status=404,
            code="not_found",
            message=f"model: model {against['model']} has no trained version {against['version']} in this org.",
        )
    if evaluation.head not in [h["name"] for h in trained.heads]:
        raise _invalid(
            f"model: version {trained.number} of '{against['model']}' has no head '{evaluation.head}'.",
            "model",
        )
    assert evaluation.version.policy is not None
    document = PolicyDocument.from_dict(evaluation.version.policy)
    snapshot = Snapshot.objects.get(snapshot_id=evaluation.snapshot_id)
    spec = next(HeadSpec.from_dict(h) for h in snapshot.heads if h["name"] == evaluation.head)
    negative, binary, _ = _label_map(document, spec)
    answered = [d for d in evaluation.decisions if "error" not in d]
    predictions = _trained_predictions(trained, [d["text"] for d in answered])
    disagreements = []
    for decision, prediction in zip(answered, predictions, strict=True):
        ours = _policy_labels(decision, spec, negative, binary)
        theirs = list(prediction[evaluation.head]["labels"])
        if sorted(ours) != sorted(theirs):
            disagreements.append(
                {
                    "row": decision["row"],
                    "text": decision["text"],
                    "truth": decision["truth"],
                    "policy": {**_verdict(decision), "labels": ours},
                    "model": {"labels": theirs, "label_scores": prediction[evaluation.head]["label_scores"]},
                }
            )
    rows = len(answered)
    sent = 0
    if review and disagreements:
        sent = _review_request(
            evaluation=evaluation,
            request=f"policy-evaluation:{evaluation.pk}:model:{trained.model_id}:{trained.number}",
            title=f"policy '{model.name}' v{evaluation.version.number} disagrees with model "
            f"{trained.model_id} v{trained.number}",
            rows=[
                {
                    "number": _dataset_row(d["row"]),
                    "labels": d["policy"]["labels"],
                    "reason": d["policy"]["reason"],
                }
                for d in disagreements
            ],
        )
    return {
        "evaluation": evaluation.pk,
        "policy_version": evaluation.version.number,
        "model": {"model": trained.model_id, "version": trained.number},
        "snapshot": evaluation.snapshot_id,
        "head": evaluation.head,
        "rows": rows,
        "agreement": round((rows - len(disagreements)) / rows, 6) if rows else None,
        "disagreements": disagreements,
        "sent_for_review": sent,
    }


def evaluation_review(*, evaluation: PolicyEvaluation) -> int:
    """Send the rows on which an evaluated policy disagrees with their labels to the review queue, the policy's
    answer and reason as the suggestion (a label may be what is wrong); returns how many rows."""
    if evaluation.state != PolicyEvaluation.SUCCEEDED:
        raise ApiError(
            status=409,
            code="not_ready",
            message=f"evaluation: it is {evaluation.state}; review once it succeeded.",
        )
    assert evaluation.version.policy is not None
    document = PolicyDocument.from_dict(evaluation.version.policy)
    snapshot = Snapshot.objects.get(snapshot_id=evaluation.snapshot_id)
    spec = next(HeadSpec.from_dict(h) for h in snapshot.heads if h["name"] == evaluation.head)
    negative, binary, _ = _label_map(document, spec)
    rows = []
    for decision in evaluation.decisions:
        if "error" in decision or decision.get("truth") is None:
            continue
        ours = _policy_labels(decision, spec, negative, binary)
        if sorted(ours) != sorted(decision["truth"]):
            rows.append(
                {"number": _dataset_row(decision["row"]), "labels": ours, "reason": decision["reason"]}
            )
    if not rows:
        return 0
    return _review_request(
        evaluation=evaluation,
        request=f"policy-evaluation:{evaluation.pk}:labels",
        title=f"policy '{evaluation.version.model.name}' v{evaluation.version.number} disagrees with the labels",
        rows=rows,
    )


def _dataset_row(row_id: Any) -> int:
    """The dataset's row number of a decision's row (`<snapshot>:<row>`, see `snapshot_rows`)."""
    return int(str(row_id).rsplit(":", 1)[-1])


def _review_request(
    *, evaluation: PolicyEvaluation, request: str, title: str, rows: list[dict[str, Any]]
) -> int:
    """Publish `review.requested` for rows of the evaluation's snapshot (its numbers are the dataset's rows)."""
    snapshot = Snapshot.objects.get(snapshot_id=evaluation.snapshot_id)
    spec = next(HeadSpec.from_dict(h) for h in snapshot.heads if h["name"] == evaluation.head)
    version = evaluation.version
    with transaction.atomic(using=ALIAS):
        publish(
            type="review.requested",
            org_id=evaluation.org_id,
            subject=f"policies/{version.model_id}/evaluations/{evaluation.pk}",
            data={
                "request": request[:200],
                "dataset_id": snapshot.dataset_id,
                "head": evaluation.head,
                "schema_labels": list(spec.labels),
                "multi_label": spec.multi_label,
                "agent": f"policy:{version.model.name}@v{version.number}"[:64],
                "title": title[:500],
                "rows": rows[:5000],
            },
        )
    return min(len(rows), 5000)


def _trained_predictions(version: ModelVersion, texts: list[str]) -> list[dict[str, dict[str, Any]]]:
    """A trained version's answers, from its artifact (the ML core's predictor, as the trainer evaluates)."""
    with tempfile.TemporaryDirectory(prefix="arbiter-compare-") as folder:
        artifact = artifact_unpack(
            get_blob_store().get_bytes(version.artifact_key), Path(folder) / "artifact"
        )
        return Predictor.load(artifact, runtime="auto").predict(texts)


# --- the diff -----------------------------------------------------------------------------------------------


def _verdict(decision: Mapping[str, Any]) -> dict[str, Any]:
    if "error" in decision:
        return {"error": decision["error"], "message": decision["message"], "raw": decision.get("raw")}
    return {"flag": decision["flag"], "category": decision["category"], "reason": decision["reason"]}


def policy_diff(
    *, model: Model, snapshot_id: Any, head: Any, from_version: Any, to_version: Any, limit: Any = 0
) -> dict[str, Any]:
    """Re-score a frozen snapshot with two versions of the policy (evaluations are reused when they exist) and
    list the rows whose decision flipped, with both reasons."""
    for field, value in (("from_version", from_version), ("to_version", to_version)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise _invalid(f"{field}: give a version number of the policy.", field)
    if from_version == to_version:
        raise _invalid("to_version: give another version than from_version.", "to_version")
    before = evaluation_request(
        version=policy_version(model=model, number=from_version),
        snapshot_id=snapshot_id,
        head=head,
        limit=limit,
    )[0]
    after = evaluation_request(
        version=policy_version(model=model, number=to_version),
        snapshot_id=snapshot_id,
        head=head,
        limit=limit,
    )[0]
    body: dict[str, Any] = {
        "snapshot": before.snapshot_id,
        "head": before.head,
        "from_version": from_version,
        "to_version": to_version,
        "evaluations": {"from": before.pk, "to": after.pk},
        "state": "succeeded",
        "flips": [],
    }
    pending = [e for e in (before, after) if e.state in (PolicyEvaluation.QUEUED, PolicyEvaluation.RUNNING)]
    failed = [e for e in (before, after) if e.state == PolicyEvaluation.FAILED]
    if pending or failed:
        body["state"] = "failed" if failed else "running"
        body["message"] = "; ".join(
            f"the evaluation of version {e.version.number} {e.state}"
            + (f": {e.message}" if e.message else "")
            for e in (*failed, *pending)
        )
        return body
    later = {d["row"]: d for d in after.decisions}
    flips = []
    for old in before.decisions:
        new = later.get(old["row"])
        if new is None:
            continue
        a, b = _verdict(old), _verdict(new)
        if (a.get("flag"), a.get("category"), a.get("error")) != (
            b.get("flag"),
            b.get("category"),
            b.get("error"),
        ):
            flips.append({"row": old["row"], "text": old["text"], "truth": old["truth"], "from": a, "to": b})
    body["flips"] = flips
    body["counts"] = {
        "rows": len(before.decisions),
        "flipped": len(flips),
        "to_unsafe": sum(1 for f in flips if f["to"].get("flag") == UNSAFE and f["from"].get("flag") == SAFE),
        "to_safe": sum(1 for f in flips if f["to"].get("flag") == SAFE and f["from"].get("flag") == UNSAFE),
    }
    return body
