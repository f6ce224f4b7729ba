"""The dataset's column mapping and what it makes of a row's cells (stored labels and problems)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from services.dataset import conf
from services.dataset.importing import (
    mapping_from_dict,
)
from services.dataset.importing.mapping import DatasetMapping
from services.dataset.models import Dataset
from services.dataset.validation import InputKind, RowPlan, stored_labels


def dataset_mapping(dataset: Dataset) -> DatasetMapping:
    return mapping_from_dict(dataset.mapping, columns=dataset.columns)


def row_plan(columns: Sequence[str], mapping: DatasetMapping) -> RowPlan:
    """How rows are read under the dataset's mapping (for the rows' stored labels and flags)."""
    input_kind: InputKind = "text"
    if mapping.input_column is not None and mapping.column(mapping.input_column).role == "image":
        input_kind = "image"
    return RowPlan(
        columns=columns,
        input_column=mapping.input_column,
        label_columns=mapping.label_columns,
        input_kind=input_kind,
        max_tokens=conf.setting("ARBITER_SNAPSHOT_MAX_TOKENS"),
    )


def row_derived(plan: RowPlan, cells: Sequence[Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    _, labels, problems = plan.derive(cells)
    return stored_labels(labels), problems
