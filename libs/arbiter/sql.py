"""`insert_rows`: rows of one model written by one prepared INSERT, run with `executemany`.

Kept here rather than the ORM's `create` / `bulk_create` on the serving path (each classify call's usage write
publishes an event and may log its inputs): those build a model instance per row, send signals and compile the
statement on every call, which cost several times the insert itself. The values are prepared by the model's own
fields (`get_db_prep_save`, defaults included), so the rows stored are the ones the ORM would store.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from django.db import connections
from django.db.models import Model
from django.db.models.fields import AutoFieldMixin


def insert_rows(model: type[Model], rows: Sequence[Mapping[str, Any]], *, using: str) -> None:
    """Insert `rows` (field attname -> value; a missing field takes its default) into `model`'s table."""
    if not rows:
        return
    connection = connections[using]
    quote = connection.ops.quote_name
    fields = [field for field in model._meta.concrete_fields if not isinstance(field, AutoFieldMixin)]
    names = [field.column for field in fields if field.column is not None]
    assert len(names) == len(fields)  # a concrete field always has its column
    columns = ", ".join(quote(name) for name in names)
    placeholders = ", ".join(["%s"] * len(fields))
    # Names come from the model, values are bound parameters.
    statement = f"INSERT INTO {quote(model._meta.db_table)} ({columns}) VALUES ({placeholders})"  # noqa: S608
    values = [
        [
            field.get_db_prep_save(
                row[field.attname] if field.attname in row else field.get_default(), connection
            )
            for field in fields
        ]
        for row in rows
    ]
    with connection.cursor() as cursor:
        cursor.executemany(statement, values)
