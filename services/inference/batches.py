"""Batches of the OpenAI-compatible batches API (`/v1/batches`) and Mistral's batch jobs (`/v1/batch/jobs`):
an input file's requests classified in the background, answers written as an output file.

The files are the dataset service's. This service learns of a batch input file by `file.created` (its
`BatchFile` read model keeps the blob key) and reads the bytes from the blob store. Creating a batch checks
the whole file at once (a line that is not `{custom_id, method: "POST", url: <endpoint>, body: {..}}` is a
400 naming the line, and no batch is made). A file uploaded a moment ago may not have reached this service yet:
a batch naming it waits for it (`awaiting_files`), is checked when it arrives (failed, naming the line, if
broken) and fails naming the file after ARBITER_WAIT_FOR_EVENTS_SECONDS.

The batch worker (`arbiter inference_batches`, `batches_work`) runs batches outside any consumer transaction, a
chunk of requests per transaction, so a batch is visibly `in_progress` with its request counts growing and can
be cancelled midway (what was answered is kept as its output). Lines are classified many texts per model call
through the same serving path as `/v1/moderations` (usage is metered as for single calls). The output and error
JSONL go to the blob store and `batch.output_written` asks the dataset service to register them as files
(purpose `batch_output`); the batch turns `completed` (or `cancelled`) when its output file exists.

A line whose request fails (an unknown `model`, an empty input) goes to the error file with the status and
message a single call would have answered; the other lines still complete.
"""

from __future__ import annotations

import csv
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
from arbiter.tenancy.scoping import org_scope
from services.inference import compat, selectors
from services.inference.conf import inference_settings
from services.inference.logic import ALIAS, Caller, deployment_classify, inputs_validate
from services.inference.models import Batch, BatchFile, BatchLine, BatchStatus, Deployment

ENDPOINTS = ("/v1/moderations", "/v1/classifications")
COMPLETION_WINDOWS = {"24h": timedelta(hours=24)}
BATCH_PURPOSE = "batch"
OUTPUT_PURPOSE = "batch_output"
# Mistral's inline `requests`: a batch small enough to send in the request body.
INLINE_MAX = 10_000
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


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def _file_requests(
    batch_file: BatchFile, *, endpoint: str, api: str, where: str, model: str
) -> list[_Request]:
    return _requests(
        get_blob_store().get_bytes(batch_file.blob), endpoint=endpoint, api=api, where=where, model=model
    )


def _inline_requests(raw: Any, *, endpoint: str, model: str) -> list[_Request]:
    """Mistral's inline `requests` (`[{custom_id?, body}]`), checked like a file's lines."""
    if not isinstance(raw, list) or not raw:
        raise _bad("requests", "give a list of {custom_id, body} objects (or input_files instead).")
    if len(raw) > INLINE_MAX:
        raise _bad("requests", f"at most {INLINE_MAX} inline requests; upload a batch file for more.")
    lines = "\n".join(json.dumps(item) for item in raw).encode()
    return _requests(lines, endpoint=endpoint, api=Batch.MISTRAL, where="requests", model=model)


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
    inline: Any = None,
) -> Batch:
    """Check the request and the input files this service already has, and accept the batch (`validating`
    until the worker takes it; waiting for input files not announced yet).

    OpenAI's batch has one input file (`input_file_id`), Mistral's job a list (`input_files`) or inline
    `requests`, and a `model`."""
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
    requests: list[_Request] = []
    awaiting: list[str] = []
    if inline is not None:
        if input_file_ids:
            raise _bad("requests", "give input_files or inline requests, not both.")
        requests = _inline_requests(inline, endpoint=endpoint, model=model or "")
        input_file_ids = []
    elif (
        not isinstance(input_file_ids, list)
        or not input_file_ids
        or not all(isinstance(file_id, str) and file_id for file_id in input_file_ids)
    ):
        raise _bad(where, "give the id of a file uploaded with purpose 'batch'.")
    for file_id in input_file_ids:
        batch_file = BatchFile.objects.filter(file_id=file_id).first()
        if batch_file is None:
            # A file just uploaded may still be on its way (`file.created`): wait for it. An id the files API
            # never makes, or another org's file, is no file of this org's.
            if _is_uuid(file_id) and not BatchFile.objects.unscoped().filter(file_id=file_id).exists():
                awaiting.append(file_id)
                continue
            raise _bad(
                where,
                f"no batch file with id '{file_id}' in this org (upload it with purpose 'batch').",
                status=404,
                code="not_found",
            )
        requests += _file_requests(batch_file, endpoint=endpoint, api=api, where=where, model=model or "")
    if len({request.custom_id for request in requests}) < len(requests):
        raise _bad(where, "custom_id values must be unique across the input files.")
    now = timezone.now()
    with transaction.atomic(using=ALIAS):
        batch = Batch.objects.create(
            org_id=org_id,
            public_id=f"batch_{uuid.uuid4().hex}",
            api=api,
            input_file_id=input_file_ids[0] if input_file_ids else "",
            input_file_ids=input_file_ids,
            awaiting_files=awaiting,
            inline_requests=inline if inline is not None else [],
            model=model or "",
            endpoint=endpoint,
            completion_window=completion_window,
            total=0 if awaiting else len(requests),
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
                "input_file_id": batch.input_file_id,
                "endpoint": endpoint,
                "total": batch.total,
            },
        )
    return batch


