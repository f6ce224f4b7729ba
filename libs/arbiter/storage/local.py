"""Blobs as files under a local directory (the default for `arbiter up`)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, BinaryIO

from arbiter.storage.base import BlobNotFoundError, BlobStore, InvalidBlobKeyError, copy_stream, validate_key


class LocalBlobStore(BlobStore):
    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).resolve()
        # Scratch files live inside the root so that publishing one is a rename on the same filesystem.
        self._scratch = self.root / ".staging"

    def _path(self, key: str) -> Path:
        if validate_key(key).split("/", 1)[0] == self._scratch.name:
            raise InvalidBlobKeyError(f"invalid blob key {key!r}: {self._scratch.name}/ is reserved")
        return self.root / key

    @contextmanager
    def _staging(self) -> Iterator[IO[bytes]]:
        self._scratch.mkdir(parents=True, exist_ok=True)
        staged = tempfile.NamedTemporaryFile(dir=self._scratch, prefix="blob-", delete=False)  # noqa: SIM115
        try:
            yield staged
        finally:
            staged.close()
            Path(staged.name).unlink(missing_ok=True)

    def _promote(self, staged: IO[bytes], key: str) -> None:
        # Readers see either the old blob or the whole new one, never a partly written file.
        staged.flush()
        os.fsync(staged.fileno())
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged.name, target)

    def put_file(self, key: str, fileobj: IO[bytes]) -> None:
        validate_key(key)
        with self._staging() as staged:
            copy_stream(fileobj, staged)
            self._promote(staged, key)

    def open(self, key: str) -> BinaryIO:
        try:
            return self._path(key).open("rb")
        except (FileNotFoundError, IsADirectoryError):
            raise BlobNotFoundError(key) from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def size(self, key: str) -> int:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError:
            raise BlobNotFoundError(key) from None

    def describe(self, key: str) -> str:
        return str(self._path(key))
