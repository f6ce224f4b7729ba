"""Event handlers this service consumes, declared with `@handles("<type>")`.

The runner calls each inside a transaction with the event's org in scope; each is idempotent.
"""

from __future__ import annotations

from arbiter.events import Event, handles
from services.dataset import logic


@handles("labels.accepted")
def on_labels_accepted(event: Event) -> None:
    """Labels accepted in the annotation service become relabels of the rows, authored by their source."""
    logic.labels_apply(org_id=event.org_id, data=event.data)
