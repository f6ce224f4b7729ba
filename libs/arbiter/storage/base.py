"""The blob store interface shared by every backend.

Keys are relative, slash-separated paths (`snapshots/ab/abcd....jsonl`). Stores hand out no URLs: every read
goes through the store, so access control stays with the service that owns the key.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, BinaryIO

CHUNK_SIZE = 1024 * 1024

# A key segment is anything but a slash, a backslash, a NUL or a control character; "." and ".." are refused
# so that no key can name a place outside the store's root or prefix.
_SEGMENT = re.compile(r"^[^/\\\x00-\x1f\x7f]+$")


class BlobNotFoundError(LookupError):
    """No blob is stored under the key."""

    def __init__(self, key: str) -> None:
        super().__init__(f"no blob is stored under {key!r}")
        self.key = key


class InvalidBlobKeyError(ValueError):
    pass


def validate_key(key: str) -> str:
    segments = key.split("/")
    if not key or any(not _SEGMENT.match(s) or s in (".", "..") for s in segments):
        raise InvalidBlobKeyError(f"invalid blob key {key!r}: use relative, slash-separated names")
    return key


class BlobStore(ABC):
    """Where Arbiter keeps files: uploads, snapshots, model artifacts."""

    @abstractmethod
    def put_file(self, key: str, fileobj: IO[bytes]) -> None:
        """Store everything readable from `fileobj` under `key`, replacing what was there, atomically."""

    @abstractmethod
    def open(self, key: str) -> BinaryIO:
        """A readable binary stream of the blob; raises BlobNotFoundError. Close it (use `with`)."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the blob; deleting a missing key is not an error."""

    @abstractmethod
    def size(self, key: str) -> int:
        """The blob's size in bytes; raises BlobNotFoundError."""

    @abstractmethod
    def describe(self, key: str) -> str:
        """Where the blob lives, for people reading logs (`s3://bucket/prefix/key`, a file path)."""

    def put_bytes(self, key: str, data: bytes) -> None:
        with tempfile.SpooledTemporaryFile(max_size=CHUNK_SIZE) as spool:
            spool.write(data)
            spool.seek(0)
            self.put_file(key, spool)

    def get_bytes(self, key: str) -> bytes:
        with self.open(key) as stream:
            return stream.read()

    def put_content_addressed(
        self, prefix: str, fileobj: IO[bytes], *, suffix: str = ""
    ) -> tuple[str, str, int]:
        """Store a stream under a key derived from its SHA-256 and return `(key, sha256, size)`.

        The stream is read once, in chunks, into a temporary file while it is hashed: memory stays bounded
        whatever the size. Storing the same content twice keeps the first copy.
        """
        digest = hashlib.sha256()
        size = 0
        with self._staging() as staged:
            while chunk := fileobj.read(CHUNK_SIZE):
                digest.update(chunk)
                size += len(chunk)
                staged.write(chunk)
            sha256 = digest.hexdigest()
            key = content_key(prefix, sha256, suffix)
            if not self.exists(key):
                self._promote(staged, key)
        return key, sha256, size

    @contextmanager
    def _staging(self) -> Iterator[IO[bytes]]:
        """A scratch file that content is written to before it gets its final key."""
        with tempfile.TemporaryFile() as spool:
            yield spool

    def _promote(self, staged: IO[bytes], key: str) -> None:
        staged.seek(0)
        self.put_file(key, staged)


def content_key(prefix: str, sha256: str, suffix: str = "") -> str:
    # Two hex characters of fan-out keep directory listings short on the local backend.
    return validate_key(f"{prefix.strip('/')}/{sha256[:2]}/{sha256}{suffix}")


def copy_stream(source: IO[bytes], target: IO[bytes]) -> None:
    shutil.copyfileobj(source, target, CHUNK_SIZE)
