from __future__ import annotations

import signal
import threading
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.db import connections

from services.dataset.logic import dataset_jobs_recover


class Command(BaseCommand):
    help = (
        "Fail the dataset jobs (imports, re-mappings) whose process stopped, removing the rows of half-done "
        "imports. Run it every few minutes, or keep it running with --every SECONDS (as `arbiter up` does)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--every", type=float, default=0, help="look again every N seconds until stopped")

    def handle(self, *args: Any, **options: Any) -> None:
        stop = threading.Event()
        if options["every"] > 0:
            signal.signal(signal.SIGTERM, lambda *_: stop.set())
            signal.signal(signal.SIGINT, lambda *_: stop.set())
        while True:
            settled = dataset_jobs_recover()
            self.stdout.write(f"Settled {settled} interrupted dataset jobs.")
            if options["every"] <= 0:
                return
            connections.close_all()  # not held while waiting
            if stop.wait(options["every"]):
                return
