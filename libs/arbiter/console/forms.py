"""Turning validation errors into one sentence a person can act on, for console forms."""

from __future__ import annotations

from typing import Any


def error_message(detail: Any, field: str = "") -> str:
    """The first error of a DRF-style error tree, naming its field: `options.max_epochs: Ensure ...`."""
    if isinstance(detail, dict):
        for key, value in detail.items():
            name = key if key != "non_field_errors" else ""
            return error_message(value, f"{field}.{name}" if field and name else (name or field))
    if isinstance(detail, list) and detail:
        return error_message(detail[0], field)
    return f"{field}: {detail}" if field else str(detail)
