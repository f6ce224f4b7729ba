"""Writes of the annotation service: LLM providers, label schemas, the copy of the datasets' rows (from the
dataset service's events), auto-labeling jobs, accepting suggestions and reviews (as `labels.accepted`)."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.db import IntegrityError, close_old_connections, connections, transaction
from django.db.models import Q
from django.utils import timezone

from arbiter.api.errors import ApiError
from arbiter.config.routes import page_path
from arbiter.config.typed_settings import arbiter_settings
from arbiter.egress import EgressRefused, check_url
from arbiter.entitlements import entitlements_check
from arbiter.events import publish
from arbiter.llm import (
    Example,
    LabelChoice,
    LlmClient,
    LlmEndpoint,
    LlmError,
    SecretUnreadable,
    label_answer_read,
    label_answer_schema,
    label_messages,
    label_system_prompt,
    secret_decrypt,
    secret_encrypt,
    secret_hint,
)
from arbiter.llm.transport import llm_policy
from arbiter.mail import mail_send
from arbiter.storage import get_blob_store
from arbiter.tenancy.models import ApiKey, Org
from arbiter.tenancy.scoping import org_scope
from services.annotation import selectors
from services.annotation.models import (
    Annotation,
    AnnotationJob,
    DatasetCopy,
    DeploymentCopy,
    Entitlement,
    LabelSchema,
    LlmProvider,
    ReviewSetting,
    RowCopy,
    Suggestion,
)

logger = logging.getLogger(__name__)

ALIAS = "annotation"
SIMILARITY_BATCH = 256
ACCEPT_BATCH = 500  # rows per `labels.accepted` event
MAX_LABELS = 100
AUTO_LABEL = "auto_label"  # the billing meter of automated annotations


# --- LLM providers -------------------------------------------------------------------------------------------


def _checked_base_url(base_url: str) -> str:
    try:
        check_url(base_url, llm_policy())
    except EgressRefused as exc:
        raise ApiError(status=400, code="invalid_base_url", message=f"base_url: {exc}") from None
    return base_url.rstrip("/")


def provider_create(
    *, org_id: int, actor: str, name: str, base_url: str, model: str, api_key: str
) -> LlmProvider:
    provider = LlmProvider(
        org_id=org_id,
        name=name,
        base_url=_checked_base_url(base_url),
        model=model,
        api_key_encrypted=secret_encrypt(api_key) if api_key else "",
        api_key_hint=secret_hint(api_key),
        created_by=actor,
    )
    try:
        with transaction.atomic(using=ALIAS):
            provider.save()
    except IntegrityError:
        raise ApiError(
            status=409, code="name_taken", message=f"name: a provider named {name!r} exists"
        ) from None
    return provider


def provider_update(
    *,
    provider: LlmProvider,
    name: str | None = None,
    base_url: str | None = None,
    model: str | None = None,
    api_key: str | None = None,
) -> LlmProvider:
    if name is not None:
        provider.name = name
    if base_url is not None:
        provider.base_url = _checked_base_url(base_url)
    if model is not None:
        provider.model = model
    if api_key is not None:
        provider.api_key_encrypted = secret_encrypt(api_key) if api_key else ""
        provider.api_key_hint = secret_hint(api_key)
    try:
        with transaction.atomic(using=ALIAS):
            provider.save()
    except IntegrityError:
        raise ApiError(
            status=409, code="name_taken", message=f"name: a provider named {name!r} exists"
        ) from None
    return provider


def provider_delete(*, provider: LlmProvider) -> None:
    provider.delete()


def provider_endpoint(provider: LlmProvider) -> LlmEndpoint:
    key = secret_decrypt(provider.api_key_encrypted) if provider.api_key_encrypted else ""
    return LlmEndpoint(base_url=provider.base_url, model=provider.model, api_key=key)


# --- label schemas -------------------------------------------------------------------------------------------


def _clean_labels(labels: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    if not labels:
        raise ApiError(status=400, code="invalid", message="labels: at least one label")
    if len(labels) > MAX_LABELS:
        raise ApiError(status=400, code="invalid", message=f"labels: at most {MAX_LABELS}")
    names: set[str] = set()
    codes: set[int] = set()
    cleaned = []
    for i, label in enumerate(labels):
        name = str(label["name"]).strip()
        if not name or name in names:
            raise ApiError(
                status=400, code="invalid", message=f"labels[{i}].name: empty or repeated ({name!r})"
            )
        code = label.get("code")
        if code is not None and code in codes:
            raise ApiError(status=400, code="invalid", message=f"labels[{i}].code: {code} is used twice")
        names.add(name)
        if code is not None:
            codes.add(code)
        cleaned.append(
            {"name": name, "code": code, "description": str(label.get("description") or "").strip()}
        )
    return cleaned


def label_schema_create(
    *,
    org_id: int,
    actor: str,
    dataset_id: int,
    head: str,
    labels: Sequence[Mapping[str, Any]],
    multi_label: bool = False,
) -> LabelSchema:
    """A head's labels; when the head has a schema already, its next version (an unchanged one is returned)."""
    cleaned = _clean_labels(labels)
    with transaction.atomic(using=ALIAS):
        current = (
            LabelSchema.objects.select_for_update()
            .filter(dataset_id=dataset_id, head=head)
            .order_by("-version")
            .first()
        )
        if current is not None and current.labels == cleaned and current.multi_label == multi_label:
            return current
        return LabelSchema.objects.create(
            org_id=org_id,
            dataset_id=dataset_id,
            head=head,
            version=(current.version + 1) if current else 1,
            multi_label=multi_label,
            labels=cleaned,
            created_by=actor,
        )


