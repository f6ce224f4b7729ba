from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from arbiter.config.periodic import every_argument, repeat
from services.dataset.logic import dataset_jobs_recover


class Command(BaseCommand):
    help = (
        "Fail the dataset jobs (imports, re-mappings) whose process stopped, removing the rows of half-done "
        "imports. Run it every few minutes, or keep it running with --every SECONDS (as `arbiter up` does)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        every_argument(parser, help="look again every N seconds until stopped")

    def handle(self, *args: Any, **options: Any) -> None:
        def recover() -> None:
            self.stdout.write(f"Settled {dataset_jobs_recover()} interrupted dataset jobs.")

        repeat(options["every"], recover)
