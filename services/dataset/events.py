"""Event handlers this service consumes, declared with `@handles("<type>")`.

The runner calls each inside a transaction with the event's org in scope; each is idempotent.
"""

from __future__ import annotations

from arbiter.events import Event, handles
from services.dataset import logic
from services.dataset.logic.files import file_register_batch_output


@handles("labels.accepted")
def on_labels_accepted(event: Event) -> None:
    """Labels accepted in the annotation service become relabels of the rows, authored by their source."""
    logic.labels_apply(org_id=event.org_id, data=event.data)


@handles("batch.output_written")
def on_batch_output_written(event: Event) -> None:
    """A batch's output and error JSONL become files of the files API (purpose `batch_output`)."""
    file_register_batch_output(org_id=event.org_id, data=event.data)