def _choices(schema: LabelSchema) -> list[LabelChoice]:
    return [LabelChoice(name=label["name"], description=label["description"]) for label in schema.labels]


# --- the copy of the datasets' rows ------------------------------------------------------------------------


def _rows_read(blob: str) -> Iterator[dict[str, Any]]:
    with get_blob_store().open(blob) as stream:
        for line in stream:
            if line.strip():
                yield json.loads(line)


def dataset_rows_apply(*, org_id: int, data: Mapping[str, Any]) -> None:
    """Apply `dataset.rows_changed` to the copy (idempotent: the same event twice leaves the same rows)."""
    dataset_id = int(data["dataset_id"])
    if data.get("deleted"):
        RowCopy.objects.filter(dataset_id=dataset_id).delete()
        DatasetCopy.objects.filter(dataset_id=dataset_id).delete()
        return
    DatasetCopy.objects.update_or_create(
        dataset_id=dataset_id,
        defaults={
            "org_id": org_id,
            "name": data["name"],
            "input_column": data.get("input_column") or "",
            "heads": data.get("heads", []),
            "updated_at": timezone.now(),
        },
    )
    if data["full"]:
        RowCopy.objects.filter(dataset_id=dataset_id).delete()
        batch: list[RowCopy] = []
        for row in _rows_read(data["blob"]) if data.get("blob") else iter(()):
            batch.append(
                RowCopy(
                    org_id=org_id,
                    dataset_id=dataset_id,
                    number=row["number"],
                    text=row["text"],
                    labels=row["labels"],
                )
            )
            if len(batch) >= 5000:
                RowCopy.objects.bulk_create(batch)
                batch = []
        RowCopy.objects.bulk_create(batch)
        return
    if data.get("deleted_rows"):
        RowCopy.objects.filter(dataset_id=dataset_id, number__in=data["deleted_rows"]).delete()
    for row in data.get("rows", []):
        RowCopy.objects.update_or_create(
            dataset_id=dataset_id,
            number=row["number"],
            defaults={"org_id": org_id, "text": row["text"], "labels": row["labels"]},
        )


# --- rows sent for review by another service (`review.requested`) -------------------------------------------


def review_request_apply(*, org_id: int, data: Mapping[str, Any]) -> AnnotationJob | None:
    """Queue the rows of `review.requested` for people: a finished job of kind `review` whose pending
    suggestions carry the requester's answer and reason; the review queue (`?job=<id>`) walks them, labeled or
    not. A head without a label schema gets one with the event's labels. Idempotent on `request`."""
    dataset_id, head = int(data["dataset_id"]), str(data["head"])
    if AnnotationJob.objects.filter(
        dataset_id=dataset_id, provider_kind=AnnotationJob.REVIEW, rows_spec__request=data["request"]
    ).exists():
        return None
    schema = selectors.label_schema_current(dataset_id=dataset_id, head=head)
    if schema is None:
        schema = label_schema_create(
            org_id=org_id,
            actor=str(data["agent"]),
            dataset_id=dataset_id,
            head=head,
            labels=[{"name": name, "description": ""} for name in data["schema_labels"]],
            multi_label=bool(data.get("multi_label")),
        )
    known = set(RowCopy.objects.filter(dataset_id=dataset_id).values_list("number", flat=True))
    rows = {int(row["number"]): row for row in data["rows"] if int(row["number"]) in known}
    now = timezone.now()
    job = AnnotationJob.objects.create(
        org_id=org_id,
        dataset_id=dataset_id,
        head=head,
        schema=schema,
        provider_kind=AnnotationJob.REVIEW,
        agent=str(data["agent"])[:64],
        rows_spec={"rows": "review", "request": data["request"], "title": data.get("title", "")},
        row_numbers=sorted(rows),
        state=AnnotationJob.COMPLETED,
        total=len(rows),
        done=len(rows),
        created_by=str(data["agent"])[:64],
        started_at=now,
        finished_at=now,
    )
    Suggestion.objects.bulk_create(
        _suggestion(
            job,
            number,
            labels=[label for label in row["labels"] if label in schema.label_names],
            score=row.get("score"),
            message=str(row.get("reason") or ""),
        )
        for number, row in sorted(rows.items())
    )
    return job


# --- deployments of the org's trained models (the `model` labeler) -----------------------------------------


def deployment_apply(*, org_id: int, data: Mapping[str, Any], live: bool) -> None:
    """Keep what `deployment.live`, `.stopped` and `.failed` say of a deployment (idempotent)."""
    DeploymentCopy.objects.update_or_create(
        deployment_id=int(data["deployment_id"]),
        defaults={
            "org_id": org_id,
            "name": str(data.get("name") or ""),
            "model_id": int(data["model_id"]),
            "version": int(data["version"]),
            "live": live,
            "updated_at": timezone.now(),
        },
    )


def _deployment_live(value: Any) -> DeploymentCopy:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ApiError(status=400, code="invalid", message="provider.deployment: a deployment id")
    deployment = selectors.deployment_list().filter(deployment_id=value).first()
    if deployment is None or not deployment.live:
        raise ApiError(
            status=400,
            code="deployment_not_live",
            message=f"provider.deployment: deployment {value} is "
            + ("not live" if deployment else "not a live deployment of this org")
            + "; deploy a trained version of a model first",
        )
    return deployment


