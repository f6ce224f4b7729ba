"""Batches of the OpenAI-compatible batches API (`/v1/batches`): an input file's requests classified in the
background, answers written as an output file.

The files are the dataset service's. This service learns of a batch input file by `file.created` (its
`BatchFile` read model keeps the blob key) and reads the bytes from the blob store. Creating a batch checks
the whole file at once (a line that is not `{custom_id, method: "POST", url: <endpoint>, body: {..}}` is a
400 naming the line, and no batch is made) and publishes `batch.created`; this service's consumer then
classifies the lines many at a time through the same serving path as `/v1/moderations` (usage is metered
as for single calls), writes the output and error JSONL to the blob store and publishes
`batch.output_written`. The dataset service registers those as files (purpose `batch_output`) and announces
them by `file.created`; the batch turns `completed` when its output file exists.

A line whose request fails (an unknown `model`, an empty input) goes to the error file with the status and
message a single call would have answered; the other lines still complete.
"""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.db import transaction
from django.utils import timezone

from arbiter.api.errors import ApiError
from arbiter.events import publish
from arbiter.storage import get_blob_store
from services.inference import compat, selectors
from services.inference.conf import inference_settings
from services.inference.logic import ALIAS, Caller, deployment_classify, inputs_validate
from services.inference.models import Batch, BatchFile, BatchStatus, Deployment

ENDPOINTS = ("/v1/moderations", "/v1/classifications")
COMPLETION_WINDOWS = {"24h": timedelta(hours=24)}
BATCH_PURPOSE = "batch"
OUTPUT_PURPOSE = "batch_output"
ACTIVE = (BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS, BatchStatus.FINALIZING)


def _bad(field_name: str, message: str, *, status: int = 400, code: str = "invalid") -> ApiError:
    return ApiError(
        status=status, code=code, message=f"{field_name}: {message}", details={"param": field_name}
    )


def batch_file_record(*, org_id: int, data: Mapping[str, Any]) -> BatchFile | None:
    """Remember a batch input file announced by `file.created` (other purposes are not this service's)."""
    if data["purpose"] != BATCH_PURPOSE:
        return None
    batch_file, _ = BatchFile.objects.get_or_create(
        file_id=data["file_id"],
        defaults={
            "org_id": org_id,
            "filename": data["filename"],
            "blob": data["blob"],
            "bytes": data["bytes"],
            "num_lines": data["num_lines"],
        },
    )
    return batch_file


@dataclass
class _Request:
    line: int
    custom_id: str
    body: dict[str, Any]


def _requests(
    data: bytes, *, endpoint: str, api: str = Batch.OPENAI, where: str = "input_file_id", model: str = ""
) -> list[_Request]:
    """Every request of an input file; the first bad line is a 400 that names it.

    OpenAI's lines are `{custom_id, method, url, body}`; Mistral's `{custom_id?, body}`, the job's `model`
    applying to every line (a line's own `body.model` wins)."""
    mistral = api == Batch.MISTRAL
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise _bad(where, f"the file is not UTF-8 (byte {error.start}).") from None
    requests: list[_Request] = []
    seen: set[str] = set()
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as error:
            raise _bad(
                where, f"line {number} is not valid JSON ({error.msg} at column {error.colno})."
            ) from None
        if not isinstance(item, dict):
            raise _bad(where, f"line {number} is not a JSON object of {{custom_id, method, url, body}}.")
        custom_id = item.get("custom_id")
        if mistral and custom_id is None:
            custom_id = str(len(requests))
        if not isinstance(custom_id, str) or not custom_id:
            raise _bad(where, f"line {number}: custom_id must be a non-empty string.")
        if custom_id in seen:
            raise _bad(where, f"line {number}: custom_id {custom_id!r} is not unique in the file.")
        seen.add(custom_id)
        if item.get("method", "POST") != "POST":
            raise _bad(where, f"line {number}: method must be POST, got {item.get('method')!r}.")
        if item.get("url", endpoint if mistral else None) != endpoint:
            raise _bad(
                where, f"line {number}: url must be the batch's endpoint {endpoint}, got {item.get('url')!r}."
            )
        body = item.get("body")
        if not isinstance(body, dict):
            raise _bad(where, f"line {number}: body must be a JSON object.")
        if model:
            body = {"model": model, **body}
        requests.append(_Request(line=number, custom_id=custom_id, body=body))
    if not requests:
        raise _bad(where, "the file has no requests; give one JSON object per line.")
    return requests


