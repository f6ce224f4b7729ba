"""Image columns: a background job fetches the image each row's image cell names, with bounded concurrency,
through `arbiter.images` (the egress guard, size cap, type sniffing, decompression-bomb limit, EXIF
orientation), and stores it content-addressed in the blob store. Each (row, column) gets a `RowImage`: fetched
(with its hash and size) or failed (with the reason). Failed rows can be fetched again.

Rows uploaded in a zip of images (`upload_archive`) may name a file of that zip instead of a URL: the job reads
it out of the stored upload (the archive of the import job that brought the row) and checks and stores it with
the same `arbiter.images.decode_image` and `image_store` as a fetched image, so nothing downstream can tell
them apart. A file the zip lacks fails with `not_in_archive`; URLs in such rows are fetched as usual.

A fetch job runs beside imports and row edits (it does not make the dataset busy). It works in passes until a
pass finds nothing to do, so rows added while it runs are fetched by it; a new request while one is active
returns the active job.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any, BinaryIO

from django.db import close_old_connections, connections, transaction
from django.db.models.functions import Now
from django.utils import timezone

from arbiter.config.typed_settings import arbiter_settings
from arbiter.images import (
    FetchedImage,
    ImageError,
    ImageLimits,
    decode_image,
    fetch_image,
    image_limits,
    image_policy,
    image_store,
)
from arbiter.tenancy.scoping import org_scope
from services.dataset import conf, selectors
from services.dataset.conf import DB
from services.dataset.importing import (
    ArchiveLimits,
    ImageArchive,
    ImportOptions,
    MemberNotFound,
    MemberUnreadable,
    is_zip,
    open_image_archive,
    seekable,
)
from services.dataset.logic.mapping import dataset_mapping
from services.dataset.models import Dataset, DatasetJob, RowImage

logger = logging.getLogger(__name__)

SCAN_BATCH = 500  # rows looked at per query
MAX_PASSES = 20
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


# --- zips of images -----------------------------------------------------------------------------------------


def archive_limits() -> ArchiveLimits:
    return ArchiveLimits(
        max_files=conf.setting("ARBITER_ZIP_MAX_FILES"),
        max_uncompressed_bytes=conf.setting("ARBITER_ZIP_MAX_UNCOMPRESSED_BYTES"),
    )


def upload_archive(raw: BinaryIO, *, file_name: str, options: ImportOptions) -> ImageArchive | None:
    """The upload as a zip of images with the table naming them, checked (zip bombs, unsafe names, one table);
    None for a table file, workbooks included. Raises `ImportFileError`."""
    lowered = file_name.lower()
    if options.format == "xlsx" or lowered.endswith((".xlsx", ".xlsm")):
        return None
    if not lowered.endswith(".zip") and not is_zip(raw):
        return None
    return open_image_archive(
        raw, file_name=PurePath(file_name).name or "upload.zip", limits=archive_limits()
    )


def archive_source(archive: ImageArchive) -> dict[str, Any]:
    """What an import's `source` keeps of its archive (the table read, and how many files came with it)."""
    return {"table": archive.table_name, "files": archive.files}


def archive_open(source: dict[str, Any]) -> ImageArchive:
    """The stored zip an import read (its `source`), open again; close it."""
    raw = conf.blob_store().open(source["blob"])
    stream = seekable(raw)
    if stream is not raw:
        raw.close()  # spooled to a temporary file: the zip is read from that
    try:
        archive = open_image_archive(
            stream,
            file_name=source["file_name"],
            limits=archive_limits(),
            table=source["archive"]["table"],
            close_raw=True,
        )
    except BaseException:
        stream.close()
        raise
    assert archive is not None  # with the table named it is never taken for a workbook
    return archive


def archive_table(source: dict[str, Any]) -> BinaryIO:
    """The table of a stored zip, in a temporary file (a background import reading it again)."""
    archive = archive_open(source)
    try:
        return archive.table_file()
    finally:
        archive.close()


def archive_image(archive: ImageArchive, cell: str, *, limits: ImageLimits) -> FetchedImage:
    """The image a cell names in the archive, checked and normalised exactly as a fetched one; raises
    `ImageError` (`not_in_archive`, or any code of `decode_image`)."""
    try:
        name = archive.resolve(cell)
    except MemberNotFound as exc:
        raise ImageError("not_in_archive", str(exc)) from None
    try:
        # One byte more than allowed lets decode_image tell "too large" from "exactly the limit".
        data = archive.read(name, limit=limits.max_bytes + 1)
    except MemberUnreadable as exc:
        raise ImageError("truncated", str(exc)) from None
    return decode_image(data, limits=limits, where=f"{name} in {archive.file_name}")


