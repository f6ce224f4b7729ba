"""What can go wrong while reading an uploaded file, said so that a person can find and fix it."""

from __future__ import annotations

from dataclasses import dataclass


def describe_location(
    *, file_name: str, line: int | None = None, column: str | int | None = None, unit: str = "line"
) -> str:
    parts = [file_name]
    if line is not None:
        parts.append(f"{unit} {line}")
    if column is not None:
        parts.append(f"column {column}")
    return ", ".join(parts)


class ImportFileError(Exception):
    """The file cannot be imported at all; nothing from it is kept.

    `str()` reads like `reviews.csv, line 17: expected 3 fields, got 5`.
    """

    def __init__(
        self,
        message: str,
        *,
        file_name: str,
        line: int | None = None,
        column: str | int | None = None,
        code: str = "unreadable_file",
        unit: str = "line",
    ) -> None:
        self.message = message
        self.file_name = file_name
        self.line = line
        self.column = column
        self.code = code
        self.unit = unit
        super().__init__(
            f"{describe_location(file_name=file_name, line=line, column=column, unit=unit)}: {message}"
        )

    def as_details(self) -> dict[str, object]:
        return {
            "file": self.file_name,
            "line": self.line,
            "unit": self.unit,
            "column": self.column,
            "reason": self.message,
        }


@dataclass(frozen=True, slots=True)
class RowRejection:
    """One source row that was not imported, and why (`line 17: expected 3 fields, got 5`)."""

    line: int
    message: str
    end_line: int | None = None
    unit: str = "line"  # "row" for spreadsheets and JSON bodies, where there are no lines

    def __str__(self) -> str:
        if self.end_line and self.end_line != self.line:
            return f"{self.unit}s {self.line}-{self.end_line}: {self.message}"
        return f"{self.unit} {self.line}: {self.message}"

    def as_dict(self) -> dict[str, object]:
        return {"line": self.line, "end_line": self.end_line or self.line, "message": str(self)}