# --- auto-labeling jobs ------------------------------------------------------------------------------------


def _agent(kind: str, model: str, schema: LabelSchema) -> str:
    return f"{kind}:{model}@v{schema.version}"[:64]


def job_create(
    *,
    org_id: int,
    actor: str,
    dataset_id: int,
    head: str,
    provider: Any,
    rows: Any,
    schema_version: int | None = None,
    few_shot: int = 0,
) -> AnnotationJob:
    """Create an auto-labeling job and start it: at once for a small similarity job, else in the background.

    A dataset whose rows have not reached this service yet (they travel by event) is waited for.
    """
    schemas = selectors.label_schema_list(dataset_id=dataset_id, head=head)
    schema = (
        schemas.filter(version=schema_version) if schema_version else schemas.order_by("-version")
    ).first()
    if schema is None:
        raise ApiError(
            status=400,
            code="no_label_schema",
            message=f"head: dataset {dataset_id} has no label schema for {head!r}"
            + (
                f" in version {schema_version}"
                if schema_version
                else "; create one under /label-schemas first"
            ),
        )
    llm: LlmProvider | None = None
    deployment_id: int | None = None
    if provider == AnnotationJob.SIMILARITY:
        kind, agent = AnnotationJob.SIMILARITY, _agent("similarity", "all-MiniLM-L6-v2", schema)
    elif isinstance(provider, Mapping) and "id" in provider:
        llm = selectors.provider_list().filter(pk=provider["id"]).first()
        if llm is None:
            raise ApiError(
                status=400, code="unknown_provider", message=f"provider.id: no LLM provider {provider['id']}"
            )
        kind, agent = AnnotationJob.OPENAI, _agent(llm.name, llm.model, schema)
    elif isinstance(provider, Mapping) and "deployment" in provider:
        deployment = _deployment_live(provider["deployment"])
        kind, deployment_id = AnnotationJob.MODEL, deployment.deployment_id
        agent = _agent("model", f"{deployment.name or deployment.model_id}.v{deployment.version}", schema)
    else:
        raise ApiError(
            status=400,
            code="invalid",
            message='provider: "similarity", {"id": <LLM provider>} or {"deployment": <deployment of a '
            "trained model>}",
        )
    known = selectors.dataset_copy(dataset_id=dataset_id) is not None
    numbers = selectors.rows_selected(dataset_id=dataset_id, head=head, spec=rows) if known else []
    # The plan's automated annotations this month, as billing last announced them: 402/429 when too few.
    entitlements_check(model=Entitlement, org_id=org_id, meter=AUTO_LABEL, units=max(len(numbers), 1))
    with transaction.atomic(using=ALIAS):
        job = AnnotationJob.objects.create(
            org_id=org_id,
            dataset_id=dataset_id,
            head=head,
            schema=schema,
            provider_kind=kind,
            provider=llm,
            deployment_id=deployment_id,
            agent=agent,
            rows_spec={"rows": rows, "few_shot": few_shot},
            row_numbers=numbers,
            total=len(numbers),
            prompt=label_system_prompt(head=head, labels=_choices(schema), multi_label=schema.multi_label)
            if kind == AnnotationJob.OPENAI
            else "",
            created_by=actor,
        )
    # A `model` job only hands its rows to the inference service, so it starts within the request too.
    inline = known and (
        kind == AnnotationJob.MODEL
        or (kind == AnnotationJob.SIMILARITY and len(numbers) <= arbiter_settings().annotation.inline_rows)
    )
    if inline:
        job_run(job=job)
        job.refresh_from_db()
    else:
        job_start_in_background(job_id=job.pk, org_id=org_id)
    return job


def job_start_in_background(*, job_id: int, org_id: int) -> None:
    threading.Thread(
        target=_job_thread, args=(job_id, org_id), name=f"annotation-job-{job_id}", daemon=True
    ).start()


def _job_thread(job_id: int, org_id: int) -> None:
    close_old_connections()
    try:
        with org_scope(org_id):
            job_run(job=AnnotationJob.objects.get(pk=job_id))
    except Exception:
        logger.exception("annotation job failed unexpectedly", extra={"job_id": job_id})
    finally:
        connections.close_all()


MAX_RECOVERIES = 3


