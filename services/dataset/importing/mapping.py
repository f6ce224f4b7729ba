"""Column roles: inferring them from a sample, describing them for a preview, and validating edits.

Roles: `text` (an input text), `image` (a URL of an image, or a file of an uploaded zip), `json` (structured
data kept as is), `label` (the column is a head: its cells are labels), `ignore`. Label columns also carry how
their cells are read (see `labels.LabelSpec`).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from services.dataset.importing.labels import (
    DEFAULT_SEPARATOR,
    DEFAULT_THRESHOLD,
    LABEL_FORMATS,
    LabelFormat,
    LabelSpec,
    is_null,
)

Role = Literal["text", "image", "json", "label", "ignore"]
ROLES: tuple[Role, ...] = ("text", "image", "json", "label", "ignore")
PREVIEW_ROWS = 20
TOP_VALUES = 10
MAX_LABELS = 100

_IMAGE_URL = re.compile(
    r"^(?:https?://\S+?\.(?:jpe?g|png|gif|webp|bmp|tiff?|svg|avif)(?:[?#]\S*)?|data:image/[\w.+-]+[;,]\S*)$",
    re.IGNORECASE,
)
_INTEGER = re.compile(r"^[+-]?\d+(?:\.0+)?$")
_DECIMAL = re.compile(r"^[+-]?(?:\d+[.,]\d*|[.,]\d+|\d+)(?:[eE][+-]?\d+)?$")
_TEXT_NAMES = re.compile(
    r"^(text|texts|tweet|tweets|comment|comments|content|body|message|messages|sentence|sentences|review|"
    r"reviews|post|posts|input|inputs|prompt|document|utterance|title|description|question|answer)$",
    re.IGNORECASE,
)
_LABEL_NAMES = re.compile(
    r"(^|[_\W])(label|labels|class|classes|category|categories|target|tag|tags|toxic|toxicity|sentiment|"
    r"subtask|offensive|hate|spam|insult|threat|harm|abuse|nsfw|flag|flags|severity|rating|polarity|y)([_\W]|$)",
    re.IGNORECASE,
)
_IGNORE_NAMES = re.compile(
    r"^(id|uuid|guid|index|idx|row|row_id|rowid|key|timestamp|time|date|datetime|created|created_at|"
    r"updated_at|url|link|user|username|author|.*_id)$",
    re.IGNORECASE,
)


class MappingError(ValueError):
    """An invalid column mapping; the message names the column."""


@dataclass(frozen=True)
class ColumnMapping:
    name: str
    role: Role
    head: str | None = None
    format: LabelFormat | None = None
    labels: tuple[str, ...] | None = None
    threshold: float | None = None
    separator: str | None = None

    def label_spec(self) -> LabelSpec:
        assert self.role == "label" and self.head is not None and self.format is not None
        return LabelSpec(
            head=self.head,
            format=self.format,
            labels=self.labels,
            threshold=self.threshold if self.threshold is not None else DEFAULT_THRESHOLD,
            separator=self.separator or DEFAULT_SEPARATOR,
        )

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name, "role": self.role}
        if self.role == "label":
            data |= {
                "head": self.head,
                "format": self.format,
                "labels": list(self.labels) if self.labels else None,
            }
            if self.format == "score":
                data["threshold"] = self.threshold if self.threshold is not None else DEFAULT_THRESHOLD
            if self.format == "multi":
                data["separator"] = self.separator or DEFAULT_SEPARATOR
        return data


@dataclass(frozen=True)
class DatasetMapping:
    columns: tuple[ColumnMapping, ...]
    input_column: str | None

    def column(self, name: str) -> ColumnMapping:
        for column in self.columns:
            if column.name == name:
                return column
        raise MappingError(f"no column named {name!r}")

    @property
    def label_columns(self) -> list[ColumnMapping]:
        return [column for column in self.columns if column.role == "label"]

    def as_dict(self) -> dict[str, Any]:
        return {"input_column": self.input_column, "columns": [column.as_dict() for column in self.columns]}

    def with_new_columns(self, names: Sequence[str]) -> DatasetMapping:
        """The mapping extended by columns that appeared later in a file (JSON Lines): they start ignored."""
        known = {column.name for column in self.columns}
        extra = tuple(ColumnMapping(name=name, role="ignore") for name in names if name not in known)
        return replace(self, columns=self.columns + extra) if extra else self


def _clean_labels(value: Any, *, name: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(item, str) and item.strip() for item in value):
        raise MappingError(f"column {name!r}: labels must be a list of non-empty strings")
    labels = tuple(item.strip() for item in value)
    if len(set(labels)) != len(labels):
        raise MappingError(f"column {name!r}: labels must not repeat")
    if len(labels) > MAX_LABELS:
        raise MappingError(f"column {name!r}: at most {MAX_LABELS} labels")
    return labels


def mapping_from_dict(
    data: Any, *, columns: Sequence[str], previous: DatasetMapping | None = None
) -> DatasetMapping:
    """Validate a mapping sent by a user. Columns left out keep their previous mapping (or are ignored)."""
    if not isinstance(data, dict):
        raise MappingError("the mapping must be an object with `columns` and `input_column`")
    known = list(columns)
    current = {column.name: column for column in previous.columns} if previous else {}
    entries = data.get("columns", [])
    if not isinstance(entries, list):
        raise MappingError("`columns` must be a list of {name, role, ...} objects")
    updated: dict[str, ColumnMapping] = {}
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise MappingError("each entry of `columns` needs a `name`")
        name = entry["name"]
        if name not in known:
            raise MappingError(f"column {name!r} is not in the dataset (columns: {', '.join(known)})")
        if name in updated:
            raise MappingError(f"column {name!r} appears twice")
        updated[name] = _column_from_dict(entry, base=current.get(name))
    merged = tuple(
        updated.get(name) or current.get(name) or ColumnMapping(name=name, role="ignore") for name in known
    )
    heads = Counter(column.head for column in merged if column.role == "label")
    repeated = [head for head, count in heads.items() if count > 1]
    if repeated:
        raise MappingError(f"head {repeated[0]!r} is given by more than one column")
    inputs = [column.name for column in merged if column.role in ("text", "image")]
    if "input_column" in data:
        input_column = data["input_column"]
        if input_column is not None and input_column not in inputs:
            raise MappingError(f"input_column {input_column!r} must be a column with the role text or image")
    else:
        # Kept from before unless its column stopped being an input.
        kept = previous.input_column if previous else None
        input_column = kept if kept in inputs else None
    if input_column is None and inputs:
        input_column = inputs[0]
    return DatasetMapping(columns=merged, input_column=input_column)


def _column_from_dict(entry: dict[str, Any], *, base: ColumnMapping | None) -> ColumnMapping:
    name = entry["name"]
    role = entry.get("role", base.role if base else "ignore")
    if role not in ROLES:
        raise MappingError(f"column {name!r}: role must be one of {', '.join(ROLES)}")
    if role != "label":
        return ColumnMapping(name=name, role=role)
    inherited = base if base and base.role == "label" else None
    head = entry.get("head") or (inherited.head if inherited else None) or name
    label_format = entry.get("format") or (inherited.format if inherited else None) or "single"
    if label_format not in LABEL_FORMATS:
        raise MappingError(f"column {name!r}: format must be one of {', '.join(LABEL_FORMATS)}")
    if not isinstance(head, str) or not head.strip() or len(head) > 100:
        raise MappingError(f"column {name!r}: head must be a name of 1 to 100 characters")
    labels = (
        _clean_labels(entry["labels"], name=name)
        if "labels" in entry
        else (inherited.labels if inherited else None)
    )
    if label_format == "score" and labels is not None and len(labels) != 2:
        raise MappingError(
            f"column {name!r}: a score column needs two labels, [below threshold, at or above]"
        )
    threshold = entry.get("threshold", inherited.threshold if inherited else None)
    if threshold is not None and (
        isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0 <= threshold <= 1
    ):
        raise MappingError(f"column {name!r}: threshold must be a number in 0..1")
    separator = entry.get("separator", inherited.separator if inherited else None)
    if separator is not None and (not isinstance(separator, str) or not 1 <= len(separator) <= 5):
        raise MappingError(f"column {name!r}: separator must be 1 to 5 characters")
    return ColumnMapping(
        name=name,
        role="label",
        head=head.strip(),
        format=label_format,
        labels=labels,
        threshold=float(threshold) if threshold is not None and label_format == "score" else None,
        separator=separator if label_format == "multi" else None,
    )


# --- inference ---------------------------------------------------------------------------------------------


@dataclass
class ColumnProfile:
    """What the sample shows about one column, and the role inferred from it (with the reason, for people)."""

    name: str
    values: int = 0
    nulls: int = 0
    distinct: int = 0
    mean_length: float = 0.0
    top_values: list[tuple[str, int]] = field(default_factory=list)
    kinds: dict[str, int] = field(default_factory=dict)
    mapping: ColumnMapping | None = None
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "role": self.mapping.role if self.mapping else "ignore",
            "reason": self.reason,
            "values": self.values,
            "nulls": self.nulls,
            "distinct": self.distinct,
            "mean_length": round(self.mean_length, 1),
            "top_values": [{"value": value, "count": count} for value, count in self.top_values],
        }


def _kind(value: Any, image_names: Callable[[str], bool] | None = None) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, bool):
        return "text"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "integer" if value.is_integer() else "decimal"
    text = str(value).strip()
    if _INTEGER.match(text):
        return "integer"
    if _DECIMAL.match(text):
        return "decimal"
    if _IMAGE_URL.match(text) or (image_names is not None and image_names(text)):
        return "image"
    if (text.startswith("[") and text.endswith("]")) or (text.startswith("{") and text.endswith("}")):
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError:
            return "text"
        return "array" if isinstance(parsed, list) else "object"
    return "text"


def _display(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _as_float(value: Any) -> float:
    return float(value) if isinstance(value, int | float) else float(str(value).strip().replace(",", "."))


def profile_column(
    name: str, cells: Sequence[Any], *, image_names: Callable[[str], bool] | None = None
) -> ColumnProfile:
    present = [cell for cell in cells if not is_null(cell)]
    profile = ColumnProfile(name=name, values=len(present), nulls=len(cells) - len(present))
    texts = [_display(cell) for cell in present]
    counts = Counter(texts)
    profile.distinct = len(counts)
    profile.top_values = counts.most_common(TOP_VALUES)
    profile.mean_length = sum(len(text) for text in texts) / len(texts) if texts else 0.0
    profile.kinds = dict(Counter(_kind(cell, image_names) for cell in present))
    profile.mapping, profile.reason = _infer_role(profile, present, texts)
    return profile


def _share(profile: ColumnProfile, *kinds: str) -> float:
    return sum(profile.kinds.get(kind, 0) for kind in kinds) / profile.values if profile.values else 0.0


def _few_distinct(profile: ColumnProfile, limit: int = 50) -> bool:
    # In a small sample every value may be distinct; there, shortness has to speak for a label.
    return profile.distinct <= limit and (profile.values < 20 or profile.distinct * 2 <= profile.values)


def _infer_role(profile: ColumnProfile, present: list[Any], texts: list[str]) -> tuple[ColumnMapping, str]:
    name = profile.name
    head = name.removeprefix("labels.")

    def label(label_format: LabelFormat, why: str, **extra: Any) -> tuple[ColumnMapping, str]:
        return ColumnMapping(name=name, role="label", head=head, format=label_format, **extra), why

    if not present:
        return ColumnMapping(name=name, role="ignore"), "the sample has no values in this column"
    label_named = bool(_LABEL_NAMES.search(name))
    if (
        _IGNORE_NAMES.match(name)
        and not label_named
        and (_share(profile, "integer") >= 0.9 or profile.distinct * 10 >= profile.values * 9)
    ):
        return ColumnMapping(name=name, role="ignore"), "an identifier or metadata column"
    if _share(profile, "object") >= 0.9:
        return ColumnMapping(name=name, role="json"), "the values are JSON objects"
    if _share(profile, "image") >= 0.9:
        return ColumnMapping(name=name, role="image"), "the values are image URLs (or files in the archive)"
    if _share(profile, "array") >= 0.9:
        return label("multi", "the values are lists of labels")
    if _share(profile, "integer", "decimal") >= 0.9:
        numbers = [_as_float(cell) for cell in present if _kind(cell) in ("integer", "decimal")]
        if profile.kinds.get("decimal") and all(0.0 <= number <= 1.0 for number in numbers):
            return label(
                "score",
                f"the values are scores in 0..1: at or above {DEFAULT_THRESHOLD} they read as {head!r}",
                threshold=DEFAULT_THRESHOLD,
            )
        if not profile.kinds.get("decimal") and (_few_distinct(profile, 20) or label_named):
            return label("code", "the values are a few whole numbers: label codes")
        return ColumnMapping(name=name, role="ignore"), "numbers that are neither label codes nor scores"
    if _TEXT_NAMES.match(name):
        return ColumnMapping(name=name, role="text"), "the column name says it holds text"
    longest_words = max(len(text.split()) for text in texts)
    short = profile.mean_length <= 30 and longest_words <= 4
    if short and (label_named or _few_distinct(profile)):
        parts = Counter(
            part.strip()
            for text in texts
            if DEFAULT_SEPARATOR in text
            for part in text.split(DEFAULT_SEPARATOR)
        )
        if parts and len(parts) <= 50 and sum(DEFAULT_SEPARATOR in text for text in texts) * 10 >= len(texts):
            return label(
                "multi", f"short values, several joined with {DEFAULT_SEPARATOR!r}: a multi-label list"
            )
        return label("single", "a few short values repeat: labels")
    if label_named and profile.mean_length <= 40 and profile.distinct <= 200:
        return label("single", "the column name says it holds labels")
    return ColumnMapping(name=name, role="text"), "free text"


def infer_mapping(
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    image_names: Callable[[str], bool] | None = None,
) -> tuple[DatasetMapping, list[ColumnProfile]]:
    """Guess each column's role from sample rows; the input is the text column with the longest values.
    `image_names` says whether a text names an image besides a URL (a file of an uploaded zip)."""
    profiles = []
    for index, name in enumerate(columns):
        cells = [row[index] if index < len(row) else None for row in rows]
        profiles.append(profile_column(name, cells, image_names=image_names))
    text_columns = [p for p in profiles if p.mapping and p.mapping.role == "text"]
    if not text_columns and not any(p.mapping and p.mapping.role == "image" for p in profiles):
        # Every dataset needs an input: take the column of longest strings, even if it looked like labels.
        candidates = [p for p in profiles if p.values and _share(p, "text") >= 0.5]
        if candidates:
            chosen = max(candidates, key=lambda p: p.mean_length)
            chosen.mapping = ColumnMapping(name=chosen.name, role="text")
            chosen.reason = "the longest values in the file: the input"
            text_columns = [chosen]
    named = [p for p in text_columns if _TEXT_NAMES.match(p.name)]
    inputs = named or text_columns
    if inputs:
        input_column: str | None = max(inputs, key=lambda p: p.mean_length).name
    else:
        images = [p for p in profiles if p.mapping and p.mapping.role == "image"]
        input_column = images[0].name if images else None
    mapping = DatasetMapping(
        columns=tuple(p.mapping or ColumnMapping(name=p.name, role="ignore") for p in profiles),
        input_column=input_column,
    )
    return mapping, profiles


def preview(
    columns: Sequence[str], rows: Sequence[Sequence[Any]], lines: Sequence[int]
) -> list[dict[str, Any]]:
    return [
        {"line": line, "cells": {name: (row[i] if i < len(row) else None) for i, name in enumerate(columns)}}
        for line, row in zip(lines[:PREVIEW_ROWS], rows[:PREVIEW_ROWS], strict=False)
    ]
