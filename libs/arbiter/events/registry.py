"""The one registry of event types: topic, versioned JSON Schema (with an example), producer and consumers.

Schemas live in `schemas/<type>.v<version>.json`; each carries at least one example under `examples`.
Topics are per domain and keyed by org id, so one tenant's events stay in order.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema_rs

SCHEMA_DIR = Path(__file__).parent / "schemas"


class UnknownEventType(LookupError):
    pass


class EventSchemaError(ValueError):
    pass


@dataclass(frozen=True)
class EventType:
    type: str
    topic: str
    producer: str
    consumers: tuple[str, ...]
    description: str
    version: int = 1
    # Tests register their own types with schemas written elsewhere; the real ones live in SCHEMA_DIR.
    schema_dir: Path = field(default=SCHEMA_DIR, compare=False, repr=False)

    @property
    def schema_path(self) -> Path:
        return self.schema_dir / f"{self.type}.v{self.version}.json"

    @functools.cached_property
    def schema(self) -> dict[str, Any]:
        return dict(json.loads(self.schema_path.read_text()))

    @functools.cached_property
    def _validator(self) -> jsonschema_rs.Validator:
        # jsonschema-rs (Rust) rather than the jsonschema package: every classify call's usage.recorded is
        # checked on the request's path, and it checks these small documents in about 1 us against 137 us.
        # Building it checks the schema against its draft's meta-schema (raises ValidationError).
        return jsonschema_rs.validator_for(self.schema, validate_formats=True)

    @property
    def example(self) -> dict[str, Any]:
        return dict(self.schema["examples"][0])

    @property
    def dead_letter_topic(self) -> str:
        return dead_letter_topic(self.topic)

    def validate(self, data: dict[str, Any]) -> None:
        if self._validator.is_valid(data):
            return
        errors = sorted(self._validator.iter_errors(data), key=lambda e: [str(p) for p in e.instance_path])
        if errors:
            first = errors[0]
            where = "/".join(str(p) for p in first.instance_path) or "(root)"
            raise EventSchemaError(
                f"{self.type} data does not match its schema v{self.version} at {where}: {first.message}"
            )


DATASET = "arbiter.dataset"
TRAINING = "arbiter.training"
INFERENCE = "arbiter.inference"
ANNOTATION = "arbiter.annotation"
USAGE = "arbiter.usage"
BILLING = "arbiter.billing"
WEBHOOKS = "arbiter.webhooks"

EVENT_TYPES: dict[str, EventType] = {
    et.type: et
    for et in [
        EventType(
            "snapshot.created",
            DATASET,
            "dataset",
            ("training", "gateway"),
            "A dataset snapshot was frozen and validated; carries its manifest.",
        ),
        EventType(
            "file.created",
            DATASET,
            "dataset",
            ("training", "inference"),
            "A file was uploaded through the compatibility files API; a training file names its snapshot.",
        ),
        EventType(
            "batch.created",
            INFERENCE,
            "inference",
            (),
            "A batch was accepted; the inference service's batch worker classifies its lines in the background.",
        ),
        EventType(
            "batch.output_written",
            INFERENCE,
            "inference",
            ("dataset",),
            "A batch's output (and error) JSONL is in the blob store; the dataset service registers the files.",
        ),
        EventType(
            "file.deleted",
            DATASET,
            "dataset",
            ("training",),
            "A file of the compatibility files API was deleted.",
        ),
        EventType(
            "dataset.imported",
            DATASET,
            "dataset",
            ("gateway",),
            "An upload finished: its rows joined the dataset.",
        ),
        EventType(
            "dataset.rows_changed",
            DATASET,
            "dataset",
            ("annotation",),
            "A dataset's rows changed (all of them, as a JSONL export in the blob store, or a few, inline).",
        ),
        EventType(
            "training.requested",
            TRAINING,
            "training",
            ("training",),
            "A model version's training run was created and should be launched.",
        ),
        EventType("training.progress", TRAINING, "training", (), "A training run finished an epoch."),
        EventType(
            "training.completed",
            TRAINING,
            "training",
            ("inference", "gateway", "billing", "training"),
            "A training run succeeded; the version has metrics.",
        ),
        EventType(
            "fine_tuning.succeeded",
            TRAINING,
            "training",
            ("inference",),
            "A fine-tuning job trained its version; the inference service deploys it under its model name.",
        ),
        EventType(
            "training.failed",
            TRAINING,
            "training",
            ("inference", "gateway"),
            "A training run failed or was cancelled; deployments waiting for its version fail with it.",
        ),
        EventType(
            "deployment.requested",
            INFERENCE,
            "inference",
            ("inference",),
            "A deployment was created and should be loaded.",
        ),
        EventType(
            "deployment.live",
            INFERENCE,
            "inference",
            ("gateway", "training", "annotation"),
            "A deployment is loaded and serving.",
        ),
        EventType(
            "deployment.failed",
            INFERENCE,
            "inference",
            ("gateway", "training", "annotation"),
            "A deployment could not be loaded; says why.",
        ),
        EventType(
            "deployment.stopped",
            INFERENCE,
            "inference",
            ("gateway", "annotation"),
            "A deployment was stopped.",
        ),
        EventType(
            "annotation.completed",
            ANNOTATION,
            "annotation",
            ("gateway", "billing"),
            "An auto-labeling job finished; billing counts its labeled rows as auto-labels.",
        ),
        EventType(
            "predictions.requested",
            ANNOTATION,
            "annotation",
            ("inference",),
            "A `model` labeling job's rows (JSONL in the blob store) for a deployment of the org to classify.",
        ),
        EventType(
            "predictions.written",
            INFERENCE,
            "inference",
            ("annotation",),
            "A deployment's predictions for a labeling job's rows are in the blob store, or why there are none.",
        ),
        EventType(
            "policy.evaluated",
            TRAINING,
            "training",
            ("billing",),
            "A policy version decided a snapshot's rows: its LLM calls and tokens (billing meters llm_call).",
        ),
        EventType(
            "review.requested",
            TRAINING,
            "training",
            ("annotation",),
            "Rows to look at again with a suggestion and its reason (a policy disagreeing with a model or the "
            "labels); the annotation service queues them for review.",
        ),
        EventType(
            "labels.accepted",
            ANNOTATION,
            "annotation",
            ("dataset",),
            "Labels a person accepted (suggestions or reviews); the dataset applies them to its rows.",
        ),
        EventType(
            "usage.recorded", USAGE, "inference", ("billing",), "Billable usage: units of a meter for an org."
        ),
        EventType(
            "billing.quota_reached",
            BILLING,
            "billing",
            ("gateway",),
            "An org used up what its plan includes of a meter its plan refuses beyond; says which and until when.",
        ),
        EventType(
            "entitlements.changed",
            BILLING,
            "billing",
            ("inference", "training", "annotation"),
            "An org's plan, allowances and usage this period, as billing counts them: what the edge enforces.",
        ),
        EventType(
            "webhook.disabled",
            WEBHOOKS,
            "gateway",
            ("gateway",),
            "A webhook endpoint was disabled: it answered 410 Gone or kept failing; says why.",
        ),
    ]
}


def dead_letter_topic(topic: str) -> str:
    return f"{topic}.dlq"


def broker_topics() -> tuple[str, ...]:
    """Every topic the broker must have: each domain topic and its dead-letter topic."""
    topics = {et.topic for et in EVENT_TYPES.values()}
    return tuple(sorted(topics | {dead_letter_topic(topic) for topic in topics}))


def get_event_type(type_name: str) -> EventType:
    try:
        return EVENT_TYPES[type_name]
    except KeyError:
        raise UnknownEventType(
            f"unknown event type {type_name!r}; register it in arbiter.events.registry"
        ) from None
