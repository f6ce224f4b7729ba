"""Event handlers this service consumes, declared with `@handles("<type>")`.

The runner calls each inside a transaction with the event's org in scope; both are idempotent.
"""

from __future__ import annotations

from arbiter.entitlements import entitlements_apply
from arbiter.events import Event, handles
from services.training import fine_tuning, logic
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


@handles("file.created")
def on_file_created(event: Event) -> None:
    """Remember the file: fine-tuning jobs name training files by id."""
    fine_tuning.file_record(org_id=event.org_id, data=event.data)


@handles("file.deleted")
def on_file_deleted(event: Event) -> None:
    fine_tuning.file_forget(data=event.data)


@handles("training.completed")
def on_training_completed(event: Event) -> None:
    """A fine-tuning job's version trained: ask for it to be deployed (`fine_tuning.succeeded`)."""
    fine_tuning.job_trained(data=event.data)


@handles("deployment.live")
def on_deployment_live(event: Event) -> None:
    """A fine-tuning job whose deployment is live has succeeded: its `fine_tuned_model` answers."""
    fine_tuning.job_deployed(data=event.data)


@handles("deployment.failed")
def on_deployment_failed(event: Event) -> None:
    fine_tuning.job_deployed(data=event.data, error=str(event.data.get("message") or "The deployment failed."))
