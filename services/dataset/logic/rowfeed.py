"""The dataset's side of annotation: rows go out, accepted labels come in, by events only.

The annotation service keeps its own copy of what it labels (each row's number, text and labels). After an
import or a mapping change every row is exported to the blob store as JSONL and announced by
`dataset.rows_changed` (`full`); an edit, addition or deletion of a few rows sends them inline. Labels a
person accepted in the annotation service arrive as `labels.accepted` and are applied here as relabels,
recorded in the change history with their source (`llm:<agent>` or `human:user:<id>`) as the author. A head
the dataset does not have yet (annotation of an unlabeled dataset) is added as a label column.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from django.db import transaction
from django.utils import timezone

from arbiter.api.errors import ApiError
from arbiter.events import publish
from services.dataset import conf
from services.dataset.conf import DB
from services.dataset.importing.mapping import ColumnMapping, DatasetMapping
from services.dataset.logic.mapping import dataset_mapping
from services.dataset.models import Dataset, Row
from services.dataset.selectors import rows_visible

logger = logging.getLogger(__name__)

FEED_BATCH = 5000
# Up to this many changed rows travel inside the event; more are exported whole.
INLINE_ROWS = 200


def _header(dataset: Dataset, mapping: DatasetMapping) -> dict[str, Any]:
    return {
        "dataset_id": dataset.pk,
        "name": dataset.name,
        "input_column": mapping.input_column,
        "heads": [
            {"name": column.head or column.name, "labels": list(column.labels) if column.labels else None}
            for column in mapping.label_columns
        ],
    }


def _rows_out(
    dataset: Dataset, mapping: DatasetMapping, rows: Iterable[tuple[int, list[Any], dict[str, Any]]]
) -> Iterator[dict[str, Any]]:
    index = dataset.columns.index(mapping.input_column) if mapping.input_column in dataset.columns else None
    for number, cells, labels in rows:
        text = cells[index] if index is not None and index < len(cells) else None
        yield {
            "number": number,
            "text": None if text is None else str(text),
            "labels": {head: list(values) for head, values in (labels or {}).items()},
        }


def dataset_rows_publish_all(*, dataset: Dataset) -> None:
    """Export every visible row and announce it; call inside the dataset's transaction."""
    mapping = dataset_mapping(dataset)
    buffer = io.BytesIO()
    query = rows_visible(dataset=dataset).order_by("number").values_list("number", "cells", "labels")
    for row in _rows_out(dataset, mapping, query.iterator(chunk_size=FEED_BATCH)):
        buffer.write(json.dumps(row, ensure_ascii=False).encode() + b"\n")
    buffer.seek(0)
    key, _, _ = conf.blob_store().put_content_addressed("exports", buffer, suffix=".jsonl")
    publish(
        type="dataset.rows_changed",
        org_id=dataset.org_id,
        subject=f"datasets/{dataset.pk}",
        data={**_header(dataset, mapping), "full": True, "blob": key},
    )


def dataset_rows_publish(*, dataset: Dataset, rows: Sequence[Row] = (), deleted: Sequence[int] = ()) -> None:
    """Announce a few changed or deleted rows; call inside the dataset's transaction."""
    if len(rows) + len(deleted) > INLINE_ROWS:
        dataset_rows_publish_all(dataset=dataset)
        return
    mapping = dataset_mapping(dataset)
    publish(
        type="dataset.rows_changed",
        org_id=dataset.org_id,
        subject=f"datasets/{dataset.pk}",
        data={
            **_header(dataset, mapping),
            "full": False,
            "rows": list(_rows_out(dataset, mapping, ((r.number, r.cells, r.labels) for r in rows))),
            "deleted_rows": list(deleted),
        },
    )


def dataset_deleted_publish(*, dataset: Dataset) -> None:
    publish(
        type="dataset.rows_changed",
        org_id=dataset.org_id,
        subject=f"datasets/{dataset.pk}",
        data={"dataset_id": dataset.pk, "name": dataset.name, "heads": [], "full": True, "deleted": True},
    )


def _head_column(
    dataset: Dataset, mapping: DatasetMapping, *, head: str, labels: Sequence[str], multi_label: bool
) -> DatasetMapping:
    """The mapping with a label column for `head`, added (at the end, empty in every row) if missing."""
    if any((column.head or column.name) == head for column in mapping.label_columns):
        return mapping
    name = head
    while name in dataset.columns:
        name = f"{name} (labels)"
    column = ColumnMapping(
        name=name, role="label", head=head, format="multi" if multi_label else "single", labels=tuple(labels)
    )
    dataset.columns = [*dataset.columns, name]
    updated = DatasetMapping(columns=(*mapping.columns, column), input_column=mapping.input_column)
    dataset.mapping = updated.as_dict()
    dataset.updated_at = timezone.now()
    dataset.save(update_fields=["columns", "mapping", "updated_at"])
    return updated


def labels_apply(*, org_id: int, data: Mapping[str, Any]) -> int:
    """Apply `labels.accepted`: relabel each named row that still exists (and set its text where a reviewer
    edited it); returns how many changed.

    Runs in the consumer's transaction. A row deleted meanwhile is skipped; a label the head does not take is
    logged and skipped (the rest still apply), since a consumer cannot answer anyone.
    """
    from services.dataset.logic.rows import row_update  # rows imports this module's publishers

    dataset = Dataset.objects.select_for_update().filter(pk=int(data["dataset_id"])).first()
    if dataset is None:
        return 0
    head = str(data["head"])
    _head_column(
        dataset,
        dataset_mapping(dataset),
        head=head,
        labels=list(data["schema_labels"]),
        multi_label=bool(data.get("multi_label", False)),
    )
    wanted = {int(item["number"]): item for item in data["rows"]}
    changed: list[Row] = []
    with transaction.atomic(using=DB):
        for row in Row.objects.filter(dataset=dataset, number__in=list(wanted)).order_by("number"):
            item = wanted[row.number]
            before = row.updated_at
            try:
                updated = row_update(
                    row=row,
                    actor=str(item["source"])[:64],
                    text=item.get("text"),
                    labels={head: list(item["labels"])},
                    announce=False,
                )
            except ApiError as exc:
                logger.warning(
                    "accepted labels not applied to a row",
                    extra={"dataset_id": dataset.pk, "row": row.number, "reason": exc.error_code},
                )
                continue
            if updated.updated_at != before:
                changed.append(updated)
        dataset_rows_publish(dataset=dataset, rows=changed)
    return len(changed)
