"""What the operator sees of a trainer, and the status conditions it writes about it.

A condition has the shape Kubernetes uses (type, status, reason, message, time): one entry per type, and a
new entry only when something changed, so reconciling the same world twice writes nothing new.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

# The trainer's exit status when it ended the run failed and already wrote why. Executors must not retry
# it (the Kubernetes Job fails at once through its pod failure policy) and must not overwrite its message.
TRAINER_EXIT_REPORTED_FAILURE = 3


class JobPhase(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    MISSING = "missing"


@dataclass(frozen=True)
class JobObservation:
    """One look at a trainer job (a Kubernetes Job or a local process); reason is a CamelCase word."""

    phase: JobPhase
    reason: str
    message: str


@dataclass(frozen=True)
class Condition:
    type: str
    status: str
    reason: str
    message: str
    time: datetime

    def to_json(self) -> dict[str, str]:
        return {
            "type": self.type,
            "status": self.status,
            "reason": self.reason,
            "message": self.message,
            "time": self.time.isoformat(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Condition:
        return cls(
            type=data["type"],
            status=data["status"],
            reason=data["reason"],
            message=data["message"],
            time=datetime.fromisoformat(data["time"]),
        )


def condition_set(
    conditions: list[dict[str, str]],
    *,
    type: str,
    status: bool,
    reason: str,
    message: str,
    now: datetime | None = None,
) -> list[dict[str, str]]:
    """Return `conditions` with the condition of `type` set; unchanged (same list) when nothing differs."""
    wanted = "True" if status else "False"
    for existing in conditions:
        if existing["type"] == type and (existing["status"], existing["reason"], existing["message"]) == (
            wanted,
            reason,
            message,
        ):
            return conditions
    entry = Condition(type=type, status=wanted, reason=reason, message=message, time=now or datetime.now(UTC))
    return [c for c in conditions if c["type"] != type] + [entry.to_json()]
