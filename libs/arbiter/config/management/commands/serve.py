from __future__ import annotations

import os
import sys
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from arbiter.config.typed_settings import arbiter_settings


class Command(BaseCommand):
    help = "Serve the HTTP API and console of the chosen services (gunicorn, threads)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--services", default=None, help="comma list of services (default: ARBITER_SERVICES)"
        )
        web = arbiter_settings().web
        parser.add_argument("--bind", default=web.bind)
        parser.add_argument("--workers", type=int, default=web.workers)
        parser.add_argument("--threads", type=int, default=web.threads)

    def handle(self, *args: Any, **options: Any) -> None:
        # The CLI already moved --services into ARBITER_SERVICES before settings loaded; gunicorn inherits it.
        os.environ["ARBITER_SERVICES"] = ",".join(settings.ARBITER_SERVICES)
        argv = [
            sys.executable,
            "-m",
            "gunicorn",
            "arbiter.config.wsgi:application",
            "--bind",
            options["bind"],
            "--workers",
            str(options["workers"]),
            "--threads",
            str(options["threads"]),
            "--worker-class",
            "gthread",
            "--timeout",
            "120",
            "--graceful-timeout",
            "10",
            "--limit-request-line",
            "8190",
            "--log-level",
            "warning",
        ]
        os.execv(sys.executable, argv)  # noqa: S606 - become the web server, no shell involved
