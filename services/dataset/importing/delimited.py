"""CSV, TSV and other delimited text files, parsed by the C `csv` module with bounded memory."""

from __future__ import annotations

import csv
import io
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any, BinaryIO, Literal

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
from services.dataset.importing.text import SAMPLE_BYTES, DecodedLines

DELIMITERS = (",", ";", "\t", "|")
# A file with one column has no delimiter. NUL never reaches the parser (DecodedLines replaces it), so it
# serves as a delimiter that never splits a line.
NO_DELIMITER = "\x00"
DELIMITER_NAMES = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe", NO_DELIMITER: "none"}
_DELIMITER_BY_NAME = {name: char for char, name in DELIMITER_NAMES.items()}
SAMPLE_ROWS = 200
Quoting = Literal[0, 1, 2, 3]  # csv.QUOTE_MINIMAL ... csv.QUOTE_NONE


@dataclass(frozen=True)
class Dialect:
    delimiter: str
    quoting: Quoting
    sample_rows: list[list[str]]


def parse_delimiter_option(value: str, *, file_name: str) -> str:
    if value in DELIMITERS:
        return value
    if value.lower() in _DELIMITER_BY_NAME:
        return _DELIMITER_BY_NAME[value.lower()]
    if value == "\\t":
        return "\t"
    raise ImportFileError(
        f"unsupported delimiter {value!r}: use one of , ; | or tab", file_name=file_name, code="bad_option"
    )


def _parse_sample(
    lines: list[str], delimiter: str, quoting: Quoting, truncated: bool
) -> list[list[str]] | None:
    try:
        rows = [row for row in csv.reader(lines, delimiter=delimiter, quoting=quoting) if row]
    except csv.Error:
        return None
    # The sample may end inside a quoted field: its last row is then incomplete.
    return rows[:-1] if truncated and len(rows) > 1 else rows


def _quotes_balanced(lines: list[str], delimiter: str, truncated: bool) -> bool:
    """Whether every quoted field closes right before a delimiter or a line end (`csv`'s strict mode)."""
    try:
        for _ in csv.reader(lines, delimiter=delimiter, strict=True):
            pass
    except csv.Error as exc:
        # A sample cut inside a quoted field ends in unclosed quotes without any fault of the file.
        return truncated and "unexpected end of data" in str(exc)
    return True


def _consistency(rows: list[list[str]]) -> tuple[float, int]:
    if not rows:
        return 0.0, 0
    width, count = Counter(len(row) for row in rows).most_common(1)[0]
    return count / len(rows), width


def sniff_dialect(sample: str, *, truncated: bool, delimiter: str | None, preferred: str | None) -> Dialect:
    """Pick the delimiter, and whether quotes are quoting, that split the sample into the most regular rows.

    Quoting is switched off only when plain lines split just as regularly while quotes would join lines and
    are not balanced: files with stray opening quotes (`"Great movie`) would otherwise swallow the lines that
    follow, while a well-quoted field that holds a line break (what `csv.writer` produces) stays one field.
    """
    lines = io.StringIO(sample, newline="").readlines()
    candidates = (delimiter,) if delimiter else DELIMITERS
    best: tuple[tuple[float, bool, int], Dialect] | None = None
    for candidate in candidates:
        quoted = _parse_sample(lines, candidate, csv.QUOTE_MINIMAL, truncated)
        plain = _parse_sample(lines, candidate, csv.QUOTE_NONE, truncated)
        quoted_score, quoted_width = _consistency(quoted or [])
        plain_score, plain_width = _consistency(plain or [])
        joins_lines = (
            quoted is not None
            and any("\n" in f or "\r" in f for row in quoted for f in row)
            and not _quotes_balanced(lines, candidate, truncated)
        )
        if plain is not None and (
            plain_score > quoted_score or (plain_score == quoted_score and joins_lines)
        ):
            dialect, score, width = Dialect(candidate, csv.QUOTE_NONE, plain), plain_score, plain_width
        elif quoted is not None:
            dialect, score, width = Dialect(candidate, csv.QUOTE_MINIMAL, quoted), quoted_score, quoted_width
        else:
            continue
        if width < 2 and not delimiter:
            continue
        key = (round(score, 2), candidate == preferred, width)
        if best is None or key > best[0]:
            best = (key, dialect)
    if best is not None:
        return best[1]
    rows = _parse_sample(lines, NO_DELIMITER, csv.QUOTE_MINIMAL, truncated) or []
    return Dialect(NO_DELIMITER, csv.QUOTE_MINIMAL, rows)


