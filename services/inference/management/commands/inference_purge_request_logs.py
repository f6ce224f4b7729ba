from __future__ import annotations

import signal
import threading
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.db import connections

from services.inference.logic import request_log_purge


class Command(BaseCommand):
    help = (
        "Delete logged requests older than their deployment's retention (log_retention_days). Run it daily, "
        "or keep it running with --every SECONDS (as `arbiter up` does)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--every", type=float, default=0, help="purge again every N seconds until stopped")

    def handle(self, *args: Any, **options: Any) -> None:
        stop = threading.Event()
        if options["every"] > 0:
            signal.signal(signal.SIGTERM, lambda *_: stop.set())
            signal.signal(signal.SIGINT, lambda *_: stop.set())
        while True:
            deleted = request_log_purge()
            self.stdout.write(f"Deleted {deleted} logged requests past their retention.")
            connections.close_all()
            if options["every"] <= 0 or stop.wait(options["every"]):
                return
