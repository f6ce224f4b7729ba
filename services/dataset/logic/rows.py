"""Rows: added, edited and deleted one at a time, each change kept with who and when."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from django.db import transaction
from django.utils import timezone

from arbiter.api.errors import ApiError
from services.dataset.conf import DB
from services.dataset.importing import (
    LabelError,
)
from services.dataset.importing.mapping import DatasetMapping
from services.dataset.logic.images import images_fetch_queue
from services.dataset.logic.mapping import dataset_mapping, row_derived, row_plan
from services.dataset.logic.rowfeed import dataset_rows_publish
from services.dataset.logic.rowstore import reserve_numbers
from services.dataset.models import Dataset, DatasetChange, DatasetJob, Row
from services.dataset.validation import cell_for_labels


def _cells_with(
    *,
    dataset: Dataset,
    mapping: DatasetMapping,
    cells: list[Any],
    text: str | None,
    values: Mapping[str, Any] | None,
    labels: Mapping[str, Any] | None,
) -> list[Any]:
    cells = list(cells) + [None] * (len(dataset.columns) - len(cells))
    positions = {name: index for index, name in enumerate(dataset.columns)}
    for name, value in (values or {}).items():
        if name not in positions:
            raise ApiError(status=400, code="unknown_column", message=f"cells: no column named {name!r}")
        cells[positions[name]] = value
    if text is not None:
        if mapping.input_column is None:
            raise ApiError(
                status=400, code="no_input_column", message="text: the dataset's mapping has no input column"
            )
        cells[positions[mapping.input_column]] = text
    heads = {column.head: column for column in mapping.label_columns}
    for head, value in (labels or {}).items():
        column = heads.get(head)
        if column is None:
            raise ApiError(
                status=400,
                code="unknown_head",
                message=f"labels: no head named {head!r} (heads: {', '.join(map(str, heads)) or 'none'})",
            )
        if value is not None and (not isinstance(value, list) or not all(isinstance(v, str) for v in value)):
            raise ApiError(status=400, code="invalid", message=f"labels.{head}: a list of labels, or null")
        index = positions[column.name]
        try:
            cells[index] = cell_for_labels(column, value, cells[index])
        except LabelError as exc:
            raise ApiError(status=400, code=exc.code, message=f"labels.{head}: {exc}") from None
    return cells


def _check_rows_editable(dataset: Dataset) -> None:
    if DatasetJob.objects.filter(
        dataset=dataset, kind=DatasetJob.KIND_REMAP, state__in=[DatasetJob.QUEUED, DatasetJob.RUNNING]
    ).exists():
        raise ApiError(
            status=409, code="dataset_busy", message="the rows are being re-read after a mapping change"
        )


def _named(dataset: Dataset, cells: Sequence[Any]) -> dict[str, Any]:
    return {name: cells[i] if i < len(cells) else None for i, name in enumerate(dataset.columns)}


def row_create(
    *,
    dataset: Dataset,
    actor: str,
    text: str | None = None,
    cells: Mapping[str, Any] | None = None,
    labels: Mapping[str, Any] | None = None,
) -> Row:
    _check_rows_editable(dataset)
    mapping = dataset_mapping(dataset)
    values = _cells_with(dataset=dataset, mapping=mapping, cells=[], text=text, values=cells, labels=labels)
    derived_labels, problems = row_derived(row_plan(dataset.columns, mapping), values)
    with transaction.atomic(using=DB):
        number = reserve_numbers(dataset.pk, 1)
        row = Row.objects.create(
            dataset=dataset,
            number=number,
            cells=values,
            labels=derived_labels,
            problems=problems,
            is_valid=not problems,
        )
        DatasetChange.objects.create(
            dataset=dataset,
            action=DatasetChange.ADD,
            row_number=number,
            actor=actor,
            after=_named(dataset, values),
        )
        dataset_rows_publish(dataset=dataset, rows=[row])
        images_fetch_queue(dataset=dataset, actor=actor)
    row.refresh_from_db()
    return row


LABEL_SOURCES = ("import", "human", "llm", "model")


def label_source(actor: str) -> str:
    """A label's source as the rows grid filters it: the annotation service's sources as they come
    (`human:user:4`, `llm:...`, `model:...`), and a person or key editing through the dataset API as `human:`."""
    return actor if actor.split(":", 1)[0] in LABEL_SOURCES else f"human:{actor}"


def row_update(
    *,
    row: Row,
    actor: str,
    text: str | None = None,
    cells: Mapping[str, Any] | None = None,
    labels: Mapping[str, Any] | None = None,
    announce: bool = True,
) -> Row:
    """Change a row's cells; `announce=False` leaves announcing it (`dataset_rows_publish`) to the caller."""
    dataset = row.dataset
    _check_rows_editable(dataset)
    mapping = dataset_mapping(dataset)
    values = _cells_with(
        dataset=dataset, mapping=mapping, cells=row.cells, text=text, values=cells, labels=labels
    )
    before = _named(dataset, row.cells)
    after = _named(dataset, values)
    changed = {name: value for name, value in after.items() if before.get(name) != value}
    if not changed:
        return row
    row.cells = values
    row.labels, row.problems = row_derived(row_plan(dataset.columns, mapping), values)
    row.is_valid = not row.problems
    label_columns = {column.name for column in mapping.label_columns}
    action = DatasetChange.RELABEL if set(changed) <= label_columns else DatasetChange.EDIT
    row.label_sources = {
        **row.label_sources,
        **{column.head: label_source(actor) for column in mapping.label_columns if column.name in changed},
    }
    with transaction.atomic(using=DB):
        row.updated_at = timezone.now()
        row.save(update_fields=["cells", "labels", "label_sources", "problems", "is_valid", "updated_at"])
        DatasetChange.objects.create(
            dataset=dataset,
            action=action,
            row_number=row.number,
            actor=actor,
            before={name: before.get(name) for name in changed},
            after=changed,
        )
        if announce:
            dataset_rows_publish(dataset=dataset, rows=[row])
        if any(mapping.column(name).role == "image" for name in changed):
            images_fetch_queue(dataset=dataset, actor=actor)
    return row


def row_delete(*, row: Row, actor: str) -> None:
    dataset = row.dataset
    _check_rows_editable(dataset)
    with transaction.atomic(using=DB):
        DatasetChange.objects.create(
            dataset=dataset,
            action=DatasetChange.DELETE,
            row_number=row.number,
            actor=actor,
            before=_named(dataset, row.cells),
        )
        dataset_rows_publish(dataset=dataset, deleted=[row.number])
        row.delete()
