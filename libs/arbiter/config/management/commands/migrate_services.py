from __future__ import annotations

from typing import Any

import psycopg
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand
from psycopg import sql

from arbiter.config.services import db_alias


def database_ensure(alias: str) -> bool:
    """Create a service's PostgreSQL database when the server does not have it yet; True if it was created.

    Each service owns a database (`<name>_<service>`); creating six by hand before the first start is a
    chore a local or CI install should not need. Production databases are usually created by whoever runs
    the server, and then this finds them and does nothing.
    """
    database = settings.DATABASES[alias]
    if not database["ENGINE"].endswith("postgresql"):
        return False
    params = {
        "dbname": "postgres",
        "user": database.get("USER") or None,
        "password": database.get("PASSWORD") or None,
        "host": database.get("HOST") or None,
        "port": database.get("PORT") or None,
        **(database.get("OPTIONS") or {}),
    }
    with psycopg.connect(**{k: v for k, v in params.items() if v is not None}, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [database["NAME"]]).fetchone():
            return False
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database["NAME"])))
    return True


def migrate_enabled_services(*, verbosity: int = 1) -> None:
    """Migrate every enabled service's database (gateway's first: it holds identity), creating it if needed."""
    for service in settings.ARBITER_SERVICES:
        database_ensure(db_alias(service))
        call_command("migrate", database=db_alias(service), interactive=False, verbosity=verbosity)


class Command(BaseCommand):
    help = "Migrate the database of every service enabled in this process (ARBITER_SERVICES)."

    def handle(self, *args: Any, **options: Any) -> None:
        migrate_enabled_services(verbosity=options["verbosity"])
