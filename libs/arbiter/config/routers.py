"""Route each app's tables to its service's database.

Identity tables live in the gateway's database (`default`); other services may read them but not write
them. Kernel tables (`events`: outbox, processed events) exist in every service database, so code that
touches them always names the alias explicitly.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db.models import Model

from arbiter.config.services import ALL_SERVICES, IDENTITY_APP_LABELS, PER_SERVICE_APP_LABELS, db_alias


class IdentityIsReadOnly(RuntimeError):
    pass


def alias_for_app(app_label: str) -> str | None:
    if app_label in IDENTITY_APP_LABELS:
        return "default"
    if app_label in ALL_SERVICES:
        return db_alias(app_label)
    return None


class ServiceRouter:
    def db_for_read(self, model: type[Model], **hints: Any) -> str | None:
        return alias_for_app(model._meta.app_label)

    def db_for_write(self, model: type[Model], **hints: Any) -> str | None:
        label = model._meta.app_label
        if label in IDENTITY_APP_LABELS and "gateway" not in settings.ARBITER_SERVICES:
            raise IdentityIsReadOnly(
                f"{model.__name__} belongs to the gateway service; this process "
                f"(ARBITER_SERVICES={','.join(settings.ARBITER_SERVICES)}) may only read it"
            )
        return alias_for_app(label)

    def allow_relation(self, obj1: Model, obj2: Model, **hints: Any) -> bool | None:
        return alias_for_app(obj1._meta.app_label) == alias_for_app(obj2._meta.app_label)

    def allow_migrate(self, db: str, app_label: str, model_name: str | None = None, **hints: Any) -> bool:
        enabled_aliases = {db_alias(service) for service in settings.ARBITER_SERVICES}
        if app_label in PER_SERVICE_APP_LABELS:
            return db in enabled_aliases
        target = alias_for_app(app_label)
        if target is None:
            return False
        return db == target and db in enabled_aliases
