"""The dataset service's settings: Django settings win, then environment variables, then defaults.

| variable | default | meaning |
| --- | --- | --- |
| ARBITER_MAX_UPLOAD_BYTES | 512 MiB | larger uploads answer 413 |
| ARBITER_IMPORT_BACKGROUND_BYTES | 4 MiB | larger uploads import in the background (answer 202) |
| ARBITER_IMPORT_MAX_ROWS | 5,000,000 | rows one upload may hold |
| ARBITER_IMPORT_MAX_COLUMNS | 1,000 | columns one upload may hold |
| ARBITER_XLSX_MAX_UNCOMPRESSED_BYTES | 512 MiB | what a workbook may inflate to (zip-bomb defence) |
| ARBITER_SNAPSHOT_MAX_TOKENS | 512 | rows whose input is longer (approximate tokens) are invalid |
| ARBITER_MAPPING_BACKGROUND_ROWS | 20,000 | bigger datasets re-derive rows in the background on remapping |
"""

from __future__ import annotations

from django.conf import settings

from arbiter.config.env import env_int
from arbiter.storage import BlobStore, get_blob_store

DB = "dataset"  # this service's database alias

_DEFAULTS = {
    "ARBITER_MAX_UPLOAD_BYTES": 512 * 1024 * 1024,
    "ARBITER_IMPORT_BACKGROUND_BYTES": 4 * 1024 * 1024,
    "ARBITER_IMPORT_MAX_ROWS": 5_000_000,
    "ARBITER_IMPORT_MAX_COLUMNS": 1_000,
    "ARBITER_XLSX_MAX_UNCOMPRESSED_BYTES": 512 * 1024 * 1024,
    "ARBITER_SNAPSHOT_MAX_TOKENS": 512,
    "ARBITER_MAPPING_BACKGROUND_ROWS": 20_000,
}


def setting(name: str) -> int:
    value = getattr(settings, name, None)
    return int(value) if value is not None else env_int(name, _DEFAULTS[name])


def blob_store() -> BlobStore:
    return get_blob_store()