def _batch_requests(batch: Batch) -> list[_Request]:
    if batch.inline_requests:
        return _inline_requests(batch.inline_requests, endpoint=batch.endpoint, model=batch.model)
    requests: list[_Request] = []
    where = "input_file_id" if batch.api == Batch.OPENAI else "input_files"
    for file_id in batch.input_file_ids or [batch.input_file_id]:
        batch_file = BatchFile.objects.get(file_id=file_id)
        requests += _file_requests(
            batch_file, endpoint=batch.endpoint, api=batch.api, where=where, model=batch.model
        )
    return requests


def _batch_fail(batch: Batch, *, code: str, message: str, param: str) -> None:
    batch.awaiting_files = []
    batch.status, batch.failed_at = BatchStatus.FAILED, timezone.now()
    batch.errors = [{"code": code, "message": message, "param": param, "line": None}]
    batch.save(update_fields=["awaiting_files", "status", "failed_at", "errors"])


def batches_awaiting_resolve(*, older_than: timedelta) -> int:
    """The worker's check of batches waiting for input files: those whose files have all arrived are checked
    (failed naming the line when one is broken, else ready to run); those that waited longer than `older_than`
    fail naming the file. Returns how many stopped waiting."""
    resolved = 0
    waiting = Batch.objects.unscoped().filter(status=BatchStatus.VALIDATING).exclude(awaiting_files=[])
    for batch_id, org_id in waiting.order_by("id").values_list("pk", "org_id"):
        with transaction.atomic(using=ALIAS), org_scope(org_id):
            batch = (
                Batch.objects.select_for_update().filter(pk=batch_id, status=BatchStatus.VALIDATING).first()
            )
            if batch is None or not batch.awaiting_files:
                continue
            where = "input_file_id" if batch.api == Batch.OPENAI else "input_files"
            known = set(
                BatchFile.objects.filter(file_id__in=batch.awaiting_files).values_list("file_id", flat=True)
            )
            missing = [file_id for file_id in batch.awaiting_files if file_id not in known]
            if missing:
                if batch.created_at >= timezone.now() - older_than:
                    continue
                _batch_fail(
                    batch,
                    code="not_found",
                    message=f"{where}: no batch file with id '{missing[0]}' reached the inference service (upload "
                    "it with purpose 'batch'; if you did, check that the event relay and consumers are running).",
                    param=where,
                )
            else:
                try:
                    requests = _batch_requests(batch)
                    if len({request.custom_id for request in requests}) < len(requests):
                        raise _bad(where, "custom_id values must be unique across the input files.")
                except ApiError as error:
                    _batch_fail(batch, code=error.error_code, message=error.message, param=where)
                else:
                    batch.awaiting_files, batch.total = [], len(requests)
                    batch.save(update_fields=["awaiting_files", "total"])
            resolved += 1
    return resolved


