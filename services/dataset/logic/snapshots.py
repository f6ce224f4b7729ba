"""Snapshots: the dataset's valid rows frozen into a content-addressed JSONL blob with a validation report."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from django.db import transaction

from arbiter.api.errors import ApiError
from arbiter.events import publish
from services.dataset import conf, selectors
from services.dataset.conf import DB
from services.dataset.importing import ColumnMapping
from services.dataset.importing.mapping import DatasetMapping
from services.dataset.logic.mapping import dataset_mapping
from services.dataset.models import Dataset, DatasetJob, RowImage, Snapshot
from services.dataset.snapshotting import (
    BuiltSnapshot,
    InputResolver,
    build_snapshot,
    check_test_set,
    snapshot_lines,
)
from services.dataset.validation import IMAGE_FAILED, IMAGE_PENDING, InputKind, RowPlan, problem

SNAPSHOT_READ_BATCH = 5000
REPORT_REJECTIONS = 100  # per import, in a snapshot report (the import job lists up to 1000)


def _snapshot_rows(dataset: Dataset) -> Iterator[tuple[int, int | None, list[Any]]]:
    last = 0
    while True:
        chunk = list(
            selectors.rows_visible(dataset=dataset)
            .filter(number__gt=last)
            .order_by("number")
            .values_list("number", "line", "cells")[:SNAPSHOT_READ_BATCH]
        )
        if not chunk:
            return
        yield from chunk
        last = chunk[-1][0]


def _type_of_input(dataset: Dataset, input_column: str | None) -> str:
    mapping = dataset_mapping(dataset)
    column = input_column or mapping.input_column
    image = column is not None and column in dataset.columns and mapping.column(column).role == "image"
    return Snapshot.IMAGE if image else Snapshot.TEXT


def snapshot_create(
    *,
    dataset: Dataset,
    actor: str,
    input_column: str | None,
    label_columns: Sequence[str] | None,
    type: str | None,
    name: str = "",
    test_percent: float | None = None,
    seed: int = 0,
    max_tokens: int | None = None,
) -> Snapshot:
    """Freeze the dataset's valid rows into a content-addressed JSONL blob with its validation report, and
    announce it (`snapshot.created`) in the same transaction. Without a `type`, the input column's role
    decides it (an image column makes an image snapshot)."""
    type = type or _type_of_input(dataset, input_column)
    plan = _snapshot_plan(
        dataset=dataset,
        input_column=input_column,
        label_columns=label_columns,
        type=type,
        max_tokens=max_tokens,
    )
    rows: Iterator[tuple[int, int | None, list[Any]]] = _snapshot_rows(dataset)
    resolver = None
    if type == Snapshot.IMAGE:
        _check_images_settled(dataset)
        rows, resolver = _image_inputs(dataset, plan.input_column or "", rows)
    built = build_snapshot(rows, plan=plan, test_percent=test_percent, seed=seed, resolve_input=resolver)
    built.report["imports"] = _import_summaries(dataset)
    blob, sha256, size = _snapshot_store(built)
    with transaction.atomic(using=DB):
        snapshot = Snapshot.objects.create(
            dataset=dataset,
            name=name[:200],
            type=type,
            input_column=plan.input_column,
            label_columns=[head.column for head in plan.heads],
            heads=built.heads,
            rows=built.rows,
            sha256=sha256,
            blob=blob,
            size=size,
            split=built.split,
            report=built.report,
            invalid_rows=built.invalid_rows,
            created_by=actor,
        )
        _snapshot_announce(snapshot, built=built)
    return snapshot


def _check_images_settled(dataset: Dataset) -> None:
    if DatasetJob.objects.filter(
        dataset=dataset,
        kind=DatasetJob.KIND_FETCH_IMAGES,
        state__in=[DatasetJob.QUEUED, DatasetJob.RUNNING],
    ).exists():
        raise ApiError(
            status=409,
            code="images_pending",
            message="the dataset's images are still being fetched; create the snapshot when the job is done",
        )


def _image_inputs(
    dataset: Dataset, column: str, rows: Iterator[tuple[int, int | None, list[Any]]]
) -> tuple[Iterator[tuple[int, int | None, list[Any]]], InputResolver]:
    """The rows, and a resolver that gives each row's input as the hash of its fetched image (or the reason
    the row cannot be used). The rows' images are loaded a batch at a time, as the rows are read."""
    images: dict[int, RowImage] = {}

    def batched() -> Iterator[tuple[int, int | None, list[Any]]]:
        chunk: list[tuple[int, int | None, list[Any]]] = []
        for row in rows:
            chunk.append(row)
            if len(chunk) >= SNAPSHOT_READ_BATCH:
                yield from load(chunk)
                chunk = []
        yield from load(chunk)

    def load(chunk: list[tuple[int, int | None, list[Any]]]) -> list[tuple[int, int | None, list[Any]]]:
        images.clear()
        numbers = [number for number, _, _ in chunk]
        for image in RowImage.objects.filter(dataset=dataset, column=column, row_number__in=numbers):
            images[image.row_number] = image
        return chunk

    def resolve(number: int, url: str) -> tuple[str | None, dict[str, Any] | None]:
        image = images.get(number)
        if image is None or image.url != url.strip():
            return None, problem(
                IMAGE_PENDING, "the image has not been fetched yet (fetch the images)", column
            )
        if image.state != RowImage.FETCHED:
            return None, problem(
                IMAGE_FAILED,
                f"the image could not be fetched ({image.error_code}): {image.error_message}",
                column,
            )
        return f"sha256:{image.sha256}", None

    return batched(), resolve


