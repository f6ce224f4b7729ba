"""For the `relay` and `consume` commands: pick services, run loops in threads until SIGTERM or Ctrl-C."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Sequence

from django.conf import settings
from django.core.management.base import CommandError, CommandParser
from django.db import connections

log = logging.getLogger(__name__)

Loop = Callable[[threading.Event], None]


def services_option(parser: CommandParser) -> None:
    parser.add_argument(
        "--services", help="comma list of enabled services to serve (default: all enabled ones)"
    )


def selected_services(value: str | None) -> list[str]:
    enabled = list(settings.ARBITER_SERVICES)
    if not value:
        return enabled
    wanted = [name.strip() for name in value.split(",") if name.strip()]
    unknown = sorted(set(wanted) - set(enabled))
    if unknown:
        raise CommandError(f"--services names services this process does not run: {', '.join(unknown)}")
    return [name for name in enabled if name in wanted]


def loops_run(loops: Sequence[tuple[str, Loop]], *, stop: threading.Event | None = None) -> int:
    """Run each loop in its own thread until a signal (or `stop`); return 1 if a loop died on its own."""
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
    crashed: list[str] = []

    def guarded(name: str, loop: Loop) -> None:
        try:
            loop(stop)
        except Exception:
            log.exception("loop crashed", extra={"loop": name})
            crashed.append(name)
            # A half-working process would look healthy: stop all, and let the supervisor restart it.
            stop.set()
        finally:
            connections.close_all()

    threads = [threading.Thread(target=guarded, args=item, name=item[0], daemon=True) for item in loops]
    for thread in threads:
        thread.start()
    while not stop.wait(0.5):
        pass
    for thread in threads:
        thread.join(timeout=30)
    return 1 if crashed else 0
