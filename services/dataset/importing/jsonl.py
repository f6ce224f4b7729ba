"""JSON Lines files and JSON rows sent in a request body.

Every object becomes a row and its keys become columns (in order of first appearance). The classifier format
`{"text": ..., "labels": {"<head>": ["<label>", ...]}}` is flattened: one column per head, named after it.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Iterator
from typing import Any, BinaryIO

from services.dataset.importing.errors import ImportFileError, RowRejection
from services.dataset.importing.table import BATCH_ROWS, MAX_COLUMNS, RowBatch, TableReader

LABELS_KEY = "labels"
MAX_JSON_DOCUMENT_BYTES = 64 * 1024 * 1024
MAX_NOTES = 100
MAX_INT_DIGITS = 308
# What PostgreSQL cannot store in text: NUL, and UTF-16 surrogates that JSON's \ud800 escapes can leave alone.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
REPAIRED = "text that cannot be stored (NUL or a lone surrogate) was replaced with U+FFFD"


class NotStorable(ValueError):
    """Valid to Python's json module, but not JSON a database can keep (NaN, Infinity, 1e999)."""


def _no_constants(name: str) -> Any:
    raise NotStorable(f"{name} is not a JSON number (JSON has no NaN or Infinity)")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise NotStorable(f"the number {text[:30]} is too large")
    return value


def _bounded_int(text: str) -> int:
    # Beyond a float's range a number is no label, score or feature; Python refuses over 4300 digits anyway.
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise NotStorable(f"the number {text[:30]}... is too large")
    return int(text)


_DECODER = json.JSONDecoder(parse_constant=_no_constants, parse_float=_finite, parse_int=_bounded_int)


def json_parse(text: str) -> Any:
    """Strict JSON: NaN, Infinity and numbers beyond a float's range raise `NotStorable` (a ValueError),
    deep nesting `RecursionError`."""
    return _DECODER.decode(text)


def _repaired(value: Any) -> tuple[Any, bool]:
    """The value with unstorable characters in its text replaced by U+FFFD, and whether any were."""
    if isinstance(value, str):
        if _UNSTORABLE.search(value) is None:
            return value, False
        return _UNSTORABLE.sub("\ufffd", value), True
    if isinstance(value, list):
        items = [_repaired(item) for item in value]
        return [item for item, _ in items], any(changed for _, changed in items)
    if isinstance(value, dict):
        pairs = [(_repaired(key), _repaired(item)) for key, item in value.items()]
        repaired = {key: item for (key, _), (item, _) in pairs}
        return repaired, any(key_changed or changed for (_, key_changed), (_, changed) in pairs)
    return value, False


class _ObjectRows(TableReader):
    """Turns JSON objects into rows; subclasses say where the objects come from."""

    unit = "line"

    def __init__(self, *, file_name: str, max_columns: int) -> None:
        self.file_name = file_name
        self.columns = []
        self._positions: dict[str, int] = {}
        self._max_columns = max_columns
        self._notes: list[str] = []

    @property
    def notes(self) -> list[str]:
        return self._notes

    def _position(self, name: str, number: int) -> int:
        position = self._positions.get(name)
        if position is None:
            if len(self.columns) >= self._max_columns:
                raise ImportFileError(
                    f"the object adds a key beyond the limit of {self._max_columns} columns",
                    file_name=self.file_name,
                    line=number,
                    unit=self.unit,
                    code="too_many_columns",
                )
            position = self._positions[name] = len(self.columns)
            self.columns.append(name)
        return position

    def _row(self, item: Any, number: int) -> list[Any] | str:
        """The row for one object, or why it is not one."""
        if not isinstance(item, dict):
            return f"expected a JSON object, got {_json_type(item)}"
        item, repaired = _repaired(item)
        if repaired and len(self._notes) < MAX_NOTES:
            self._notes.append(f"{self.unit} {number}: {REPAIRED}")
        row: list[Any] = [None] * len(self.columns)
        labels = item.get(LABELS_KEY)
        for key, value in item.items():
            if key == LABELS_KEY and isinstance(labels, dict):
                continue
            self._put(row, self._position(key, number), value)
        if isinstance(labels, dict):
            for head, value in labels.items():
                name = f"{LABELS_KEY}.{head}" if head in item else head
                self._put(row, self._position(name, number), value)
        return row

    @staticmethod
    def _put(row: list[Any], position: int, value: Any) -> None:
        if position >= len(row):
            row.extend([None] * (position + 1 - len(row)))
        row[position] = value

    def _batches_from(self, items: Iterable[tuple[int, Any]], size: int) -> Iterator[RowBatch]:
        batch = RowBatch()
        for number, item in items:
            row = item if isinstance(item, RowRejection) else self._row(item, number)
            if isinstance(row, RowRejection):
                batch.rejected.append(row)
            elif isinstance(row, str):
                batch.rejected.append(RowRejection(line=number, unit=self.unit, message=row))
            else:
                batch.lines.append(number)
                batch.rows.append(row)
                if len(batch.rows) >= size:
                    yield batch
                    batch = RowBatch()
        if batch.rows or batch.rejected:
            yield batch