class _Archives:
    """The zips rows were uploaded in, each opened once per fetch job: a row's is its import job's."""

    def __init__(self) -> None:
        self._by_job: dict[int, ImageArchive | ImageError | None] = {}
        self._by_blob: dict[str, ImageArchive | ImageError] = {}

    def of_job(self, job_id: int | None) -> ImageArchive | ImageError | None:
        if job_id is None:
            return None
        if job_id not in self._by_job:
            source = DatasetJob.objects.filter(pk=job_id).values_list("source", flat=True).first() or {}
            self._by_job[job_id] = self._open(source) if source.get("archive") else None
        return self._by_job[job_id]

    def _open(self, source: dict[str, Any]) -> ImageArchive | ImageError:
        key = f"{source['blob']}:{source['archive']['table']}"
        if key not in self._by_blob:
            try:
                self._by_blob[key] = archive_open(source)
            except Exception:
                logger.exception(
                    "an uploaded archive could not be opened again", extra={"blob": source["blob"]}
                )
                self._by_blob[key] = ImageError(
                    "internal_error", f"{source['file_name']} could not be read again; it has been logged"
                )
        return self._by_blob[key]

    def close(self) -> None:
        for archive in self._by_blob.values():
            if isinstance(archive, ImageArchive):
                archive.close()


def image_columns(dataset: Dataset) -> list[tuple[int, str]]:
    """(position, name) of the dataset's columns with the role `image`."""
    mapping = dataset_mapping(dataset)
    return [
        (index, name) for index, name in enumerate(dataset.columns) if mapping.column(name).role == "image"
    ]


def _active_fetch(dataset: Dataset) -> DatasetJob | None:
    return DatasetJob.objects.filter(
        dataset=dataset,
        kind=DatasetJob.KIND_FETCH_IMAGES,
        state__in=[DatasetJob.QUEUED, DatasetJob.RUNNING],
    ).first()


def images_fetch_queue(*, dataset: Dataset, actor: str, retry_failed: bool = False) -> DatasetJob | None:
    """Start fetching the images the dataset's rows name (after the current transaction commits); None when
    the dataset has no image column. `retry_failed` fetches failed images again too."""
    if not image_columns(dataset):
        return None
    active = _active_fetch(dataset)
    if active is not None:
        if retry_failed and not active.source.get("retry_failed"):
            # The running job picks this up in its next pass.
            DatasetJob.objects.filter(pk=active.pk).update(source={**active.source, "retry_failed": True})
        return active
    job = DatasetJob.objects.create(
        dataset=dataset,
        kind=DatasetJob.KIND_FETCH_IMAGES,
        source={"retry_failed": retry_failed},
        created_by=actor,
    )
    org_id = dataset.org_id
    transaction.on_commit(lambda: images_fetch_in_background(job.pk, org_id), using=DB)
    return job


def images_fetch_in_background(job_id: int, org_id: int) -> None:
    threading.Thread(target=_run, args=(job_id, org_id), name=f"dataset-images-{job_id}", daemon=True).start()


def _run(job_id: int, org_id: int) -> None:
    close_old_connections()
    try:
        with org_scope(org_id):
            images_fetch_run(DatasetJob.objects.get(pk=job_id))
    except Exception:
        logger.exception("image fetch job failed unexpectedly", extra={"job_id": job_id})
    finally:
        connections.close_all()


# (row number, column, url or archive file name, the import job that brought the row)
_Item = tuple[int, str, str, int | None]


def _work(dataset: Dataset, *, retry_failed: bool, tried: set[tuple[int, str]]) -> Iterator[_Item]:
    """Every image cell whose image is not (or, with `retry_failed`, not successfully) fetched for the cell's
    current value; each at most once per job (`tried`)."""
    columns = image_columns(dataset)
    if not columns:
        return
    last = 0
    while True:
        chunk = list(
            selectors.rows_visible(dataset=dataset)
            .filter(number__gt=last)
            .order_by("number")
            .values_list("number", "cells", "job_id")[:SCAN_BATCH]
        )
        if not chunk:
            return
        numbers = [number for number, _, _ in chunk]
        known = {
            (image.row_number, image.column): image
            for image in RowImage.objects.filter(dataset=dataset, row_number__in=numbers).only(
                "row_number", "column", "url", "state"
            )
        }
        for number, cells, job_id in chunk:
            for index, name in columns:
                value = cells[index] if index < len(cells) else None
                url = value.strip() if isinstance(value, str) else ""
                if not url or (number, name) in tried:
                    continue
                image = known.get((number, name))
                if image is not None and image.url == url:
                    if image.state == RowImage.FETCHED:
                        continue
                    if image.state == RowImage.FAILED and not retry_failed:
                        continue
                yield number, name, url, job_id
        last = chunk[-1][0]


def _fetch_one(
    url: str,
    fetch: Callable[[str], FetchedImage],
    archive: ImageArchive | ImageError | None,
    limits: ImageLimits,
) -> tuple[FetchedImage | None, ImageError | None]:
    try:
        if archive is None or _SCHEME.match(url):
            image = fetch(url)
        elif isinstance(archive, ImageError):
            raise archive
        else:
            image = archive_image(archive, url, limits=limits)
        image_store(conf.blob_store(), image)
        return image, None
    except ImageError as exc:
        return None, exc
    except Exception:  # a storage or decoder bug must not stop the job: the row says so
        logger.exception("fetching an image failed unexpectedly")
        return None, ImageError("internal_error", "the image could not be stored; it has been logged")


