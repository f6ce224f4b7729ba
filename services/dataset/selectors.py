"""Reads of the dataset service. Every query goes through the org-scoped managers."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from django.db.models import Count, Max, Q, QuerySet
from django.db.models.fields.json import HasKey, KeyTransform

from services.dataset.models import Dataset, DatasetChange, DatasetJob, File, Row, RowImage, Snapshot

EXPORT_BATCH = 2000
# Cells starting with these make spreadsheet programs evaluate a formula (CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def dataset_list() -> QuerySet[Dataset]:
    return Dataset.objects.all()


def dataset_get(*, dataset_id: int | str) -> Dataset:
    """The dataset, or Dataset.DoesNotExist (the view turns it into the same 404 as another org's)."""
    return Dataset.objects.get(pk=int(dataset_id))


def _without_unfinished_imports(rows: QuerySet[Row], jobs: QuerySet[DatasetJob]) -> QuerySet[Row]:
    unfinished = jobs.filter(kind=DatasetJob.KIND_IMPORT).exclude(state=DatasetJob.COMPLETED)
    return rows.exclude(job__in=unfinished.values("pk"))


def rows_visible(*, dataset: Dataset) -> QuerySet[Row]:
    """The dataset's rows, without those of imports that are still running or failed."""
    return _without_unfinished_imports(
        Row.objects.filter(dataset=dataset), DatasetJob.objects.filter(dataset=dataset)
    )


def dataset_row_counts(*, dataset: Dataset) -> dict[str, int]:
    counts = rows_visible(dataset=dataset).aggregate(
        total=Count("pk"), valid=Count("pk", filter=Q(is_valid=True))
    )
    return {
        "rows": counts["total"],
        "valid_rows": counts["valid"],
        "invalid_rows": counts["total"] - counts["valid"],
    }


@dataclass(frozen=True)
class DatasetStatus:
    """A dataset's latest job and its visible rows' counts (`rows`, `valid_rows`, `invalid_rows`)."""

    job: DatasetJob | None
    counts: dict[str, int]


def dataset_statuses(*, datasets: Sequence[Dataset]) -> dict[int, DatasetStatus]:
    """The status of each dataset, by id, in two queries however many datasets there are (list pages)."""
    ids = [dataset.pk for dataset in datasets]
    if not ids:
        return {}
    jobs = DatasetJob.objects.filter(dataset_id__in=ids)
    latest_ids = (
        jobs.exclude(kind=DatasetJob.KIND_FETCH_IMAGES)
        .order_by()
        .values("dataset_id")
        .annotate(latest=Max("pk"))
        .values("latest")
    )
    latest = {job.dataset_id: job for job in DatasetJob.objects.filter(pk__in=latest_ids)}
    counted = (
        _without_unfinished_imports(Row.objects.filter(dataset_id__in=ids), jobs)
        .order_by()
        .values("dataset_id")
        .annotate(total=Count("pk"), valid=Count("pk", filter=Q(is_valid=True)))
    )
    totals = {c["dataset_id"]: (c["total"], c["valid"]) for c in counted}
    statuses = {}
    for dataset_id in ids:
        total, valid = totals.get(dataset_id, (0, 0))
        counts = {"rows": total, "valid_rows": valid, "invalid_rows": total - valid}
        statuses[dataset_id] = DatasetStatus(job=latest.get(dataset_id), counts=counts)
    return statuses


def rows_filtered(
    *,
    dataset: Dataset,
    input_column: str | None,
    q: str | None = None,
    head: str | None = None,
    label: str | None = None,
    invalid: bool | None = None,
    source: str | None = None,
) -> QuerySet[Row]:
    """Rows for the preview: `q` searches the input text (case-insensitive); `head` keeps rows the head
    applies to, `label` (with `head`) those with that label, `source` (with `head`) those whose labels on it
    came from there (`import`, or the start of a source: `human`, `human:user:4`, `llm`, `model:toxicity.v2`);
    `invalid` keeps invalid (True) or valid rows."""
    rows = rows_visible(dataset=dataset)
    if q and input_column is not None and input_column in dataset.columns:
        rows = rows.filter(**{f"cells__{dataset.columns.index(input_column)}__icontains": q})
    if head and label:
        rows = rows.filter(HasKey(KeyTransform(head, "labels"), label))
    elif head:
        rows = rows.filter(labels__has_key=head)
    if head and source == "import":
        rows = rows.filter(labels__has_key=head).exclude(label_sources__has_key=head)
    elif head and source:
        rows = rows.filter(**{f"label_sources__{head}__startswith": source})
    if invalid is not None:
        rows = rows.filter(is_valid=not invalid)
    return rows.order_by("number")


def row_get(*, dataset: Dataset, number: int | str) -> Row:
    return rows_visible(dataset=dataset).select_related("dataset").get(number=int(number))


def job_list(*, dataset: Dataset) -> QuerySet[DatasetJob]:
    return DatasetJob.objects.filter(dataset=dataset)


def job_latest(*, dataset: Dataset) -> DatasetJob | None:
    """The latest import or remap (the dataset's state); image fetches are `image_fetch_latest`."""
    return (
        DatasetJob.objects.filter(dataset=dataset)
        .exclude(kind=DatasetJob.KIND_FETCH_IMAGES)
        .order_by("-id")
        .first()
    )


def image_fetch_latest(*, dataset: Dataset) -> DatasetJob | None:
    return (
        DatasetJob.objects.filter(dataset=dataset, kind=DatasetJob.KIND_FETCH_IMAGES).order_by("-id").first()
    )


def job_get(*, dataset: Dataset, job_id: int | str) -> DatasetJob:
    return DatasetJob.objects.get(dataset=dataset, pk=int(job_id))


def change_list(*, dataset: Dataset, row_number: int | None = None) -> QuerySet[DatasetChange]:
    changes = DatasetChange.objects.filter(dataset=dataset)
    return changes.filter(row_number=row_number) if row_number is not None else changes


def snapshot_list(*, dataset_id: int | str | None = None) -> QuerySet[Snapshot]:
    snapshots = Snapshot.objects.defer("invalid_rows", "report")
    return snapshots.filter(dataset_id=int(dataset_id)) if dataset_id is not None else snapshots


def snapshot_get(*, snapshot_id: int | str) -> Snapshot:
    return Snapshot.objects.get(pk=int(snapshot_id))


def neutralise_formula(value: str) -> str:
    return "'" + value if value.startswith(FORMULA_STARTS) else value


def _export_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return neutralise_formula(value)
    return neutralise_formula(json.dumps(value, ensure_ascii=False))


def dataset_export_csv(*, dataset: Dataset) -> Iterator[str]:
    """The dataset's rows as CSV text, in chunks: a `row` column, then the dataset's columns, verbatim except
    that a cell a spreadsheet would run as a formula starts with an apostrophe."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow([neutralise_formula(name) for name in ["row", *dataset.columns]])
    width = len(dataset.columns)
    last = 0
    while True:
        chunk = list(
            rows_visible(dataset=dataset)
            .filter(number__gt=last)
            .order_by("number")
            .values_list("number", "cells")[:EXPORT_BATCH]
        )
        if not chunk:
            break
        for number, cells in chunk:
            padded = list(cells) + [None] * (width - len(cells))
            writer.writerow([number, *(_export_cell(value) for value in padded[:width])])
        last = chunk[-1][0]
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
    yield buffer.getvalue()


def file_list(*, purpose: str | None = None) -> QuerySet[File]:
    """The org's files of the compatibility files API, newest first (deleted ones are gone)."""
    files = File.objects.filter(deleted_at__isnull=True)
    return files.filter(purpose=purpose) if purpose else files


def file_get(*, file_id: str) -> File:
    """The file, or File.DoesNotExist: another org's answers like a missing one."""
    return File.objects.get(public_id=file_id, deleted_at__isnull=True)


def row_image_by_hash(*, dataset: Dataset, sha256: str) -> RowImage | None:
    """A fetched image of this dataset with this hash (None: no row of the dataset has it)."""
    if len(sha256) != 64 or not all(c in "0123456789abcdef" for c in sha256):
        return None
    return RowImage.objects.filter(dataset=dataset, sha256=sha256, state=RowImage.FETCHED).first()


def image_counts(*, dataset: Dataset) -> dict[str, int]:
    """How many image cells are fetched and failed."""
    counts = RowImage.objects.filter(dataset=dataset).aggregate(
        fetched=Count("pk", filter=Q(state=RowImage.FETCHED)),
        failed=Count("pk", filter=Q(state=RowImage.FAILED)),
    )
    return {"fetched": counts["fetched"], "failed": counts["failed"]}