def batch_create(
    *,
    org_id: int,
    api_key_id: int | None,
    input_file_ids: Any,
    endpoint: Any,
    completion_window: Any,
    metadata: Any = None,
    api: str = Batch.OPENAI,
    model: Any = None,
) -> Batch:
    """Check the input files and accept the batch (status `validating` until the consumer takes it).

    OpenAI's batch has one input file (`input_file_id`), Mistral's job a list (`input_files`) and a `model`."""
    where = "input_file_id" if api == Batch.OPENAI else "input_files"
    if not isinstance(endpoint, str) or endpoint not in ENDPOINTS:
        raise _bad("endpoint", f"give one of {', '.join(ENDPOINTS)}; got {endpoint!r}.")
    if not isinstance(completion_window, str) or completion_window not in COMPLETION_WINDOWS:
        raise _bad(
            "completion_window", f"give one of {', '.join(COMPLETION_WINDOWS)}; got {completion_window!r}."
        )
    if metadata is not None and not (
        isinstance(metadata, dict)
        and all(isinstance(v, str) for v in metadata.values())
        and len(metadata) <= 16
    ):
        raise _bad("metadata", "give an object of at most 16 string values.")
    if model is not None and (not isinstance(model, str) or not model):
        raise _bad("model", "give a deployment or model name.")
    if (
        not isinstance(input_file_ids, list)
        or not input_file_ids
        or not all(isinstance(file_id, str) and file_id for file_id in input_file_ids)
    ):
        raise _bad(where, "give the id of a file uploaded with purpose 'batch'.")
    requests: list[_Request] = []
    for file_id in input_file_ids:
        batch_file = BatchFile.objects.filter(file_id=file_id).first()
        if batch_file is None:
            raise _bad(
                where,
                f"no batch file with id '{file_id}' in this org (upload it with purpose 'batch'; "
                "a file just uploaded may take a moment to arrive).",
                status=404,
                code="not_found",
            )
        requests += _requests(
            get_blob_store().get_bytes(batch_file.blob),
            endpoint=endpoint,
            api=api,
            where=where,
            model=model or "",
        )
    if len({request.custom_id for request in requests}) < len(requests):
        raise _bad(where, "custom_id values must be unique across the input files.")
    input_file_id = input_file_ids[0]
    now = timezone.now()
    with transaction.atomic(using=ALIAS):
        batch = Batch.objects.create(
            org_id=org_id,
            public_id=f"batch_{uuid.uuid4().hex}",
            api=api,
            input_file_id=input_file_id,
            input_file_ids=input_file_ids,
            model=model or "",
            endpoint=endpoint,
            completion_window=completion_window,
            total=len(requests),
            metadata=metadata,
            api_key_id=api_key_id,
            created_at=now,
            expires_at=now + COMPLETION_WINDOWS[completion_window],
        )
        publish(
            type="batch.created",
            org_id=org_id,
            subject=f"batches/{batch.public_id}",
            data={
                "batch_id": batch.public_id,
                "input_file_id": input_file_id,
                "endpoint": endpoint,
                "total": len(requests),
            },
        )
    return batch


def batch_cancel(*, batch: Batch) -> Batch:
    """Ask a batch to stop: one not yet taken by the consumer is cancelled when the consumer reaches it."""
    with transaction.atomic(using=ALIAS):
        batch = Batch.objects.select_for_update().get(pk=batch.pk)
        if batch.status in (BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS):
            batch.status = BatchStatus.CANCELLING
            batch.cancelling_at = timezone.now()
            batch.save(update_fields=["status", "cancelling_at"])
        elif batch.status != BatchStatus.CANCELLING:
            raise ApiError(
                status=409,
                code="conflict",
                message=f"Batch '{batch.public_id}' is {batch.status}; only a batch still running can be cancelled.",
                details={"status": batch.status},
            )
    return batch


@dataclass
class _Group:
    """The requests that name one deployment, classified together."""

    deployment: Deployment
    requests: list[tuple[_Request, list[str], str]] = field(default_factory=list)


def _answer(
    endpoint: str, texts_field: str, deployment: Deployment, results: Sequence[Any], heads: Any
) -> Any:
    if endpoint == "/v1/classifications":
        return {
            "id": uuid.uuid4().hex,
            "model": deployment.name,
            "results": [compat.mistral_classification_result(result) for result in results],
        }
    shape = compat.moderation_result if texts_field == "input" else compat.mistral_moderation_result
    return {
        "id": f"modr-{uuid.uuid4().hex}",
        "model": deployment.name,
        "results": [shape(result, heads) for result in results],
    }


def _line(custom_id: str, *, status: int, body: Any = None, error: dict[str, str] | None = None) -> str:
    request_id = uuid.uuid4().hex
    return json.dumps(
        {
            "id": f"batch_req_{request_id}",
            "custom_id": custom_id,
            "response": None if error else {"status_code": status, "request_id": request_id, "body": body},
            "error": error,
        }
    )


