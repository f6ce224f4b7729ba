from __future__ import annotations

import threading
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from arbiter.config.periodic import every_argument, repeat
from services.annotation.logic import annotation_jobs_recover


class Command(BaseCommand):
    help = (
        "Resume the auto-labeling jobs whose process stopped (a running job whose heartbeat is older than "
        "ARBITER_ANNOTATION_STALE_SECONDS), fail those that stopped too often or whose model labeler never "
        "answered. Run it every few minutes, or keep it running with --every SECONDS (as `arbiter up` does): "
        "resumed jobs run in this process."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        every_argument(parser, help="look again every N seconds until stopped")

    def handle(self, *args: Any, **options: Any) -> None:
        def recover() -> None:
            counts = annotation_jobs_recover()
            self.stdout.write(f"Resumed {counts['resumed']} and failed {counts['failed']} interrupted jobs.")

        repeat(options["every"], recover)
        if options["every"] <= 0:
            # Resumed jobs run in threads of this process: let them finish before it exits.
            for thread in threading.enumerate():
                if thread.name.startswith("annotation-job-"):
                    thread.join()