def annotation_jobs_recover(*, resume: Callable[[AnnotationJob], None] | None = None) -> dict[str, int]:
    """The sweep: settle the jobs whose process died. A running job whose heartbeat is older than
    `ARBITER_ANNOTATION_STALE_SECONDS` (or a queued one that never started) is resumed from the rows it had
    not reached, at most `MAX_RECOVERIES` times, then failed with the reason; a `model` job the inference
    service never answered within `ARBITER_WAIT_FOR_EVENTS_SECONDS` fails saying so."""
    now = timezone.now()
    stale = timedelta(seconds=arbiter_settings().annotation.stale_after_s)
    waited = timedelta(seconds=arbiter_settings().training.wait_for_events_s)
    jobs = AnnotationJob.objects.unscoped()
    counts = {"resumed": 0, "failed": 0}
    dead = (
        jobs.filter(state=AnnotationJob.RUNNING)
        .exclude(provider_kind=AnnotationJob.MODEL)
        .filter(Q(heartbeat_at__lt=now - stale) | Q(heartbeat_at=None, started_at__lt=now - stale))
    )
    never_started = jobs.filter(state=AnnotationJob.QUEUED, created_at__lt=now - waited - stale)
    unanswered = jobs.filter(
        state=AnnotationJob.RUNNING, provider_kind=AnnotationJob.MODEL, heartbeat_at__lt=now - waited
    )
    for job in [*dead, *never_started]:
        # Claimed by moving its heartbeat: of two sweeps at once, one resumes it.
        if not jobs.filter(pk=job.pk, state=job.state, heartbeat_at=job.heartbeat_at).update(
            heartbeat_at=now
        ):
            continue
        recoveries = int(job.rows_spec.get("recoveries", 0)) + 1
        with org_scope(job.org_id):
            if recoveries > MAX_RECOVERIES:
                _job_finish(
                    job,
                    AnnotationJob.FAILED,
                    {
                        "code": "process_died",
                        "message": f"the process running the job stopped {MAX_RECOVERIES} times; "
                        f"{job.done} of {job.total} rows were labeled. Start a new job for the rest.",
                    },
                )
                counts["failed"] += 1
                continue
            AnnotationJob.objects.filter(pk=job.pk).update(
                rows_spec={**job.rows_spec, "recoveries": recoveries}
            )
        logger.warning("resuming an annotation job whose process stopped", extra={"job_id": job.pk})
        if resume is not None:
            resume(job)
        else:
            job_start_in_background(job_id=job.pk, org_id=job.org_id)
        counts["resumed"] += 1
    for job in unanswered:
        with org_scope(job.org_id):
            _job_finish(
                job,
                AnnotationJob.FAILED,
                {
                    "code": "no_answer",
                    "message": f"the inference service did not answer within {int(waited.total_seconds())} s; "
                    "is the deployment's service running?",
                },
            )
        counts["failed"] += 1
    return counts


def job_cancel(*, job: AnnotationJob) -> AnnotationJob:
    if job.finished:
        raise ApiError(status=409, code="job_finished", message=f"the job is {job.state} already")
    AnnotationJob.objects.filter(pk=job.pk).update(cancel_requested=True)
    # A queued job, or a `model` job waiting for the inference service (no process of ours runs it), ends now.
    if job.state == AnnotationJob.QUEUED or job.provider_kind == AnnotationJob.MODEL:
        _job_finish(job, AnnotationJob.CANCELLED)
    job.refresh_from_db()
    return job


def _cancelled(job: AnnotationJob) -> bool:
    return bool(AnnotationJob.objects.filter(pk=job.pk).values_list("cancel_requested", flat=True).first())


def _wait_for_rows(job: AnnotationJob) -> bool:
    deadline = time.monotonic() + arbiter_settings().training.wait_for_events_s
    while selectors.dataset_copy(dataset_id=job.dataset_id) is None:
        if time.monotonic() > deadline or _cancelled(job):
            return False
        time.sleep(0.5)
    job.row_numbers = selectors.rows_selected(
        dataset_id=job.dataset_id, head=job.head, spec=job.rows_spec.get("rows", "unlabeled")
    )
    job.total = len(job.row_numbers)
    job.save(update_fields=["row_numbers", "total"])
    return True


def _job_finish(job: AnnotationJob, state: str, error: dict[str, Any] | None = None) -> None:
    job.refresh_from_db()
    job.state = state
    job.error = error
    job.finished_at = timezone.now()
    if state != AnnotationJob.CANCELLED:
        job.agreement = selectors.job_agreement(job=job)
    with transaction.atomic(using=ALIAS):
        job.save(update_fields=["state", "error", "finished_at", "agreement"])
        transaction.on_commit(lambda: job_notify(job=job), using=ALIAS)
        publish(
            type="annotation.completed",
            org_id=job.org_id,
            subject=f"annotation-jobs/{job.pk}",
            data={
                "job_id": job.pk,
                "dataset_id": job.dataset_id,
                "head": job.head,
                "labeled": job.done - job.failed,
                "failed": job.failed,
                "state": state,
                "provider": job.agent,
            },
        )


def _starter_email(actor: str) -> str:
    """The email of whoever an actor names: the person (`user:<id>`), or the person who made the API key."""
    kind, _, number = actor.partition(":")
    if not number.isdigit():
        return ""
    # The identity tables are the gateway's, readable by every service.
    if kind == "user":
        found = get_user_model().objects.filter(pk=int(number)).values_list("email", flat=True).first()
    elif kind == "api-key":
        found = ApiKey.objects.filter(pk=int(number)).values_list("created_by__email", flat=True).first()
    else:
        found = None
    return found or ""


def job_notify(*, job: AnnotationJob) -> bool:
    """Tell whoever started a job, by email, that it finished: how many rows, agreement, and where to review."""
    to = _starter_email(job.created_by)
    if not to:
        return False
    link = arbiter_settings().core.public_url.rstrip("/") + page_path(
        "console-labeling-dataset", org=_org_slug(job.org_id), dataset_id=job.dataset_id
    )
    labeled = job.done - job.failed
    lines = [
        f"Auto-labeling job {job.pk} ({job.agent}) on head {job.head!r} of dataset {job.dataset_id} is {job.state}.",
        "",
        f"Rows labeled: {labeled} of {job.total}; failed: {job.failed}.",
    ]
    if job.error:
        lines.append(f"Why it stopped: {job.error.get('message', '')}")
    if job.agreement and job.agreement.get("rows"):
        agreement = job.agreement
        lines.append(
            f"Agreement with people's labels on {agreement['rows']} rows: accuracy {agreement['accuracy']}, "
            f"Cohen's kappa {agreement['kappa']}."
        )
    lines += ["", f"Review and accept the suggestions: {link}"]
    return mail_send(
        to=to, subject=f"Labeling job {job.pk} {job.state}: {labeled} rows labeled", body="\n".join(lines)
    )


