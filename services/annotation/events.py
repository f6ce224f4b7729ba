"""Event handlers this service consumes, declared with `@handles("<type>")`.

The runner calls each inside a transaction with the event's org in scope; each is idempotent.
"""

from __future__ import annotations

from arbiter.events import Event, handles
from services.annotation import logic


@handles("dataset.rows_changed")
def on_dataset_rows_changed(event: Event) -> None:
    """Keep the copy of the dataset's rows that jobs label and the review queue shows."""
    logic.dataset_rows_apply(org_id=event.org_id, data=event.data)