def batch_cancel(*, batch: Batch) -> Batch:
    """Ask a batch to stop: the worker stops it before its next chunk, keeping what it answered."""
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


def _answer_requests(batch: Batch, requests: Sequence[_Request]) -> dict[str, tuple[str, bool]]:
    """Each request's output or error line (and whether it is an error), many texts per model call."""
    caller = Caller(org_id=batch.org_id, api_key_id=batch.api_key_id, user_id=None)
    endpoint_name = batch.endpoint.rsplit("/", 1)[-1]
    answers: dict[str, tuple[str, bool]] = {}

    def failed(request: _Request, error: ApiError) -> tuple[str, bool]:
        body = {"code": error.error_code, "message": error.message}
        return _line(request.custom_id, status=error.status_code, error=body), True

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
            answers[request.custom_id] = failed(request, error)
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
                answers[request.custom_id] = failed(request, error)
            continue
        for (request, _, texts_field), results in zip(group.requests, answered, strict=True):
            body = _answer(batch.endpoint, texts_field, group.deployment, results, heads)
            answers[request.custom_id] = (_line(request.custom_id, status=200, body=body), False)
    return answers


def _texts(request: _Request) -> int:
    value = request.body.get("input", request.body.get("inputs"))
    return len(value) if isinstance(value, list) else 1


def _next_chunk(requests: Sequence[_Request], cursor: int) -> list[_Request]:
    """The requests of the next transaction: at least one, then as many as fit one model call's inputs."""
    limit = inference_settings().max_inputs
    chunk, texts = [requests[cursor]], _texts(requests[cursor])
    for request in requests[cursor + 1 :]:
        texts += _texts(request)
        if texts > limit:
            break
        chunk.append(request)
    return chunk


def _files_write(batch: Batch) -> None:
    """Write the answered lines as the output (and error) file and ask for them to be registered; a batch
    with nothing answered (cancelled before its first chunk) has no files and ends here."""
    lines = list(BatchLine.objects.filter(batch=batch).order_by("position"))
    batch.completed = sum(1 for line in lines if not line.error)
    batch.failed = len(lines) - batch.completed
    now = timezone.now()
    if not lines:
        batch.status, batch.cancelled_at = BatchStatus.CANCELLED, now
        batch.save(update_fields=["status", "cancelled_at", "completed", "failed"])
        return
    files: list[dict[str, Any]] = []
    for kind, chosen in (
        ("output", [x for x in lines if not x.error]),
        ("error", [x for x in lines if x.error]),
    ):
        if kind == "error" and not chosen:
            continue
        content = "".join(line.line + "\n" for line in chosen).encode()
        blob, _, size = get_blob_store().put_content_addressed("files", io.BytesIO(content), suffix=".jsonl")
        files.append(
            {
                "file_id": str(uuid.uuid4()),
                "kind": kind,
                "filename": f"{batch.public_id}_{kind}.jsonl",
                "blob": blob,
                "bytes": size,
                "num_lines": len(chosen),
            }
        )
    batch.output_file_id = files[0]["file_id"]
    batch.error_file_id = files[1]["file_id"] if len(files) > 1 else ""
    if batch.status == BatchStatus.IN_PROGRESS:
        batch.status, batch.finalizing_at = BatchStatus.FINALIZING, now
    batch.save(
        update_fields=["completed", "failed", "output_file_id", "error_file_id", "status", "finalizing_at"]
    )
    if batch.api != Batch.CONSOLE:  # the console's downloads are built from the lines
        BatchLine.objects.filter(batch=batch).delete()
    publish(
        type="batch.output_written",
        org_id=batch.org_id,
        subject=f"batches/{batch.public_id}",
        data={"batch_id": batch.public_id, "files": files},
    )


