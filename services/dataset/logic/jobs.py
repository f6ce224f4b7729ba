"""Jobs: imports and remaps, in the request or in a background thread.

Imports stream: rows are parsed, derived under the mapping and inserted a batch at a time (PostgreSQL COPY),
each batch in its own transaction, so progress is visible while a large file is read. Rows of an import
that has not completed are hidden from every reader; if it fails they are deleted, so a failed upload
loses nothing that was stored before it and leaves nothing behind.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable, Iterator, Sequence
from datetime import timedelta
from queue import Full, Queue
from typing import Any, TypeVar

from django.db import close_old_connections, connections, transaction
from django.db.models import QuerySet
from django.db.models.functions import Now
from django.utils import timezone

from arbiter.events import publish
from arbiter.tenancy.scoping import org_scope
from services.dataset import conf
from services.dataset.conf import DB
from services.dataset.importing import (
    ImportFileError,
    ImportOptions,
    JsonRowsReader,
    RowBatch,
    TableReader,
    open_table,
)
from services.dataset.logic.images import archive_table, images_fetch_queue
from services.dataset.logic.mapping import dataset_mapping, row_derived, row_plan
from services.dataset.logic.rowfeed import dataset_rows_publish_all
from services.dataset.logic.rowstore import bulk_session, reserve_numbers, row_records, rows_insert
from services.dataset.models import Dataset, DatasetChange, DatasetJob, Row

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

MAX_LISTED_REJECTIONS = 1000
IMPORT_BATCH_ROWS = 20_000  # rows per database transaction during an import
STALE_AFTER = timedelta(minutes=10)
REMAP_BATCH = 2000


def job_start_in_background(job_id: int, org_id: int) -> None:
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
                remap_run(job)
                return
            try:
                reader = _reopen(job)
            except ImportFileError as exc:
                _job_fail(job, exc)
                return
            import_run(job, reader=reader, batches=reader.batches(IMPORT_BATCH_ROWS))
    except Exception:
        logger.exception("dataset job failed unexpectedly", extra={"job_id": job_id})
    finally:
        connections.close_all()


def import_limits(options: ImportOptions) -> ImportOptions:
    return ImportOptions(
        format=options.format,
        encoding=options.encoding,
        delimiter=options.delimiter,
        header=options.header,
        sheet=options.sheet,
        max_columns=conf.setting("ARBITER_IMPORT_MAX_COLUMNS"),
        max_xlsx_uncompressed_bytes=conf.setting("ARBITER_XLSX_MAX_UNCOMPRESSED_BYTES"),
    )


def _reopen(job: DatasetJob) -> TableReader:
    source = job.source
    options = source.get("options") or {}
    if source.get("archive"):
        # A zip of images: its table, read out of the stored archive.
        stream, file_name = archive_table(source), source["archive"]["table"]
    else:
        stream, file_name = conf.blob_store().open(source["blob"]), source["file_name"]
    if options.get("format") == "json":
        rows = json.load(stream)
        stream.close()
        return JsonRowsReader(rows, max_columns=conf.setting("ARBITER_IMPORT_MAX_COLUMNS"))
    return open_table(
        stream,
        file_name=file_name,
        options=import_limits(
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
    plan = row_plan(columns, mapping)
    max_rows = conf.setting("ARBITER_IMPORT_MAX_ROWS")
    prepared = 0
    for batch in batches:
        known = len(columns)
        order = _column_order(columns, reader.columns)
        if len(columns) != known:
            mapping = mapping.with_new_columns(columns)
            plan = row_plan(columns, mapping)
        rows = _reorder(batch.rows, order, len(columns)) if order is not None else batch.rows
        prepared += len(rows)
        if prepared > max_rows:
            raise ImportFileError(
                f"more than {max_rows:,} rows; split the file",
                file_name=reader.file_name,
                code="too_many_rows",
            )
        yield batch, row_records(job_id=job.pk, lines=batch.lines, rows=rows, plan=plan)


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


def import_run(job: DatasetJob, *, reader: TableReader, batches: Iterable[RowBatch]) -> DatasetJob:
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
        with bulk_session():
            for batch, records in _read_ahead(prepared):
                read += len(batch.rows) + len(batch.rejected)
                rejected += len(batch.rejected)
                for rejection in batch.rejected[: max(0, MAX_LISTED_REJECTIONS - len(rejections))]:
                    rejections.append(rejection.as_dict())
                with transaction.atomic(using=DB):
                    if records:
                        start = reserve_numbers(dataset.pk, len(records))
                        rows_insert(dataset=dataset, start=start, records=records)
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
    _import_complete(
        job, dataset_id=dataset.pk, columns=columns, reader=reader, imported=imported, rejected=rejected
    )
    job.refresh_from_db()
    return job


def _import_complete(
    job: DatasetJob, *, dataset_id: int, columns: list[str], reader: TableReader, imported: int, rejected: int
) -> None:
    """The job completes, its new columns join the dataset's (and its mapping), and the import is recorded."""
    with transaction.atomic(using=DB):
        locked = Dataset.objects.select_for_update().get(pk=dataset_id)
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
            dataset_id=dataset_id,
            action=DatasetChange.IMPORT,
            actor=job.created_by,
            after={
                "job": job.pk,
                "file_name": job.source.get("file_name"),
                "rows": imported,
                "rejected": rejected,
            },
        )
        dataset_rows_publish_all(dataset=locked)
        images_fetch_queue(dataset=locked, actor=job.created_by)
        publish(
            type="dataset.imported",
            org_id=locked.org_id,
            subject=f"datasets/{dataset_id}",
            data={
                "dataset_id": dataset_id,
                "job_id": job.pk,
                "name": locked.name,
                "file_name": job.source.get("file_name"),
                "rows": Row.objects.filter(dataset_id=dataset_id).count(),
                "imported": imported,
                "rejected": rejected,
            },
        )


