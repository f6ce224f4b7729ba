"""Zip archives: the defences every uploaded zip goes through (workbooks too), and image archives, a zip of
images with the one table (CSV, TSV, XLSX or JSON Lines) that names them.

    archive = open_image_archive(stream, file_name="photos.zip", limits=ArchiveLimits())
    reader = open_table(archive.table_file(), file_name=archive.table_name, ...)
    data = archive.read(archive.resolve("images/cat.jpg"), limit=20 * 1024 * 1024)

Before anything is inflated an archive is refused (`ImportFileError`, a 400) when its directory lists more files
than allowed (counted from the raw directory, so a directory of millions of entries is not even parsed), when
the sizes it declares add up to more than allowed or a large file compresses suspiciously well (a zip bomb:
Python's zipfile never inflates a file past its declared size), when a name is absolute or climbs out with `..`,
when two files share a name, or when a file is encrypted or compressed in a way that cannot be read. Nothing is
ever extracted by name to a file system: files are looked up in the archive's directory and read into memory
(an image, up to a limit) or a temporary file (the table).

A table cell names a file by its path relative to the table's folder or to the archive's root (`images/cat.jpg`,
`./images/cat.jpg`; `\\` reads as `/`), or by its bare file name when only one file has it.
"""

from __future__ import annotations

import posixpath
import re
import shutil
import struct
import tempfile
import threading
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import BinaryIO

from services.dataset.importing.errors import ImportFileError

MAX_COMPRESSION_RATIO = 200
TABLE_SUFFIXES = (".csv", ".tsv", ".xlsx", ".jsonl", ".ndjson")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff", ".heic", ".avif")
READABLE_COMPRESSION = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA)
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")
_ZIP_MAGIC = b"PK\x03\x04"
_CENTRAL_HEADER = struct.Struct("<4s24xHHH12x")  # signature, then name, extra and comment lengths (46 bytes)


@dataclass(frozen=True)
class ArchiveLimits:
    """What one uploaded zip may hold: files listed, bytes once inflated, and compression ratio of large files."""

    max_files: int = 100_000
    max_uncompressed_bytes: int = 2 * 1024 * 1024 * 1024
    max_ratio: int = MAX_COMPRESSION_RATIO


def seekable(raw: BinaryIO) -> BinaryIO:
    """`raw`, or a temporary copy of it when it cannot seek (a stream from S3): zip archives are read from
    their end."""
    if raw.seekable():
        return raw
    spool = tempfile.TemporaryFile()  # noqa: SIM115 - the caller owns it until it is closed or collected
    shutil.copyfileobj(raw, spool, 1024 * 1024)
    spool.seek(0)
    return spool  # type: ignore[return-value]


def _listed_files(raw: BinaryIO) -> int | None:
    """How many entries the archive's central directory holds, counted by walking its headers (the declared
    count may lie); None when the end record cannot be found (zipfile then says the archive is invalid)."""
    try:
        end = zipfile._EndRecData(raw)  # type: ignore[attr-defined]
        if not end:
            return None
        size_cd, offset_cd = end[zipfile._ECD_SIZE], end[zipfile._ECD_OFFSET]  # type: ignore[attr-defined]
        # Where the directory starts, as zipfile finds it (data may precede the archive).
        start = end[zipfile._ECD_LOCATION] - size_cd  # type: ignore[attr-defined]
        if end[zipfile._ECD_SIGNATURE] == zipfile.stringEndArchive64:  # type: ignore[attr-defined]
            start -= zipfile.sizeEndCentDir64 + zipfile.sizeEndCentDir64Locator  # type: ignore[attr-defined]
        if start < 0 or offset_cd < 0:
            return None
        raw.seek(start)
        count = walked = 0
        while walked < size_cd:
            header = raw.read(_CENTRAL_HEADER.size)
            if len(header) < _CENTRAL_HEADER.size:
                break
            signature, name, extra, comment = _CENTRAL_HEADER.unpack(header)
            if signature != b"PK\x01\x02":
                break
            count += 1
            skip = name + extra + comment
            raw.seek(skip, 1)
            walked += _CENTRAL_HEADER.size + skip
        return count
    except (
        AttributeError,
        IndexError,
        OSError,
        struct.error,
    ):  # zipfile's internals moved: skip the pre-count
        return None
    finally:
        raw.seek(0)


