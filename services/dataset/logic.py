"""Writes of the dataset service: datasets and their imports, the column mapping, rows, snapshots.

Imports stream: rows are parsed, derived under the mapping and inserted a batch at a time (PostgreSQL COPY),
each batch in its own transaction, so progress is visible while a large file is read. Rows of an import
that has not completed are hidden from every reader; if it fails they are deleted, so a failed upload
loses nothing that was stored before it and leaves nothing behind.
"""

from __future__ import annotations

import io
import json
import logging
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import timedelta
from itertools import chain
from pathlib import PurePath
from queue import Full, Queue
from typing import Any, BinaryIO, TypeVar

from django.db import close_old_connections, connections, transaction
from django.db.models.functions import Now
from django.utils import timezone

from arbiter.api.errors import ApiError
from arbiter.events import publish
from arbiter.tenancy.scoping import org_scope
from services.dataset import conf, selectors
from services.dataset.conf import DB
from services.dataset.example import EXAMPLE_MAPPING, EXAMPLE_NAMES, example_rows
from services.dataset.importing import (
    ImportFileError,
    ImportOptions,
    JsonRowsReader,
    LabelError,
    MappingError,
    RowBatch,
    TableReader,
    infer_mapping,
    mapping_from_dict,
    open_table,
    preview,
)
from services.dataset.importing.mapping import DatasetMapping
from services.dataset.models import Dataset, DatasetChange, DatasetJob, Row, Snapshot
from services.dataset.snapshotting import build_snapshot, check_test_set, snapshot_lines
from services.dataset.validation import InputKind, RowPlan, cell_for_labels, stored_labels

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

MAX_LISTED_REJECTIONS = 1000
IMPORT_BATCH_ROWS = 20_000  # rows per database transaction during an import
STALE_AFTER = timedelta(minutes=10)
REMAP_BATCH = 2000
SNAPSHOT_READ_BATCH = 5000
REPORT_REJECTIONS = 100  # per import, in a snapshot report (the import job lists up to 1000)

_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_escape = json.encoder.encode_basestring  # type: ignore[attr-defined]


# --- the mapping and what it makes of rows ------------------------------------------------------------------


def dataset_mapping(dataset: Dataset) -> DatasetMapping:
    return mapping_from_dict(dataset.mapping, columns=dataset.columns)


def _row_plan(columns: Sequence[str], mapping: DatasetMapping) -> RowPlan:
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