def batch_run(*, batch_id: str) -> Batch | None:
    """Classify a batch's lines and write its output (the `batch.created` consumer); idempotent."""
    batch = Batch.objects.select_for_update().filter(public_id=batch_id).first()
    if batch is None or batch.status not in (BatchStatus.VALIDATING, BatchStatus.CANCELLING):
        return batch
    now = timezone.now()
    if batch.status == BatchStatus.CANCELLING:
        batch.status, batch.cancelled_at = BatchStatus.CANCELLED, now
        batch.save(update_fields=["status", "cancelled_at"])
        return batch
    if now >= batch.expires_at:
        batch.status = BatchStatus.EXPIRED
        batch.save(update_fields=["status"])
        return batch
    batch.status, batch.in_progress_at = BatchStatus.IN_PROGRESS, now
    batch.save(update_fields=["status", "in_progress_at"])
    requests = []
    for file_id in batch.input_file_ids or [batch.input_file_id]:
        batch_file = BatchFile.objects.get(file_id=file_id)
        requests += _requests(
            get_blob_store().get_bytes(batch_file.blob),
            endpoint=batch.endpoint,
            api=batch.api,
            model=batch.model,
        )
    caller = Caller(org_id=batch.org_id, api_key_id=batch.api_key_id, user_id=None)
    endpoint_name = batch.endpoint.rsplit("/", 1)[-1]

    outputs: dict[str, str] = {}
    errors: dict[str, str] = {}
    groups: dict[int, _Group] = {}
    for request in requests:
        try:
            texts_field = "inputs" if "inputs" in request.body and "input" not in request.body else "input"
            if texts_field not in request.body:
                raise _bad("input", "this field is required.")
            model = request.body.get("model")
            if model is not None and not isinstance(model, str | int):
                raise _bad("model", "give a deployment or model name or id.")
            texts = inputs_validate(request.body[texts_field], field=texts_field)
            deployment = selectors.deployment_for_model(model=str(model) if model is not None else None)
        except ApiError as error:
            errors[request.custom_id] = _line(
                request.custom_id,
                status=error.status_code,
                error={"code": error.error_code, "message": error.message},
            )
            continue
        groups.setdefault(deployment.pk, _Group(deployment)).requests.append((request, texts, texts_field))

    # Many lines per model call: each deployment's texts go to the model in chunks of the per-request limit.
    chunk = inference_settings().max_inputs
    for group in groups.values():
        flat = [(index, text) for index, (_, texts, _) in enumerate(group.requests) for text in texts]
        answered: list[list[Any]] = [[] for _ in group.requests]
        heads: Any = None
        try:
            for start in range(0, len(flat), chunk):
                part = flat[start : start + chunk]
                classification = deployment_classify(
                    deployment=group.deployment,
                    texts=[text for _, text in part],
                    caller=caller,
                    endpoint=endpoint_name,
                )
                heads = classification.heads
                for (index, _), result in zip(part, classification.results, strict=True):
                    answered[index].append(result)
        except ApiError as error:
            for request, _, _ in group.requests:
                errors[request.custom_id] = _line(
                    request.custom_id,
                    status=error.status_code,
                    error={"code": error.error_code, "message": error.message},
                )
            continue
        for (request, _, texts_field), results in zip(group.requests, answered, strict=True):
            body = _answer(batch.endpoint, texts_field, group.deployment, results, heads)
            outputs[request.custom_id] = _line(request.custom_id, status=200, body=body)

    order = [request.custom_id for request in requests]
    files = []
    for kind, lines in (("output", outputs), ("error", errors)):
        if kind == "error" and not lines:
            continue
        content = "".join(lines[custom_id] + "\n" for custom_id in order if custom_id in lines).encode()
        blob, _, size = get_blob_store().put_content_addressed("files", io.BytesIO(content), suffix=".jsonl")
        files.append(
            {
                "file_id": str(uuid.uuid4()),
                "kind": kind,
                "filename": f"{batch.public_id}_{kind}.jsonl",
                "blob": blob,
                "bytes": size,
                "num_lines": len(lines),
            }
        )
    batch.completed, batch.failed = len(outputs), len(errors)
    batch.output_file_id = files[0]["file_id"]
    batch.error_file_id = files[1]["file_id"] if len(files) > 1 else ""
    batch.status, batch.finalizing_at = BatchStatus.FINALIZING, timezone.now()
    batch.save(
        update_fields=["completed", "failed", "output_file_id", "error_file_id", "status", "finalizing_at"]
    )
    publish(
        type="batch.output_written",
        org_id=batch.org_id,
        subject=f"batches/{batch.public_id}",
        data={"batch_id": batch.public_id, "files": files},
    )
    return batch


def batch_output_registered(*, data: Mapping[str, Any]) -> None:
    """A batch's output file exists (`file.created`, purpose `batch_output`): the batch is `completed`."""
    if data["purpose"] != OUTPUT_PURPOSE:
        return
    Batch.objects.filter(output_file_id=data["file_id"], status=BatchStatus.FINALIZING).update(
        status=BatchStatus.COMPLETED, completed_at=timezone.now()
    )
