"""Reading uploaded tables (pure Python, no Django): CSV/TSV, Excel, JSON Lines, JSON rows, and zips of images
with the table that names them (`open_image_archive`).

    reader = open_table(stream, file_name="reviews.csv", options=ImportOptions())
    for batch in reader.batches():      # RowBatch: lines, rows (cells in reader.columns order), rejected
        ...
    mapping, profiles = infer_mapping(reader.columns, first_batch.rows)

Memory stays bounded: readers hold one batch (and one chunk of the file) at a time. Problems that make the
whole file unreadable raise `ImportFileError`; problems with single rows come back as `RowRejection`s in the
batches.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import BinaryIO, Literal

from services.dataset.importing.archive import (
    ArchiveLimits,
    ImageArchive,
    MemberNotFound,
    MemberUnreadable,
    is_zip,
    open_image_archive,
    seekable,
)
from services.dataset.importing.delimited import DelimitedReader
from services.dataset.importing.errors import ImportFileError, RowRejection
from services.dataset.importing.excel import MAX_UNCOMPRESSED_BYTES, ExcelReader
from services.dataset.importing.jsonl import JsonLinesReader, JsonRowsReader, read_json_document
from services.dataset.importing.labels import LabelError, LabelSpec, is_null, label_parser
from services.dataset.importing.mapping import (
    ColumnMapping,
    ColumnProfile,
    DatasetMapping,
    MappingError,
    infer_mapping,
    mapping_from_dict,
    preview,
)
from services.dataset.importing.table import BATCH_ROWS, MAX_COLUMNS, RowBatch, TableReader

__all__ = [
    "ArchiveLimits",
    "BATCH_ROWS",
    "ColumnMapping",
    "ColumnProfile",
    "DatasetMapping",
    "ImportFileError",
    "ImageArchive",
    "ImportOptions",
    "JsonRowsReader",
    "LabelError",
    "LabelSpec",
    "MappingError",
    "MemberNotFound",
    "MemberUnreadable",
    "RowBatch",
    "RowRejection",
    "TableReader",
    "infer_mapping",
    "is_zip",
    "is_null",
    "label_parser",
    "mapping_from_dict",
    "open_image_archive",
    "open_table",
    "preview",
    "seekable",
]

FileFormat = Literal["auto", "csv", "tsv", "xlsx", "jsonl", "json"]
FILE_FORMATS: tuple[FileFormat, ...] = ("auto", "csv", "tsv", "xlsx", "jsonl", "json")

_ZIP_MAGIC = b"PK\x03\x04"
_OLE_MAGIC = b"\xd0\xcf\x11\xe0"  # legacy .xls (and other Office 97 files)


@dataclass(frozen=True)
class ImportOptions:
    """How to read a file; None means detect."""

    format: FileFormat = "auto"
    encoding: str | None = None
    delimiter: str | None = None
    header: bool | None = None
    sheet: str | None = None
    max_columns: int = MAX_COLUMNS
    max_xlsx_uncompressed_bytes: int = MAX_UNCOMPRESSED_BYTES


def detect_format(head: bytes, *, file_name: str) -> FileFormat:
    lowered = file_name.lower()
    if head.startswith(_ZIP_MAGIC) or lowered.endswith((".xlsx", ".xlsm")):
        return "xlsx"
    if head.startswith(_OLE_MAGIC) or lowered.endswith(".xls"):
        raise ImportFileError(
            "legacy .xls workbooks are not supported; save the sheet as .xlsx or CSV",
            file_name=file_name,
            code="unsupported_format",
        )
    first = head.lstrip(b"\xef\xbb\xbf \t\r\n")[:1]
    if lowered.endswith(".json") and first == b"[":
        return "json"
    if lowered.endswith((".jsonl", ".ndjson", ".json")) or first == b"{":
        return "jsonl"
    if first == b"[":
        return "json"
    return "csv"  # the delimiter (tab included) is sniffed


def open_table(raw: BinaryIO, *, file_name: str, options: ImportOptions | None = None) -> TableReader:
    """A reader for an uploaded file. `file_name` is only used for format hints and messages."""
    options = options or ImportOptions()
    file_name = os.path.basename(file_name) or "upload"
    table_format = options.format
    if table_format == "auto":
        if raw.seekable():
            head = raw.read(4096)
            raw.seek(0)
        else:
            head = raw.peek(4096)[:4096] if hasattr(raw, "peek") else b""
        table_format = detect_format(head, file_name=file_name)
    if table_format == "xlsx":
        return ExcelReader(
            seekable(raw),
            file_name=file_name,
            sheet=options.sheet,
            header=options.header,
            max_columns=options.max_columns,
            max_uncompressed_bytes=options.max_xlsx_uncompressed_bytes,
        )
    if table_format == "jsonl":
        return JsonLinesReader(raw, file_name=file_name, max_columns=options.max_columns)
    if table_format == "json":
        return JsonRowsReader(
            read_json_document(raw, file_name=file_name), file_name=file_name, max_columns=options.max_columns
        )
    return DelimitedReader(
        raw,
        file_name=file_name,
        encoding=options.encoding,
        delimiter="\t" if table_format == "tsv" and not options.delimiter else options.delimiter,
        header=options.header,
        max_columns=options.max_columns,
    )