def open_checked_zip(
    raw: BinaryIO,
    *,
    file_name: str,
    max_uncompressed_bytes: int,
    max_files: int,
    max_ratio: int = MAX_COMPRESSION_RATIO,
    what: str = "archive",
    part: str = "file",
    not_a_zip: str = "not a valid zip archive",
) -> zipfile.ZipFile:
    """The zip, open, once its directory passed the zip-bomb checks (see the module docstring); raises
    `ImportFileError` (code `zip_bomb`, or `unparseable` when it is not a zip). `what`/`part` word the messages
    ("the workbook part ...")."""
    listed = _listed_files(raw)
    if listed is not None and listed > max_files:
        raise ImportFileError(
            f"the {what} has {listed:,} {part}s, more than {max_files:,}",
            file_name=file_name,
            code="zip_bomb",
        )
    try:
        archive = zipfile.ZipFile(raw)
    except (zipfile.BadZipFile, zlib.error, ValueError, OSError, EOFError):
        raw.seek(0)
        raise ImportFileError(not_a_zip, file_name=file_name, code="unparseable") from None
    try:
        members = archive.infolist()
        if len(members) > max_files:
            raise ImportFileError(
                f"the {what} has {len(members):,} {part}s, more than {max_files:,}",
                file_name=file_name,
                code="zip_bomb",
            )
        total = sum(member.file_size for member in members)
        if total > max_uncompressed_bytes:
            raise ImportFileError(
                f"the {what} would expand to {total:,} bytes, over the limit of {max_uncompressed_bytes:,}",
                file_name=file_name,
                code="zip_bomb",
            )
        for member in members:
            ratio = member.file_size / max(member.compress_size, 1)
            # Small files compress well for no bad reason; only large ones can do harm.
            if member.file_size > 1024 * 1024 and ratio > max_ratio:
                raise ImportFileError(
                    f"the {what} {part} {member.filename} compresses {ratio:,.0f}:1, more than {max_ratio}:1; "
                    "this is what a zip bomb looks like",
                    file_name=file_name,
                    code="zip_bomb",
                )
    except BaseException:
        archive.close()
        raw.seek(0)
        raise
    return archive


def _unsafe(name: str) -> bool:
    parts = name.replace("\\", "/").split("/")
    return (
        name.startswith(("/", "\\")) or bool(re.match(r"^[a-zA-Z]:", name)) or ".." in parts or "\0" in name
    )


def _normalised(name: str) -> str:
    return "/".join(part for part in name.replace("\\", "/").split("/") if part not in ("", "."))


def _hidden(name: str) -> bool:
    """macOS's `__MACOSX/` resource forks and dot files: never a table, never named by a cell."""
    return name.startswith("__MACOSX/") or any(part.startswith(".") for part in name.split("/"))


# What reading a damaged member raises: zipfile's own errors, zlib's, a short file, and NotImplementedError for a
# compression method zipfile cannot inflate (a real archive can use one; it is a bad file, not missing code).
UNREADABLE: tuple[type[Exception], ...] = (
    zipfile.BadZipFile,
    zlib.error,
    EOFError,
    OSError,
    NotImplementedError,
)


class MemberNotFound(LookupError):
    """A cell names no file of the archive (or several); the message says which and why."""


class MemberUnreadable(Exception):
    """A file of the archive could not be inflated (corrupt data, a CRC mismatch)."""


