"""Serializer fields every service's API shares."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

# Ids are PostgreSQL bigints: a larger number names nothing that can exist, and would not fit a query.
MAX_ID = 2**63 - 1


class IdField(serializers.IntegerField):
    """The id of a stored object: 1 to 2**63 - 1."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("min_value", 1)
        kwargs.setdefault("max_value", MAX_ID)
        super().__init__(**kwargs)
