"""What the reconcile loop needs from an executor, whichever runs the trainers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from services.training.operator.conditions import JobObservation


class LaunchError(RuntimeError):
    """The executor refused a run for good (not a passing outage): the run fails with this message."""


@dataclass(frozen=True)
class OwnedJob:
    """A trainer job found in the world (a Job, a process), with the run it belongs to."""

    handle: str
    run_id: int
    # Pending or running; a finished Kubernetes Job lingers (with its logs) until its TTL.
    live: bool = True


class Executor(Protocol):
    name: str

    def launch(self, *, run_id: int, org_id: int) -> str:
        """Start the run's trainer, or adopt the one already started; returns its handle."""

    def observe(self, handle: str, *, run_id: int) -> JobObservation: ...

    def stop(self, handle: str, *, run_id: int) -> None:
        """Stop the trainer; a trainer already gone is not an error."""

    def owned(self) -> list[OwnedJob]:
        """Every trainer job of this installation that still exists."""
