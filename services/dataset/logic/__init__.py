"""Writes of the dataset service, one module per concern: datasets, their jobs (imports and remaps), rows and
snapshots. Callers import the functions from here (`from services.dataset import logic`)."""

from services.dataset.logic.datasets import (
    dataset_create_example,
    dataset_create_from_file,
    dataset_create_from_rows,
    dataset_delete,
    dataset_update,
    dataset_upload,
)
from services.dataset.logic.images import images_fetch_queue, row_images
from services.dataset.logic.jobs import dataset_jobs_recover
from services.dataset.logic.rowfeed import labels_apply
from services.dataset.logic.rows import row_create, row_delete, row_update
from services.dataset.logic.snapshots import snapshot_create, snapshot_test_set_check

__all__ = [
    "dataset_create_example",
    "dataset_create_from_file",
    "dataset_create_from_rows",
    "dataset_delete",
    "dataset_jobs_recover",
    "dataset_update",
    "dataset_upload",
    "images_fetch_queue",
    "labels_apply",
    "row_create",
    "row_delete",
    "row_images",
    "row_update",
    "snapshot_create",
    "snapshot_test_set_check",
]
