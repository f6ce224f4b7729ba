"""The API journey of a script, against Arbiter deployed as production deploys it (`arbiter up --split`):
bootstrap an org, upload a CSV, snapshot it, create a model at once (before the snapshot has reached the
training service), train `head`, deploy, and classify with the official `openai` SDK, every call through
nginx to the service that owns it."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import requests
from openai import OpenAI

from tests.e2e.conftest import RunningArbiter

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TOXIC = ["you are an idiot", "shut up you moron", "i hate you loser", "you stupid fool", "get lost jerk"]
SAFE = [
    "have a nice day",
    "thanks for the help",
    "the weather is lovely",
    "see you tomorrow",
    "great article",
]


def comments_csv() -> bytes:
    lines = ["comment,toxicity"]
    for i in range(60):
        toxic = i % 2 == 0
        lines.append(f"{(TOXIC if toxic else SAFE)[(i // 2) % 5]} ({i}),{'toxic' if toxic else 'safe'}")
    return ("\n".join(lines) + "\n").encode()


def poll(what: str, fetch: Any, done: Any, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        last = fetch()
        if done(last):
            return last
        time.sleep(1)
    raise AssertionError(
        f"{what} did not happen within {timeout_s:.0f} s; last seen: {json.dumps(last)[:2000]}"
    )


def test_a_script_trains_deploys_and_classifies_through_the_path_router(
    split_arbiter: RunningArbiter,
) -> None:
    bootstrap = json.loads(
        split_arbiter.cli("bootstrap", "--org", "scripted", "--email", "bot@example.com", services="gateway")
    )
    api = requests.Session()
    api.headers["Authorization"] = f"Bearer {bootstrap['api_key']}"
    org = f"{split_arbiter.base}/api/v1/orgs/{bootstrap['org']}"

    uploaded = api.post(f"{org}/datasets", files={"file": ("comments.csv", comments_csv(), "text/csv")})
    assert uploaded.status_code == 201, uploaded.text
    dataset = uploaded.json()
    assert dataset["mapping"]["input_column"] == "comment"

    snapshot = api.post(f"{org}/datasets/{dataset['id']}/snapshots", json={"test_percent": 20, "seed": 1})
    assert snapshot.status_code == 201, snapshot.text

    # Straight away: the training service may not have heard of the snapshot yet, and must not say so.
    created = api.post(
        f"{org}/models",
        json={
            "name": "toxicity",
            "snapshots": [snapshot.json()["id"]],
            "options": {"strategy": "head", "max_epochs": 5},
        },
    )
    assert created.status_code == 201, created.text
    model_id = created.json()["model"]["id"]

    version = poll(
        "training",
        lambda: api.get(f"{org}/models/{model_id}/versions/1").json(),
        lambda v: v["run"]["state"] in ("succeeded", "failed", "cancelled"),
        300,
    )
    assert version["run"]["state"] == "succeeded", version["run"]["conditions"]
    assert {h["name"] for h in version["heads"]} == {"toxicity"}

    # Straight away again: the inference service may not have heard of the version yet, and must not say so.
    deployed = api.post(f"{org}/deployments", json={"model": model_id, "version": 1, "name": "tox"})
    assert deployed.status_code == 202, deployed.text
    deployment = deployed.json()
    live = poll(
        "the deployment going live",
        lambda: api.get(f"{org}/deployments/{deployment['id']}").json(),
        lambda d: d["status"] in ("live", "failed"),
        120,
    )
    assert live["status"] == "live", live

    client = OpenAI(base_url=f"{split_arbiter.base}/v1", api_key=bootstrap["api_key"], max_retries=0)
    moderation = client.moderations.create(model="tox", input=["you are an idiot (0)", "have a nice day (1)"])
    assert [r.flagged for r in moderation.results] == [True, False]
    assert moderation.results[0].category_scores.to_dict()["toxicity"] > 0.5

    usage = api.get(f"{org}/usage").json()
    assert usage["totals"]["classification"] == {"requests": 1, "units": 2}
