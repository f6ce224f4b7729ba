"""Logged requests as a file the dataset service imports: JSON Lines or CSV, text plus predicted labels.

JSON Lines rows are the classifier format `{"text": ..., "labels": {"<head>": ["<label>", ...]}}`; CSV rows
have a `text` column and one column per head (several labels of a multi-label head joined by `|`, the
dataset importer's default separator). Upload either to `POST /api/v1/orgs/{org}/datasets`, correct the
labels that are wrong, snapshot and retrain: the model learns from the traffic it actually sees.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator, Sequence

from services.inference.models import RequestLogEntry

FORMATS = {"jsonl": "application/x-ndjson", "csv": "text/csv"}


def _labels(entry: RequestLogEntry, head: str) -> list[str]:
    return [label for label in entry.prediction.get(head, {}).get("labels") or [] if label is not None]


def request_log_jsonl(entries: Iterable[RequestLogEntry], heads: Sequence[str]) -> Iterator[str]:
    for entry in entries:
        row = {"text": entry.text, "labels": {head: _labels(entry, head) for head in heads}}
        yield json.dumps(row, ensure_ascii=False) + "\n"


def request_log_csv(entries: Iterable[RequestLogEntry], heads: Sequence[str]) -> Iterator[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer)

    def flush() -> str:
        text = buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        return text

    writer.writerow(["text", *heads])
    yield flush()
    for entry in entries:
        writer.writerow([entry.text, *("|".join(_labels(entry, head)) for head in heads)])
        yield flush()


def request_log_export(
    entries: Iterable[RequestLogEntry], heads: Sequence[str], *, format: str
) -> Iterator[str]:
    return request_log_csv(entries, heads) if format == "csv" else request_log_jsonl(entries, heads)
