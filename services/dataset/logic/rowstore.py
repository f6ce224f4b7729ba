"""Inserting rows fast: PostgreSQL COPY, row numbers reserved a batch at a time, relaxed commits for imports."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from django.db import connections

from services.dataset.conf import DB
from services.dataset.models import Dataset, Row
from services.dataset.validation import RowPlan

encode_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_escape = json.encoder.encode_basestring  # type: ignore[attr-defined]


_ROW_COLUMNS = ("org_id", "dataset_id", "number", "line", "job_id", "cells", "labels", "problems", "is_valid")


def _encode_cells(cells: Sequence[Any]) -> str:
    try:
        # Rows from CSV and Excel hold only strings: escaping each is much faster than a general encoder.
        encoded = "[" + ",".join(map(_escape, cells)) + "]"
    except TypeError:
        encoded = encode_json(cells)
    if "\\u0000" in encoded:
        # PostgreSQL cannot store NUL in JSON text; it can only come from an escaped NUL in JSON input.
        encoded = encoded.replace("\\u0000", "\\ufffd")
    return encoded


def row_records(
    *, job_id: int | None, lines: Sequence[int | None], rows: Sequence[Sequence[Any]], plan: RowPlan
) -> list[tuple[Any, ...]]:
    """Database values for a batch of rows, from `line` on (org, dataset and number are added on insert)."""
    records = []
    derive = plan.derive_stored
    for line, cells in zip(lines, rows, strict=True):
        labels, problems = derive(cells)
        records.append(
            (
                line,
                job_id,
                _encode_cells(cells),
                labels,
                encode_json(problems) if problems else "[]",
                not problems,
            )
        )
    return records


def rows_insert(*, dataset: Dataset, start: int, records: list[tuple[Any, ...]]) -> None:
    connection = connections[DB]
    table = Row._meta.db_table
    head = (dataset.org_id, dataset.pk)
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # COPY is several times faster than INSERT for bulk rows; psycopg streams the tuples.
            with cursor.cursor.copy(f"COPY {table} ({', '.join(_ROW_COLUMNS)}) FROM STDIN") as copy:
                for number, record in enumerate(records, start):
                    copy.write_row((*head, number, *record))
        else:
            placeholders = ", ".join(["%s"] * len(_ROW_COLUMNS))
            # Only this module's constant names reach the statement; the values are parameters.
            statement = f"INSERT INTO {table} ({', '.join(_ROW_COLUMNS)}) VALUES ({placeholders})"  # noqa: S608
            cursor.executemany(statement, [(*head, n, *record) for n, record in enumerate(records, start)])


@contextmanager
def bulk_session() -> Iterator[None]:
    """Let the import's commits return before their WAL reaches the disk (PostgreSQL), for this connection.

    Safe for import batches: a crash can only lose the last batches, whose job then fails as interrupted
    and is cleaned up; it cannot leave the database inconsistent. On a busy disk, commits are otherwise the
    slowest part of an import.
    """
    connection = connections[DB]
    if connection.vendor != "postgresql":
        yield
        return
    with connection.cursor() as cursor:
        cursor.execute("SET synchronous_commit TO OFF")
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute("RESET synchronous_commit")


def reserve_numbers(dataset_id: int, count: int) -> int:
    """The first of `count` new row numbers; call inside a transaction (the dataset row stays locked)."""
    table = Dataset._meta.db_table
    with connections[DB].cursor() as cursor:
        # One round trip (PostgreSQL and SQLite both have RETURNING): imports call this for every batch.
        statement = f"UPDATE {table} SET next_row_number = next_row_number + %s WHERE id = %s"  # noqa: S608
        cursor.execute(f"{statement} RETURNING next_row_number", [count, dataset_id])
        (after,) = cursor.fetchone()
    return int(after) - count