def _org_slug(org_id: int) -> str:
    return Org.objects.filter(pk=org_id).values_list("slug", flat=True).first() or str(org_id)


class _Progress:
    """Counts a job's rows as they finish and stops it early when its first rows all fail."""

    def __init__(self, job: AnnotationJob) -> None:
        self.job = job
        self.fail_fast = arbiter_settings().annotation.fail_fast_rows
        self.reasons: Counter[str] = Counter()
        self.messages: dict[str, str] = {}

    def record(
        self, suggestions: Sequence[Suggestion], *, prompt_tokens: int = 0, completion_tokens: int = 0
    ) -> None:
        failed = [s for s in suggestions if s.state == Suggestion.FAILED]
        for s in failed:
            self.reasons[s.reason] += 1
            self.messages.setdefault(s.reason, s.message)
        with transaction.atomic(using=ALIAS):
            Suggestion.objects.bulk_create(suggestions, ignore_conflicts=True)
            self.job.done += len(suggestions)
            self.job.failed += len(failed)
            self.job.prompt_tokens += prompt_tokens
            self.job.completion_tokens += completion_tokens
            self.job.heartbeat_at = timezone.now()
            self.job.save(
                update_fields=["done", "failed", "prompt_tokens", "completion_tokens", "heartbeat_at"]
            )

    def hopeless(self) -> dict[str, Any] | None:
        """Why the job should stop: its first rows (at least `fail_fast`) all failed."""
        if (
            not self.reasons
            or self.job.done < min(self.fail_fast, self.job.total)
            or self.job.failed < self.job.done
        ):
            return None
        reason, count = self.reasons.most_common(1)[0]
        return {
            "code": "all_rows_failed",
            "message": f"the first {self.job.done} rows all failed, so the job stopped; most often "
            f"({count}): {self.messages[reason]}",
            "details": {"reasons": dict(self.reasons)},
        }


def _suggestion(job: AnnotationJob, number: int, **fields: Any) -> Suggestion:
    return Suggestion(
        org_id=job.org_id,
        job=job,
        dataset_id=job.dataset_id,
        head=job.head,
        row_number=number,
        agent=job.agent,
        **fields,
    )


def job_run(*, job: AnnotationJob) -> None:
    """Label the job's rows with its provider, a batch at a time; checks for cancellation between batches."""
    if job.finished:
        return
    # A job created before the dataset's rows reached this service selects them now (the copy may have
    # arrived between the request's check and this run, so the test is on the job, not on the copy).
    if job.started_at is None and not job.row_numbers and not _wait_for_rows(job):
        if _cancelled(job):
            _job_finish(job, AnnotationJob.CANCELLED)
        else:
            _job_finish(
                job,
                AnnotationJob.FAILED,
                {
                    "code": "dataset_not_found",
                    "message": f"dataset {job.dataset_id} never reached the annotation service",
                },
            )
        return
    job.state = AnnotationJob.RUNNING
    job.heartbeat_at = timezone.now()
    job.started_at = job.started_at or job.heartbeat_at
    job.save(update_fields=["state", "started_at", "heartbeat_at"])
    progress = _Progress(job)
    # A job resumed after its process died labels only the rows it had not reached.
    reached = set(Suggestion.objects.filter(job=job).values_list("row_number", flat=True))
    rows = {
        number: text
        for number, text in RowCopy.objects.filter(
            dataset_id=job.dataset_id, number__in=job.row_numbers
        ).values_list("number", "text")
    }
    try:
        runner = {
            AnnotationJob.SIMILARITY: _run_similarity,
            AnnotationJob.MODEL: _run_model,
        }.get(job.provider_kind, _run_llm)
        stopped = runner(job, [(n, rows.get(n)) for n in job.row_numbers if n not in reached], progress)
    except Exception:
        logger.exception("annotation job failed", extra={"job_id": job.pk})
        _job_finish(
            job,
            AnnotationJob.FAILED,
            {"code": "internal_error", "message": "the job failed; it has been logged"},
        )
        return
    if stopped == "requested":
        return  # the inference service answers with `predictions.written` (see `predictions_apply`)
    if stopped == "cancelled":
        _job_finish(job, AnnotationJob.CANCELLED)
    elif isinstance(stopped, dict):
        _job_finish(job, AnnotationJob.FAILED, stopped)
    else:
        _job_finish(job, AnnotationJob.COMPLETED)


def _no_text(job: AnnotationJob, number: int) -> Suggestion:
    return _suggestion(
        job, number, state=Suggestion.FAILED, reason="no_text", message="the row has no text to label"
    )


def _run_similarity(
    job: AnnotationJob, rows: list[tuple[int, str | None]], progress: _Progress
) -> str | dict[str, Any] | None:
    from arbiter.llm.similarity import SimilarityLabeler

    schema = job.schema
    labeler = SimilarityLabeler(_choices(schema))
    # People's labels on this head calibrate the scores (see arbiter.llm.similarity).
    known = [
        (text, labels[job.head][0])
        for text, labels in RowCopy.objects.filter(dataset_id=job.dataset_id, labels__has_key=job.head)
        .exclude(text=None)
        .values_list("text", "labels")[:2000]
        if labels.get(job.head)
    ]
    if known:
        labeler.calibrate([text for text, _ in known], [label for _, label in known])
    for start in range(0, len(rows), SIMILARITY_BATCH):
        if _cancelled(job):
            return "cancelled"
        batch = rows[start : start + SIMILARITY_BATCH]
        with_text = [(n, t) for n, t in batch if t is not None]
        ranked = labeler.rank([t for _, t in with_text], multi_label=schema.multi_label)
        suggestions = [_no_text(job, n) for n, t in batch if t is None] + [
            _suggestion(job, n, labels=r.labels, score=r.score, scores=r.scores)
            for (n, _), r in zip(with_text, ranked, strict=True)
        ]
        progress.record(suggestions)
        if (why := progress.hopeless()) is not None:
            return why
    return None