def _derived(plan: RowPlan, cells: Sequence[Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    _, labels, problems = plan.derive(cells)
    return stored_labels(labels), problems


# --- inserting rows fast ------------------------------------------------------------------------------------

_ROW_COLUMNS = ("org_id", "dataset_id", "number", "line", "job_id", "cells", "labels", "problems", "is_valid")


def _encode_cells(cells: Sequence[Any]) -> str:
    try:
        # Rows from CSV and Excel hold only strings: escaping each is much faster than a general encoder.
        encoded = "[" + ",".join(map(_escape, cells)) + "]"
    except TypeError:
        encoded = _encode(cells)
    if "\\u0000" in encoded:
        # PostgreSQL cannot store NUL in JSON text; it can only come from an escaped NUL in JSON input.
        encoded = encoded.replace("\\u0000", "\\ufffd")
    return encoded


def _row_records(
    *, job_id: int | None, lines: Sequence[int | None], rows: Sequence[Sequence[Any]], plan: RowPlan
) -> list[tuple[Any, ...]]:
    """Database values for a batch of rows, from `line` on (org, dataset and number are added on insert)."""
    records = []
    derive = plan.derive_stored
    for line, cells in zip(lines, rows, strict=True):
        labels, problems = derive(cells)
        records.append(
            (
                line,
                job_id,
                _encode_cells(cells),
                labels,
                _encode(problems) if problems else "[]",
                not problems,
            )
        )
    return records


def _rows_insert(*, dataset: Dataset, start: int, records: list[tuple[Any, ...]]) -> None:
    connection = connections[DB]
    table = Row._meta.db_table
    head = (dataset.org_id, dataset.pk)
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # COPY is several times faster than INSERT for bulk rows; psycopg streams the tuples.
            with cursor.cursor.copy(f"COPY {table} ({', '.join(_ROW_COLUMNS)}) FROM STDIN") as copy:
                for number, record in enumerate(records, start):
                    copy.write_row((*head, number, *record))
        else:
            placeholders = ", ".join(["%s"] * len(_ROW_COLUMNS))
            # Only this module's constant names reach the statement; the values are parameters.
            statement = f"INSERT INTO {table} ({', '.join(_ROW_COLUMNS)}) VALUES ({placeholders})"  # noqa: S608
            cursor.executemany(statement, [(*head, n, *record) for n, record in enumerate(records, start)])


@contextmanager
def _bulk_session() -> Iterator[None]:
    """Let the import's commits return before their WAL reaches the disk (PostgreSQL), for this connection.

    Safe for import batches: a crash can only lose the last batches, whose job then fails as interrupted
    and is cleaned up; it cannot leave the database inconsistent. On a busy disk, commits are otherwise the
    slowest part of an import.
    """
    connection = connections[DB]
    if connection.vendor != "postgresql":
        yield
        return
    with connection.cursor() as cursor:
        cursor.execute("SET synchronous_commit TO OFF")
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute("RESET synchronous_commit")


def _reserve_numbers(dataset_id: int, count: int) -> int:
    """The first of `count` new row numbers; call inside a transaction (the dataset row stays locked)."""
    table = Dataset._meta.db_table
    with connections[DB].cursor() as cursor:
        # One round trip (PostgreSQL and SQLite both have RETURNING): imports call this for every batch.
        statement = f"UPDATE {table} SET next_row_number = next_row_number + %s WHERE id = %s"  # noqa: S608
        cursor.execute(f"{statement} RETURNING next_row_number", [count, dataset_id])
        (after,) = cursor.fetchone()
    return int(after) - count


# --- datasets -----------------------------------------------------------------------------------------------


def _suffix(file_name: str) -> str:
    suffix = PurePath(file_name).suffix.lower()
    return suffix if suffix.isascii() and 1 < len(suffix) <= 8 and suffix[1:].isalnum() else ""


def _check_not_busy(dataset: Dataset) -> None:
    _jobs_fail_stale(dataset)
    running = DatasetJob.objects.filter(
        dataset=dataset, state__in=[DatasetJob.QUEUED, DatasetJob.RUNNING]
    ).first()
    if running is not None:
        raise ApiError(
            status=409,
            code="dataset_busy",
            message=f"the dataset is busy with a {running.kind} job ({running.pk}); retry when it is done",
            details={"job": running.pk},
        )


def dataset_create_from_file(
    *,
    org_id: int,
    actor: str,
    name: str | None,
    file: BinaryIO,
    file_name: str,
    options: ImportOptions,
) -> tuple[Dataset, DatasetJob]:
    """A dataset from an uploaded file: its mapping inferred from the first rows, its rows imported now, or in
    the background when the file is large (the job then says how far it got)."""
    with org_scope(org_id):
        source = _store_upload(file=file, file_name=file_name, options=options)
        reader = open_table(file, file_name=file_name, options=_limits(options))
        batches = reader.batches(IMPORT_BATCH_ROWS)
        first = next(batches, RowBatch())
        return _dataset_start(
            org_id=org_id,
            actor=actor,
            name=name or PurePath(file_name).stem or "dataset",
            reader=reader,
            first=first,
            rest=batches,
            source=source,
            background=source["size"] > conf.setting("ARBITER_IMPORT_BACKGROUND_BYTES"),
        )


def dataset_create_from_rows(
    *,
    org_id: int,
    actor: str,
    name: str | None,
    rows: list[Any],
    mapping: Mapping[str, Any] | None = None,
) -> tuple[Dataset, DatasetJob]:
    """A dataset from JSON rows sent in a request body (a list of objects), imported at once."""
    with org_scope(org_id):
        source = _store_rows(rows)
        reader = JsonRowsReader(rows, max_columns=conf.setting("ARBITER_IMPORT_MAX_COLUMNS"))
        batches = reader.batches(IMPORT_BATCH_ROWS)
        first = next(batches, RowBatch())
        return _dataset_start(
            org_id=org_id,
            actor=actor,
            name=name or "rows",
            reader=reader,
            first=first,
            rest=batches,
            source=source,
            background=False,
            mapping=mapping,
        )


def dataset_create_example(
    *, org_id: int, actor: str, example: str = "moderation", name: str | None = None
) -> tuple[Dataset, DatasetJob]:
    """The example dataset in an org (the console's "No dataset yet? Use an example.", and `arbiter up`)."""
    if example not in EXAMPLE_NAMES:
        raise ApiError(
            status=400,
            code="unknown_example",
            message=f"example: no example named {example!r}; choose from {', '.join(EXAMPLE_NAMES)}",
        )
    return dataset_create_from_rows(
        org_id=org_id,
        actor=actor,
        name=name or EXAMPLE_NAMES[example],
        rows=example_rows(example),
        mapping=EXAMPLE_MAPPING,
    )


def _limits(options: ImportOptions) -> ImportOptions:
    return ImportOptions(
        format=options.format,
        encoding=options.encoding,
        delimiter=options.delimiter,
        header=options.header,
        sheet=options.sheet,
        max_columns=conf.setting("ARBITER_IMPORT_MAX_COLUMNS"),
        max_xlsx_uncompressed_bytes=conf.setting("ARBITER_XLSX_MAX_UNCOMPRESSED_BYTES"),
    )


def _store_rows(rows: list[Any]) -> dict[str, Any]:
    """JSON rows from a request body, kept like an uploaded file (a background import reads them back)."""
    body = io.BytesIO(_encode(rows).encode())
    key, sha256, size = conf.blob_store().put_content_addressed("uploads", body, suffix=".json")
    return {
        "file_name": "request body",
        "format": "json",
        "size": size,
        "sha256": sha256,
        "blob": key,
        "options": {"format": "json"},
    }


def _store_upload(*, file: BinaryIO, file_name: str, options: ImportOptions) -> dict[str, Any]:
    file.seek(0)
    key, sha256, size = conf.blob_store().put_content_addressed("uploads", file, suffix=_suffix(file_name))
    file.seek(0)
    return {
        "file_name": PurePath(file_name).name,
        "size": size,
        "sha256": sha256,
        "blob": key,
        "options": {
            "format": options.format,
            "encoding": options.encoding,
            "delimiter": options.delimiter,
            "header": options.header,
            "sheet": options.sheet,
        },
    }


def _dataset_start(
    *,
    org_id: int,
    actor: str,
    name: str,
    reader: TableReader,
    first: RowBatch,
    rest: Iterator[RowBatch],
    source: dict[str, Any],
    background: bool,
    mapping: Mapping[str, Any] | None = None,
) -> tuple[Dataset, DatasetJob]:
    if not reader.columns:
        raise ImportFileError("the file has no rows", file_name=reader.file_name, code="empty_file")
    inferred, profiles = infer_mapping(reader.columns, first.rows)
    if mapping is not None:
        try:
            inferred = mapping_from_dict(mapping, columns=reader.columns, previous=inferred)
        except MappingError as exc:
            raise ApiError(status=400, code="invalid_mapping", message=f"mapping: {exc}") from None
    source = {**source, "format": reader.format, "detected": reader.details}
    with transaction.atomic(using=DB):
        dataset = Dataset.objects.create(
            name=name[:200],
            columns=list(reader.columns),
            mapping=inferred.as_dict(),
            profiles=[p.as_dict() for p in profiles],
            preview=preview(reader.columns, first.rows, first.lines),
            source=source,
            created_by=actor,
        )
        job = DatasetJob.objects.create(
            dataset=dataset, kind=DatasetJob.KIND_IMPORT, source=source, created_by=actor
        )
    if background:
        _start_in_background(job.pk, org_id)
        return dataset, job
    job = _import_run(job, reader=reader, batches=chain([first], rest))
    if job.state == DatasetJob.FAILED:
        # Nothing of a new dataset whose file could not be read stays behind; the error says why.
        dataset.delete()
        raise _job_error(job)
    dataset.refresh_from_db()
    return dataset, job


def _job_error(job: DatasetJob) -> ApiError:
    error = job.error or {}
    return ApiError(
        status=400,
        code=error.get("code", "import_failed"),
        message=error.get("message", "the import failed"),
        details={
            **error.get("details", {}),
            "rows_read": job.rows_read,
            "rows_rejected": job.rows_rejected,
            "rejections": job.rejections[:20],
        },
    )


def dataset_upload(
    *,
    dataset: Dataset,
    actor: str,
    file: BinaryIO | None,
    file_name: str,
    options: ImportOptions,
    rows: list[Any] | None = None,
) -> DatasetJob:
    """More rows for an existing dataset, from a file or JSON rows; columns are matched by name."""
    _check_not_busy(dataset)
    if rows is not None:
        source = _store_rows(rows)
        reader: TableReader = JsonRowsReader(rows, max_columns=conf.setting("ARBITER_IMPORT_MAX_COLUMNS"))
    else:
        assert file is not None
        source = _store_upload(file=file, file_name=file_name, options=options)
        reader = open_table(file, file_name=file_name, options=_limits(options))
    source = {**source, "format": reader.format, "detected": reader.details}
    job = DatasetJob.objects.create(
        dataset=dataset, kind=DatasetJob.KIND_IMPORT, source=source, created_by=actor
    )
    if source["size"] > conf.setting("ARBITER_IMPORT_BACKGROUND_BYTES"):
        _start_in_background(job.pk, dataset.org_id)
        return job
    job = _import_run(job, reader=reader, batches=reader.batches(IMPORT_BATCH_ROWS))
    if job.state == DatasetJob.FAILED:
        raise _job_error(job)
    return job


def dataset_update(
    *, dataset: Dataset, actor: str, name: str | None = None, mapping: Mapping[str, Any] | None = None
) -> DatasetJob | None:
    """Rename the dataset and/or confirm or edit its column mapping. A mapping change re-derives every row's
    labels and flags: now for small datasets, in the background (the returned job) for large ones."""
    if name is not None and name != dataset.name:
        with transaction.atomic(using=DB):
            DatasetChange.objects.create(
                dataset=dataset,
                action=DatasetChange.RENAME,
                actor=actor,
                before={"name": dataset.name},
                after={"name": name},
            )
            dataset.name = name
            dataset.save(update_fields=["name", "updated_at"])
    if mapping is None:
        return None
    _check_not_busy(dataset)
    try:
        new_mapping = mapping_from_dict(mapping, columns=dataset.columns, previous=dataset_mapping(dataset))
    except MappingError as exc:
        raise ApiError(status=400, code="invalid_mapping", message=f"mapping: {exc}") from None
    if new_mapping.as_dict() == dataset.mapping:
        return None
    with transaction.atomic(using=DB):
        DatasetChange.objects.create(
            dataset=dataset,
            action=DatasetChange.MAPPING,
            actor=actor,
            before=dataset.mapping,
            after=new_mapping.as_dict(),
        )
        dataset.mapping = new_mapping.as_dict()
        dataset.updated_at = timezone.now()
        dataset.save(update_fields=["mapping", "updated_at"])
        job = DatasetJob.objects.create(dataset=dataset, kind=DatasetJob.KIND_REMAP, created_by=actor)
    if Row.objects.filter(dataset=dataset).count() > conf.setting("ARBITER_MAPPING_BACKGROUND_ROWS"):
        _start_in_background(job.pk, dataset.org_id)
        return job
    return _remap_run(job)


def dataset_delete(*, dataset: Dataset) -> None:
    if Snapshot.objects.filter(dataset=dataset).exists():
        raise ApiError(
            status=409,
            code="dataset_has_snapshots",
            message="the dataset has snapshots, kept for the models trained on them; it cannot be deleted",
        )
    _check_not_busy(dataset)
    with transaction.atomic(using=DB):
        Row.objects.filter(dataset=dataset).delete()
        dataset.delete()


# --- jobs: imports and remaps, in the request or in a background thread -------------------------------------


def _start_in_background(job_id: int, org_id: int) -> None:
    thread = threading.Thread(
        target=_run_job, args=(job_id, org_id), name=f"dataset-job-{job_id}", daemon=True
    )
    thread.start()


def _run_job(job_id: int, org_id: int) -> None:
    close_old_connections()
    try:
        with org_scope(org_id):
            job = DatasetJob.objects.get(pk=job_id)
            if job.kind == DatasetJob.KIND_REMAP:
                _remap_run(job)
                return
            try:
                reader = _reopen(job)
            except ImportFileError as exc:
                _job_fail(job, exc)
                return
            _import_run(job, reader=reader, batches=reader.batches(IMPORT_BATCH_ROWS))
    except Exception:
        logger.exception("dataset job failed unexpectedly", extra={"job_id": job_id})
    finally:
        connections.close_all()


def _reopen(job: DatasetJob) -> TableReader:
    source = job.source
    stream = conf.blob_store().open(source["blob"])
    options = source.get("options") or {}
    if options.get("format") == "json":
        rows = json.load(stream)
        stream.close()
        return JsonRowsReader(rows, max_columns=conf.setting("ARBITER_IMPORT_MAX_COLUMNS"))
    return open_table(
        stream,
        file_name=source["file_name"],
        options=_limits(
            ImportOptions(
                format=options.get("format") or "auto",
                encoding=options.get("encoding"),
                delimiter=options.get("delimiter"),
                header=options.get("header"),
                sheet=options.get("sheet"),
            )
        ),
    )


def _job_fail(job: DatasetJob, exc: ImportFileError | None, message: str | None = None) -> DatasetJob:
    if exc is not None:
        error = {"code": exc.code, "message": str(exc), "details": exc.as_details()}
    else:
        error = {"code": "internal_error", "message": message or "the import failed", "details": {}}
    with transaction.atomic(using=DB):
        deleted, _ = Row.objects.filter(dataset_id=job.dataset_id, job=job).delete()
        DatasetJob.objects.filter(pk=job.pk).update(
            state=DatasetJob.FAILED, error=error, finished_at=Now(), rows_imported=0
        )
    if deleted:
        logger.info("removed the rows of a failed import", extra={"job_id": job.pk, "rows": deleted})
    job.refresh_from_db()
    return job


def _column_order(dataset_columns: list[str], reader_columns: Sequence[str]) -> list[int] | None:
    """Where each file column goes among the dataset's (appending new ones); None when they already match."""
    positions = {name: index for index, name in enumerate(dataset_columns)}
    order = []
    for name in reader_columns:
        if name not in positions:
            positions[name] = len(dataset_columns)
            dataset_columns.append(name)
        order.append(positions[name])
    return None if order == list(range(len(order))) else order


def _reorder(rows: list[list[Any]], order: list[int], width: int) -> list[list[Any]]:
    placed = []
    for row in rows:
        cells: list[Any] = [None] * width
        for source, target in zip(range(len(row)), order, strict=False):
            cells[target] = row[source]
        placed.append(cells)
    return placed


def _prepared(
    *, job: DatasetJob, dataset: Dataset, reader: TableReader, batches: Iterable[RowBatch], columns: list[str]
) -> Iterator[tuple[RowBatch, list[tuple[Any, ...]]]]:
    """Each batch with its database records; `columns` grows when rows bring new keys (JSON Lines)."""
    mapping = dataset_mapping(dataset)
    plan = _row_plan(columns, mapping)
    max_rows = conf.setting("ARBITER_IMPORT_MAX_ROWS")
    prepared = 0
    for batch in batches:
        known = len(columns)
        order = _column_order(columns, reader.columns)
        if len(columns) != known:
            mapping = mapping.with_new_columns(columns)
            plan = _row_plan(columns, mapping)
        rows = _reorder(batch.rows, order, len(columns)) if order is not None else batch.rows
        prepared += len(rows)
        if prepared > max_rows:
            raise ImportFileError(
                f"more than {max_rows:,} rows; split the file",
                file_name=reader.file_name,
                code="too_many_rows",
            )
        yield batch, _row_records(job_id=job.pk, lines=batch.lines, rows=rows, plan=plan)


def _read_ahead(items: Iterator[_T], *, depth: int = 2) -> Iterator[_T]:
    """`items`, produced by a thread up to `depth` ahead: parsing the next batch overlaps with the database
    storing this one (the driver releases the GIL while it waits). Errors reach the consumer."""
    queue: Queue[tuple[str, Any]] = Queue(maxsize=depth)
    stop = threading.Event()

    def put(kind: str, value: Any) -> bool:
        while not stop.is_set():
            try:
                queue.put((kind, value), timeout=0.1)
                return True
            except Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put("item", item):
                    return
            put("done", None)
        except BaseException as exc:  # handed to the consumer, which raises it
            put("error", exc)

    thread = threading.Thread(target=produce, name="dataset-import-reader", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = queue.get()
            if kind == "done":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        thread.join()


def _import_run(job: DatasetJob, *, reader: TableReader, batches: Iterable[RowBatch]) -> DatasetJob:
    """Read every batch into the dataset; on a file error, remove what this job inserted."""
    DatasetJob.objects.filter(pk=job.pk).update(
        state=DatasetJob.RUNNING, started_at=Now(), heartbeat_at=Now()
    )
    dataset = Dataset.objects.get(pk=job.dataset_id)
    columns = list(dataset.columns)
    rejections: list[dict[str, Any]] = []
    read = imported = rejected = 0
    try:
        prepared = _prepared(job=job, dataset=dataset, reader=reader, batches=batches, columns=columns)
        with _bulk_session():
            for batch, records in _read_ahead(prepared):
                read += len(batch.rows) + len(batch.rejected)
                rejected += len(batch.rejected)
                for rejection in batch.rejected[: max(0, MAX_LISTED_REJECTIONS - len(rejections))]:
                    rejections.append(rejection.as_dict())
                with transaction.atomic(using=DB):
                    if records:
                        start = _reserve_numbers(dataset.pk, len(records))
                        _rows_insert(dataset=dataset, start=start, records=records)
                    imported += len(records)
                    update: dict[str, Any] = {
                        "rows_read": read,
                        "rows_imported": imported,
                        "rows_rejected": rejected,
                        "heartbeat_at": Now(),
                    }
                    if batch.rejected:
                        update["rejections"] = rejections
                    DatasetJob.objects.filter(pk=job.pk).update(**update)
        if imported == 0:
            first = f": {rejections[0]['message']}" if rejections else ""
            raise ImportFileError(f"no row could be read{first}", file_name=reader.file_name, code="no_rows")
    except ImportFileError as exc:
        DatasetJob.objects.filter(pk=job.pk).update(
            rows_read=read, rows_rejected=rejected, rejections=rejections
        )
        return _job_fail(job, exc)
    except Exception:
        logger.exception("import failed", extra={"job_id": job.pk})
        return _job_fail(job, None, "the import failed because of an internal error; it has been logged")
    with transaction.atomic(using=DB):
        locked = Dataset.objects.select_for_update().get(pk=dataset.pk)
        if columns != locked.columns:
            locked.columns = columns
            locked.mapping = dataset_mapping(locked).with_new_columns(columns).as_dict()
        locked.updated_at = timezone.now()
        locked.save(update_fields=["columns", "mapping", "updated_at"])
        DatasetJob.objects.filter(pk=job.pk).update(
            state=DatasetJob.COMPLETED,
            finished_at=Now(),
            heartbeat_at=Now(),
            notes=reader.notes,
            source={**job.source, "detected": reader.details},
        )
        DatasetChange.objects.create(
            dataset_id=dataset.pk,
            action=DatasetChange.IMPORT,
            actor=job.created_by,
            after={
                "job": job.pk,
                "file_name": job.source.get("file_name"),
                "rows": imported,
                "rejected": rejected,
            },
        )
    job.refresh_from_db()
    return job


def _remap_run(job: DatasetJob) -> DatasetJob:
    """Derive every row's labels and flags again under the dataset's (new) mapping."""
    DatasetJob.objects.filter(pk=job.pk).update(
        state=DatasetJob.RUNNING, started_at=Now(), heartbeat_at=Now()
    )
    dataset = Dataset.objects.get(pk=job.dataset_id)
    plan = _row_plan(dataset.columns, dataset_mapping(dataset))
    done = 0
    last_id = 0
    try:
        while True:
            chunk = list(
                Row.objects.filter(dataset=dataset, id__gt=last_id)
                .order_by("id")
                .only("id", "cells")[:REMAP_BATCH]
            )
            if not chunk:
                break
            for row in chunk:
                row.labels, row.problems = _derived(plan, row.cells)
                row.is_valid = not row.problems
            with transaction.atomic(using=DB):
                Row.objects.bulk_update(chunk, ["labels", "problems", "is_valid"], batch_size=500)
                done += len(chunk)
                DatasetJob.objects.filter(pk=job.pk).update(
                    rows_read=done, rows_imported=done, heartbeat_at=Now()
                )
            last_id = chunk[-1].pk
    except Exception:
        logger.exception("remapping failed", extra={"job_id": job.pk})
        DatasetJob.objects.filter(pk=job.pk).update(
            state=DatasetJob.FAILED,
            finished_at=Now(),
            error={"code": "internal_error", "message": "re-reading the rows failed; it has been logged"},
        )
    else:
        DatasetJob.objects.filter(pk=job.pk).update(state=DatasetJob.COMPLETED, finished_at=Now())
    job.refresh_from_db()
    return job


def _jobs_fail_stale(dataset: Dataset) -> None:
    """Jobs whose process stopped (no heartbeat for a while) fail, and their half-imported rows go."""
    cutoff = timezone.now() - STALE_AFTER
    stale = DatasetJob.objects.filter(
        dataset=dataset, state__in=[DatasetJob.QUEUED, DatasetJob.RUNNING]
    ).filter(heartbeat_at__lt=cutoff) | DatasetJob.objects.filter(
        dataset=dataset, state=DatasetJob.QUEUED, heartbeat_at=None, created_at__lt=cutoff
    )
    for job in stale:
        if job.kind == DatasetJob.KIND_IMPORT:
            _job_fail(
                job,
                None,
                "the import was interrupted (the process running it stopped); upload the file again",
            )
        else:
            DatasetJob.objects.filter(pk=job.pk).update(
                state=DatasetJob.FAILED,
                finished_at=Now(),
                error={
                    "code": "interrupted",
                    "message": "re-reading the rows was interrupted; save the mapping again",
                },
            )


def dataset_jobs_recover(*, dataset: Dataset) -> None:
    """Called when a dataset is read: settles jobs that a stopped process left running."""
    _jobs_fail_stale(dataset)


# --- rows ---------------------------------------------------------------------------------------------------


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
    derived_labels, problems = _derived(_row_plan(dataset.columns, mapping), values)
    with transaction.atomic(using=DB):
        number = _reserve_numbers(dataset.pk, 1)
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
    row.refresh_from_db()
    return row


def row_update(
    *,
    row: Row,
    actor: str,
    text: str | None = None,
    cells: Mapping[str, Any] | None = None,
    labels: Mapping[str, Any] | None = None,
) -> Row:
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
    row.labels, row.problems = _derived(_row_plan(dataset.columns, mapping), values)
    row.is_valid = not row.problems
    label_columns = {column.name for column in mapping.label_columns}
    action = DatasetChange.RELABEL if set(changed) <= label_columns else DatasetChange.EDIT
    with transaction.atomic(using=DB):
        row.updated_at = timezone.now()
        row.save(update_fields=["cells", "labels", "problems", "is_valid", "updated_at"])
        DatasetChange.objects.create(
            dataset=dataset,
            action=action,
            row_number=row.number,
            actor=actor,
            before={name: before.get(name) for name in changed},
            after=changed,
        )
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
        row.delete()


# --- snapshots ----------------------------------------------------------------------------------------------


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


def snapshot_create(
    *,
    dataset: Dataset,
    actor: str,
    input_column: str | None,
    label_columns: Sequence[str] | None,
    type: str,
    name: str = "",
    test_percent: float | None = None,
    seed: int = 0,
    max_tokens: int | None = None,
) -> Snapshot:
    """Freeze the dataset's valid rows into a content-addressed JSONL blob with its validation report, and
    announce it (`snapshot.created`) in the same transaction."""
    mapping = dataset_mapping(dataset)
    input_column = input_column or mapping.input_column
    if input_column is None or input_column not in dataset.columns:
        raise ApiError(status=400, code="invalid", message=f"input_column: no column named {input_column!r}")
    wanted_role = "image" if type == Snapshot.IMAGE else "text"
    if mapping.column(input_column).role != wanted_role:
        raise ApiError(
            status=400,
            code="invalid",
            message=f"input_column: {input_column!r} has the role {mapping.column(input_column).role!r}; "
            f"a {type} "
            f"snapshot needs a column with the role {wanted_role!r} (PATCH the dataset's mapping)",
        )
    if label_columns is None:
        chosen = mapping.label_columns
    else:
        chosen = []
        for column_name in label_columns:
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
    if not chosen:
        raise ApiError(
            status=400, code="invalid", message="label_columns: a snapshot needs at least one label column"
        )
    plan = RowPlan(
        columns=dataset.columns,
        input_column=input_column,
        label_columns=chosen,
        input_kind=wanted_role,  # type: ignore[arg-type]
        max_tokens=max_tokens or conf.setting("ARBITER_SNAPSHOT_MAX_TOKENS"),
    )
    built = build_snapshot(_snapshot_rows(dataset), plan=plan, test_percent=test_percent, seed=seed)
    built.report["imports"] = _import_summaries(dataset)
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
        blob, sha256, size = conf.blob_store().put_content_addressed("snapshots", built.file, suffix=".jsonl")
    finally:
        built.file.close()
    with transaction.atomic(using=DB):
        snapshot = Snapshot.objects.create(
            dataset=dataset,
            name=name[:200],
            type=type,
            input_column=input_column,
            label_columns=[c.name for c in chosen],
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
        publish(
            type="snapshot.created",
            org_id=dataset.org_id,
            subject=f"snapshots/{snapshot.pk}",
            data={
                "snapshot_id": snapshot.pk,
                "dataset_id": dataset.pk,
                "name": snapshot.name,
                **snapshot.manifest,
                "size": size,
                "label_columns": snapshot.label_columns,
                "split": built.split,
                "report": {
                    key: built.report[key] for key in ("valid_rows", "invalid_rows", "invalid_percent")
                },
            },
        )
    return snapshot


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
