"""One loop for the management commands that run once, or every N seconds until stopped (`--every`), as
`arbiter up` and the chart's service workers run them. Kept here rather than taken from a scheduler library:
the loop is a few lines, and each command must stay a plain process that SIGTERM stops between rounds."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable

from django.core.management.base import CommandParser
from django.db import connections


def every_argument(parser: CommandParser, *, help: str = "again every N seconds until stopped") -> None:
    parser.add_argument("--every", type=float, default=0, help=help)


def repeat(every: float, work: Callable[[], float | None]) -> None:
    """Run `work` once (`every` <= 0), or every `every` seconds until SIGTERM or SIGINT. `work` may answer the
    seconds to wait before the next round (a backoff); database connections are not held while waiting."""
    stop = threading.Event()
    if every > 0:
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
    while True:
        delay = work()
        if every <= 0:
            return
        connections.close_all()
        if stop.wait(every if delay is None else delay):
            return