def _record(
    dataset: Dataset, number: int, column: str, url: str, image: FetchedImage | None, error: ImageError | None
) -> RowImage:
    values: dict[str, Any] = {"url": url, "fetched_at": timezone.now()}
    if image is not None:
        values |= {
            "state": RowImage.FETCHED,
            "sha256": image.sha256,
            "mime": image.mime,
            "width": image.width,
            "height": image.height,
            "error_code": "",
            "error_message": "",
        }
    else:
        assert error is not None
        values |= {
            "state": RowImage.FAILED,
            "sha256": "",
            "mime": "",
            "width": None,
            "height": None,
            "error_code": error.code,
            "error_message": error.message[:2000],
        }
    record, created = RowImage.objects.get_or_create(
        dataset=dataset, row_number=number, column=column, defaults={**values, "attempts": 1}
    )
    if not created:
        for key, value in values.items():
            setattr(record, key, value)
        record.attempts += 1
        record.save()
    return record


def images_fetch_run(job: DatasetJob, *, fetch: Callable[[str], FetchedImage] | None = None) -> DatasetJob:
    """Fetch every image the dataset's rows name that is not fetched yet, `ARBITER_FETCH_CONCURRENCY` at a time;
    progress is the job's counters (`rows_read`: images looked at, `rows_imported`: fetched, `rows_rejected`:
    failed)."""
    DatasetJob.objects.filter(pk=job.pk).update(
        state=DatasetJob.RUNNING, started_at=Now(), heartbeat_at=Now()
    )
    dataset = Dataset.objects.get(pk=job.dataset_id)
    limits = image_limits()
    if fetch is None:
        policy = image_policy()

        def fetch(url: str) -> FetchedImage:
            return fetch_image(url, policy=policy, limits=limits)

    concurrency = arbiter_settings().fetch.concurrency
    tried: set[tuple[int, str]] = set()
    looked = fetched = failed = 0
    archives = _Archives()
    batch = _Batch(dataset=dataset, job=job, fetch=fetch, archives=archives, limits=limits)
    try:
        with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="image-fetch") as pool:
            for _ in range(MAX_PASSES):
                retry_failed = bool(DatasetJob.objects.get(pk=job.pk).source.get("retry_failed"))
                found = 0
                pending: list[_Item] = []
                for item in _work(dataset, retry_failed=retry_failed, tried=tried):
                    tried.add((item[0], item[1]))
                    pending.append(item)
                    found += 1
                    if len(pending) >= concurrency * 4:
                        fetched, failed = batch.run(pool, pending, fetched, failed)
                        looked += len(pending)
                        pending = []
                if pending:
                    fetched, failed = batch.run(pool, pending, fetched, failed)
                    looked += len(pending)
                if not found:
                    break
    except Exception:
        logger.exception("image fetching failed", extra={"job_id": job.pk})
        DatasetJob.objects.filter(pk=job.pk).update(
            state=DatasetJob.FAILED,
            finished_at=Now(),
            error={"code": "internal_error", "message": "fetching the images failed; it has been logged"},
        )
    else:
        DatasetJob.objects.filter(pk=job.pk).update(
            state=DatasetJob.COMPLETED, finished_at=Now(), heartbeat_at=Now()
        )
    finally:
        archives.close()
    job.refresh_from_db()
    return job


@dataclass
class _Batch:
    dataset: Dataset
    job: DatasetJob
    fetch: Callable[[str], FetchedImage]
    archives: _Archives
    limits: ImageLimits

    def run(
        self, pool: ThreadPoolExecutor, pending: list[_Item], fetched: int, failed: int
    ) -> tuple[int, int]:
        # The archives are looked up here (the database is this thread's); the pool reads, checks and stores.
        sources = [self.archives.of_job(job_id) for _, _, _, job_id in pending]
        results = list(
            pool.map(
                lambda item, archive: _fetch_one(item[2], self.fetch, archive, self.limits), pending, sources
            )
        )
        with transaction.atomic(using=DB):
            for (number, column, url, _), (image, error) in zip(pending, results, strict=True):
                _record(self.dataset, number, column, url, image, error)
                if image is not None:
                    fetched += 1
                else:
                    failed += 1
            DatasetJob.objects.filter(pk=self.job.pk).update(
                rows_read=fetched + failed, rows_imported=fetched, rows_rejected=failed, heartbeat_at=Now()
            )
        return fetched, failed


def row_images(*, dataset: Dataset, numbers: list[int]) -> dict[int, dict[str, RowImage]]:
    """The fetched-or-failed images of these rows, per row number and column."""
    found: dict[int, dict[str, RowImage]] = {}
    for image in RowImage.objects.filter(dataset=dataset, row_number__in=numbers):
        found.setdefault(image.row_number, {})[image.column] = image
    return found
