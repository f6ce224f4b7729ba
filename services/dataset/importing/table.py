"""The shape every reader produces: named columns, then rows in batches with their source lines."""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from services.dataset.importing.errors import RowRejection

BATCH_ROWS = 5000
MAX_COLUMNS = 1000


@dataclass(slots=True)
class RowBatch:
    """Consecutive source rows: `rows[i]` holds one cell per column (in `TableReader.columns` order; a row may
    be shorter when columns appeared after it was read, and missing cells mean null). `lines[i]` is where
    that row starts in the file."""

    lines: list[int] = field(default_factory=list)
    rows: list[list[Any]] = field(default_factory=list)
    rejected: list[RowRejection] = field(default_factory=list)


class TableReader(ABC):
    """A readable table. Create one with `open_table`; iterate `batches()` once."""

    format: str
    file_name: str
    columns: list[str]

    @abstractmethod
    def batches(self, size: int = BATCH_ROWS) -> Iterator[RowBatch]: ...

    @property
    def notes(self) -> list[str]:
        """Things the reader repaired or decided that the uploader should know (encoding fallbacks, ...)."""
        return []

    @property
    def details(self) -> dict[str, Any]:
        """What was detected or used to read the file (encoding, delimiter, header, sheet)."""
        return {}


_IDENTIFIER = re.compile(r"^[\w .\-/()#:]{1,64}$")


def unique_column_names(raw: list[Any], *, width: int | None = None) -> list[str]:
    """Header cells as column names: trimmed, blanks named `column_<n>`, repeats suffixed `_2`, `_3`."""
    names: list[str] = []
    seen: set[str] = set()
    count = max(len(raw), width or 0)
    for index in range(count):
        value = raw[index] if index < len(raw) else None
        base = str(value).strip() if value is not None else ""
        base = base or f"column_{index + 1}"
        name, suffix = base, 2
        while name in seen:
            name, suffix = f"{base}_{suffix}", suffix + 1
        seen.add(name)
        names.append(name)
    return names


def generic_column_names(count: int) -> list[str]:
    return [f"column_{index + 1}" for index in range(count)]


def _is_number(value: str) -> bool:
    try:
        float(value.replace(",", "."))
    except ValueError:
        return False
    return True


def looks_like_header(first: list[Any], following: list[list[Any]]) -> bool:
    """Whether the first row names the columns rather than holding data, judged against the rows after it.

    Evidence per column: a word above numbers, or a short name above long texts, says header; a number above
    numbers, a long sentence, or a value that recurs in the column says data.
    """
    if not first or all(cell in (None, "") for cell in first):
        return False
    score = 0.0
    for index, head in enumerate(first):
        head_text = "" if head is None else str(head).strip()
        values = [
            str(row[index]).strip() for row in following if index < len(row) and row[index] not in (None, "")
        ]
        if not values:
            continue
        numeric_share = sum(_is_number(v) for v in values) / len(values)
        if numeric_share >= 0.9:
            score += -1 if _is_number(head_text) else 1
        if len(head_text) > 40:
            score -= 1
        elif head_text and sorted(len(v) for v in values)[len(values) // 2] > 2 * len(head_text) + 10:
            score += 0.5
        if head_text and head_text in set(values):
            score -= 1
    if score != 0:
        return score > 0
    names = [str(cell).strip() for cell in first if cell not in (None, "")]
    return len(set(names)) == len(names) and all(_IDENTIFIER.match(name) for name in names)