class DelimitedReader(TableReader):
    format = "csv"

    def __init__(
        self,
        raw: BinaryIO,
        *,
        file_name: str,
        encoding: str | None = None,
        delimiter: str | None = None,
        header: bool | None = None,
        max_columns: int = MAX_COLUMNS,
    ) -> None:
        self.file_name = file_name
        self._text = DecodedLines(raw, file_name=file_name, encoding=encoding)
        sample = self._text.sample_text()
        preferred = "\t" if file_name.lower().endswith((".tsv", ".tab")) else None
        self._dialect = sniff_dialect(
            sample,
            truncated=len(self._text.sample) >= SAMPLE_BYTES,
            delimiter=parse_delimiter_option(delimiter, file_name=file_name) if delimiter else None,
            preferred=preferred,
        )
        if self._dialect.delimiter == "\t":
            self.format = "tsv"
        self._reader = csv.reader(
            iter(self._text), delimiter=self._dialect.delimiter, quoting=self._dialect.quoting
        )
        sample_rows = self._dialect.sample_rows
        if header is None:
            header = bool(sample_rows) and looks_like_header(sample_rows[0], sample_rows[1:SAMPLE_ROWS])
        self.has_header = header
        self._header_end = 0
        width = _consistency(sample_rows)[1]
        if self.has_header:
            first = self._next_row()
            self._header_end = self._reader.line_num
            self.columns = unique_column_names(first or [])
        else:
            self.columns = generic_column_names(width or 1)
        if len(self.columns) > max_columns:
            raise ImportFileError(
                f"{len(self.columns)} columns is more than the limit of {max_columns}",
                file_name=file_name,
                line=1,
                code="too_many_columns",
            )

    @property
    def notes(self) -> list[str]:
        return self._text.notes

    @property
    def details(self) -> dict[str, Any]:
        return {
            "encoding": self._text.encoding,
            "delimiter": DELIMITER_NAMES[self._dialect.delimiter],
            "quoting": self._dialect.quoting != csv.QUOTE_NONE,
            "header": self.has_header,
            "repaired_lines": self._text.repaired_lines,
        }

    def _next_row(self) -> list[str] | None:
        try:
            for row in self._reader:
                if row:
                    return row
        except csv.Error as exc:
            raise self._parse_error(exc) from None
        return None

    def _parse_error(self, exc: csv.Error) -> ImportFileError:
        message = str(exc)
        if "field larger than field limit" in message:
            message = (
                f"a field is longer than {csv.field_size_limit()} characters; "
                "a quote that is opened and never closed usually causes this"
            )
        return ImportFileError(
            message, file_name=self.file_name, line=self._reader.line_num, code="unparseable"
        )

    def batches(self, size: int = BATCH_ROWS) -> Iterator[RowBatch]:
        reader = self._reader
        expected = len(self.columns)
        previous_end = self._header_end
        batch = RowBatch()
        lines, rows = batch.lines, batch.rows
        try:
            for row in reader:
                if len(row) == expected:
                    lines.append(previous_end + 1)
                    rows.append(row)
                elif row:
                    self._irregular(row, previous_end + 1, reader.line_num, batch)
                previous_end = reader.line_num
                if len(rows) >= size:
                    yield batch
                    batch = RowBatch()
                    lines, rows = batch.lines, batch.rows
        except csv.Error as exc:
            raise self._parse_error(exc) from None
        if rows or batch.rejected:
            yield batch

    def _irregular(self, row: list[str], start: int, end: int, batch: RowBatch) -> None:
        expected = len(self.columns)
        # A delimiter at the end of each line gives empty extra fields: harmless, dropped.
        if len(row) > expected and not any(islice(row, expected, None)):
            batch.lines.append(start)
            batch.rows.append(row[:expected])
            return
        message = f"expected {expected} fields, got {len(row)}"
        if end > start and self._dialect.quoting != csv.QUOTE_NONE:
            message += " (a quoted field spans these lines: check for a quote that is not closed)"
        batch.rejected.append(RowRejection(line=start, end_line=end, message=message))
