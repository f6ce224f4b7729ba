from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from arbiter.config.periodic import every_argument, repeat
from arbiter.config.typed_settings import arbiter_settings
from services.inference.logic import (
    deployments_waiting_expire,
    deployments_waiting_resume,
    request_log_purge,
)


class Command(BaseCommand):
    help = (
        "Delete logged requests older than their deployment's retention (log_retention_days), load deployments "
        "whose version arrived while they were being created, and fail deployments that waited too long for "
        "their version (ARBITER_WAIT_FOR_EVENTS_SECONDS). Run it "
        "periodically, or keep it running with --every SECONDS (as `arbiter up` does)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        every_argument(parser, help="purge again every N seconds until stopped")

    def handle(self, *args: Any, **options: Any) -> None:
        def sweep() -> None:
            deleted = request_log_purge()
            self.stdout.write(f"Deleted {deleted} logged requests past their retention.")
            resumed = deployments_waiting_resume()
            if resumed:
                self.stdout.write(f"Loading {resumed} deployments whose version had arrived unnoticed.")
            wait = timedelta(seconds=arbiter_settings().training.wait_for_events_s)
            expired = deployments_waiting_expire(older_than=wait)
            if expired:
                self.stdout.write(f"Failed {expired} deployments whose version never arrived.")

        repeat(options["every"], sweep)
