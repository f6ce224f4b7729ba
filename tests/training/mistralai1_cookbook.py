"""Mistral's Classifier Factory cookbook, as written for the `mistralai` 1.x SDK, run against a live Arbiter.

Run in its own interpreter with the 1.x SDK first on `sys.path` (it cannot share a virtualenv with the installed
major): `python mistralai1_cookbook.py <server_url> <api_key> <other org's api_key> <data dir>`. The data dir
holds `train.jsonl` and `valid.jsonl`. Prints one JSON object: what the cookbook saw at each step.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import mistralai
from mistralai import Mistral
from mistralai.models import SDKError


def _error(call: Any) -> dict[str, Any]:
    try:
        call()
    except SDKError as error:
        return {"status": error.status_code, "body": error.body}
    return {"status": None, "body": ""}


def main(server_url: str, api_key: str, other_key: str, data: Path) -> dict[str, Any]:
    seen: dict[str, Any] = {"sdk": mistralai.__version__}
    client = Mistral(api_key=api_key, server_url=server_url)

    # Upload the training and validation data.
    training_data = client.files.upload(
        file={"file_name": "train.jsonl", "content": open(data / "train.jsonl", "rb")}  # noqa: SIM115
    )
    validation_data = client.files.upload(
        file={"file_name": "valid.jsonl", "content": open(data / "valid.jsonl", "rb")}  # noqa: SIM115
    )
    seen["upload"] = {"purpose": training_data.purpose, "num_lines": training_data.num_lines}

    # Create the job without starting it; it is validated in the background.
    created_job = client.fine_tuning.jobs.create(
        model="ministral-3b-latest",
        job_type="classifier",
        training_files=[{"file_id": training_data.id, "weight": 1}],
        validation_files=[validation_data.id],
        hyperparameters={"training_steps": 6, "learning_rate": 0.005},
        auto_start=False,
    )
    seen["created"] = {"status": created_job.status, "type": type(created_job).__name__}

    retrieved_job = client.fine_tuning.jobs.get(job_id=created_job.id)
    deadline = time.monotonic() + 120
    while retrieved_job.status not in ("VALIDATED", "FAILED_VALIDATION") and time.monotonic() < deadline:
        time.sleep(0.3)
        retrieved_job = client.fine_tuning.jobs.get(job_id=created_job.id)
    seen["validated"] = {
        "status": retrieved_job.status,
        "type": type(retrieved_job).__name__,
        "targets": [target.model_dump() for target in retrieved_job.classifier_targets],
    }

    started = client.fine_tuning.jobs.start(job_id=created_job.id)
    seen["started"] = started.status

    # Poll while it trains, reading the loss curves as the cookbook plots them.
    statuses = []
    retrieved_job = client.fine_tuning.jobs.get(job_id=created_job.id)
    deadline = time.monotonic() + 300
    while retrieved_job.status in ("QUEUED", "RUNNING") and time.monotonic() < deadline:
        statuses.append(retrieved_job.status)
        time.sleep(0.3)
        retrieved_job = client.fine_tuning.jobs.get(job_id=created_job.id)
    statuses.append(retrieved_job.status)
    seen["statuses"] = statuses
    seen["curves"] = [
        {
            "step_number": checkpoint.step_number,
            "train_loss": checkpoint.metrics.train_loss,
            "valid_loss": checkpoint.metrics.valid_loss,
        }
        for checkpoint in retrieved_job.checkpoints
    ]
    seen["fine_tuned_model"] = retrieved_job.fine_tuned_model

    classified = client.classifiers.classify(
        model=retrieved_job.fine_tuned_model, inputs=["you stupid fool", "have a nice day"]
    )
    seen["classified"] = [
        {head: dict(result.scores) for head, result in item.items()} for item in classified.results
    ]
    seen["listed"] = [job.id for job in client.fine_tuning.jobs.list(status="SUCCESS").data]
    seen["models"] = [model.id for model in client.models.list().data or []]

    # The error cases a user meets first: a file that does not exist, a bad hyperparameter, another org's job.
    seen["unknown_file"] = _error(
        lambda: client.fine_tuning.jobs.create(
            model="ministral-3b-latest",
            job_type="classifier",
            training_files=[{"file_id": "no-such-file", "weight": 1}],
            hyperparameters={"training_steps": 4},
        )
    )
    seen["bad_steps"] = _error(
        lambda: client.fine_tuning.jobs.create(
            model="ministral-3b-latest",
            job_type="classifier",
            training_files=[{"file_id": training_data.id, "weight": 1}],
            hyperparameters={"training_steps": -1},
        )
    )
    other = Mistral(api_key=other_key, server_url=server_url)
    seen["other_org"] = _error(lambda: other.fine_tuning.jobs.get(job_id=created_job.id))
    return seen


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2], sys.argv[3], Path(sys.argv[4]))))
