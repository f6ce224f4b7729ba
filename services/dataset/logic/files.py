"""Files of the OpenAI- and Mistral-compatible files API (`/v1/files`).

A training file (purpose `fine-tune`) is a JSONL of `{"text": ..., "labels": {<head>: [<label>, ...]}}`
(a head given as one string is multi-class, as a list multi-label). It becomes a dataset (a `text` column and
one label column per head) and that dataset's snapshot at once: a file never changes, so it is one snapshot
for good, and the training service learns of both by events (`snapshot.created`, then `file.created`). A line
that is not such an object is a 422 naming the line, and nothing is stored.

Other purposes (`batch`) are kept as uploaded, in the blob store, for the service that reads them.
"""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Mapping
from typing import Any

from django.db import transaction
from django.utils import timezone

from arbiter.api.errors import ApiError
from arbiter.api.keyscoped import invalid_at
from arbiter.events import publish
from arbiter.tenancy.scoping import org_scope
from services.dataset import conf
from services.dataset.conf import DB
from services.dataset.logic.datasets import dataset_create_from_rows
from services.dataset.logic.snapshots import snapshot_create
from services.dataset.models import File, Snapshot

TEXT_COLUMN = "text"
PURPOSES = (File.FINE_TUNE, File.BATCH)
# Separates a multi-label cell's labels in the dataset (the mapping's `separator`).
SEPARATOR = "|"


def _file_loc(line: int | None = None) -> list[str | int]:
    where: list[str | int] = ["line", line] if line is not None else []
    return ["body", "file", *where]