class ImageArchive:
    """An uploaded zip of images and the one table that names them. Safe to read from several threads."""

    def __init__(
        self,
        archive: zipfile.ZipFile,
        *,
        file_name: str,
        table: str | None = None,
        owned: BinaryIO | None = None,
    ) -> None:
        self._zip = archive
        self._owned = owned  # the stream under the zip, closed with it
        self.file_name = file_name
        self._lock = threading.Lock()
        self._files: dict[str, zipfile.ZipInfo] = {}
        self._by_base: dict[str, list[str]] = {}
        for member in archive.infolist():
            if _unsafe(member.filename):
                raise ImportFileError(
                    f"the archive holds {member.filename!r}, a name outside the archive (absolute, or with '..');"
                    " zip the folder's contents with relative names",
                    file_name=file_name,
                    code="unsafe_path",
                )
            if member.flag_bits & 0x1:
                raise ImportFileError(
                    f"{member.filename} in the archive is encrypted; upload an archive without a password",
                    file_name=file_name,
                    code="encrypted",
                )
            if member.is_dir():
                continue
            if member.compress_type not in READABLE_COMPRESSION:
                raise ImportFileError(
                    f"{member.filename} in the archive uses a compression method Arbiter cannot read "
                    f"({member.compress_type}); zip it again with the usual (deflate) compression",
                    file_name=file_name,
                    code="unsupported_format",
                )
            name = _normalised(member.filename)
            if name in self._files:
                raise ImportFileError(
                    f"the archive holds {name} twice", file_name=file_name, code="duplicate_file"
                )
            self._files[name] = member
            if not _hidden(name):
                self._by_base.setdefault(posixpath.basename(name), []).append(name)
        self.table_name = table if table is not None else self._find_table()
        if self.table_name not in self._files:
            raise ImportFileError(
                f"the archive has no file {self.table_name}", file_name=file_name, code="no_table"
            )
        self.table_size = self._files[self.table_name].file_size
        self._folder = posixpath.dirname(self.table_name)

    def _find_table(self) -> str:
        tables = sorted(
            name for name in self._files if not _hidden(name) and name.lower().endswith(TABLE_SUFFIXES)
        )
        if not tables:
            raise ImportFileError(
                "the archive holds no table: add one CSV, TSV, XLSX or JSONL file naming the images",
                file_name=self.file_name,
                code="no_table",
            )
        if len(tables) > 1:
            listed = ", ".join(tables[:10]) + (f" and {len(tables) - 10} more" if len(tables) > 10 else "")
            raise ImportFileError(
                f"the archive holds {len(tables)} tables ({listed}); keep exactly one",
                file_name=self.file_name,
                code="several_tables",
            )
        return tables[0]

    @property
    def files(self) -> int:
        """How many files the archive holds, the table included."""
        return len(self._files)

    def table_file(self) -> BinaryIO:
        """The table, inflated into a temporary file (removed when it is closed)."""
        spool = tempfile.TemporaryFile()  # noqa: SIM115 - handed to the reader, which reads it to the end
        try:
            with self._lock, self._zip.open(self._files[self.table_name]) as member:
                shutil.copyfileobj(member, spool, 1024 * 1024)
        except UNREADABLE as exc:
            spool.close()
            raise ImportFileError(
                f"the table {self.table_name} could not be read from the archive ({exc})",
                file_name=self.file_name,
                code="unparseable",
            ) from None
        spool.seek(0)
        return spool  # type: ignore[return-value]

    def _candidates(self, cell: str) -> Iterable[str]:
        text = cell.strip().replace("\\", "/")
        if not text or text.startswith("/"):
            return
        for base in (self._folder, "") if self._folder else ("",):
            name = posixpath.normpath(posixpath.join(base, text))
            if name != ".." and not name.startswith("../"):
                yield name

    def resolve(self, cell: str) -> str:
        """The archive file a cell names (see the module docstring); raises `MemberNotFound`."""
        shown = cell.strip()
        if _SCHEME.match(shown):
            raise MemberNotFound(f"{shown} is a URL, not a file in {self.file_name}")
        if shown.startswith(("/", "\\")):
            raise MemberNotFound(
                f"{shown} is an absolute path; name the file by its path inside {self.file_name}"
            )
        for name in self._candidates(cell):
            if name in self._files:
                return name
        base = shown.replace("\\", "/")
        if base and "/" not in base:
            matches = self._by_base.get(base, [])
            if len(matches) == 1:
                return matches[0]
            if matches:
                some = ", ".join(sorted(matches)[:3]) + (", ..." if len(matches) > 3 else "")
                raise MemberNotFound(
                    f"{base} matches {len(matches)} files in {self.file_name} ({some}); name it by its path"
                )
        raise MemberNotFound(f"{shown} is not in {self.file_name}")

    def names_image(self, cell: str) -> bool:
        """Whether a cell names an image of the archive, or reads like one's relative path (for inferring the
        image column: a few missing files do not make the column text)."""
        text = cell.strip()
        if not text or _SCHEME.match(text) or len(text) > 1000 or "\n" in text:
            return False
        if text.lower().endswith(IMAGE_SUFFIXES):
            return True
        try:
            return self.resolve(text) != self.table_name
        except MemberNotFound:
            return False

    def read(self, name: str, *, limit: int) -> bytes:
        """At most `limit` bytes of a file named by `resolve`; raises `MemberUnreadable`."""
        try:
            with self._lock, self._zip.open(self._files[name]) as member:
                return member.read(limit)
        except UNREADABLE_MEMBER as exc:
            raise MemberUnreadable(f"{name} could not be read from {self.file_name} ({exc})") from None

    def close(self) -> None:
        self._zip.close()
        if self._owned is not None:
            self._owned.close()


# A member, also: RuntimeError is what zipfile raises for an encrypted one.
UNREADABLE_MEMBER: tuple[type[Exception], ...] = (*UNREADABLE, RuntimeError)


def is_zip(raw: BinaryIO) -> bool:
    head = raw.read(len(_ZIP_MAGIC))
    raw.seek(0)
    return head == _ZIP_MAGIC


def open_image_archive(
    raw: BinaryIO,
    *,
    file_name: str,
    limits: ArchiveLimits,
    table: str | None = None,
    close_raw: bool = False,
) -> ImageArchive | None:
    """The upload as an image archive, or None when it is a workbook (an Office zip). `table`: the table's name
    when the archive was read before (a background import reopening it). `close_raw`: the archive's `close`
    closes `raw` too."""
    archive = open_checked_zip(
        raw,
        file_name=file_name,
        max_uncompressed_bytes=limits.max_uncompressed_bytes,
        max_files=limits.max_files,
        max_ratio=limits.max_ratio,
    )
    try:
        if table is None and "[Content_Types].xml" in archive.NameToInfo:
            archive.close()
            raw.seek(0)
            return None
        return ImageArchive(archive, file_name=file_name, table=table, owned=raw if close_raw else None)
    except BaseException:
        archive.close()
        raise
