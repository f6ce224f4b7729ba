from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from services.inference.logic import request_log_purge


class Command(BaseCommand):
    help = (
        "Delete logged requests older than their deployment's retention (log_retention_days). Run it daily."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        deleted = request_log_purge()
        self.stdout.write(f"Deleted {deleted} logged requests past their retention.")