def _snapshot_plan(
    *,
    dataset: Dataset,
    input_column: str | None,
    label_columns: Sequence[str] | None,
    type: str,
    max_tokens: int | None,
) -> RowPlan:
    """How the snapshot reads each row: the input column (of the role its type needs) and the label columns
    (the mapping's, unless named), checked against the dataset's mapping."""
    mapping = dataset_mapping(dataset)
    input_column = input_column or mapping.input_column
    if input_column is None or input_column not in dataset.columns:
        raise ApiError(status=400, code="invalid", message=f"input_column: no column named {input_column!r}")
    wanted_role: InputKind = "image" if type == Snapshot.IMAGE else "text"
    if mapping.column(input_column).role != wanted_role:
        raise ApiError(
            status=400,
            code="invalid",
            message=f"input_column: {input_column!r} has the role {mapping.column(input_column).role!r}; "
            f"a {type} "
            f"snapshot needs a column with the role {wanted_role!r} (PATCH the dataset's mapping)",
        )
    chosen = (
        mapping.label_columns if label_columns is None else _label_columns(dataset, mapping, label_columns)
    )
    if not chosen:
        raise ApiError(
            status=400, code="invalid", message="label_columns: a snapshot needs at least one label column"
        )
    return RowPlan(
        columns=dataset.columns,
        input_column=input_column,
        label_columns=chosen,
        input_kind=wanted_role,
        max_tokens=max_tokens or conf.setting("ARBITER_SNAPSHOT_MAX_TOKENS"),
    )


def _label_columns(dataset: Dataset, mapping: DatasetMapping, names: Sequence[str]) -> list[ColumnMapping]:
    chosen = []
    for column_name in names:
        if column_name not in dataset.columns:
            raise ApiError(
                status=400, code="invalid", message=f"label_columns: no column named {column_name!r}"
            )
        column = mapping.column(column_name)
        if column.role != "label":
            raise ApiError(
                status=400,
                code="invalid",
                message=f"label_columns: {column_name!r} has the role {column.role!r}, not 'label' "
                "(PATCH the dataset's mapping)",
            )
        chosen.append(column)
    return chosen


def _snapshot_store(built: BuiltSnapshot) -> tuple[str, str, int]:
    """The built file in the blob store (blob key, sha256, size); refused when no valid labelled row is in it."""
    try:
        if built.rows == 0 or not built.heads:
            raise ApiError(
                status=400,
                code="no_valid_rows",
                message="the snapshot would have no valid labelled rows; details say why rows are invalid",
                details={
                    key: built.report[key]
                    for key in ("rows_total", "invalid_reasons", "invalid_rows_sample", "warnings")
                },
            )
        return conf.blob_store().put_content_addressed("snapshots", built.file, suffix=".jsonl")
    finally:
        built.file.close()


def _snapshot_announce(snapshot: Snapshot, *, built: BuiltSnapshot) -> None:
    """`snapshot.created`, in the transaction that stores the snapshot (the outbox relays it after commit)."""
    publish(
        type="snapshot.created",
        org_id=snapshot.dataset.org_id,
        subject=f"snapshots/{snapshot.pk}",
        data={
            "snapshot_id": snapshot.pk,
            "dataset_id": snapshot.dataset_id,
            "name": snapshot.name,
            **snapshot.manifest,
            "size": snapshot.size,
            "label_columns": snapshot.label_columns,
            "split": built.split,
            "report": {key: built.report[key] for key in ("valid_rows", "invalid_rows", "invalid_percent")},
        },
    )


def _import_summaries(dataset: Dataset) -> list[dict[str, Any]]:
    """The dataset's imports, so the report accounts for every line of the uploaded files: rows that never
    became dataset rows are listed with the reason they were rejected."""
    jobs = DatasetJob.objects.filter(
        dataset=dataset, kind=DatasetJob.KIND_IMPORT, state=DatasetJob.COMPLETED
    ).order_by("id")
    return [
        {
            "job": job.pk,
            "file_name": job.source.get("file_name"),
            "rows_read": job.rows_read,
            "rows_imported": job.rows_imported,
            "rows_rejected": job.rows_rejected,
            "rejections": job.rejections[:REPORT_REJECTIONS],
        }
        for job in jobs
    ]


def snapshot_test_set_check(*, snapshot: Snapshot, test: Snapshot) -> dict[str, Any]:
    """How well `test` serves as the test set of a model trained on `snapshot`."""
    if test.type != snapshot.type:
        return {
            "usable": False,
            "problems": [f"the snapshots have different types ({snapshot.type}, {test.type})"],
            "warnings": [],
            "shared_heads": [],
            "test_rows": test.rows,
            "leakage": None,
            "test_counts": {},
        }
    store = conf.blob_store()
    with store.open(snapshot.blob) as train_stream, store.open(test.blob) as test_stream:
        return check_test_set(
            train=snapshot_lines(train_stream),
            test=snapshot_lines(test_stream),
            train_heads=snapshot.heads,
            test_heads=test.heads,
        )
