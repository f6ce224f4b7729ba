"""Excel workbooks (.xlsx), read row by row with openpyxl's read-only mode, after zip-bomb checks."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any, BinaryIO

import openpyxl
from openpyxl.utils import get_column_letter

from services.dataset.importing.archive import MAX_COMPRESSION_RATIO, open_checked_zip
from services.dataset.importing.errors import ImportFileError, RowRejection
from services.dataset.importing.table import (
    BATCH_ROWS,
    MAX_COLUMNS,
    RowBatch,
    TableReader,
    generic_column_names,
    looks_like_header,
    unique_column_names,
)

MAX_UNCOMPRESSED_BYTES = 512 * 1024 * 1024
MAX_ZIP_ENTRIES = 10_000
SAMPLE_ROWS = 200


def check_zip_bomb(
    raw: BinaryIO,
    *,
    file_name: str,
    max_uncompressed_bytes: int = MAX_UNCOMPRESSED_BYTES,
    max_ratio: int = MAX_COMPRESSION_RATIO,
) -> None:
    """Refuse a workbook whose parts would inflate beyond the limits, before any part is decompressed
    (`archive.open_checked_zip`: the checks every uploaded zip goes through)."""
    open_checked_zip(
        raw,
        file_name=file_name,
        max_uncompressed_bytes=max_uncompressed_bytes,
        max_files=MAX_ZIP_ENTRIES,
        max_ratio=max_ratio,
        what="workbook",
        part="part",
        not_a_zip="not a valid .xlsx workbook (it is not a zip archive); save it as .xlsx or CSV",
    ).close()
    raw.seek(0)


def cell_text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, dt.datetime) and value.time() == dt.time(0):
        return value.date().isoformat()
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    return str(value)


class ExcelReader(TableReader):
    format = "xlsx"

    def __init__(
        self,
        raw: BinaryIO,
        *,
        file_name: str,
        sheet: str | None = None,
        header: bool | None = None,
        max_columns: int = MAX_COLUMNS,
        max_uncompressed_bytes: int = MAX_UNCOMPRESSED_BYTES,
    ) -> None:
        self.file_name = file_name
        self.max_columns = max_columns
        check_zip_bomb(raw, file_name=file_name, max_uncompressed_bytes=max_uncompressed_bytes)
        try:
            self._workbook = openpyxl.load_workbook(raw, read_only=True, data_only=True)
        except (
            Exception
        ) as exc:  # openpyxl raises many kinds (KeyError, ValueError, XML errors) for bad files
            raise ImportFileError(
                f"not a readable .xlsx workbook ({type(exc).__name__}: {exc})",
                file_name=file_name,
                code="unparseable",
            ) from None
        if sheet is not None and sheet not in self._workbook.sheetnames:
            raise ImportFileError(
                f"no sheet named {sheet!r}; the workbook has {', '.join(self._workbook.sheetnames)}",
                file_name=file_name,
                code="bad_option",
            )
        self._sheet = self._workbook[sheet] if sheet else self._workbook.worksheets[0]
        # The stored dimensions can claim 16,384 columns; without them rows are only as wide as their cells.
        self._sheet.reset_dimensions()
        self._rows = self._numbered_rows()
        sample: list[tuple[int, list[str | None]]] = []
        for numbered in self._rows:
            sample.append(numbered)
            if len(sample) >= SAMPLE_ROWS:
                break
        self._pending = sample
        if header is None:
            header = bool(sample) and looks_like_header(sample[0][1], [row for _, row in sample[1:]])
        self.has_header = header
        if header and sample:
            self.columns = unique_column_names(sample[0][1])
            self._pending = sample[1:]
        else:
            self.columns = generic_column_names(max((len(row) for _, row in sample), default=1))

    @property
    def details(self) -> dict[str, Any]:
        return {"sheet": self._sheet.title, "header": self.has_header}

    def _numbered_rows(self) -> Iterator[tuple[int, list[str | None]]]:
        source = self._sheet.iter_rows(values_only=True)
        number = 0
        while True:
            number += 1
            try:
                values = next(source)
            except StopIteration:
                return
            except Exception as exc:  # a damaged part surfaces here as XML, zip or CRC errors of many kinds
                raise ImportFileError(
                    f"the sheet cannot be read ({type(exc).__name__}: {exc})",
                    file_name=self.file_name,
                    line=number,
                    unit="row",
                    code="unparseable",
                ) from None
            cells = [cell_text(value) for value in values]
            while cells and cells[-1] is None:
                cells.pop()
            if not cells:
                continue
            if len(cells) > self.max_columns:
                raise ImportFileError(
                    f"the row has {len(cells)} columns, more than the limit of {self.max_columns}",
                    file_name=self.file_name,
                    line=number,
                    unit="row",
                    code="too_many_columns",
                )
            yield number, cells

    def batches(self, size: int = BATCH_ROWS) -> Iterator[RowBatch]:
        width = len(self.columns)
        batch = RowBatch()

        def all_rows() -> Iterator[tuple[int, list[str | None]]]:
            yield from self._pending
            yield from self._rows

        try:
            for number, cells in all_rows():
                if len(cells) > width:
                    message = (
                        f"expected {width} columns, got a value in column {get_column_letter(len(cells))}"
                    )
                    batch.rejected.append(RowRejection(line=number, unit="row", message=message))
                    continue
                batch.lines.append(number)
                batch.rows.append(cells + [None] * (width - len(cells)))
                if len(batch.rows) >= size:
                    yield batch
                    batch = RowBatch()
        finally:
            self._workbook.close()
        if batch.rows or batch.rejected:
            yield batch
