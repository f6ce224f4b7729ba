"""What a row means under a column mapping: its input, its labels per head, and what makes it invalid.

One `RowPlan` serves both the stored row flags (with the dataset's mapping) and snapshot validation (with
the snapshot's input and label columns), so a row's flags and a snapshot's report never disagree.
"""

from __future__ import annotations

import functools
import json
import re
import sys
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from services.dataset.importing import ColumnMapping, LabelError, label_parser

InputKind = Literal["text", "image"]

EMPTY_INPUT = "empty_input"
OVER_TOKEN_LIMIT = "over_token_limit"
NOT_AN_IMAGE = "not_an_image"
# In image snapshots: the row's image was not fetched (yet), or could not be.
IMAGE_PENDING = "image_pending"
IMAGE_FAILED = "image_failed"
UNLABELED = "unlabeled"

# An image URL, a data: URI, or the relative path of a file in an uploaded zip (`photos/cat 1.jpg`: no scheme,
# not absolute, one line, ending in an extension); whether the file is there is the image fetch job's to say.
_IMAGE_INPUT = re.compile(
    r"^(?:https?://\S+|data:image/[\w.+-]+[;,]\S+|[^\s/\\:][^:\r\n]{0,1000}\.[A-Za-z0-9]{1,5})$",
    re.IGNORECASE,
)


def approximate_tokens(text: str) -> int:
    """A tokenizer-free estimate: WordPiece-style encoders give about 4/3 tokens per English word and one
    per 4 characters of long or unusual words."""
    return max(len(text) // 4, len(text.split()) * 4 // 3)


_ASCII_PUNCTUATION = bytes(c for c in range(128) if unicodedata.category(chr(c)).startswith("P"))


@functools.cache
def _punctuation_table() -> dict[int, None]:
    return {c: None for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c)).startswith("P")}


def normalise_text(text: str) -> str:
    """For near-duplicate detection: case folded, punctuation removed, whitespace collapsed and trimmed."""
    folded = text.casefold()
    if folded.isascii():
        # Most inputs are ASCII, where deleting bytes is many times faster than a general translation.
        folded = folded.encode("ascii").translate(None, _ASCII_PUNCTUATION).decode("ascii")
    else:
        folded = folded.translate(_punctuation_table())
    return " ".join(folded.split())


def problem(code: str, message: str, column: str | None = None) -> dict[str, Any]:
    return {"code": code, "column": column, "message": message}


@dataclass(frozen=True)
class HeadPlan:
    head: str
    column: str
    index: int
    mapping: ColumnMapping


_escape = json.encoder.encode_basestring  # type: ignore[attr-defined]
_CACHE_LIMIT = 50_000
_Reading = tuple[list[str] | None, str | None, dict[str, Any] | None]


class _HeadReader:
    """Reads one head's cells. Label columns repeat few values, so each distinct cell is parsed once: its
    labels, its stored JSON fragment (`"head":{"label":true}`) and its problem are remembered."""

    def __init__(self, plan: HeadPlan) -> None:
        self.head = plan.head
        self.column = plan.column
        self.index = plan.index
        self._parse = label_parser(plan.mapping.label_spec())
        self._key = _escape(plan.head) + ":{"
        self._cache: dict[Any, _Reading] = {}

    def read(self, cell: Any) -> _Reading:
        try:
            return self._cache[cell]
        except KeyError:
            reading = self._read(cell)
            if len(self._cache) < _CACHE_LIMIT:
                self._cache[cell] = reading
            return reading
        except TypeError:  # lists and objects (JSON input) cannot be keys
            return self._read(cell)

    def _read(self, cell: Any) -> _Reading:
        try:
            labels = self._parse(cell)
        except LabelError as exc:
            return None, None, problem(exc.code, str(exc), self.column)
        if labels is None:
            return None, None, None
        return labels, self._key + ",".join(_escape(label) + ":true" for label in labels) + "}", None