def _examples(job: AnnotationJob, count: int) -> list[Example]:
    if count <= 0:
        return []
    rows = (
        RowCopy.objects.filter(dataset_id=job.dataset_id, labels__has_key=job.head)
        .exclude(text=None)
        .exclude(number__in=job.row_numbers)
        .order_by("number")
        .values_list("text", "labels")[: count * 10]
    )
    allowed = set(job.schema.label_names)
    examples: list[Example] = []
    for text, labels in rows:
        chosen = tuple(label for label in labels[job.head] if label in allowed)
        if chosen and len(examples) < count:
            examples.append(Example(text=str(text), labels=chosen))
    return examples


def _run_llm(
    job: AnnotationJob, rows: list[tuple[int, str | None]], progress: _Progress
) -> str | dict[str, Any] | None:
    schema = job.schema
    if job.provider is None:
        return {"code": "provider_deleted", "message": "the job's LLM provider was deleted"}
    try:
        client = LlmClient(provider_endpoint(job.provider))
    except SecretUnreadable as exc:
        return {"code": "provider_key_unreadable", "message": str(exc)}
    except EgressRefused as exc:
        return {"code": "refused", "message": str(exc)}
    choices = _choices(schema)
    answer_schema = label_answer_schema(labels=choices, multi_label=schema.multi_label)
    examples = _examples(job, int(job.rows_spec.get("few_shot", 0) or 0))

    def label_one(item: tuple[int, str | None]) -> tuple[Suggestion, int, int]:
        number, text = item
        if text is None:
            return _no_text(job, number), 0, 0
        messages = label_messages(
            head=job.head, labels=choices, multi_label=schema.multi_label, text=text, examples=examples
        )
        try:
            answer = client.complete_json(messages=messages, schema=answer_schema, name="label")
        except LlmError as exc:
            failed = _suggestion(
                job, number, state=Suggestion.FAILED, reason=exc.reason, message=str(exc), raw=exc.raw or ""
            )
            return failed, exc.prompt_tokens, exc.completion_tokens
        labels, confidence = label_answer_read(answer.data, multi_label=schema.multi_label)
        scores = {name: (round(confidence, 4) if name in labels else 0.0) for name in schema.label_names}
        made = _suggestion(
            job, number, labels=labels, score=round(confidence, 4), scores=scores, raw=answer.raw
        )
        return made, answer.prompt_tokens, answer.completion_tokens

    workers = client.settings.concurrency
    try:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"annotation-job-{job.pk}") as pool:
            # Batches of a few rows per worker: progress and cancellation are seen between them, and the first
            # batch is small so a job that cannot work stops after a few calls.
            step = max(workers, min(progress.fail_fast, workers * 4))
            for start in range(0, len(rows), step):
                if _cancelled(job):
                    return "cancelled"
                results = list(pool.map(label_one, rows[start : start + step]))
                progress.record(
                    [s for s, _, _ in results],
                    prompt_tokens=sum(p for _, p, _ in results),
                    completion_tokens=sum(c for _, _, c in results),
                )
                if (why := progress.hopeless()) is not None:
                    return why
    finally:
        client.close()
    return None


def _predictions_blob(job: AnnotationJob, what: str) -> str:
    return f"annotation/org-{job.org_id}/job-{job.pk}/{what}.jsonl"


def _run_model(
    job: AnnotationJob, rows: list[tuple[int, str | None]], progress: _Progress
) -> str | dict[str, Any] | None:
    """Hand the rows to the inference service (`predictions.requested`): it classifies them with the job's
    deployment and answers `predictions.written`. Rows without text fail here."""
    progress.record([_no_text(job, n) for n, t in rows if t is None])
    with_text = [{"number": n, "text": t} for n, t in rows if t is not None]
    if not with_text:
        return None
    blob = _predictions_blob(job, "rows")
    get_blob_store().put_bytes(blob, "".join(json.dumps(row) + "\n" for row in with_text).encode())
    with transaction.atomic(using=ALIAS):
        publish(
            type="predictions.requested",
            org_id=job.org_id,
            subject=f"annotation-jobs/{job.pk}",
            data={
                "job_id": job.pk,
                "deployment_id": job.deployment_id,
                "head": job.head,
                "rows": len(with_text),
                "blob": blob,
            },
        )
    return "requested"


