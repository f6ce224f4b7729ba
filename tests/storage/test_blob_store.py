from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any

import boto3
import pytest

from arbiter.storage import (
    BlobNotFoundError,
    BlobStore,
    InvalidBlobKeyError,
    LocalBlobStore,
    S3BlobStore,
    blob_store_from_url,
    get_blob_store,
)


class ChunkOnlyReader(io.RawIOBase):
    """A large stream that refuses whole-file reads, to prove storing it never slurps it into memory."""

    def __init__(self, size: int, chunk: bytes = b"0123456789abcdef") -> None:
        self.remaining = size
        self.pattern = chunk
        self.largest_read = 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        assert n is not None and 0 < n <= 8 * 1024 * 1024, f"read({n}) would load the whole stream"
        self.largest_read = max(self.largest_read, n)
        n = min(n, self.remaining)
        self.remaining -= n
        return (self.pattern * (n // len(self.pattern) + 1))[:n]


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    if request.param == "local":
        return LocalBlobStore(tmp_path / "blobs")
    bucket = request.getfixturevalue("s3_env")
    return get_blob_store_for(f"s3://{bucket}/tenant-data")


def get_blob_store_for(url: str) -> BlobStore:
    return blob_store_from_url(url, endpoint_url=os.environ["AWS_ENDPOINT_URL"], region="us-east-1")


def test_bytes_round_trip(store: BlobStore) -> None:
    store.put_bytes("uploads/a.csv", b"text,label\nhello,safe\n")
    assert store.exists("uploads/a.csv")
    assert store.get_bytes("uploads/a.csv") == b"text,label\nhello,safe\n"
    assert store.size("uploads/a.csv") == 22
    store.put_bytes("uploads/a.csv", b"replaced")
    assert store.get_bytes("uploads/a.csv") == b"replaced"


def test_missing_blob(store: BlobStore) -> None:
    assert not store.exists("nothing/here")
    with pytest.raises(BlobNotFoundError):
        store.open("nothing/here")
    with pytest.raises(BlobNotFoundError):
        store.size("nothing/here")
    store.delete("nothing/here")  # deleting what is not there is fine


def test_delete(store: BlobStore) -> None:
    store.put_bytes("x/y", b"1")
    store.delete("x/y")
    assert not store.exists("x/y")


def test_open_streams_in_chunks_and_works_with_text_io(store: BlobStore) -> None:
    store.put_bytes(
        "rows.jsonl", "".join(f'{{"row": {i}, "input": "é {i}"}}\n' for i in range(5000)).encode()
    )
    with store.open("rows.jsonl") as raw, io.TextIOWrapper(raw, encoding="utf-8") as text:
        lines = list(text)
    assert len(lines) == 5000
    assert lines[4999] == '{"row": 4999, "input": "é 4999"}\n'


def test_content_addressed_streams_and_deduplicates(store: BlobStore) -> None:
    size = 9 * 1024 * 1024 + 17  # above the multipart threshold of S3 uploads
    source = ChunkOnlyReader(size)
    key, sha256, stored_size = store.put_content_addressed("snapshots", source, suffix=".jsonl")

    expected = hashlib.sha256()
    replay = ChunkOnlyReader(size)
    while chunk := replay.read(1024 * 1024):
        expected.update(chunk)
    assert (sha256, stored_size) == (expected.hexdigest(), size)
    assert key == f"snapshots/{sha256[:2]}/{sha256}.jsonl"
    assert store.size(key) == size

    again = store.put_content_addressed("snapshots", ChunkOnlyReader(size), suffix=".jsonl")
    assert again == (key, sha256, size)


@pytest.mark.parametrize("key", ["", "/abs", "a/../b", "..", "a//b", "a/./b", "back\\slash", "nul\x00byte"])
def test_keys_cannot_escape_the_store(store: BlobStore, key: str) -> None:
    with pytest.raises(InvalidBlobKeyError):
        store.put_bytes(key, b"x")


def test_local_write_is_atomic(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    store.put_bytes("model.bin", b"old complete content")

    class Failing(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def readinto(self, buffer: bytearray) -> int:  # type: ignore[override]
            raise OSError("connection reset while uploading")

    with pytest.raises(OSError, match="connection reset"):
        store.put_file("model.bin", Failing())  # type: ignore[arg-type]
    assert store.get_bytes("model.bin") == b"old complete content"
    assert list((tmp_path / ".staging").iterdir()) == []


def test_s3_prefix_and_describe(s3_env: str) -> None:
    store = get_blob_store_for(f"s3://{s3_env}/team/blobs/")
    store.put_bytes("k/v.txt", b"v")
    client = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name="us-east-1")
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=s3_env)["Contents"]]
    assert keys == ["team/blobs/k/v.txt"]
    assert store.describe("k/v.txt") == f"s3://{s3_env}/team/blobs/k/v.txt"


def test_factory_follows_the_settings(s3_env: str, tmp_path: Path, override_arbiter_settings: Any) -> None:
    override_arbiter_settings(ARBITER_BLOB_STORE=f"s3://{s3_env}/p")
    s3_store = get_blob_store()
    assert isinstance(s3_store, S3BlobStore) and (s3_store.bucket, s3_store.prefix) == (s3_env, "p")
    s3_store.put_bytes("hello", b"world")
    assert s3_store.get_bytes("hello") == b"world"

    override_arbiter_settings(ARBITER_BLOB_STORE=None, ARBITER_HOME=str(tmp_path / "home"))
    local = get_blob_store()
    assert isinstance(local, LocalBlobStore) and local.root == (tmp_path / "home" / "blobs").resolve()

    override_arbiter_settings(ARBITER_BLOB_STORE=f"file://{tmp_path}/elsewhere")
    assert get_blob_store().root == (tmp_path / "elsewhere").resolve()  # type: ignore[attr-defined]


def test_unsupported_urls_are_refused() -> None:
    with pytest.raises(ValueError, match="unsupported"):
        blob_store_from_url("gs://bucket/x")
    with pytest.raises(ValueError, match="names no bucket"):
        blob_store_from_url("s3:///x")
