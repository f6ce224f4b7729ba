"""Predictions for the annotation service's `model` labeler: a labeling job's rows classified by a deployment.

The annotation service writes the rows of a job as JSONL (`{number, text}`) to the blob store and publishes
`predictions.requested` naming the org's deployment; this service's consumer classifies them through the
deployment's loaded model with its thresholds, writes `{number, labels, scores}` per row for the job's head
and answers `predictions.written` (or the reason there are none: the deployment is gone or not live, the
model lacks the head, the artifact cannot be loaded). The rows are metered as auto-labels by the annotation
job, so they are not counted as classifications here.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

from django.db import transaction

from arbiter.api.errors import ApiError
from arbiter.events import publish
from arbiter.storage import get_blob_store
from services.inference.logic import ALIAS, loaded_or_unavailable
from services.inference.models import Deployment, DeploymentStatus

CHUNK = 256  # rows classified at once


def _rows(blob: str) -> Iterator[dict[str, Any]]:
    with get_blob_store().open(blob) as stream:
        for line in stream:
            if line.strip():
                yield json.loads(line)


def _chunks(rows: Iterator[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    chunk: list[dict[str, Any]] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) >= CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _predict(deployment: Deployment, *, head: str, blob: str, output: str) -> dict[str, Any] | None:
    """Classify the rows into `output`; the error to answer instead, if any."""
    if deployment.status != DeploymentStatus.LIVE:
        return {
            "code": "deployment_not_live",
            "message": f"deployment '{deployment.name}' is {deployment.status}",
        }
    try:
        loaded = loaded_or_unavailable(deployment.artifact)
    except ApiError as error:
        return {"code": error.error_code, "message": error.message}
    names = [model_head.spec.name for model_head in loaded.heads]
    if head not in names:
        return {
            "code": "head_not_in_model",
            "message": f"the model has no head {head!r} (it has: {', '.join(names)})",
        }
    lines: list[str] = []
    for chunk in _chunks(_rows(blob)):
        results = loaded.classify([str(row["text"]) for row in chunk], deployment.thresholds)
        for row, result in zip(chunk, results, strict=True):
            answer = result[head]
            scores = {label: round(float(p), 4) for label, p in answer["label_scores"].items()}
            lines.append(json.dumps({"number": row["number"], "labels": answer["labels"], "scores": scores}))
    get_blob_store().put_bytes(output, ("\n".join(lines) + "\n").encode())
    return None


def predictions_write(*, org_id: int, data: Mapping[str, Any]) -> None:
    """Answer `predictions.requested` with `predictions.written` (idempotent: a replay writes the same blob)."""
    deployment = Deployment.objects.filter(pk=int(data["deployment_id"])).first()
    blob = str(data["blob"])
    output = blob.rsplit("/", 1)[0] + "/predictions.jsonl"
    if deployment is None:
        error: dict[str, Any] | None = {
            "code": "deployment_not_found",
            "message": f"deployment {data['deployment_id']} does not exist",
        }
    else:
        error = _predict(deployment, head=str(data["head"]), blob=blob, output=output)
    with transaction.atomic(using=ALIAS):
        publish(
            type="predictions.written",
            org_id=org_id,
            subject=f"annotation-jobs/{data['job_id']}",
            data={
                "job_id": int(data["job_id"]),
                "deployment_id": int(data["deployment_id"]),
                "model_id": deployment.model_id if deployment else None,
                "model_name": deployment.model_name if deployment else "",
                "version": deployment.version if deployment else None,
                "blob": None if error else output,
                "error": error,
            },
        )
