"""Image columns: a background job fetches the image each row's image cell names, with bounded concurrency,
through `arbiter.images` (the egress guard, size cap, type sniffing, decompression-bomb limit, EXIF
orientation), and stores it content-addressed in the blob store. Each (row, column) gets a `RowImage`: fetched
(with its hash and size) or failed (with the reason). Failed rows can be fetched again.

A fetch job runs beside imports and row edits (it does not make the dataset busy). It works in passes until a
pass finds nothing to do, so rows added while it runs are fetched by it; a new request while one is active
returns the active job.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from django.db import close_old_connections, connections, transaction
from django.db.models.functions import Now
from django.utils import timezone

from arbiter.config.typed_settings import arbiter_settings
from arbiter.images import FetchedImage, ImageError, fetch_image, image_limits, image_policy, image_store
from arbiter.tenancy.scoping import org_scope
from services.dataset import conf, selectors
from services.dataset.conf import DB
from services.dataset.logic.mapping import dataset_mapping
from services.dataset.models import Dataset, DatasetJob, RowImage

logger = logging.getLogger(__name__)

SCAN_BATCH = 500  # rows looked at per query
MAX_PASSES = 20


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


def _work(
    dataset: Dataset, *, retry_failed: bool, tried: set[tuple[int, str]]
) -> Iterator[tuple[int, str, str]]:
    """(row number, column, url) of every image cell whose image is not (or, with `retry_failed`, not
    successfully) fetched for the cell's current value; each at most once per job (`tried`)."""
    columns = image_columns(dataset)
    if not columns:
        return
    last = 0
    while True:
        chunk = list(
            selectors.rows_visible(dataset=dataset)
            .filter(number__gt=last)
            .order_by("number")
            .values_list("number", "cells")[:SCAN_BATCH]
        )
        if not chunk:
            return
        numbers = [number for number, _ in chunk]
        known = {
            (image.row_number, image.column): image
            for image in RowImage.objects.filter(dataset=dataset, row_number__in=numbers).only(
                "row_number", "column", "url", "state"
            )
        }
        for number, cells in chunk:
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
                yield number, name, url
        last = chunk[-1][0]


def _fetch_one(
    url: str, fetch: Callable[[str], FetchedImage]
) -> tuple[FetchedImage | None, ImageError | None]:
    try:
        image = fetch(url)
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
    if fetch is None:
        policy, limits = image_policy(), image_limits()

        def fetch(url: str) -> FetchedImage:
            return fetch_image(url, policy=policy, limits=limits)

    concurrency = arbiter_settings().fetch.concurrency
    tried: set[tuple[int, str]] = set()
    looked = fetched = failed = 0
    try:
        with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="image-fetch") as pool:
            for _ in range(MAX_PASSES):
                retry_failed = bool(DatasetJob.objects.get(pk=job.pk).source.get("retry_failed"))
                found = 0
                pending: list[tuple[int, str, str]] = []
                for item in _work(dataset, retry_failed=retry_failed, tried=tried):
                    tried.add((item[0], item[1]))
                    pending.append(item)
                    found += 1
                    if len(pending) >= concurrency * 4:
                        fetched, failed = _fetch_batch(dataset, job, pool, pending, fetch, fetched, failed)
                        looked += len(pending)
                        pending = []
                if pending:
                    fetched, failed = _fetch_batch(dataset, job, pool, pending, fetch, fetched, failed)
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
    job.refresh_from_db()
    return job


def _fetch_batch(
    dataset: Dataset,
    job: DatasetJob,
    pool: ThreadPoolExecutor,
    pending: list[tuple[int, str, str]],
    fetch: Callable[[str], FetchedImage],
    fetched: int,
    failed: int,
) -> tuple[int, int]:
    results = list(pool.map(lambda item: _fetch_one(item[2], fetch), pending))
    with transaction.atomic(using=DB):
        for (number, column, url), (image, error) in zip(pending, results, strict=True):
            _record(dataset, number, column, url, image, error)
            if image is not None:
                fetched += 1
            else:
                failed += 1
        DatasetJob.objects.filter(pk=job.pk).update(
            rows_read=fetched + failed, rows_imported=fetched, rows_rejected=failed, heartbeat_at=Now()
        )
    return fetched, failed


def row_images(*, dataset: Dataset, numbers: list[int]) -> dict[int, dict[str, RowImage]]:
    """The fetched-or-failed images of these rows, per row number and column."""
    found: dict[int, dict[str, RowImage]] = {}
    for image in RowImage.objects.filter(dataset=dataset, row_number__in=numbers):
        found.setdefault(image.row_number, {})[image.column] = image
    return found
