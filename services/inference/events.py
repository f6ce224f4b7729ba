"""Event handlers this service consumes, declared with `@handles("<type>")`.

The runner calls each inside a transaction on the inference database, with the event's org in scope.
"""

from __future__ import annotations

from arbiter.events import Event, handles
from services.inference.logic import deployment_load, model_version_record


@handles("training.completed")
def on_training_completed(event: Event) -> None:
    """Remember the trained version: it can now be deployed and tried in the playground."""
    model_version_record(org_id=event.org_id, data=event.data)


@handles("deployment.requested")
def on_deployment_requested(event: Event) -> None:
    """Fetch, load and warm the deployment's model, then announce it live (or failed, saying why)."""
    deployment_load(deployment_id=int(event.data["deployment_id"]))
