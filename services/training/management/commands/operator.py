"""`arbiter operator`: the training operator's reconcile loop, until SIGTERM or Ctrl-C."""

from __future__ import annotations

import signal
import threading
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from kubernetes.config import ConfigException

from arbiter.config.typed_settings import SettingsError, arbiter_settings
from services.training.operator.reconcile import executor_from_settings, operator_reconcile, operator_run


class Command(BaseCommand):
    help = (
        "Run the training operator: launch admitted training runs through the executor chosen by "
        "ARBITER_TRAINING_EXECUTOR (local or kubernetes) and reconcile their trainers. Safe to stop and "
        "restart at any time."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--once", action="store_true", help="Reconcile once and exit.")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            settings = arbiter_settings().training
            executor = executor_from_settings(settings)
        except (SettingsError, ConfigException) as error:
            raise CommandError(f"The training operator cannot start: {error}") from error
        if options["once"]:
            operator_reconcile(executor=executor, concurrency=settings.trainer_slots)
            return
        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        operator_run(
            executor=executor, concurrency=settings.trainer_slots, interval_s=settings.interval_s, stop=stop
        )
