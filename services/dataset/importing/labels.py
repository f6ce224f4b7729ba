"""Reading label cells: single labels, multi-label lists, numeric codes and scores with a threshold.

A parsed cell is a list of labels, or None when the head does not apply to the row (an empty cell, NULL,
null, None, N/A). An empty list is different: the head applies and no label of it does (multi-label heads).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from services.dataset.importing.jsonl import NotStorable, json_parse

LabelFormat = Literal["single", "multi", "code", "score"]
LABEL_FORMATS: tuple[LabelFormat, ...] = ("single", "multi", "code", "score")
NULL_TOKENS = frozenset({"", "null", "none", "n/a", "nan"})
DEFAULT_SEPARATOR = "|"
DEFAULT_THRESHOLD = 0.5
# A label is a name or a small code; Python will not even print an int of over 4300 digits.
MAX_LABEL_DIGITS = 100


class LabelError(ValueError):
    """A cell that is not a valid label for its head; `code` is a stable reason for reports."""

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message)
        self.code = code


def is_null(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, str):
        return value.strip().casefold() in NULL_TOKENS
    return isinstance(value, float) and math.isnan(value)


def default_score_labels(head: str) -> tuple[str, str]:
    return (f"not_{head}", head)


@dataclass(frozen=True)
class LabelSpec:
    """How the cells of one label column become labels of one head.

    `labels`: for `single` and `multi`, the allowed labels (None: any); for `code`, the label name of each
    code (code 0 is `labels[0]`; None: the codes themselves); for `score`, the names below and at or above
    `threshold`.
    """

    head: str
    format: LabelFormat = "single"
    labels: tuple[str, ...] | None = None
    threshold: float = DEFAULT_THRESHOLD
    separator: str = DEFAULT_SEPARATOR

    @property
    def multi_label(self) -> bool:
        return self.format == "multi"

    def known_labels(self) -> tuple[str, ...] | None:
        if self.format == "score":
            return self.labels or default_score_labels(self.head)
        return self.labels


def _scalar_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, int | float):
        if isinstance(value, int) and abs(value) >= 10**MAX_LABEL_DIGITS:
            raise LabelError("expected a label, got a number too large to be one", code="malformed_label")
        return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)
    raise LabelError(f"expected a label, got a JSON {type(value).__name__}", code="malformed_label")


def _number(value: Any) -> float:
    if isinstance(value, bool):
        raise LabelError(f"expected a number, got {value!r}", code="malformed_label")
    if isinstance(value, int | float):
        try:
            return float(value)
        except OverflowError:
            raise LabelError("expected a number, got one too large", code="malformed_label") from None
    if isinstance(value, str):
        try:
            # Decimal commas (0,75) come from European spreadsheets, often in semicolon-separated files.
            return float(value.strip().replace(",", "."))
        except ValueError:
            pass
    raise LabelError(f"expected a number, got {_shown(value)}", code="malformed_label")


def _shown(value: Any) -> str:
    """A cell as a message quotes it: short, and never failing (Python will not print huge ints)."""
    if isinstance(value, list | dict):
        return "a JSON list" if isinstance(value, list) else "a JSON object"
    if isinstance(value, int) and abs(value) >= 10**MAX_LABEL_DIGITS:
        return "a very large number"
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def label_parser(spec: LabelSpec) -> Callable[[Any], list[str] | None]:
    """A fast function from a cell to its labels (or None), raising LabelError for a bad cell."""
    allowed = frozenset(spec.labels) if spec.labels is not None else None

    def check(labels: list[str]) -> list[str]:
        if allowed is not None:
            for label in labels:
                if label not in allowed:
                    raise LabelError(
                        f"unknown label {label!r} for head {spec.head!r} "
                        f"(expected one of {', '.join(spec.labels or ())})",
                        code="unknown_label",
                    )
        return labels

    if spec.format == "single":

        def parse_single(value: Any) -> list[str] | None:
            if value is None:
                return None
            if isinstance(value, list):
                if len(value) > 1:
                    raise LabelError(
                        f"{len(value)} labels for the single-label head {spec.head!r}", code="several_labels"
                    )
                value = value[0] if value else None
                if value is None:
                    return None
            text = _scalar_text(value)
            if text.casefold() in NULL_TOKENS:
                return None
            return check([text])

        return parse_single

    if spec.format == "multi":
        separator = spec.separator

        def parse_multi(value: Any) -> list[str] | None:
            if value is None:
                return None
            if isinstance(value, str):
                text = value.strip()
                if text.casefold() in NULL_TOKENS:
                    return None
                if text.startswith("["):
                    try:
                        value = json_parse(text)
                    except json.JSONDecodeError as exc:
                        raise LabelError(
                            f"malformed JSON label list: {exc.msg}", code="malformed_json"
                        ) from None
                    except (NotStorable, RecursionError) as exc:
                        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
                        raise LabelError(
                            f"malformed JSON label list: {reason}", code="malformed_json"
                        ) from None
                    if not isinstance(value, list):
                        raise LabelError("malformed JSON label list: not an array", code="malformed_json")
                else:
                    value = text.split(separator)
            elif not isinstance(value, list):
                value = [value]
            labels: list[str] = []
            for item in value:
                if item is None:
                    continue
                label = _scalar_text(item)
                if label and label not in labels:
                    labels.append(label)
            return check(labels)

        return parse_multi

    if spec.format == "code":
        names = spec.labels

        def parse_code(value: Any) -> list[str] | None:
            if is_null(value):
                return None
            number = _number(value)
            if not number.is_integer():
                raise LabelError(f"label code {_shown(value)} is not a whole number", code="malformed_label")
            code = int(number)
            if names is None:
                return [str(code)]
            if not 0 <= code < len(names):
                raise LabelError(
                    f"unknown label code {code} for head {spec.head!r} (codes 0 to {len(names) - 1})",
                    code="unknown_label",
                )
            return [names[code]]

        return parse_code

    below, above = spec.known_labels() or default_score_labels(spec.head)
    threshold = spec.threshold

    def parse_score(value: Any) -> list[str] | None:
        if is_null(value):
            return None
        score = _number(value)
        if not 0.0 <= score <= 1.0:
            raise LabelError(f"score {_shown(value)} is outside 0..1", code="score_out_of_range")
        return [above if score >= threshold else below]

    return parse_score