def batch_process(*, batch_id: int, max_chunks: int | None = None) -> Batch | None:
    """Run a batch a chunk of requests per transaction until it is done, cancelled, or `max_chunks` chunks
    were answered (the worker gives every batch a share of each pass). Safe to call again at any point."""
    requests: list[_Request] | None = None
    chunks = 0
    while max_chunks is None or chunks < max_chunks:
        with transaction.atomic(using=ALIAS):
            batch = Batch.objects.select_for_update().filter(pk=batch_id).first()
            if batch is None or batch.awaiting_files:
                return batch
            if batch.status == BatchStatus.CANCELLING:
                if not batch.output_file_id:
                    _files_write(batch)
                return batch
            if batch.status == BatchStatus.VALIDATING:
                now = timezone.now()
                if now >= batch.expires_at:
                    batch.status = BatchStatus.EXPIRED
                    batch.save(update_fields=["status"])
                    return batch
                batch.status, batch.in_progress_at = BatchStatus.IN_PROGRESS, now
                batch.save(update_fields=["status", "in_progress_at"])
                continue
            if batch.status != BatchStatus.IN_PROGRESS:
                return batch
            if requests is None:
                requests = _batch_requests(batch)
            if batch.cursor >= len(requests):
                _files_write(batch)
                return batch
            chunk = _next_chunk(requests, batch.cursor)
            answers = _answer_requests(batch, chunk)
            BatchLine.objects.bulk_create(
                [
                    BatchLine(batch=batch, position=batch.cursor + offset, line=line, error=error)
                    for offset, (line, error) in enumerate(answers[request.custom_id] for request in chunk)
                ]
            )
            batch.cursor += len(chunk)
            batch.failed += sum(1 for _, error in answers.values() if error)
            batch.completed = batch.cursor - batch.failed
            batch.save(update_fields=["cursor", "completed", "failed"])
        chunks += 1
    return batch


def batches_work(*, wait: timedelta, chunks_per_batch: int = 20) -> int:
    """One pass of the batch worker: batches whose input files arrived stop waiting (those waited on too long
    fail), then every runnable batch, oldest first, answers up to `chunks_per_batch` chunks. Returns how many
    batches it ran."""
    batches_awaiting_resolve(older_than=wait)
    runnable = (
        Batch.objects.unscoped()
        .filter(status__in=(BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS, BatchStatus.CANCELLING))
        .filter(awaiting_files=[], output_file_id="")
        .order_by("id")
        .values_list("pk", "org_id")
    )
    ran = 0
    for batch_id, org_id in runnable:
        with org_scope(org_id):
            batch_process(batch_id=batch_id, max_chunks=chunks_per_batch)
        ran += 1
    return ran


def batch_output_registered(*, data: Mapping[str, Any]) -> None:
    """A batch's output file exists (`file.created`, purpose `batch_output`): the batch is `completed`, or,
    cancelled midway, `cancelled` with what it answered."""
    if data["purpose"] != OUTPUT_PURPOSE:
        return
    now = timezone.now()
    Batch.objects.filter(output_file_id=data["file_id"], status=BatchStatus.FINALIZING).update(
        status=BatchStatus.COMPLETED, completed_at=now
    )
    Batch.objects.filter(output_file_id=data["file_id"], status=BatchStatus.CANCELLING).update(
        status=BatchStatus.CANCELLED, cancelled_at=now
    )


# --- the console's batch classify (Hive's batch tasks): a CSV or JSONL of texts against a deployment ------------

TEXT_COLUMNS = ("text", "input", "content", "message")
ID_COLUMNS = ("id", "custom_id")