def predictions_apply(*, org_id: int, data: Mapping[str, Any]) -> None:
    """The inference service's answer to a `model` job: its predictions become the job's suggestions (a label
    outside the schema fails that row), or the job fails with the reason. Idempotent: a finished job is kept."""
    job = selectors.job_list().filter(pk=int(data["job_id"])).first()
    if job is None or job.finished:
        return
    if job.cancel_requested:
        _job_finish(job, AnnotationJob.CANCELLED)
        return
    if data.get("error"):
        _job_finish(job, AnnotationJob.FAILED, dict(data["error"]))
        return
    if data.get("model_id") is not None:
        name = data.get("model_name") or data["model_id"]
        job.agent = _agent("model", f"{name}.v{data['version']}", job.schema)
        job.save(update_fields=["agent"])
    allowed = set(job.schema.label_names)
    progress = _Progress(job)
    batch: list[Suggestion] = []
    for row in _rows_read(str(data["blob"])):
        number, labels, scores = int(row["number"]), list(row["labels"]), dict(row["scores"])
        outside = [label for label in labels if label not in allowed]
        if outside:
            batch.append(
                _suggestion(
                    job,
                    number,
                    state=Suggestion.FAILED,
                    reason="label_outside_schema",
                    message=f"the model answered {outside[0]!r}, which is not a label of {job.head!r}",
                    raw=json.dumps(row),
                )
            )
        else:
            best = max((scores.get(label, 0.0) for label in labels), default=0.0)
            batch.append(_suggestion(job, number, labels=labels, score=round(best, 4), scores=scores))
        if len(batch) >= SIMILARITY_BATCH:
            progress.record(batch)
            batch = []
    progress.record(batch)
    why = progress.hopeless()
    if why is not None:
        _job_finish(job, AnnotationJob.FAILED, why)
    else:
        _job_finish(job, AnnotationJob.COMPLETED)


# --- accepting: suggestions and reviews become labels of the dataset's rows ------------------------------------


def _publish_accepted(
    *,
    schema: LabelSchema,
    decided: Sequence[tuple[int, list[str], str]],
    texts: Mapping[int, str] | None = None,
) -> None:
    """Send accepted labels (and texts a reviewer edited) to the dataset service, and update the copy now (the
    echo confirms it later)."""
    texts = texts or {}
    for start in range(0, len(decided), ACCEPT_BATCH):
        chunk = decided[start : start + ACCEPT_BATCH]
        publish(
            type="labels.accepted",
            org_id=schema.org_id,
            subject=f"datasets/{schema.dataset_id}",
            data={
                "dataset_id": schema.dataset_id,
                "head": schema.head,
                "schema_labels": schema.label_names,
                "multi_label": schema.multi_label,
                "rows": [
                    {
                        "number": n,
                        "labels": labels,
                        "source": source,
                        **({"text": texts[n]} if n in texts else {}),
                    }
                    for n, labels, source in chunk
                ],
            },
        )
    by_number = {number: labels for number, labels, _ in decided}
    for row in RowCopy.objects.filter(dataset_id=schema.dataset_id, number__in=list(by_number)):
        row.labels = {**row.labels, schema.head: by_number[row.number]}
        row.text = texts.get(row.number, row.text)
        row.save(update_fields=["labels", "text"])


def suggestions_accept(
    *, job: AnnotationJob, actor: str, min_score: float | None = None, rows: Sequence[int] | None = None
) -> dict[str, int]:
    """Accept the job's pending suggestions with a score of at least `min_score`, or those of `rows`.

    A row that has labels on the head already (a person's, or an earlier acceptance) keeps them: suggestions
    never overwrite labels."""
    if min_score is None and rows is None:
        raise ApiError(
            status=400, code="invalid", message="min_score or rows: say which suggestions to accept"
        )
    pending = selectors.job_suggestions(job=job, state=Suggestion.PENDING)
    if rows is not None:
        pending = pending.filter(row_number__in=list(rows))
    if min_score is not None:
        pending = pending.filter(score__gte=min_score)
    chosen = list(pending.order_by("row_number"))
    labeled = set(
        RowCopy.objects.filter(dataset_id=job.dataset_id, number__in=[s.row_number for s in chosen])
        .filter(labels__has_key=job.head)
        .values_list("number", flat=True)
    )
    accepted = [s for s in chosen if s.row_number not in labeled]
    with transaction.atomic(using=ALIAS):
        now = timezone.now()
        Suggestion.objects.filter(pk__in=[s.pk for s in accepted]).update(
            state=Suggestion.ACCEPTED, decided_at=now, decided_by=actor
        )
        if accepted:
            _publish_accepted(
                schema=job.schema,
                decided=[
                    (
                        s.row_number,
                        list(s.labels),
                        (s.agent if s.agent.startswith("model:") else f"llm:{s.agent}")[:64],
                    )
                    for s in accepted
                ],
            )
    return {"accepted": len(accepted), "kept_labels": len(chosen) - len(accepted)}


MAX_OVERLAP = 20
CONSENSUS = "human:consensus"  # the source of labels that several people agreed on


@dataclass(frozen=True)
class ReviewSaved:
    """What a person's labels did: the row `accepted` (its labels are the dataset's now), `pending` (fewer than
    `overlap` people labeled it) or `disputed` (they did, and their votes tie: it comes back in the queue)."""

    row: RowCopy
    state: str
    annotators: int
    overlap: int


def review_overlap_set(*, org_id: int, actor: str, dataset_id: int, head: str, overlap: int) -> int:
    """Set how many different people label each row of the head; rows already labeled by that many are decided
    now (their majority accepted, a tie left disputed)."""
    if not 1 <= overlap <= MAX_OVERLAP:
        raise ApiError(status=400, code="invalid", message=f"overlap: a number of people, 1 to {MAX_OVERLAP}")
    if selectors.label_schema_current(dataset_id=dataset_id, head=head) is None:
        raise ApiError(status=400, code="no_label_schema", message=f"head: no label schema for {head!r}")
    with transaction.atomic(using=ALIAS):
        ReviewSetting.objects.update_or_create(
            dataset_id=dataset_id,
            head=head,
            defaults={
                "org_id": org_id,
                "overlap": overlap,
                "updated_by": actor,
                "updated_at": timezone.now(),
            },
        )
        for number in selectors.rows_disputed(dataset_id=dataset_id, head=head, overlap=overlap).values_list(
            "row_number", flat=True
        ):
            _decide(dataset_id=dataset_id, head=head, row_number=number, actor=actor, overlap=overlap)
    return overlap


