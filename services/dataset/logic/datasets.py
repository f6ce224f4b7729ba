"""Datasets: created from a file, JSON rows or an example; more rows uploaded; renamed, remapped, deleted."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from itertools import chain
from pathlib import PurePath
from typing import Any, BinaryIO

from django.db import transaction
from django.utils import timezone

from arbiter.api.errors import ApiError
from arbiter.tenancy.scoping import org_scope
from services.dataset import conf
from services.dataset.conf import DB
from services.dataset.example import EXAMPLE_MAPPING, EXAMPLE_NAMES, example_rows
from services.dataset.importing import (
    ImageArchive,
    ImportFileError,
    ImportOptions,
    JsonRowsReader,
    MappingError,
    RowBatch,
    TableReader,
    infer_mapping,
    mapping_from_dict,
    open_table,
    preview,
)
from services.dataset.logic.images import archive_source, images_fetch_queue, upload_archive
from services.dataset.logic.jobs import (
    IMPORT_BATCH_ROWS,
    import_limits,
    import_run,
    job_start_in_background,
    jobs_fail_stale,
    remap_run,
)
from services.dataset.logic.mapping import dataset_mapping
from services.dataset.logic.rowfeed import dataset_deleted_publish
from services.dataset.logic.rowstore import encode_json
from services.dataset.models import Dataset, DatasetChange, DatasetJob, Row, Snapshot


def _suffix(file_name: str) -> str:
    suffix = PurePath(file_name).suffix.lower()
    return suffix if suffix.isascii() and 1 < len(suffix) <= 8 and suffix[1:].isalnum() else ""


def _check_not_busy(dataset: Dataset) -> None:
    jobs_fail_stale(dataset)
    # Fetching images runs beside everything else: it only reads rows and writes their images.
    running = (
        DatasetJob.objects.filter(dataset=dataset, state__in=[DatasetJob.QUEUED, DatasetJob.RUNNING])
        .exclude(kind=DatasetJob.KIND_FETCH_IMAGES)
        .first()
    )
    if running is not None:
        raise ApiError(
            status=409,
            code="dataset_busy",
            message=f"the dataset is busy with a {running.kind} job ({running.pk}); retry when it is done",
            details={"job": running.pk},
        )


@contextmanager
def _upload_table(
    *, file: BinaryIO, file_name: str, options: ImportOptions
) -> Iterator[tuple[TableReader, dict[str, Any], int, ImageArchive | None]]:
    """The uploaded file's reader, its stored `source`, how many bytes of table it holds, and its archive when
    it is a zip of images (whose table is read; the zip is stored whole for the image fetch job)."""
    archive = upload_archive(file, file_name=file_name, options=options)
    try:
        source = _store_upload(file=file, file_name=file_name, options=options)
        if archive is None:
            reader = open_table(file, file_name=file_name, options=import_limits(options))
            yield reader, source, source["size"], None
        else:
            source["archive"] = archive_source(archive)
            table = archive.table_file()
            try:
                reader = open_table(table, file_name=archive.table_name, options=import_limits(options))
                yield reader, source, archive.table_size, archive
            finally:
                table.close()
    finally:
        if archive is not None:
            archive.close()


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
    the background when the file is large (the job then says how far it got). A zip holds images and the one
    table naming them; its image column names files of the zip (or URLs)."""
    with org_scope(org_id), _upload_table(file=file, file_name=file_name, options=options) as opened:
        reader, source, table_bytes, archive = opened
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
            background=table_bytes > conf.setting("ARBITER_IMPORT_BACKGROUND_BYTES"),
            image_names=archive.names_image if archive is not None else None,
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


def _store_rows(rows: list[Any]) -> dict[str, Any]:
    """JSON rows from a request body, kept like an uploaded file (a background import reads them back)."""
    body = io.BytesIO(encode_json(rows).encode())
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
    image_names: Callable[[str], bool] | None = None,
) -> tuple[Dataset, DatasetJob]:
    if not reader.columns:
        raise ImportFileError("the file has no rows", file_name=reader.file_name, code="empty_file")
    inferred, profiles = infer_mapping(reader.columns, first.rows, image_names=image_names)
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
        job_start_in_background(job.pk, org_id)
        return dataset, job
    job = import_run(job, reader=reader, batches=chain([first], rest))
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
        reader: TableReader = JsonRowsReader(rows, max_columns=conf.setting("ARBITER_IMPORT_MAX_COLUMNS"))
        return _upload_run(
            dataset=dataset, actor=actor, reader=reader, source=_store_rows(rows), background=False
        )
    assert file is not None
    with _upload_table(file=file, file_name=file_name, options=options) as (reader, source, table_bytes, _):
        return _upload_run(
            dataset=dataset,
            actor=actor,
            reader=reader,
            source=source,
            background=table_bytes > conf.setting("ARBITER_IMPORT_BACKGROUND_BYTES"),
        )


def _upload_run(
    *, dataset: Dataset, actor: str, reader: TableReader, source: dict[str, Any], background: bool
) -> DatasetJob:
    source = {**source, "format": reader.format, "detected": reader.details}
    job = DatasetJob.objects.create(
        dataset=dataset, kind=DatasetJob.KIND_IMPORT, source=source, created_by=actor
    )
    if background:
        job_start_in_background(job.pk, dataset.org_id)
        return job
    job = import_run(job, reader=reader, batches=reader.batches(IMPORT_BATCH_ROWS))
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
        images_fetch_queue(dataset=dataset, actor=actor)
    if Row.objects.filter(dataset=dataset).count() > conf.setting("ARBITER_MAPPING_BACKGROUND_ROWS"):
        job_start_in_background(job.pk, dataset.org_id)
        return job
    return remap_run(job)


def dataset_delete(*, dataset: Dataset) -> None:
    if Snapshot.objects.filter(dataset=dataset).exists():
        raise ApiError(
            status=409,
            code="dataset_has_snapshots",
            message="the dataset has snapshots, kept for the models trained on them; it cannot be deleted",
        )
    _check_not_busy(dataset)
    with transaction.atomic(using=DB):
        dataset_deleted_publish(dataset=dataset)
        Row.objects.filter(dataset=dataset).delete()
        dataset.delete()
