"""`arbiter train --run <id>`: the trainer of one training run (started by the operator's executor)."""

from __future__ import annotations

import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from services.training.trainer import RunNotFound, trainer_run


class Command(BaseCommand):
    help = (
        "Train one training run: read its snapshots, train, evaluate, store the artifact, report the result."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--run", type=int, required=True, help="The training run's id.")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            code = trainer_run(run_id=options["run"])
        except RunNotFound as error:
            raise CommandError(str(error)) from error
        if code:
            sys.exit(code)
