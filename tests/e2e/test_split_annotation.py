"""Auto-labeling across services, deployed as production deploys it (`arbiter up --split`): an unlabeled CSV
uploaded to the dataset service reaches the annotation service by event, a similarity job labels it, and the
accepted labels come back to the dataset's rows by event, every call through nginx."""

from __future__ import annotations

import json

import pytest
import requests

from tests.e2e.conftest import SAFE, TOXIC, RunningArbiter, poll

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_a_similarity_job_labels_an_unlabeled_csv_and_accepted_labels_reach_the_dataset(
    split_arbiter: RunningArbiter,
) -> None:
    bootstrap = json.loads(
        split_arbiter.cli(
            "bootstrap", "--org", "labelers", "--email", "labeler@example.com", services="gateway"
        )
    )
    api = requests.Session()
    api.headers["Authorization"] = f"Bearer {bootstrap['api_key']}"
    org = f"{split_arbiter.base}/api/v1/orgs/{bootstrap['org']}"

    lines = ["comment"] + [f"{(TOXIC if i % 2 == 0 else SAFE)[(i // 2) % 5]} ({i})" for i in range(12)]
    uploaded = api.post(
        f"{org}/datasets", files={"file": ("comments.csv", "\n".join(lines) + "\n", "text/csv")}
    )
    assert uploaded.status_code == 201, uploaded.text
    dataset = uploaded.json()["id"]

    labels = [
        {"name": "toxic", "description": "insults, name-calling or hostility towards a person"},
        {"name": "safe", "description": "friendly, polite or neutral everyday conversation"},
    ]
    schema = api.post(f"{org}/label-schemas", json={"dataset": dataset, "head": "toxicity", "labels": labels})
    assert schema.status_code == 201, schema.text
    # At once: the rows may still be on their way to the annotation service, and the job waits for them.
    job = api.post(
        f"{org}/annotation-jobs", json={"dataset": dataset, "head": "toxicity", "rows": "unlabeled"}
    )
    assert job.status_code == 201, job.text
    done = poll(
        "the annotation job",
        lambda: api.get(f"{org}/annotation-jobs/{job.json()['id']}").json(),
        lambda body: body["state"] in ("completed", "failed", "cancelled"),
        180,
    )
    assert done["state"] == "completed", done
    assert done["progress"]["total"] == 12 and done["progress"]["failed"] == 0

    accepted = api.post(f"{org}/annotation-jobs/{done['id']}/accept", json={"min_score": 0})
    assert accepted.json() == {"accepted": 12, "kept_labels": 0}, accepted.text
    rows = poll(
        "the accepted labels in the dataset",
        lambda: api.get(f"{org}/datasets/{dataset}/rows", params={"page_size": 100}).json(),
        lambda body: all(row["labels"].get("toxicity") for row in body.get("results", [])),
        120,
    )["results"]
    toxic = {row["number"] for row in rows if row["labels"]["toxicity"] == ["toxic"]}
    # Every row came back labeled; the offline labeler, uncalibrated here (no row had a label), gets most right.
    assert len(toxic ^ {i + 1 for i in range(12) if i % 2 == 0}) <= 3, toxic
    history = api.get(f"{org}/datasets/{dataset}/history").json()["results"]
    assert {h["actor"] for h in history if h["action"] == "relabel"} == {"llm:similarity:all-MiniLM-L6-v2@v1"}

    # The review queue has nothing left for the head, through the annotation service's copy of the rows.
    empty = poll(
        "the review queue to see the labels",
        lambda: api.get(f"{org}/datasets/{dataset}/review/next", params={"head": "toxicity"}).json(),
        lambda body: body["row"] is None,
        60,
    )
    assert empty["progress"] == {"labeled": 12, "total": 12}
