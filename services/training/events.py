"""Event handlers this service consumes, declared with `@handles("<type>")`.

The runner calls each inside a transaction with the event's org in scope; both are idempotent.
"""

from __future__ import annotations

from arbiter.entitlements import entitlements_apply
from arbiter.events import Event, handles
from services.training import logic
from services.training.models import Entitlement


@handles("snapshot.created")
def on_snapshot_created(event: Event) -> None:
    """Keep the snapshot's manifest: models are trained on snapshots the training service knows."""
    logic.snapshot_record(org_id=event.org_id, manifest=event.data)


@handles("training.requested")
def on_training_requested(event: Event) -> None:
    """The operator takes the run: validate its data, then admit it to the launch queue (or fail it)."""
    logic.run_admit(run_id=int(event.data["run_id"]))


@handles("entitlements.changed")
def on_entitlements_changed(event: Event) -> None:
    """Keep the org's newest entitlements: new training runs are refused once its training minutes are used up."""
    entitlements_apply(model=Entitlement, alias=logic.ALIAS, org_id=event.org_id, data=event.data)
