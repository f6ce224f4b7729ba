"""Mistral's Classifier Factory flow and an OpenAI batch against `arbiter up --split`, every call through nginx:
files go to the dataset service, jobs to the training service, classify and batches to the inference service,
and every step between them travels by the broker."""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests
from mistralai.client import Mistral
from openai import OpenAI

from tests.e2e.conftest import SAFE, TOXIC, RunningArbiter, poll, scripted_org

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def training_jsonl(count: int, offset: int = 0) -> bytes:
    lines = []
    for i in range(count):
        toxic = i % 2 == 0
        text = f"{(TOXIC if toxic else SAFE)[(i // 2) % 5]} {offset + i}"
        lines.append(
            json.dumps({"text": text, "labels": {"moderation": ["toxicity"] if toxic else ["safe"]}})
        )
    return ("\n".join(lines) + "\n").encode()


def test_the_classifier_factory_flow_then_a_batch_through_the_path_router(
    split_arbiter: RunningArbiter,
) -> None:
    script = scripted_org(split_arbiter, "factory", "factory@example.com")
    jobs = requests.Session()
    jobs.headers["Authorization"] = f"Bearer {script.api_key}"
    base = split_arbiter.base

    with Mistral(api_key=script.api_key, server_url=base) as mistral:
        training = mistral.files.upload(
            file={"file_name": "train.jsonl", "content": training_jsonl(40)}, purpose="fine-tune"
        )
        validation = mistral.files.upload(
            file={"file_name": "valid.jsonl", "content": training_jsonl(10, offset=100)}, purpose="fine-tune"
        )
        assert training.num_lines == 40

        body = {
            "model": "ministral-3b-latest",
            "job_type": "classifier",
            "training_files": [{"file_id": training.id, "weight": 1}],
            "validation_files": [validation.id],
            "hyperparameters": {"training_steps": 4, "learning_rate": 0.005},
            "auto_start": False,
        }
        # The files reach the training service by the broker: the job is answered at once and validated once
        # they have arrived.
        answered = jobs.post(f"{base}/v1/fine_tuning/jobs", json=body)
        assert answered.status_code == 200 and answered.json()["status"] == "VALIDATING", answered.text
        created = poll(
            "the job validated",
            lambda: jobs.get(f"{base}/v1/fine_tuning/jobs/{answered.json()['id']}").json(),
            lambda j: j["status"] != "VALIDATING",
            60,
        )
        assert created["status"] == "VALIDATED", created["events"]
        started = jobs.post(f"{base}/v1/fine_tuning/jobs/{created['id']}/start")
        assert started.status_code == 200 and started.json()["status"] == "QUEUED", started.text

        done = poll(
            "the job succeeding",
            lambda: jobs.get(f"{base}/v1/fine_tuning/jobs/{created['id']}").json(),
            lambda j: j["status"] in ("SUCCESS", "FAILED", "CANCELLED"),
            300,
        )
        assert done["status"] == "SUCCESS", done["events"]
        assert [c["step_number"] for c in done["checkpoints"]] == [4, 2]
        model = done["fine_tuned_model"]

        classified = mistral.classifiers.classify(model=model, inputs=["you stupid fool", "have a nice day"])
        insult, friendly = classified.results
        assert insult["moderation"].scores["toxicity"] > friendly["moderation"].scores["toxicity"]

    client = OpenAI(base_url=f"{base}/v1", api_key=script.api_key, max_retries=0)
    requests_lines = [
        {
            "custom_id": "insult",
            "method": "POST",
            "url": "/v1/moderations",
            "body": {"model": model, "input": "you stupid fool"},
        },
        {
            "custom_id": "two",
            "method": "POST",
            "url": "/v1/moderations",
            "body": {"model": model, "input": ["have a nice day", "get lost jerk"]},
        },
    ]
    upload = client.files.create(
        file=("requests.jsonl", "".join(json.dumps(line) + "\n" for line in requests_lines).encode()),
        purpose="batch",
    )

    def create_batch() -> dict[str, Any]:
        try:
            batch = client.batches.create(
                input_file_id=upload.id, endpoint="/v1/moderations", completion_window="24h"
            )
        except Exception as error:  # the file may not have reached the inference service yet
            return {"error": str(error)}
        return batch.model_dump()

    accepted = poll("the batch being accepted", create_batch, lambda b: "id" in b, 60)
    finished = poll(
        "the batch completing",
        lambda: client.batches.retrieve(accepted["id"]).model_dump(),
        lambda b: b["status"] in ("completed", "failed", "cancelled", "expired"),
        120,
    )
    assert finished["status"] == "completed" and finished["request_counts"]["completed"] == 2, finished
    output = [json.loads(text) for text in client.files.content(finished["output_file_id"]).text.splitlines()]
    assert [item["custom_id"] for item in output] == ["insult", "two"]
    assert [len(item["response"]["body"]["results"]) for item in output] == [1, 2]
    client.close()
