"""`arbiter webhooks deliver`: the webhook delivery worker, until SIGTERM or Ctrl-C (`--once`: what is due now)."""

from __future__ import annotations

import signal
import threading
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from services.gateway.delivery import DeliveryWorker


class Command(BaseCommand):
    help = (
        "Webhooks. `deliver`: attempt due webhook deliveries (signed, retried on ARBITER_WEBHOOK_RETRY_SCHEDULE, "
        "through the egress guard). Safe to stop, kill and restart at any time: its state is in the database."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("action", choices=["deliver"])
        parser.add_argument("--once", action="store_true", help="Attempt what is due now, then exit.")

    def handle(self, *args: Any, **options: Any) -> None:
        worker = DeliveryWorker()
        if options["once"]:
            worker.drain()
            return
        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        worker.run(stop)
