"""Blob storage: a local directory by default, S3 (or an S3-compatible server) when configured.

`ARBITER_BLOB_STORE` picks the backend: a directory path (default `ARBITER_HOME/blobs`), `file:///path`, or
`s3://bucket/prefix`. For S3, boto3 reads the standard AWS variables (`AWS_ACCESS_KEY_ID`,
`AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, profiles, instance roles); `AWS_ENDPOINT_URL_S3` or
`AWS_ENDPOINT_URL` point it at another server and `AWS_REGION` / `AWS_DEFAULT_REGION` set the region. These
are `StorageSettings` in `arbiter.config.typed_settings`.
"""

from __future__ import annotations

import functools
from pathlib import Path
from urllib.parse import unquote, urlsplit

from arbiter.config.typed_settings import arbiter_settings
from arbiter.storage.base import BlobNotFoundError, BlobStore, InvalidBlobKeyError, content_key
from arbiter.storage.local import LocalBlobStore
from arbiter.storage.s3 import S3BlobStore

__all__ = [
    "BlobNotFoundError",
    "BlobStore",
    "InvalidBlobKeyError",
    "LocalBlobStore",
    "S3BlobStore",
    "blob_store_from_url",
    "content_key",
    "get_blob_store",
]


def blob_store_from_url(url: str, *, endpoint_url: str | None = None, region: str | None = None) -> BlobStore:
    parts = urlsplit(url)
    if parts.scheme == "s3":
        if not parts.netloc:
            raise ValueError(f"blob store URL {url!r} names no bucket: use s3://bucket/prefix")
        return S3BlobStore(bucket=parts.netloc, prefix=parts.path, endpoint_url=endpoint_url, region=region)
    if parts.scheme == "file":
        return LocalBlobStore(Path(unquote(parts.path)))
    if parts.scheme == "":
        return LocalBlobStore(Path(url))
    raise ValueError(
        f"unsupported blob store URL {url!r}: use a directory, file:///path or s3://bucket/prefix"
    )


def get_blob_store() -> BlobStore:
    """The process's blob store, as its settings say (see the module docstring)."""
    storage = arbiter_settings().storage
    return _cached_store(storage.blob_store, storage.endpoint_url, storage.region)


# One store (and one boto3 client, which is thread-safe) per configuration: creating clients is slow.
@functools.lru_cache(maxsize=8)
def _cached_store(url: str, endpoint_url: str | None, region: str | None) -> BlobStore:
    return blob_store_from_url(url, endpoint_url=endpoint_url, region=region)
