from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from arbiter.config.periodic import every_argument, repeat
from arbiter.config.typed_settings import arbiter_settings
from services.inference.batches import batches_work


class Command(BaseCommand):
    help = (
        "Run batches (/v1/batches, /v1/batch/jobs) a chunk of requests per transaction, so their progress shows "
        "and they can be cancelled midway; batches waiting for an input file start when it arrives and fail "
        "after ARBITER_WAIT_FOR_EVENTS_SECONDS. Once, or every --every SECONDS until stopped (as `arbiter up` "
        "runs it)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        every_argument(parser, help="look for work every N seconds until stopped")

    def handle(self, *args: Any, **options: Any) -> None:
        def work() -> None:
            wait = timedelta(seconds=arbiter_settings().training.wait_for_events_s)
            ran = batches_work(wait=wait)
            if ran and options["every"] <= 0:
                self.stdout.write(f"Ran {ran} batches.")

        repeat(options["every"], work)
