from __future__ import annotations

import os
import sys
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from arbiter.config.typed_settings import arbiter_settings

# Set in the web server's environment by `arbiter serve`: a process that serves HTTP (and so warms the models
# of live deployments at start; see services/inference/serving/preload.py).
WEB_SERVER_VARIABLE = "ARBITER_WEB_SERVER"


def bind_arguments(bind: str) -> list[str]:
    """Granian's arguments for a gunicorn-style bind: `HOST:PORT`, `[IPV6]:PORT` or `unix:PATH`."""
    if bind.startswith("unix:"):
        return ["--uds", bind.removeprefix("unix:")]
    host, separator, port = bind.rpartition(":")
    if not separator or not port.isdigit():
        raise CommandError(f"--bind must be HOST:PORT, [IPV6]:PORT or unix:PATH, got {bind!r}")
    return ["--host", host.strip("[]") or "0.0.0.0", "--port", port]  # noqa: S104 - ":8000" means every address


class Command(BaseCommand):
    help = "Serve the HTTP API and console of the chosen services (granian: HTTP in Rust, WSGI threads)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--services", default=None, help="comma list of services (default: ARBITER_SERVICES)"
        )
        web = arbiter_settings().web
        parser.add_argument("--bind", default=web.bind)
        parser.add_argument("--workers", type=int, default=web.workers)
        parser.add_argument("--threads", type=int, default=web.threads)

    def handle(self, *args: Any, **options: Any) -> None:
        # The CLI already moved --services into ARBITER_SERVICES before settings loaded; granian inherits it.
        os.environ["ARBITER_SERVICES"] = ",".join(settings.ARBITER_SERVICES)
        os.environ[WEB_SERVER_VARIABLE] = "granian"
        # Inference's micro-batcher runs one runner per core; the tokenizer's own thread pool would spread each
        # batch's tokenising over the cores the other runners hold (it doubled tokenising's CPU time for batches
        # of 8). Set it in the environment to choose otherwise.
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        # Granian parses HTTP and writes answers in Rust, off the GIL: under 32 single-text clients that left
        # the cores about 15% more time for the model than gunicorn's Python workers (benchmarks/bench_inference.py).
        argv = [
            sys.executable,
            "-m",
            "granian",
            "--interface",
            "wsgi",
            "arbiter.config.wsgi:application",
            *bind_arguments(options["bind"]),
            "--workers",
            str(options["workers"]),
            # The most requests a process serves at once: the micro-batcher batches only requests in flight.
            "--blocking-threads",
            str(options["threads"]),
            "--no-ws",
            # A worker that dies (killed, out of memory) is replaced; one being stopped gets 10 s to finish.
            "--respawn-failed-workers",
            "--workers-kill-timeout",
            "10",
            "--log-level",
            "warning",
        ]
        os.execv(sys.executable, argv)  # noqa: S606 - become the web server, no shell involved
