"""Event handlers this service consumes, declared with `@handles("<type>")`.

The runner calls each inside a transaction on the billing database, with the event's org in scope, once per
event id; the ledger is keyed by the event id too, so a replayed event is never counted twice.
"""

from __future__ import annotations

from arbiter.events import Event, handles
from services.billing.logic import training_minutes_record, usage_record


@handles("usage.recorded")
def on_usage_recorded(event: Event) -> None:
    """Classifications and playground queries (and any other meter a service reports) enter the ledger."""
    usage_record(
        org_id=event.org_id,
        event_id=event.id,
        meter=str(event.data["meter"]),
        units=int(event.data["units"]),
        occurred_at=event.time,
        model_id=event.data.get("model_id"),
    )


@handles("annotation.completed")
def on_annotation_completed(event: Event) -> None:
    """The rows an auto-labeling job labeled (finished, failed or cancelled) enter the ledger as auto-labels."""
    usage_record(
        org_id=event.org_id,
        event_id=event.id,
        meter="auto_label",
        units=int(event.data["labeled"]),
        occurred_at=event.time,
    )


@handles("policy.evaluated")
def on_policy_evaluated(event: Event) -> None:
    """The LLM calls a policy evaluation made enter the ledger (serving's are announced as `usage.recorded`)."""
    usage_record(
        org_id=event.org_id,
        event_id=event.id,
        meter="llm_call",
        units=int(event.data["llm_calls"]),
        occurred_at=event.time,
        model_id=event.data.get("model_id"),
    )


@handles("training.completed")
def on_training_completed(event: Event) -> None:
    """A finished run's training time enters the ledger as training minutes."""
    training_minutes_record(org_id=event.org_id, event_id=event.id, data=event.data, occurred_at=event.time)