def console_requests(data: bytes, *, filename: str) -> list[dict[str, Any]]:
    """An uploaded CSV (a `text` column, else the first one; an optional `id` column) or JSONL (objects with
    `text` or `input`, and `id`, or plain JSON strings) as inline requests; a bad row is a 400 naming it."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise _bad("file", f"the file is not UTF-8 (byte {error.start}).") from None
    rows: list[tuple[str | None, Any]] = []
    if filename.lower().endswith((".jsonl", ".ndjson", ".json")):
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as error:
                raise _bad("file", f"line {number} is not valid JSON ({error.msg}).") from None
            if isinstance(item, dict):
                key = next((c for c in TEXT_COLUMNS if c in item), None)
                if key is None:
                    raise _bad("file", f"line {number} has no text field ({', '.join(TEXT_COLUMNS)}).")
                found = next((item[c] for c in ID_COLUMNS if item.get(c) not in (None, "")), None)
                rows.append((None if found is None else str(found), item[key]))
            else:
                rows.append((None, item))
    else:
        reader = csv.reader(io.StringIO(text))
        header = [column.strip().lower() for column in next(reader, [])]
        if not header:
            raise _bad("file", "the file is empty; give a CSV with a header row and a text column.")
        text_at = next((header.index(c) for c in TEXT_COLUMNS if c in header), 0)
        id_at = next((header.index(c) for c in ID_COLUMNS if c in header), None)
        for values in reader:
            if not any(value.strip() for value in values):
                continue
            if text_at >= len(values):
                raise _bad("file", f"row {reader.line_num} has no value in column '{header[text_at]}'.")
            found = values[id_at] if id_at is not None and id_at < len(values) and values[id_at] else None
            rows.append((found, values[text_at]))
    if not rows:
        raise _bad("file", "the file has no rows to classify.")
    return [
        {"custom_id": found if found is not None else str(index + 1), "body": {"input": value}}
        for index, (found, value) in enumerate(rows)
    ]


@dataclass(frozen=True)
class ConsoleResult:
    """One row of a console batch's results: its id and text, and per head the top label and every score (or
    why the row was not classified)."""

    id: str
    text: str
    heads: dict[str, dict[str, Any]]
    error: str


def console_results(batch: Batch) -> list[ConsoleResult]:
    texts = {str(item["custom_id"]): item["body"]["input"] for item in batch.inline_requests}
    results = []
    for line in BatchLine.objects.filter(batch=batch).order_by("position"):
        item = json.loads(line.line)
        custom_id = str(item["custom_id"])
        text = texts.get(custom_id, "")
        if item.get("error"):
            results.append(ConsoleResult(custom_id, str(text), {}, str(item["error"]["message"])))
            continue
        (result,) = item["response"]["body"]["results"]
        heads = {
            name: {"label": max(head["scores"], key=head["scores"].get), "scores": head["scores"]}
            for name, head in result.items()
        }
        results.append(ConsoleResult(custom_id, str(text), heads, ""))
    return results


def console_results_jsonl(results: Sequence[ConsoleResult]) -> str:
    return "".join(
        json.dumps(
            {"id": r.id, "text": r.text, "results": r.heads, "error": r.error or None}, ensure_ascii=False
        )
        + "\n"
        for r in results
    )


def console_results_csv(results: Sequence[ConsoleResult]) -> str:
    """One row per input: `id`, `text`, per head its label and one `<head>:<label>` score column per label,
    and `error`."""
    columns: dict[str, list[str]] = {}
    for result in results:
        for name, head in result.heads.items():
            labels = columns.setdefault(name, [])
            labels += [label for label in head["scores"] if label not in labels]
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(
        ["id", "text"]
        + [
            col
            for name, labels in columns.items()
            for col in [name, *(f"{name}:{label}" for label in labels)]
        ]
        + ["error"]
    )
    for result in results:
        cells: list[Any] = [result.id, result.text]
        for name, labels in columns.items():
            found = result.heads.get(name)
            cells.append(found["label"] if found else "")
            cells += [
                f"{found['scores'][label]:.4f}" if found and label in found["scores"] else ""
                for label in labels
            ]
        writer.writerow([*cells, result.error])
    return out.getvalue()