class RowPlan:
    def __init__(
        self,
        *,
        columns: Sequence[str],
        input_column: str | None,
        label_columns: Sequence[ColumnMapping],
        input_kind: InputKind = "text",
        max_tokens: int,
    ) -> None:
        positions = {name: index for index, name in enumerate(columns)}
        self.input_column = input_column
        self.input_index = positions[input_column] if input_column is not None else None
        self.input_kind = input_kind
        self.max_tokens = max_tokens
        self.heads = [HeadPlan(c.head or c.name, c.name, positions[c.name], c) for c in label_columns]
        self._readers = [_HeadReader(h) for h in self.heads]
        # Fewer characters than max_tokens cannot exceed it under approximate_tokens: skip the estimate.
        self._token_free_length = max_tokens

    def input_of(self, cells: Sequence[Any]) -> str | None:
        index = self.input_index
        if index is None or index >= len(cells):
            return None
        value = cells[index]
        if value is None:
            return None
        return value if isinstance(value, str) else str(value)

    def _input_problem(self, text: str | None) -> dict[str, Any] | None:
        column = self.input_column
        if text is None or not text.strip():
            return problem(EMPTY_INPUT, "the input is empty", column)
        if self.input_kind == "image":
            if not _IMAGE_INPUT.match(text.strip()):
                return problem(
                    NOT_AN_IMAGE, "the input is not an image URL or a file's path in the zip", column
                )
        elif len(text) > self._token_free_length:
            tokens = approximate_tokens(text)
            if tokens > self.max_tokens:
                return problem(
                    OVER_TOKEN_LIMIT, f"about {tokens} tokens, over the limit of {self.max_tokens}", column
                )
        return None

    def _read(self, cells: Sequence[Any]) -> tuple[str | None, list[_Reading], list[dict[str, Any]]]:
        text = self.input_of(cells)
        found = self._input_problem(text)
        problems = [found] if found is not None else []
        width = len(cells)
        readings = [
            reader.read(cells[reader.index] if reader.index < width else None) for reader in self._readers
        ]
        for _, _, head_problem in readings:
            if head_problem is not None:
                problems.append(head_problem)
        if readings and not problems and all(labels is None for labels, _, _ in readings):
            problems.append(problem(UNLABELED, "no head has a label for this row"))
        return text, readings, problems

    def derive(
        self, cells: Sequence[Any]
    ) -> tuple[str | None, dict[str, list[str] | None], list[dict[str, Any]]]:
        """The row's input, its labels per head (None: does not apply) and its problems (empty: valid).

        Label lists may be shared between rows: read them, never change them."""
        text, readings, problems = self._read(cells)
        labels = {reader.head: reading[0] for reader, reading in zip(self._readers, readings, strict=True)}
        return text, labels, problems

    def derive_stored(self, cells: Sequence[Any]) -> tuple[str, list[dict[str, Any]]]:
        """What a row stores: its labels as `Row.labels` JSON text (built from cached pieces: this runs once
        per imported row) and its problems."""
        _, readings, problems = self._read(cells)
        return "{" + ",".join(fragment for _, fragment, _ in readings if fragment is not None) + "}", problems


def stored_labels(labels: dict[str, list[str] | None]) -> dict[str, dict[str, bool]]:
    """Labels as stored on a row: heads that apply, each label a key (see `Row.labels`)."""
    return {head: dict.fromkeys(values, True) for head, values in labels.items() if values is not None}


def shown_labels(stored: dict[str, dict[str, bool]], heads: Sequence[str]) -> dict[str, list[str] | None]:
    return {head: list(stored[head]) if head in stored else None for head in heads}


def cell_for_labels(mapping: ColumnMapping, labels: list[str] | None, current: Any) -> Any:
    """The cell value that reads back as `labels` under the column's format (for relabelling a row).

    Scores become 1 or 0: a person's label is a certain one. The cell keeps the style it had: a JSON list
    stays a list, a text cell stays text.
    """
    if labels is None:
        return None
    spec = mapping.label_spec()
    if spec.format == "score":
        below, above = spec.known_labels() or ("", "")
        if labels not in ([above], [below]):
            raise LabelError(f"head {spec.head!r} takes one of {below!r} or {above!r}", code="unknown_label")
        return "1" if labels == [above] else "0"
    if spec.format == "code":
        if len(labels) != 1:
            raise LabelError(f"head {spec.head!r} takes exactly one label", code="several_labels")
        if spec.labels is None:
            return labels[0]
        if labels[0] not in spec.labels:
            raise LabelError(f"unknown label {labels[0]!r} for head {spec.head!r}", code="unknown_label")
        return str(spec.labels.index(labels[0]))
    if spec.format == "single":
        if len(labels) > 1:
            raise LabelError(
                f"{len(labels)} labels for the single-label head {spec.head!r}", code="several_labels"
            )
        if not labels:
            return None
        return [labels[0]] if isinstance(current, list) else labels[0]
    if isinstance(current, list):
        return list(labels)
    as_json = not labels or (isinstance(current, str) and current.strip().startswith("["))
    if as_json or any(spec.separator in label for label in labels):
        return json.dumps(labels, ensure_ascii=False)
    return spec.separator.join(labels)