def remap_run(job: DatasetJob) -> DatasetJob:
    """Derive every row's labels and flags again under the dataset's (new) mapping."""
    DatasetJob.objects.filter(pk=job.pk).update(
        state=DatasetJob.RUNNING, started_at=Now(), heartbeat_at=Now()
    )
    dataset = Dataset.objects.get(pk=job.dataset_id)
    plan = row_plan(dataset.columns, dataset_mapping(dataset))
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
                row.labels, row.problems = row_derived(plan, row.cells)
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
        with transaction.atomic(using=DB):
            DatasetJob.objects.filter(pk=job.pk).update(state=DatasetJob.COMPLETED, finished_at=Now())
            dataset_rows_publish_all(dataset=dataset)
    job.refresh_from_db()
    return job


def _stale(jobs: QuerySet[DatasetJob]) -> QuerySet[DatasetJob]:
    """Jobs whose process stopped: no heartbeat for a while, or queued and never started."""
    cutoff = timezone.now() - STALE_AFTER
    active = jobs.filter(state__in=[DatasetJob.QUEUED, DatasetJob.RUNNING])
    return active.filter(heartbeat_at__lt=cutoff) | jobs.filter(
        state=DatasetJob.QUEUED, heartbeat_at=None, created_at__lt=cutoff
    )


def _job_interrupted(job: DatasetJob) -> None:
    """A job whose process stopped fails, and the rows of a half-done import go."""
    if job.kind == DatasetJob.KIND_IMPORT:
        _job_fail(
            job,
            None,
            "the import was interrupted (the process running it stopped); upload the file again",
        )
    else:
        again = (
            "fetching the images was interrupted; fetch them again"
            if job.kind == DatasetJob.KIND_FETCH_IMAGES
            else "re-reading the rows was interrupted; save the mapping again"
        )
        DatasetJob.objects.filter(pk=job.pk).update(
            state=DatasetJob.FAILED,
            finished_at=Now(),
            error={"code": "interrupted", "message": again},
        )


def jobs_fail_stale(dataset: Dataset) -> None:
    """Settle the dataset's stopped jobs before a write that must not run beside a live one."""
    for job in _stale(DatasetJob.objects.filter(dataset=dataset)):
        _job_interrupted(job)


def dataset_jobs_recover() -> int:
    """Settle the jobs that a stopped process left running, in every org; returns how many.

    Jobs run in the web process that accepted them; when it stops, their heartbeat does too. This runs
    periodically (`arbiter dataset_jobs_recover --every`, started by `arbiter up`); a write to a dataset
    settles that dataset's jobs as well, so reads never write.
    """
    # Every org: each job is then settled inside its own org's scope.
    stale = list(_stale(DatasetJob.objects.unscoped()).order_by("id"))
    for job in stale:
        with org_scope(job.org_id):
            _job_interrupted(job)
    if stale:
        logger.info("settled interrupted dataset jobs", extra={"jobs": [job.pk for job in stale]})
    return len(stale)
