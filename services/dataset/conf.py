"""The dataset service's settings: `DatasetSettings` in `arbiter.config.typed_settings` (limits on uploads,
imports, workbooks and snapshots; each variable is listed in README.md's "Configuration")."""

from __future__ import annotations

from arbiter.config.typed_settings import DatasetSettings, arbiter_settings
from arbiter.storage import BlobStore, get_blob_store

DB = "dataset"  # this service's database alias

# The variable behind each limit, for `setting()`.
_FIELDS = {DatasetSettings.model_fields[name].validation_alias: name for name in DatasetSettings.model_fields}


def dataset_settings() -> DatasetSettings:
    return arbiter_settings().dataset


def setting(name: str) -> int:
    """One limit by its variable name, e.g. `setting("ARBITER_IMPORT_MAX_ROWS")`."""
    return int(getattr(dataset_settings(), _FIELDS[name]))


def blob_store() -> BlobStore:
    return get_blob_store()