def _majority(votes: Sequence[Annotation]) -> list[str] | None:
    """The labels most of the people gave (a multi-label head's set counts as one answer); None on a tie."""
    counted = Counter(tuple(sorted(vote.labels)) for vote in votes).most_common()
    if len(counted) > 1 and counted[0][1] == counted[1][1]:
        return None
    return list(next(vote.labels for vote in votes if tuple(sorted(vote.labels)) == counted[0][0]))


def _decide(*, dataset_id: int, head: str, row_number: int, actor: str, overlap: int) -> str:
    """Accept a row's majority labels once `overlap` people labeled it (in a transaction); answers the state."""
    votes = list(
        selectors.head_annotations(dataset_id=dataset_id, head=head)
        .filter(row_number=row_number)
        .order_by("updated_at", "id")
    )
    if len(votes) < overlap:
        return "pending"
    agreed = _majority(votes)
    if agreed is None:
        return "disputed"
    schema = selectors.label_schema_current(dataset_id=dataset_id, head=head)
    assert schema is not None  # a vote is only stored against a schema
    edited = [vote.text for vote in votes if vote.text is not None]
    row = RowCopy.objects.filter(dataset_id=dataset_id, number=row_number).first()
    texts = {row_number: edited[-1]} if edited and row is not None and edited[-1] != row.text else None
    source = votes[0].annotator if len(votes) == 1 else CONSENSUS
    _suggestions_decide(dataset_id=dataset_id, head=head, row_number=row_number, chosen=agreed, actor=actor)
    _publish_accepted(schema=schema, decided=[(row_number, agreed, source)], texts=texts)
    return "accepted"


def _suggestions_decide(
    *, dataset_id: int, head: str, row_number: int, chosen: list[str], actor: str
) -> None:
    pending = Suggestion.objects.filter(
        dataset_id=dataset_id, head=head, row_number=row_number, state=Suggestion.PENDING
    )
    now = timezone.now()
    for suggestion in pending:
        suggestion.state = Suggestion.ACCEPTED if suggestion.labels == chosen else Suggestion.REJECTED
        suggestion.decided_at, suggestion.decided_by = now, actor
        suggestion.save(update_fields=["state", "decided_at", "decided_by"])


def review_save(
    *,
    org_id: int,
    actor: str,
    user_source: str,
    dataset_id: int,
    row_number: int,
    head: str,
    labels: Sequence[str],
    text: str | None = None,
) -> ReviewSaved:
    """A person's labels for one row (and its text, if they edited it). Each person's vote is kept; once the
    head's `overlap` different people labeled the row, their majority is sent to the dataset and the row's
    pending suggestions are decided. A row already done takes the person's labels at once (a correction)."""
    schema = selectors.label_schema_current(dataset_id=dataset_id, head=head)
    if schema is None:
        raise ApiError(status=400, code="no_label_schema", message=f"head: no label schema for {head!r}")
    unknown = [label for label in labels if label not in schema.label_names]
    if unknown:
        raise ApiError(
            status=400,
            code="unknown_label",
            message=f"labels: {unknown[0]!r} is not a label of {head!r} ({', '.join(schema.label_names)})",
        )
    if not labels or (len(labels) > 1 and not schema.multi_label):
        raise ApiError(
            status=400,
            code="invalid",
            message=f"labels: {'one or more labels' if schema.multi_label else 'exactly one label'}",
        )
    row = RowCopy.objects.filter(dataset_id=dataset_id, number=row_number).first()
    if row is None:
        raise ApiError(status=404, code="not_found", message=f"row {row_number} not found")
    chosen = list(dict.fromkeys(labels))
    overlap = selectors.review_overlap(dataset_id=dataset_id, head=head)
    with transaction.atomic(using=ALIAS):
        # One save of the row at a time: two people's last votes must not both see the other's missing.
        row = RowCopy.objects.select_for_update().get(pk=row.pk)
        if row.labels.get(head):
            _suggestions_decide(
                dataset_id=dataset_id, head=head, row_number=row_number, chosen=chosen, actor=actor
            )
            edited = {row_number: text} if text is not None and text != row.text else None
            _publish_accepted(schema=schema, decided=[(row_number, chosen, user_source)], texts=edited)
            state = "accepted"
        else:
            Annotation.objects.update_or_create(
                dataset_id=dataset_id,
                head=head,
                row_number=row_number,
                annotator=user_source[:64],
                defaults={
                    "org_id": org_id,
                    "labels": chosen,
                    "text": text if text is not None and text != row.text else None,
                    "updated_at": timezone.now(),
                },
            )
            state = _decide(
                dataset_id=dataset_id, head=head, row_number=row_number, actor=actor, overlap=overlap
            )
    row.refresh_from_db()
    people = (
        selectors.head_annotations(dataset_id=dataset_id, head=head).filter(row_number=row_number).count()
    )
    return ReviewSaved(row=row, state=state, annotators=people, overlap=overlap)
