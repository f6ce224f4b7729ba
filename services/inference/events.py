"""Event handlers this service consumes, declared with `@handles("<type>")`.

The runner calls each inside a transaction on the inference database, with the event's org in scope.
"""

from __future__ import annotations

from arbiter.entitlements import entitlements_apply
from arbiter.events import Event, handles
from services.inference.batches import batch_file_record, batch_output_registered
from services.inference.logic import (
    ALIAS,
    deployment_create,
    deployment_load,
    deployments_waiting_fail,
    model_version_record,
)
from services.inference.models import Entitlement
from services.inference.predictions import predictions_write


@handles("training.completed")
def on_training_completed(event: Event) -> None:
    """Remember the trained version: it can now be deployed and tried in the playground."""
    model_version_record(org_id=event.org_id, data=event.data)


@handles("deployment.requested")
def on_deployment_requested(event: Event) -> None:
    """Fetch, load and warm the deployment's model, then announce it live (or failed, saying why)."""
    deployment_load(deployment_id=int(event.data["deployment_id"]))


@handles("training.failed")
def on_training_failed(event: Event) -> None:
    """Deployments created while the version was still training fail with it, saying why."""
    data = event.data
    deployments_waiting_fail(
        model_id=int(data["model_id"]),
        version=int(data["version"]),
        message=f"Version {data['version']} of model {data['model_id']} did not train ({data['state']}): "
        f"{data['message']}",
    )


@handles("entitlements.changed")
def on_entitlements_changed(event: Event) -> None:
    """Keep the org's newest entitlements: classify and the playground enforce them without asking billing."""
    entitlements_apply(model=Entitlement, alias=ALIAS, org_id=event.org_id, data=event.data)


@handles("fine_tuning.succeeded")
def on_fine_tuning_succeeded(event: Event) -> None:
    """Deploy a fine-tuning job's version at once, so its `fine_tuned_model` answers the classify APIs."""
    data = event.data
    deployment_create(
        org_id=event.org_id,
        model=int(data["model_id"]),
        version=int(data["version"]),
        actor="fine-tuning",
        idempotency_key=f"fine-tuning:{data['job_id']}",
    )


@handles("file.created")
def on_file_created(event: Event) -> None:
    """Remember a batch input file; a batch's output file, once registered, completes its batch."""
    batch_file_record(org_id=event.org_id, data=event.data)
    batch_output_registered(data=event.data)


@handles("predictions.requested")
def on_predictions_requested(event: Event) -> None:
    """Classify an annotation job's rows with the org's deployment and answer `predictions.written`."""
    predictions_write(org_id=event.org_id, data=event.data)