def _json_type(value: Any) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return "a number"


class JsonLinesReader(_ObjectRows):
    format = "jsonl"

    def __init__(self, raw: BinaryIO, *, file_name: str, max_columns: int = MAX_COLUMNS) -> None:
        super().__init__(file_name=file_name, max_columns=max_columns)
        self._raw = raw

    def _objects(self) -> Iterator[tuple[int, Any]]:
        for number, line in enumerate(self._raw, start=1):
            if not line.strip():
                continue
            try:
                yield number, json_parse(line.decode("utf-8-sig" if number == 1 else "utf-8"))
            except json.JSONDecodeError as exc:
                yield (
                    number,
                    RowRejection(line=number, message=f"column {exc.pos + 1}: not valid JSON: {exc.msg}"),
                )
            except NotStorable as exc:
                yield number, RowRejection(line=number, message=f"not valid JSON: {exc}")
            except RecursionError:
                yield number, RowRejection(line=number, message="not valid JSON: nested too deeply")
            except UnicodeDecodeError as exc:
                yield (
                    number,
                    RowRejection(
                        line=number,
                        message=f"byte {exc.start + 1}: not valid UTF-8 (JSON Lines must be UTF-8)",
                    ),
                )

    def batches(self, size: int = BATCH_ROWS) -> Iterator[RowBatch]:
        return self._batches_from(self._objects(), size)


class JsonRowsReader(_ObjectRows):
    """Rows given as a list of JSON objects (a request body, or a .json file holding one array)."""

    format = "json"
    unit = "row"

    def __init__(
        self, items: list[Any], *, file_name: str = "request body", max_columns: int = MAX_COLUMNS
    ) -> None:
        super().__init__(file_name=file_name, max_columns=max_columns)
        self._items = items

    def batches(self, size: int = BATCH_ROWS) -> Iterator[RowBatch]:
        return self._batches_from(enumerate(self._items, start=1), size)


def read_json_document(
    raw: BinaryIO, *, file_name: str, max_bytes: int = MAX_JSON_DOCUMENT_BYTES
) -> list[Any]:
    """A .json file holding one array of objects; large data belongs in JSON Lines, which streams."""
    data = raw.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ImportFileError(
            f"a JSON document larger than {max_bytes:,} bytes cannot be streamed; upload JSON Lines (.jsonl)",
            file_name=file_name,
            code="too_large",
        )
    try:
        document = json_parse(data.decode("utf-8-sig"))
    except NotStorable as exc:
        raise ImportFileError(f"not valid JSON: {exc}", file_name=file_name, code="unparseable") from None
    except RecursionError:
        raise ImportFileError(
            "not valid JSON: nested too deeply", file_name=file_name, code="unparseable"
        ) from None
    except json.JSONDecodeError as exc:
        raise ImportFileError(
            f"not valid JSON: {exc.msg}",
            file_name=file_name,
            line=exc.lineno,
            column=exc.colno,
            code="unparseable",
        ) from None
    except UnicodeDecodeError:
        raise ImportFileError(
            "not valid UTF-8 (JSON must be UTF-8)", file_name=file_name, code="bad_encoding"
        ) from None
    if not isinstance(document, list):
        raise ImportFileError(
            f"expected an array of row objects, got {_json_type(document)}",
            file_name=file_name,
            code="unparseable",
        )
    return document