def _training_rows(data: bytes) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """The dataset rows of a training file and its heads (`{name: {"multi": bool, "labels": [..]}}`)."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise invalid_at(
            _file_loc(), f"a training file is UTF-8 JSONL; byte {error.start} is not UTF-8."
        ) from None
    rows: list[dict[str, Any]] = []
    heads: dict[str, dict[str, Any]] = {}
    max_rows = conf.setting("ARBITER_IMPORT_MAX_ROWS")
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        if len(rows) >= max_rows:
            raise invalid_at(_file_loc(number), f"a training file has at most {max_rows} lines.")
        rows.append(_training_row(line, number, heads))
    if not rows:
        raise invalid_at(_file_loc(), "the training file has no lines; give one JSON object per line.")
    for row in rows:
        for name, head in heads.items():
            value = row.get(name)
            if isinstance(value, list):
                row[name] = SEPARATOR.join(value) if value else None
            elif isinstance(value, str) and head["multi"]:
                row[name] = value
    return rows, heads


def _training_row(line: str, number: int, heads: dict[str, dict[str, Any]]) -> dict[str, Any]:
    expected = 'expected {"text": "...", "labels": {"<head>": ["<label>", ...]}}'
    try:
        sample = json.loads(line)
    except json.JSONDecodeError as error:
        raise invalid_at(
            _file_loc(number), f"not valid JSON ({error.msg} at column {error.colno})."
        ) from None
    if not isinstance(sample, dict):
        raise invalid_at(_file_loc(number), f"not a JSON object; {expected}.")
    text = sample.get("text")
    if not isinstance(text, str) or not text.strip():
        raise invalid_at(_file_loc(number), f"'text' must be a non-empty string; {expected}.")
    labels = sample.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise invalid_at(_file_loc(number), f"'labels' must be an object with at least one head; {expected}.")
    row: dict[str, Any] = {TEXT_COLUMN: text}
    for name, value in labels.items():
        if not name.strip() or name == TEXT_COLUMN:
            raise invalid_at(_file_loc(number), f"{name!r} cannot name a head.")
        values = value if isinstance(value, list) else [value]
        if not all(isinstance(v, str) and v.strip() and SEPARATOR not in v for v in values):
            raise invalid_at(
                _file_loc(number),
                f"labels.{name} must be a label or a list of labels (non-empty strings without '{SEPARATOR}').",
            )
        head = heads.setdefault(name, {"multi": False, "labels": []})
        head["multi"] = head["multi"] or isinstance(value, list)
        head["labels"] += [v for v in values if v not in head["labels"]]
        row[name] = value
    return row


def _mapping(heads: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {
        "input_column": TEXT_COLUMN,
        "columns": [
            {"name": TEXT_COLUMN, "role": "text"},
            *(
                {
                    "name": name,
                    "role": "label",
                    "head": name,
                    "format": "multi" if head["multi"] else "single",
                    "labels": head["labels"],
                    **({"separator": SEPARATOR} if head["multi"] else {}),
                }
                for name, head in heads.items()
            ),
        ],
    }


def file_create(*, org_id: int, actor: str, data: bytes, filename: str, purpose: str) -> File:
    """Store an uploaded file; a training file also becomes a dataset and its snapshot (see the module)."""
    if purpose not in PURPOSES:
        raise invalid_at(["body", "purpose"], f"give one of {', '.join(PURPOSES)}; got {purpose!r}.")
    with org_scope(org_id):
        dataset = snapshot = None
        num_lines = sum(1 for line in data.splitlines() if line.strip())
        if purpose == File.FINE_TUNE:
            rows, heads = _training_rows(data)
            num_lines = len(rows)
            try:
                dataset, _ = dataset_create_from_rows(
                    org_id=org_id, actor=actor, name=filename, rows=rows, mapping=_mapping(heads)
                )
                snapshot = snapshot_create(
                    dataset=dataset,
                    actor=actor,
                    input_column=TEXT_COLUMN,
                    label_columns=list(heads),
                    type=Snapshot.TEXT,
                    name=filename,
                )
            except ApiError as error:
                raise invalid_at(_file_loc(), error.message) from None
        blob, _, size = conf.blob_store().put_content_addressed("files", io.BytesIO(data), suffix=".jsonl")
        with transaction.atomic(using=DB):
            file = File.objects.create(
                org_id=org_id,
                public_id=str(uuid.uuid4()),
                filename=filename[:300],
                purpose=purpose,
                bytes=size,
                num_lines=num_lines,
                blob=blob,
                dataset=dataset,
                snapshot=snapshot,
                created_by=actor,
            )
            publish(
                type="file.created",
                org_id=org_id,
                subject=f"files/{file.public_id}",
                data={
                    "file_id": file.public_id,
                    "purpose": purpose,
                    "filename": file.filename,
                    "bytes": size,
                    "num_lines": num_lines,
                    "blob": blob,
                    "dataset_id": dataset.pk if dataset else None,
                    "snapshot_id": snapshot.pk if snapshot else None,
                },
            )
        return file


def file_delete(*, file: File) -> None:
    """Delete a file: it is gone from the API (its dataset and snapshot stay, like any other)."""
    with transaction.atomic(using=DB):
        file.deleted_at = timezone.now()
        file.save(update_fields=["deleted_at"])
        publish(
            type="file.deleted",
            org_id=file.org_id,
            subject=f"files/{file.public_id}",
            data={"file_id": file.public_id, "purpose": file.purpose},
        )


def file_register_batch_output(*, org_id: int, data: Mapping[str, Any]) -> list[File]:
    """Register a batch's output and error files, written by the inference service, under the ids it chose
    (purpose `batch_output`), and announce each by `file.created`; idempotent."""
    files = []
    for item in data["files"]:
        file, created = File.objects.get_or_create(
            public_id=item["file_id"],
            defaults={
                "org_id": org_id,
                "filename": item["filename"][:300],
                "purpose": File.BATCH_OUTPUT,
                "bytes": item["bytes"],
                "num_lines": item["num_lines"],
                "blob": item["blob"],
                "source": "mistral",
                "created_by": f"batch:{data['batch_id']}",
            },
        )
        if created:
            publish(
                type="file.created",
                org_id=org_id,
                subject=f"files/{file.public_id}",
                data={
                    "file_id": file.public_id,
                    "purpose": file.purpose,
                    "filename": file.filename,
                    "bytes": file.bytes,
                    "num_lines": file.num_lines,
                    "blob": file.blob,
                    "dataset_id": None,
                    "snapshot_id": None,
                    "batch_id": data["batch_id"],
                },
            )
        files.append(file)
    return files
