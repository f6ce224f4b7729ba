"""Org scoping that fails closed.

Every org-owned model subclasses `OrgScopedModel`. Its default manager only returns rows of the org in scope
and raises `OrgScopeNotSet` when no org is in scope, so a forgotten filter is an error, not a leak.
The base viewset sets the scope from the URL; consumers and background work use `with org_scope(org_id):`.
`Model.objects.unscoped()` is the visible escape hatch for cross-org work (operators, relays, migrations).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from typing import Any, TypeVar

from django.db import models

_current_org: ContextVar[int | None] = ContextVar("arbiter_current_org", default=None)


class OrgScopeNotSet(RuntimeError):
    pass


def current_org_id() -> int | None:
    return _current_org.get()


def require_org_id() -> int:
    org_id = _current_org.get()
    if org_id is None:
        raise OrgScopeNotSet(
            "no org is in scope: wrap the work in `with org_scope(org_id):` or use `.unscoped()` deliberately"
        )
    return org_id


def set_org_scope(org_id: int | None) -> Token[int | None]:
    return _current_org.set(org_id)


def reset_org_scope(token: Token[int | None]) -> None:
    _current_org.reset(token)


@contextmanager
def org_scope(org_id: int) -> Iterator[None]:
    token = _current_org.set(int(org_id))
    try:
        yield
    finally:
        _current_org.reset(token)


M = TypeVar("M", bound=models.Model)


class OrgScopedManager(models.Manager[M]):
    def get_queryset(self) -> models.QuerySet[M]:
        return super().get_queryset().filter(org_id=require_org_id())

    def unscoped(self) -> models.QuerySet[M]:
        return super().get_queryset()


class OrgScopedModel(models.Model):
    org_id = models.BigIntegerField(db_index=True, editable=False)

    objects: Any = OrgScopedManager()

    class Meta:
        abstract = True

    def save(self, *args: Any, **kwargs: Any) -> None:
        if self.org_id is None:
            self.org_id = require_org_id()
        super().save(*args, **kwargs)
