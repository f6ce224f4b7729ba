from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand

from arbiter.config.services import db_alias


def migrate_enabled_services(*, verbosity: int = 1) -> None:
    """Migrate every enabled service's database (gateway's first: it holds identity)."""
    for service in settings.ARBITER_SERVICES:
        call_command("migrate", database=db_alias(service), interactive=False, verbosity=verbosity)


class Command(BaseCommand):
    help = "Migrate the database of every service enabled in this process (ARBITER_SERVICES)."

    def handle(self, *args: Any, **options: Any) -> None:
        migrate_enabled_services(verbosity=options["verbosity"])
