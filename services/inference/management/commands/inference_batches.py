from __future__ import annotations

import signal
import threading
from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.db import close_old_connections

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
        parser.add_argument(
            "--every", type=float, default=0, help="look for work every N seconds until stopped"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        stop = threading.Event()
        if options["every"] > 0:
            signal.signal(signal.SIGTERM, lambda *_: stop.set())
            signal.signal(signal.SIGINT, lambda *_: stop.set())
        while True:
            close_old_connections()
            wait = timedelta(seconds=arbiter_settings().training.wait_for_events_s)
            ran = batches_work(wait=wait)
            if ran and options["every"] <= 0:
                self.stdout.write(f"Ran {ran} batches.")
            if options["every"] <= 0 or stop.wait(options["every"]):
                return
