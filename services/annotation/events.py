"""Event handlers this service consumes, declared with `@handles("<type>")`.

The runner calls each inside a transaction with the event's org in scope; each is idempotent.
"""

from __future__ import annotations

from arbiter.entitlements import entitlements_apply
from arbiter.events import Event, handles
from services.annotation import logic
from services.annotation.models import Entitlement


@handles("dataset.rows_changed")
def on_dataset_rows_changed(event: Event) -> None:
    """Keep the copy of the dataset's rows that jobs label and the review queue shows."""
    logic.dataset_rows_apply(org_id=event.org_id, data=event.data)


@handles("review.requested")
def on_review_requested(event: Event) -> None:
    """Rows to look at again (a policy disagreeing with a model or the labels) join the review queue."""
    logic.review_request_apply(org_id=event.org_id, data=event.data)


@handles("entitlements.changed")
def on_entitlements_changed(event: Event) -> None:
    """Keep the org's newest entitlements: a job is refused before it starts when its plan's automated
    annotations this month are too few."""
    entitlements_apply(model=Entitlement, alias=logic.ALIAS, org_id=event.org_id, data=event.data)


@handles("deployment.live")
def on_deployment_live(event: Event) -> None:
    """A deployed model version can label rows (the `model` labeler)."""
    logic.deployment_apply(org_id=event.org_id, data=event.data, live=True)


@handles("deployment.stopped")
def on_deployment_stopped(event: Event) -> None:
    logic.deployment_apply(org_id=event.org_id, data=event.data, live=False)


@handles("deployment.failed")
def on_deployment_failed(event: Event) -> None:
    logic.deployment_apply(org_id=event.org_id, data=event.data, live=False)


@handles("predictions.written")
def on_predictions_written(event: Event) -> None:
    """A deployment's predictions for a `model` job's rows: they become its suggestions."""
    logic.predictions_apply(org_id=event.org_id, data=event.data)
